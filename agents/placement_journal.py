"""The placement agent's journal: how a restarted agent gets its scheduler state back.

The agent's state (queued and running tasks, nodes, what the model learned) lives in the
pure :class:`~streamsched.scheduler.core.SchedulerCore`, fed by the input topics. The
core is deterministic: the same inputs, in the same batches, at the same ``now``, give
the same state and the same decisions. The journal records exactly that, one entry per
core call (a batch of input records, or an idle tick):

- ``now``: the core time of the call (also the reference for decoding it, e.g.
  "deadline in the past");
- ``runs``: the input records of the batch, in batch order, as runs of consecutive
  offsets ``[topic, partition, first offset, last offset]`` (the records themselves stay
  on the input topics, so an entry is small);
- ``digest``: a digest of the decisions the call made, to detect a replay that diverges
  (a code change, a nondeterminism bug);
- ``resume``: the entry that marks a restart (see below);
- ``forgive``: the agent was behind on the heartbeat or attempt-event topics when it made
  the call, so it counted every node's silence from the call's time and its heartbeats
  declared no attempt lost (see ``PlacementAgent._inputs_behind``).

The journal is one topic per agent instance, named after its decision prefix
(:func:`journal_topic`), one partition. Its first record is a :class:`JournalHeader`
naming what else decides the core's behaviour: the policy, the core configuration and
the runtime model it started from (a cold model, or the processor checkpoint it
warm-started from). A restart must start from the same ones, or it is refused with the
difference named: replaying under another policy would rebuild another state.

Ordering rules (kept by the agent, see :class:`~streamsched.agents.placement.PlacementAgent`):

1. An entry is written before any output of its call is produced, and waited for when
   the call has outputs: an output on the wire always has its cause in the journal.
2. An entry counts as an output of its batch: the batch's input offsets are committed
   only after the entry is durable.

So on restart, every journaled batch is replayed; an entry whose inputs are all below the
committed offsets had its outputs delivered (commits follow deliveries, in batch order),
and later entries may not have: their outputs are produced again. Redelivered outputs are
harmless: an executor ignores an assignment for an attempt it already runs or ran, and
every consumer of ``sched.decisions`` is idempotent per decision id. Input records past
the journal are consumed as usual.

A ``resume`` entry records the restart's time: a node's silence is counted from it, not
from before the outage (the agent, not the node, was away), so a restart that took
longer than the heartbeat timeout does not declare every node lost. A node that died
during the outage is declared lost one timeout after the restart.

Snapshots: after every :data:`~streamsched.agents.placement.SNAPSHOT_AFTER_WORK_S`
seconds of decoding and core work (and four times the last snapshot's cost), the agent
flushes its outputs and writes its whole state, pickled, in chunks of
:data:`SNAPSHOT_CHUNK_BYTES`, to the journal. A restart loads the newest complete snapshot
and replays only the entries after it, so restart time stays bounded by that much work
plus loading the snapshot (about a second per 10,000 queued tasks). A snapshot that does
not load (written by another code version) is skipped: the whole journal is replayed.

Limits: reading the journal still scans it from the beginning (the entries before the
snapshot are skipped, not decoded into state; the embedded broker has no compaction and
Apache Kafka's would not fit a log of entries); the input records after the snapshot
must still exist (the embedded broker never deletes; on Apache Kafka give the input
topics a retention longer than the snapshot interval, and the journal ``retention.ms=-1``).
A snapshot is a pickle: only the placement agent's principal may write the journal topic
(see docs/security.md).
"""

from __future__ import annotations

import copyreg
import hashlib
import io
import json
import logging
import pickle
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from streamsched.broker import ensure_topics
from streamsched.scheduler.instructions import Instruction

logger = logging.getLogger(__name__)

#: Prefix of the journal topics (one per decision prefix: :func:`journal_topic`).
JOURNAL_TOPIC_PREFIX = "sched.placement.journal"
#: Format of the journal records; a journal in another format is refused.
FORMAT_VERSION = 1
#: How long the journal may take to acknowledge an entry before the agent gives up (it
#: then stops: it cannot make decisions it could not replay).
ACK_TIMEOUT_S = 10.0
#: Input records buffered per partition while the replay waits for another partition.
MAX_BUFFERED_PER_PARTITION = 20_000

#: Record header that marks a snapshot chunk (its value is binary, not JSON).
KIND_HEADER = "journal.kind"
SNAPSHOT_KIND = b"snapshot"
#: Largest snapshot chunk (brokers refuse records over 1 MB by default).
SNAPSHOT_CHUNK_BYTES = 512 * 1024

#: The journal producer: every record its own request (``batch.num.messages=1``: the
#: embedded broker reports a wrong high watermark after a multi-record batch, and the
#: journal is read up to it), in order (idempotent), acknowledged by all replicas.
PRODUCER_SETTINGS: dict[str, Any] = {
    "linger.ms": 0,
    "batch.num.messages": 1,
    "enable.idempotence": True,
    "acks": "all",
}


class JournalError(RuntimeError):
    """The journal cannot be written, read or replayed; the message says why and what to
    do."""


def journal_topic(decision_prefix: str) -> str:
    """The journal topic of the agent instance with ``decision_prefix``."""
    return f"{JOURNAL_TOPIC_PREFIX}.{decision_prefix}"


@dataclass(frozen=True, slots=True)
class JournalHeader:
    """What, besides its inputs, decides a core's behaviour (the journal's first record)."""

    policy: str
    decision_prefix: str
    #: ``dataclasses.asdict`` of the core's CoreConfig.
    core_config: dict[str, Any]
    #: The runtime model the core started from: ``{"kind": "cold"}`` or ``{"kind":
    #: "checkpoint", "model_name": ..., "model_version": ..., "created_at_s": ...}``.
    forecaster: dict[str, Any]
    format_version: int = FORMAT_VERSION

    def differences(self, other: JournalHeader) -> list[str]:
        """What differs from ``other`` (the journal's header), as readable lines; a
        configuration field only one side knows (a newer version) is not a difference."""
        out = []
        for name in ("format_version", "policy", "decision_prefix"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                out.append(f"{name}: journal {theirs!r}, this agent {mine!r}")
        for key in sorted(set(self.core_config) & set(other.core_config)):
            mine, theirs = self.core_config[key], other.core_config[key]
            if mine != theirs:
                out.append(f"core config {key}: journal {theirs!r}, this agent {mine!r}")
        if self.forecaster != other.forecaster:
            out.append(f"runtime model: journal {other.forecaster}, this agent {self.forecaster}")
        return out


#: One run of consecutive input offsets: (topic, partition, first offset, last offset).
Run = tuple[str, int, int, int]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One core call: at ``now``, on the records of ``runs`` (none: a tick)."""

    seq: int
    now: float
    runs: tuple[Run, ...] = ()
    digest: str = ""
    resume: bool = False
    #: The agent was behind on heartbeats or attempt events: before the call every node's
    #: silence was counted from ``now``, and its heartbeats declared no attempt lost.
    forgive: bool = False

    def below(self, committed: Mapping[tuple[str, int], int]) -> bool:
        """True if every input of the entry is below the ``committed`` offsets (and it
        has inputs): its outputs were delivered."""
        return bool(self.runs) and all(
            last < committed.get((topic, partition), 0) for topic, partition, _, last in self.runs
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The agent's whole state after the entry ``seq`` (a pickle, see
    :func:`dump_state`), written when every output of the entries up to ``seq`` was
    delivered."""

    seq: int
    data: bytes


@dataclass(slots=True)
class Journal:
    """A journal as read from its topic: the header, the newest complete snapshot (if
    any), and the entries after it."""

    header: JournalHeader | None = None
    entries: list[JournalEntry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    #: Entries in the journal before the snapshot (not kept).
    skipped: int = 0

    def first_offsets(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for entry in self.entries:
            for topic, partition, first, _ in entry.runs:
                key = (topic, partition)
                out[key] = min(out.get(key, first), first)
        return out

    def delivered_through(self, committed: Mapping[tuple[str, int], int]) -> int:
        """Index of the last entry whose outputs are known delivered (-1: none)."""
        for index in range(len(self.entries) - 1, -1, -1):
            if self.entries[index].below(committed):
                return index
        return -1


def runs_of(records: Sequence[Message]) -> tuple[Run, ...]:
    """The records of a batch as runs of consecutive offsets, in batch order."""
    runs: list[list[Any]] = []
    for msg in records:
        topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
        if runs and runs[-1][0] == topic and runs[-1][1] == partition and runs[-1][3] + 1 == offset:
            runs[-1][3] = offset
        else:
            runs.append([topic, partition, offset, offset])
    return tuple((str(t), int(p), int(a), int(b)) for t, p, a, b in runs)


def digest(instructions: Sequence[Instruction]) -> str:
    """A short digest of a call's decisions: the kind, task, attempt and node of each
    instruction, in order (what a replay must reproduce)."""
    h = hashlib.blake2b(digest_size=8)
    for ins in instructions:
        parts = (
            type(ins).__name__,
            str(getattr(ins, "task_id", "")),
            str(getattr(ins, "attempt", "")),
            str(getattr(ins, "node_id", "")),
            str(getattr(getattr(ins, "new", None), "value", "")),
        )
        h.update("\x1f".join(parts).encode())
        h.update(b"\x1e")
    return h.hexdigest()


def encode_header(header: JournalHeader) -> bytes:
    return json.dumps({"kind": "header", **asdict(header)}, sort_keys=True).encode()


def encode_entry(entry: JournalEntry) -> bytes:
    data: dict[str, Any] = {"kind": "entry", "seq": entry.seq, "now": entry.now}
    if entry.runs:
        data["runs"] = [list(run) for run in entry.runs]
    if entry.digest:
        data["digest"] = entry.digest
    if entry.resume:
        data["resume"] = True
    if entry.forgive:
        data["forgive"] = True
    return json.dumps(data, separators=(",", ":")).encode()


def decode_record(raw: bytes, where: str) -> JournalHeader | JournalEntry:
    """A journal record; JournalError naming ``where`` if it is not one."""
    try:
        data = json.loads(raw)
        kind = data.pop("kind")
        if kind == "header":
            return JournalHeader(**data)
        if kind == "entry":
            runs = tuple((str(t), int(p), int(a), int(b)) for t, p, a, b in data.get("runs", ()))
            return JournalEntry(
                seq=int(data["seq"]),
                now=float(data["now"]),
                runs=runs,
                digest=str(data.get("digest", "")),
                resume=bool(data.get("resume", False)),
                forgive=bool(data.get("forgive", False)),
            )
        raise ValueError(f"unknown record kind {kind!r}")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise JournalError(f"{where}: not a placement journal record: {exc}") from None


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """One record of a snapshot (snapshots are split: a broker limits record sizes)."""

    seq: int
    index: int
    count: int
    sha256: str
    data: bytes


def _chunk(headers: Mapping[str, bytes], data: bytes, where: str) -> SnapshotChunk:
    try:
        return SnapshotChunk(
            seq=int(headers["snapshot.seq"]),
            index=int(headers["snapshot.chunk"]),
            count=int(headers["snapshot.chunks"]),
            sha256=headers["snapshot.sha256"].decode("ascii"),
            data=data,
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise JournalError(f"{where}: a snapshot chunk with bad headers: {exc}") from None


def _mapping_proxy(items: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(items)


def dump_state(state: Any) -> bytes:
    """``state`` pickled (read-only mappings included). A snapshot is as trustworthy as
    whoever may write the journal topic: restrict it to the placement agent's principal
    (see docs/security.md)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = {
        **copyreg.dispatch_table,
        MappingProxyType: lambda m: (_mapping_proxy, (dict(m),)),
    }
    pickler.dump(state)
    return buffer.getvalue()


def load_state(data: bytes) -> Any:
    return pickle.loads(data)  # the agent's own journal, see dump_state


class JournalWriter:
    """Appends to one agent's journal (its own producer, so that waiting for an entry
    never waits for the agent's other outputs)."""

    def __init__(self, config: Mapping[str, Any], topic: str) -> None:
        self.topic = topic
        ensure_topics(config, {topic: 1})
        self._producer = Producer({**config, **PRODUCER_SETTINGS})
        self._error: str | None = None
        self.seq = 0

    def write_header(self, header: JournalHeader) -> None:
        self._send(encode_header(header), None)
        self.sync()

    def append(
        self,
        now: float,
        runs: tuple[Run, ...],
        digest_: str,
        *,
        resume: bool = False,
        forgive: bool = False,
        on_delivery: Any = None,
        sync: bool,
    ) -> JournalEntry:
        """Append one entry; with ``sync``, return only once it (and every earlier one)
        is acknowledged. ``on_delivery`` is also called with the delivery report."""
        self.seq += 1
        entry = JournalEntry(self.seq, now, runs, digest_, resume, forgive)
        self._send(encode_entry(entry), on_delivery)
        if sync:
            self.sync()
        else:
            self._producer.poll(0)
        return entry

    def write_snapshot(self, seq: int, data: bytes) -> None:
        """Write a snapshot of the state after entry ``seq``, in chunks, and wait for it."""
        sha = hashlib.sha256(data).hexdigest().encode("ascii")
        count = max(1, -(-len(data) // SNAPSHOT_CHUNK_BYTES))
        for index in range(count):
            headers: list[tuple[str, str | bytes | None]] = [
                (KIND_HEADER, SNAPSHOT_KIND),
                ("snapshot.seq", str(seq).encode()),
                ("snapshot.chunk", str(index).encode()),
                ("snapshot.chunks", str(count).encode()),
                ("snapshot.sha256", sha),
            ]
            chunk = data[index * SNAPSHOT_CHUNK_BYTES : (index + 1) * SNAPSHOT_CHUNK_BYTES]
            self._send(chunk, None, headers)
        self.sync()

    def sync(self) -> None:
        """Wait until every entry is acknowledged; JournalError if one was not."""
        left = self._producer.flush(ACK_TIMEOUT_S)
        if left:
            raise JournalError(
                f"{left} journal record(s) on {self.topic} not acknowledged within "
                f"{ACK_TIMEOUT_S:g} s; stopping (a restart replays what was journaled)"
            )
        if self._error is not None:
            raise JournalError(f"journal write to {self.topic} failed: {self._error}")

    def close(self) -> None:
        self._producer.flush(ACK_TIMEOUT_S)

    def _send(
        self,
        value: bytes,
        on_delivery: Any,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        def delivered(error: KafkaError | None, msg: Message) -> None:
            if error is not None:
                self._error = str(error)
            if on_delivery is not None:
                on_delivery(error, msg)

        for _ in range(100):
            try:
                self._producer.produce(
                    self.topic, value, headers=headers or [], on_delivery=delivered
                )
                return
            except BufferError:
                self._producer.poll(0.1)
        raise JournalError(f"journal producer queue for {self.topic} stays full")


def _reading_consumer(config: Mapping[str, Any]) -> Consumer:
    return Consumer(
        {
            **config,
            "group.id": "streamsched-placement-journal-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )


def read_journal(
    config: Mapping[str, Any], topic: str, timeout_s: float = 30.0, *, snapshots: bool = True
) -> Journal:
    """The journal on ``topic`` (empty if the topic does not exist or holds nothing):
    with ``snapshots``, from its newest complete snapshot on (the entries before it are
    counted, not kept); else every entry. JournalError if a record is not a journal
    record or an entry precedes the header."""
    journal = Journal()
    chunks: dict[int, dict[int, bytes]] = {}  # snapshot seq -> chunk index -> bytes
    for offset, record in _records(config, topic, timeout_s, first_only=False):
        if isinstance(record, JournalHeader):
            if journal.header is None:
                journal.header = record
            continue  # a header written again changes nothing
        if journal.header is None:
            raise JournalError(f"{topic}@{offset}: an entry before the header")
        if isinstance(record, JournalEntry):
            journal.entries.append(record)
            continue
        if not snapshots:
            continue
        parts = chunks.setdefault(record.seq, {})
        parts[record.index] = record.data
        if len(parts) < record.count:
            continue
        data = b"".join(parts[i] for i in range(record.count))
        del chunks[record.seq]
        if hashlib.sha256(data).hexdigest() != record.sha256:
            logger.error(
                "%s@%d: snapshot %d is corrupt (SHA-256); ignored", topic, offset, record.seq
            )
            continue
        journal.snapshot = Snapshot(record.seq, data)
        kept = [e for e in journal.entries if e.seq > record.seq]
        journal.skipped += len(journal.entries) - len(kept)
        journal.entries = kept
    return journal


def read_journal_header(
    config: Mapping[str, Any], topic: str, timeout_s: float = 30.0
) -> JournalHeader | None:
    """The header of the journal on ``topic``, None if there is no journal yet."""
    for offset, record in _records(config, topic, timeout_s, first_only=True):
        if not isinstance(record, JournalHeader):
            raise JournalError(f"{topic}@{offset}: the first record is not a journal header")
        return record
    return None


def _records(
    config: Mapping[str, Any], topic: str, timeout_s: float, *, first_only: bool
) -> Iterator[tuple[int, JournalHeader | JournalEntry | SnapshotChunk]]:
    consumer = _reading_consumer(config)
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return
        tp = TopicPartition(topic, 0)
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
        if high <= low:
            return
        if first_only:
            high = low + 1
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout_s
        next_offset = low
        while next_offset < high:
            if time.monotonic() > deadline:
                raise JournalError(
                    f"reading {topic}: offset {next_offset} of {high} after {timeout_s:g} s"
                )
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise JournalError(f"reading {topic}: {error}")
            offset = msg.offset() or 0
            next_offset = offset + 1
            where = f"{topic}@{offset}"
            headers = {str(k): v for k, v in list(msg.headers() or []) if isinstance(v, bytes)}
            if headers.get(KIND_HEADER) == SNAPSHOT_KIND:
                yield offset, _chunk(headers, msg.value() or b"", where)
            else:
                yield offset, decode_record(msg.value() or b"", where)
    finally:
        consumer.close()


class InputFetcher:
    """Reads the input records journal entries name, in the order they are asked for:
    one consumer over every partition involved, a buffer per partition (a partition
    far ahead of the one being waited for is paused)."""

    def __init__(
        self, config: Mapping[str, Any], starts: Mapping[tuple[str, int], int], timeout_s: float
    ) -> None:
        self.timeout_s = timeout_s
        self._consumer = _reading_consumer(config)
        self._buffers: dict[tuple[str, int], deque[Message]] = {tp: deque() for tp in starts}
        self._paused: set[tuple[str, int]] = set()
        self._consumer.assign([TopicPartition(t, p, o) for (t, p), o in sorted(starts.items())])

    def close(self) -> None:
        self._consumer.close()

    def records(self, runs: Sequence[Run]) -> Iterator[Message]:
        for topic, partition, first, last in runs:
            for offset in range(first, last + 1):
                msg = self._take((topic, partition), offset)
                if msg is not None:
                    yield msg

    def _take(self, tp: tuple[str, int], offset: int) -> Message | None:
        """The record at ``offset`` of ``tp``; None if the partition has no record there
        (a gap, e.g. a transaction marker on Apache Kafka)."""
        buffer = self._buffers[tp]
        deadline = time.monotonic() + self.timeout_s
        while True:
            while buffer and (buffer[0].offset() or 0) < offset:
                buffer.popleft()
            if buffer:
                if (buffer[0].offset() or 0) == offset:
                    msg = buffer.popleft()
                    self._maybe_resume(tp)
                    return msg
                return None  # the partition skipped past it
            if tp in self._paused:
                self._consumer.resume([TopicPartition(*tp)])
                self._paused.discard(tp)
            if time.monotonic() > deadline:
                raise JournalError(
                    f"input record {tp[0]}[{tp[1]}]@{offset} named by the journal is not "
                    f"readable after {self.timeout_s:g} s (deleted by retention?); start a "
                    "fresh agent instance (another --decision-prefix) to schedule without "
                    "the journal"
                )
            self._fill()

    def _fill(self) -> None:
        for msg in self._consumer.consume(num_messages=1000, timeout=0.5):
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise JournalError(f"reading journaled inputs: {error}")
                continue
            tp = (msg.topic() or "", msg.partition() or 0)
            buffer = self._buffers.get(tp)
            if buffer is None:
                continue
            buffer.append(msg)
            if len(buffer) > MAX_BUFFERED_PER_PARTITION and tp not in self._paused:
                self._consumer.pause([TopicPartition(*tp)])
                self._paused.add(tp)

    def _maybe_resume(self, tp: tuple[str, int]) -> None:
        if tp in self._paused and len(self._buffers[tp]) < MAX_BUFFERED_PER_PARTITION // 2:
            self._consumer.resume([TopicPartition(*tp)])
            self._paused.discard(tp)


__all__ = [
    "JOURNAL_TOPIC_PREFIX",
    "InputFetcher",
    "Journal",
    "JournalEntry",
    "JournalError",
    "JournalHeader",
    "JournalWriter",
    "Snapshot",
    "digest",
    "dump_state",
    "journal_topic",
    "load_state",
    "read_journal",
    "read_journal_header",
    "runs_of",
]
