"""``streamsched bench pipeline``: the live pipeline's latency and throughput on a broker.

One run measures, against ``KAFKA_BOOTSTRAP_SERVERS`` or else an embedded Tansu broker:

1. **Raw broker round trip**: the bench produces a small record, an echo process reads it
   and produces it back, the bench reads the echo. Sequential, p50/p99 over ``pings``.
2. **Pipeline latency and throughput** at each offered rate: submissions are produced at
   a fixed rate to ``sched.tasks.submitted``; a placement agent places them on ``nodes``
   fake CPU nodes (registered by heartbeats the bench sends); latency runs from the
   ``produce()`` of a submission to the bench reading its assignment on
   ``sched.assignments.cpu``. Both ends are timed in the bench process with one monotonic
   clock (no clock is compared across processes). The bench answers every assignment with
   ``task.completed`` at once, so capacity frees and no task ever queues for capacity
   (tasks need 1 milli-CPU and no memory as well): the figure is the pipeline, not
   queueing. Rates rise until one achieves less than 90% of what was offered.

The placement agent and the echo run in **subprocesses** (``multiprocessing`` spawn), not
threads of the bench: the bench's own work (producing at 4000/s, decoding assignments,
answering them) would otherwise compete with the agent for one GIL, and the figure we
want is that of one placement *process*. The agent reports where its time goes
(:class:`~streamsched.agents.placement.LoopTimings`) through a queue.

Run it on the embedded broker or an idle cluster: the bench's fake nodes and tasks are
ordinary records on the core topics (its tasks are tagged ``bench_run=<id>`` so that only
its own nodes take them), and the bench agent uses its own consumer group.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from streamsched.agents.partitioning import ASSIGNMENT_PARTITIONS
from streamsched.agents.placement import CONSUMER_TUNING, PRODUCER_TUNING
from streamsched.benchcore import machine_info as core_machine_info
from streamsched.broker import EmbeddedBroker, client_config, ensure_topics
from streamsched.schemas import codec
from streamsched.schemas.hardware import assignment_topic
from streamsched.schemas.lifecycle import TaskCompleted
from streamsched.schemas.nodes import NodeHeartbeat
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.schemas.topics import NODE_HEARTBEATS, TASK_EVENTS, TASKS_SUBMITTED
from streamsched.settings import KafkaSettings, kafka_settings

#: Set to a file path, the agent process writes a cProfile of its loop there on exit.
PROFILE_ENV = "STREAMSCHED_BENCH_PROFILE"
#: Hardware class of the fake nodes.
HARDWARE = "cpu"
#: Rates stop rising once the achieved rate falls below this share of the offered one.
KEEP_UP_SHARE = 0.9
#: Targets from the issue (reported, never asserted).
TARGET_RATIO = 5.0
TARGET_RATE = 1000
TARGET_THROUGHPUT = 2000.0
#: The fake nodes heartbeat this often (the agent loses a node after 15 s of silence).
HEARTBEAT_EVERY_S = 2.0
#: Longest wait for the agent to place its first task (spawn + start + topic creation).
READY_TIMEOUT_S = 90.0
#: Per bench-side wait for records of the raw round trip.
ECHO_TIMEOUT_S = 10.0
#: The submitting client's producer: it lingers 1 ms so that records sent together share a
#: request, as a client library under load would (the embedded broker spends about as much
#: CPU per request as per record: with linger 0 it saturated a core at 500 submissions/s
#: on the 2-core test machine). The linger counts against the pipeline's latency; the raw
#: round trip is measured without it (the stricter baseline).
CLIENT_PRODUCER: dict[str, Any] = {"linger.ms": 1}
#: The raw round trip's producer: one record at a time, sent at once.
PING_PRODUCER: dict[str, Any] = {"linger.ms": 0}


class BenchError(RuntimeError):
    """The benchmark could not run (broker, agent or echo failed); the message says where."""


# ============================================================================ figures
def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100, nearest rank) of ``samples``; nan if empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency figures in milliseconds over ``count`` samples."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, samples_s: list[float]) -> Latency:
        if not samples_s:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        ms = [1000.0 * s for s in samples_s]
        return cls(len(ms), percentile(ms, 50), percentile(ms, 99), max(ms), sum(ms) / len(ms))


@dataclass(slots=True)
class RatePoint:
    """The pipeline at one offered rate."""

    offered_per_s: float
    duration_s: float
    submitted: int
    assigned: int
    #: Assignments seen / max(duration, time from the first submission to the last
    #: assignment seen).
    achieved_per_s: float
    latency: Latency
    #: Agent time per batch and shares of the wall time (from its LoopTimings).
    agent: dict[str, float] = field(default_factory=dict)
    #: CPU used by the agent, the bench, the broker (embedded only) and the whole machine
    #: (other users included), in cores.
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def kept_up(self) -> bool:
        return self.assigned == self.submitted and (
            self.achieved_per_s >= KEEP_UP_SHARE * self.offered_per_s
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kept_up"] = self.kept_up
        return data


@dataclass(slots=True)
class PipelineResult:
    machine: dict[str, Any]
    config: dict[str, Any]
    raw: Latency
    points: list[RatePoint]

    def point_at(self, rate: float) -> RatePoint | None:
        return next((p for p in self.points if p.offered_per_s == rate), None)

    def ratio_point(self) -> RatePoint | None:
        """The point the p99 ratio is quoted at: 1000/s if measured, else the lowest rate."""
        return self.point_at(TARGET_RATE) or (self.points[0] if self.points else None)

    def ratio(self) -> float:
        point = self.ratio_point()
        if point is None or not self.raw.p99_ms > 0:
            return math.nan
        return point.latency.p99_ms / self.raw.p99_ms

    def sustained_per_s(self) -> float:
        """The highest achieved rate among the points that kept up (0 if none did)."""
        return max((p.achieved_per_s for p in self.points if p.kept_up), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        point = self.ratio_point()
        return {
            "machine": self.machine,
            "config": self.config,
            "raw_round_trip": asdict(self.raw),
            "points": [p.to_dict() for p in self.points],
            "ratio": {
                "rate_per_s": point.offered_per_s if point else None,
                "pipeline_p99_over_raw_p99": self.ratio(),
                "target": TARGET_RATIO,
            },
            "sustained_per_s": self.sustained_per_s(),
            "targets": {
                "ratio_at_1000_per_s_at_most": TARGET_RATIO,
                "sustained_per_s_at_least": TARGET_THROUGHPUT,
            },
        }


# ============================================================================ records
class Templates:
    """Pre-encoded submission and completion records with placeholders, so that the bench
    spends microseconds, not a pydantic encode, per record. :meth:`check` decodes one of
    each with the real codec, so a template that drifts from the schema fails loudly."""

    _TID = "TIDPLACEHOLDER"
    _EID = "EIDPLACEHOLDER"
    _NID = "NIDPLACEHOLDER"
    _ATTEMPT = 987654321
    _AT = datetime(2000, 1, 1, tzinfo=UTC)

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        submission = TaskSubmitted(
            event_id=self._EID,
            occurred_at=self._AT,
            source="bench",
            task_id=self._TID,
            idempotency_key=self._EID,
            tenant="bench",
            task_type="bench-noop",
            resources={"cpu_milli": 1, "memory_mib": 0, "allowed_hardware": [HARDWARE]},
            governance={"bench_run": run_id},
            command=("true",),
        )
        completed = TaskCompleted(
            event_id=self._EID,
            occurred_at=self._AT,
            source="bench",
            task_id=self._TID,
            attempt=self._ATTEMPT,
            node_id=self._NID,
            runtime_s=0.001,
        )
        self._submission = codec.encode(submission).decode()
        self._completed = codec.encode(completed).decode()
        self._at = json.loads(self._submission)["occurred_at"]

    @staticmethod
    def _now() -> str:
        return datetime.now(UTC).isoformat().replace("+00:00", "Z")

    def submission(self, task_id: str) -> bytes:
        text = self._submission.replace(self._TID, task_id).replace(self._EID, f"{task_id}.s")
        return text.replace(self._at, self._now()).encode()

    def completed(self, task_id: str, attempt: int, node_id: str) -> bytes:
        text = self._completed.replace(self._TID, task_id).replace(self._NID, node_id)
        text = text.replace(self._EID, f"{task_id}.c{attempt}")
        text = text.replace(str(self._ATTEMPT), str(attempt))
        return text.replace(self._at, self._now()).encode()

    def check(self) -> None:
        """ValueError if a generated record does not decode to what it should."""
        sub = codec.decode(self.submission("t-check"))
        done = codec.decode(self.completed("t-check", 3, "n-check"))
        if not (
            isinstance(sub, TaskSubmitted)
            and sub.task_id == "t-check"
            and sub.governance.get("bench_run") == self.run_id
            and isinstance(done, TaskCompleted)
            and (done.task_id, done.attempt, done.node_id) == ("t-check", 3, "n-check")
        ):
            raise ValueError("bench record templates do not round-trip through the codec")


def heartbeat(node_id: str, run_id: str, sequence: int) -> bytes:
    """A heartbeat of a fake node with room for 64,000 one-milli-CPU tasks at a time."""
    capacity = {"cpu_milli": 64_000, "memory_mib": 256 * 1024, "gpus": 0}
    return codec.encode(
        NodeHeartbeat(
            occurred_at=datetime.now(UTC),
            source="bench",
            node_id=node_id,
            hardware=HARDWARE,
            capacity=capacity,
            usage={"cpu_milli": 0, "memory_mib": 0, "gpus": 0},
            labels={"bench_run": run_id},
            sequence=sequence,
        )
    )


# ============================================================================ subprocesses
def _agent_main(
    config: dict[str, Any], run_id: str, commands: Any, replies: Any, journal: bool = True
) -> None:  # pragma: no cover - runs in a spawned process
    """The placement agent of the bench. ``commands``: "snapshot" (reply with the loop
    timings and the process CPU time) or "stop"."""
    from streamsched.agents.placement import PlacementAgent

    agent = PlacementAgent(
        config,
        decision_prefix=f"bench-{run_id}",
        group_id=f"streamsched-bench-{run_id}",
        start_at_end=True,
        journal=journal,
    )
    stop = threading.Event()

    def serve() -> None:
        while True:
            command = commands.get()
            if command == "snapshot":
                snap = agent.timings.to_dict()
                snap["cpu_s"] = time.process_time()
                snap["submissions_kept"] = len(agent.submissions)
                replies.put(snap)
            else:
                stop.set()
                return

    threading.Thread(target=serve, daemon=True).start()
    profile_to = os.environ.get(PROFILE_ENV)
    try:
        if profile_to:
            import cProfile

            cProfile.runctx(
                "agent.run(stop)", globals(), {"agent": agent, "stop": stop}, profile_to
            )
        else:
            agent.run(stop)
    except Exception as exc:
        replies.put({"error": f"{type(exc).__name__}: {exc}"})


def _echo_main(
    config: dict[str, Any], ping: str, pong: str, stop: Any
) -> None:  # pragma: no cover - runs in a spawned process
    """Echo every record of ``ping`` to ``pong`` (poll, produce, flush: like the agent)."""
    consumer = Consumer({**CONSUMER_TUNING, **config, "group.id": f"echo-{ping}"})
    consumer.assign([TopicPartition(ping, 0, OFFSET_BEGINNING)])
    producer = Producer({**PRODUCER_TUNING, **config, "acks": "all"})
    try:
        while not stop.is_set():
            msg = consumer.poll(0.1)
            if msg is None or msg.error() is not None:
                continue
            producer.produce(pong, msg.value() or b"")
            producer.flush(10)
    finally:
        consumer.close()


# ============================================================================ the bench
@dataclass(slots=True)
class _Conn:
    config: dict[str, Any]
    producer: Producer
    run_id: str
    broker_pid: int | None


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by process ``pid``; nan if unknown (no
    /proc, or an external broker)."""
    if pid is None:
        return math.nan
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores; nans without
    /proc/stat. Busy includes other users of the machine."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan, math.nan
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def _cpu_snapshot(broker_pid: int | None) -> dict[str, float]:
    busy, total = machine_cpu_s()
    return {
        "bench": time.process_time(),
        "broker": process_cpu_s(broker_pid),
        "machine_busy": busy,
        "machine_total": total,
    }


def _cpu_profile(
    before: dict[str, float], after: dict[str, float], agent_cpu_s: float, wall_s: float
) -> dict[str, float]:
    """CPU used per process over a point, in cores (1.0 = one core busy all the time)."""
    cores = {
        "agent_cores": agent_cpu_s / wall_s,
        "bench_cores": (after["bench"] - before["bench"]) / wall_s,
        "broker_cores": (after["broker"] - before["broker"]) / wall_s,
    }
    total = after["machine_total"] - before["machine_total"]
    busy = after["machine_busy"] - before["machine_busy"]
    cpus = os.cpu_count() or 1
    cores["machine_busy_cores"] = cpus * busy / total if total > 0 else math.nan
    known = sum(v for v in cores.values() if math.isfinite(v)) - cores["machine_busy_cores"]
    cores["other_cores"] = cores["machine_busy_cores"] - known
    return cores


def _consumer_at_end(config: Mapping[str, Any], topic: str) -> Consumer:
    """A consumer of every partition of ``topic`` from its current end."""
    consumer = Consumer({**CONSUMER_TUNING, **config, "group.id": f"bench-{uuid.uuid4().hex}"})
    meta = AdminClient(dict(config)).list_topics(topic, timeout=15).topics[topic]
    tps = []
    for p in sorted(meta.partitions):
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
        tps.append(TopicPartition(topic, p, high))
    consumer.assign(tps)
    return consumer


def _records(consumer: Consumer, timeout_s: float) -> list[Message]:
    """Block up to ``timeout_s`` for one record, then take what is already fetched."""
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [m for m in [first, *consumer.consume(num_messages=2000, timeout=0)] if not m.error()]


def raw_round_trip(config: dict[str, Any], run_id: str, pings: int) -> Latency:
    """Sequential produce -> echo process -> read-back round trips."""
    ping, pong = f"streamsched-bench-{run_id}-ping", f"streamsched-bench-{run_id}-pong"
    ensure_topics(config, {ping: 1, pong: 1})
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    echo = ctx.Process(target=_echo_main, args=(config, ping, pong, stop), daemon=True)
    echo.start()
    producer = Producer({**PING_PRODUCER, **config, "acks": "all"})
    consumer = Consumer({**CONSUMER_TUNING, **config, "group.id": f"bench-{run_id}-pong"})
    consumer.assign([TopicPartition(pong, 0, OFFSET_BEGINNING)])
    samples: list[float] = []
    try:
        for i in range(-20, pings):  # the first 20 warm up (and wait for the echo to start)
            value = str(i).encode()
            t0 = time.perf_counter()
            producer.produce(ping, value)
            producer.poll(0)
            deadline = t0 + (READY_TIMEOUT_S if i == -20 else ECHO_TIMEOUT_S)
            while True:
                msg = consumer.poll(0.5)
                if msg is not None and not msg.error() and msg.value() == value:
                    break
                if time.perf_counter() > deadline or not echo.is_alive():
                    raise BenchError(f"raw round trip: no echo of record {i} (echo process)")
            if i >= 0:
                samples.append(time.perf_counter() - t0)
    finally:
        stop.set()
        consumer.close()
        producer.flush(5)
        echo.join(10)
        if echo.is_alive():
            echo.terminate()
        _delete_topics(config, [ping, pong])
    return Latency.of(samples)


def _delete_topics(config: Mapping[str, Any], names: list[str]) -> None:
    with suppress(Exception):  # best effort: the embedded broker is gone after the run anyway
        for future in AdminClient(dict(config)).delete_topics(names).values():
            future.result(timeout=10)


class _AgentProcess:
    """The placement agent in a spawned process, with snapshots of its loop timings."""

    def __init__(self, config: dict[str, Any], run_id: str, journal: bool = True) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._commands = ctx.Queue()
        self._replies = ctx.Queue()
        self.process = ctx.Process(
            target=_agent_main,
            args=(config, run_id, self._commands, self._replies, journal),
            daemon=True,
        )
        self.process.start()

    def snapshot(self) -> dict[str, float]:
        self._commands.put("snapshot")
        try:
            reply: dict[str, Any] = self._replies.get(timeout=30)
        except queue.Empty:
            raise BenchError("the placement agent process does not answer") from None
        if "error" in reply:
            raise BenchError(f"placement agent: {reply['error']}")
        return reply

    def stop(self) -> None:
        with suppress(Exception):
            self._commands.put("stop")
        self.process.join(20)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


class _Driver:
    """Produces submissions and heartbeats, reads assignments, answers with completions."""

    def __init__(self, conn: _Conn, nodes: int, agent: _AgentProcess) -> None:
        self.conn = conn
        self.agent = agent
        self.templates = Templates(conn.run_id)
        self.templates.check()
        self.nodes = [f"bench-{conn.run_id}-n{i}" for i in range(nodes)]
        self.sequence = 0
        self.next_heartbeat = 0.0
        self.seq = 0
        topic = assignment_topic(HARDWARE)
        ensure_topics(conn.config, {topic: ASSIGNMENT_PARTITIONS})
        self.assignments = _consumer_at_end(conn.config, topic)

    def close(self) -> None:
        self.assignments.close()

    def heartbeats(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next_heartbeat:
            return
        self.next_heartbeat = now + HEARTBEAT_EVERY_S
        self.sequence += 1
        for node_id in self.nodes:
            value = heartbeat(node_id, self.conn.run_id, self.sequence)
            self._produce(NODE_HEARTBEATS, node_id, value)

    def _produce(self, topic: str, key: str, value: bytes) -> None:
        producer = self.conn.producer
        while True:
            try:
                producer.produce(topic, value, key=key.encode())
                return
            except BufferError:
                producer.poll(0.05)

    def submit(self, task_id: str) -> None:
        self._produce(TASKS_SUBMITTED, task_id, self.templates.submission(task_id))

    def read(self, timeout_s: float, on_assigned: Callable[[str, float], None]) -> None:
        """Read assignments for up to ``timeout_s``; complete each at once and report
        ``on_assigned(task_id, seen_at)`` for first attempts."""
        msgs = _records(self.assignments, timeout_s)
        if not msgs:
            return
        seen_at = time.perf_counter()
        for msg in msgs:
            data = json.loads(msg.value() or b"{}")
            if data.get("type") != "task.assigned":
                continue
            task_id, attempt, node_id = data["task_id"], data["attempt"], data["node_id"]
            self._produce(TASK_EVENTS, task_id, self.templates.completed(task_id, attempt, node_id))
            on_assigned(task_id, seen_at)
        self.conn.producer.poll(0)

    def wait_ready(self) -> None:
        """Until the agent places a probe task (nodes registered, topics in place)."""
        ready: list[str] = []
        deadline = time.monotonic() + READY_TIMEOUT_S
        probe = 0
        while not ready:
            if time.monotonic() > deadline or not self.agent.process.is_alive():
                raise BenchError(f"the placement agent placed no task within {READY_TIMEOUT_S:g} s")
            self.heartbeats(force=True)
            probe += 1
            self.submit(f"bench-{self.conn.run_id}-probe{probe}")
            self.conn.producer.flush(10)
            until = time.monotonic() + 0.5
            while not ready and time.monotonic() < until:
                self.read(0.1, lambda task_id, _: ready.append(task_id))

    def run_rate(self, rate: float, duration_s: float, drain_s: float) -> RatePoint:
        """Offer ``rate`` submissions/s for ``duration_s``; wait up to ``drain_s`` more for
        the last assignments."""
        total = max(1, round(rate * duration_s))
        prefix = f"bench-{self.conn.run_id}-r{self.seq}-"
        self.seq += 1
        sent_at: dict[str, float] = {}
        latencies: list[float] = []
        last_seen = 0.0

        def on_assigned(task_id: str, seen_at: float) -> None:
            nonlocal last_seen
            start = sent_at.pop(task_id, None)
            if start is not None:
                latencies.append(seen_at - start)
                last_seen = seen_at

        before = self.agent.snapshot()
        cpu_before = _cpu_snapshot(self.conn.broker_pid)
        start = time.perf_counter()
        sent = 0
        end = start + duration_s + drain_s
        while True:
            now = time.perf_counter()
            due = min(total, int((now - start) * rate) + 1)
            while sent < due:
                task_id = f"{prefix}{sent}"
                sent_at[task_id] = time.perf_counter()
                self.submit(task_id)
                sent += 1
            self.conn.producer.poll(0)
            self.heartbeats()
            if sent >= total and not sent_at:
                break
            if now > end:
                break
            wait = (start + sent / rate - now) if sent < total else 0.05
            self.read(min(0.05, max(0.001, wait)), on_assigned)
        after = self.agent.snapshot()
        cpu_after = _cpu_snapshot(self.conn.broker_pid)
        elapsed = time.perf_counter() - start
        wall = max(duration_s, (last_seen or time.perf_counter()) - start)
        return RatePoint(
            offered_per_s=rate,
            duration_s=duration_s,
            submitted=total,
            assigned=len(latencies),
            achieved_per_s=len(latencies) / wall,
            latency=Latency.of(latencies),
            agent=_agent_profile(before, after, elapsed),
            cpu=_cpu_profile(cpu_before, cpu_after, after["cpu_s"] - before["cpu_s"], elapsed),
        )


def _agent_profile(
    before: dict[str, float], after: dict[str, float], wall_s: float
) -> dict[str, float]:
    """Per-batch agent costs (ms) and shares of the wall time, between two snapshots."""
    d = {k: after[k] - before[k] for k in after if isinstance(after[k], int | float)}
    batches = max(1.0, d["batches"])
    profile = {
        "batches": d["batches"],
        "records": d["records"],
        "records_per_batch": d["records"] / batches,
        "cpu_share": d["cpu_s"] / wall_s if wall_s > 0 else math.nan,
        "submissions_kept": after.get("submissions_kept", math.nan),
    }
    for part in ("decode", "core", "publish", "flush", "commit"):
        profile[f"{part}_ms_per_batch"] = 1000.0 * d[f"{part}_s"] / batches
        profile[f"{part}_share"] = d[f"{part}_s"] / wall_s if wall_s > 0 else math.nan
    return profile


@contextmanager
def _bootstrap(settings: KafkaSettings) -> Iterator[tuple[str, str, int | None]]:
    """(bootstrap servers, broker kind, broker pid if local): the configured cluster, or
    an embedded broker."""
    if settings.bootstrap_servers:
        yield settings.bootstrap_servers, "external (KAFKA_BOOTSTRAP_SERVERS)", None
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers, "embedded Tansu", broker.pid


def machine_info(broker: str) -> dict[str, Any]:
    info = core_machine_info()
    info["broker"] = broker
    info["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return info


def run_pipeline_bench(
    rates: list[int],
    duration_s: float = 10.0,
    nodes: int = 64,
    pings: int = 2000,
    settings: KafkaSettings | None = None,
    on_point: Callable[[RatePoint], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    journal: bool = True,
) -> PipelineResult:
    """Run the whole benchmark (see the module docstring); ``journal`` runs the agent with
    its journal (the default, as deployed) or without. ValueError for bad arguments;
    BenchError when the broker, the agent or the echo fails."""
    if not rates or any(r <= 0 for r in rates):
        raise ValueError(f"rates must be positive, got {rates}")
    if not duration_s > 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    if nodes < 1 or pings < 1:
        raise ValueError(f"nodes and pings must be at least 1, got {nodes} and {pings}")
    stage = on_stage or (lambda _: None)
    settings = settings or kafka_settings()
    run_id = uuid.uuid4().hex[:8]
    with _bootstrap(settings) as (servers, kind, broker_pid):
        config = client_config(servers, settings)
        info = machine_info(kind)
        stage("raw round trip")
        try:
            raw = raw_round_trip(config, run_id, pings)
            conn = _Conn(
                config, Producer({**CLIENT_PRODUCER, **config, "acks": "all"}), run_id, broker_pid
            )
            points = _pipeline(conn, sorted(rates), duration_s, nodes, stage, on_point, journal)
        except KafkaException as exc:
            raise BenchError(f"broker {servers}: {exc}") from None
    bench_config = {
        "rates": sorted(rates),
        "duration_s": duration_s,
        "nodes": nodes,
        "pings": pings,
        "journal": journal,
        "agent": "subprocess (multiprocessing spawn), policy forecast",
        "latency": "produce() of the submission to the bench reading its assignment",
    }
    return PipelineResult(info, bench_config, raw, points)


def _pipeline(
    conn: _Conn,
    rates: list[int],
    duration_s: float,
    nodes: int,
    stage: Callable[[str], None],
    on_point: Callable[[RatePoint], None] | None,
    journal: bool = True,
) -> list[RatePoint]:
    stage("starting the placement agent")
    agent = _AgentProcess(conn.config, conn.run_id, journal)
    driver: _Driver | None = None
    points: list[RatePoint] = []
    try:
        driver = _Driver(conn, nodes, agent)
        driver.wait_ready()
        stage("warm-up")
        driver.run_rate(min(rates[0], 500), 1.0, 5.0)
        for rate in rates:
            stage(f"{rate}/s for {duration_s:g} s")
            point = driver.run_rate(float(rate), duration_s, max(5.0, duration_s))
            points.append(point)
            if on_point is not None:
                on_point(point)
            if not point.kept_up:
                break
    finally:
        if driver is not None:
            driver.close()
        conn.producer.flush(5)
        agent.stop()
    return points


__all__ = [
    "BenchError",
    "Latency",
    "PipelineResult",
    "RatePoint",
    "Templates",
    "percentile",
    "run_pipeline_bench",
]
