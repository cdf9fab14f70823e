"""A burst of submissions into the live system (``streamsched bench burst``).

One run, on an embedded Tansu broker of its own:

1. Start the stream processor, the placement agent and ``executors`` CPU executors (each
   with ``slots`` one-CPU slots) as real ``streamsched`` subprocesses.
2. A producer **process** (spawned, so that its memory is its own) produces ``count``
   valid submissions to ``sched.tasks.submitted`` as fast as it can: pre-encoded records,
   ``linger.ms`` 5, ``acks=all``. Each task runs ``true`` (argv, no shell) on an executor.
3. This process follows ``sched.decisions``, ``sched.tasks.events`` and the heartbeats
   from the beginning until every submission has a verdict (and every executor's
   heartbeat lists nothing running, at most :data:`SETTLE_S` more), or nothing new
   arrived for ``idle_timeout_s``, or ``timeout_s`` passed; it samples the resident
   memory of every process each second.

"Nothing lost" means: every submission is accounted for, either **accepted and terminal**
(a ``task.ended`` on ``sched.decisions``) or **rejected with a reason** (a
``task.rejected`` whose ``reason`` is not empty); ``unaccounted`` counts the rest. A task
with ``task.completed`` events of two attempts, or two with different event ids for one
attempt, or two ``task.ended``, counts in ``duplicate_completions`` (as in
:mod:`streamsched.chaos`; ``duplicates`` splits them by kind).

Memory: peak RSS (``VmHWM``) of each process, the broker's included (Tansu keeps every
record in memory and never deletes, so its memory grows with the data by design), plus
the RSS of each component at the end of the burst and a timeline sampled every
:data:`TIMELINE_EVERY_S` seconds.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamsched.benchpipeline import process_cpu_s
from streamsched.broker import EmbeddedBroker, client_config, ensure_topics
from streamsched.chaos import (
    ExecutorSpec,
    Ledger,
    LiveCluster,
    TopicFollower,
    machine_info,
    own_peak_rss_mib,
    view_json,
)
from streamsched.fuzz import peak_rss_mib, proc_status_mib
from streamsched.schemas import codec
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.schemas.topics import (
    CORE_TOPIC_PARTITIONS,
    DECISIONS,
    NODE_HEARTBEATS,
    TASK_EVENTS,
    TASKS_SUBMITTED,
)

#: Seconds between two points of the memory timeline.
TIMELINE_EVERY_S = 5.0
#: After the last verdict, the run goes on until every executor's heartbeat lists nothing
#: running (a stale attempt completing late is still counted), at most this long.
SETTLE_S = 15.0
#: The producer's librdkafka settings (a client under load batches).
PRODUCER_SETTINGS: dict[str, Any] = {"linger.ms": 5, "acks": "all"}


class BurstError(RuntimeError):
    """The run could not be carried out (a component did not start); the message says why."""


@dataclass(frozen=True, slots=True)
class BurstConfig:
    count: int = 100_000
    executors: int = 4
    slots: int = 32
    timeout_s: float = 900.0
    idle_timeout_s: float = 60.0
    #: After the verdicts, wait this long at most for the processor's view (0: do not).
    view_timeout_s: float = 0.0
    run_dir: Path | None = None

    def validate(self) -> None:
        if self.count < 1:
            raise ValueError(f"--count must be at least 1, got {self.count}")
        if self.executors < 1:
            raise ValueError(f"--executors must be at least 1, got {self.executors}")
        if self.slots < 1:
            raise ValueError(f"--slots must be at least 1, got {self.slots}")
        for name in ("timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive number")
        if not (math.isfinite(self.view_timeout_s) and self.view_timeout_s >= 0):
            raise ValueError("--view-timeout-s must be a number >= 0")


@dataclass(slots=True)
class BurstResult:
    config: dict[str, Any]
    machine: dict[str, Any]
    count: int = 0
    produced: int = 0
    produce_s: float = 0.0
    produce_per_s: float = 0.0
    accepted: int = 0
    terminal: int = 0
    rejected: int = 0
    rejected_without_reason: int = 0
    unaccounted: int = 0
    duplicate_completions: int = 0
    states: dict[str, int] = field(default_factory=dict)
    rejection_reasons: dict[str, int] = field(default_factory=dict)
    unaccounted_sample: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    duplicate_sample: list[str] = field(default_factory=list)
    #: Tasks that needed more than one attempt, and the first few with why.
    requeued_tasks: int = 0
    requeue_reasons: dict[str, int] = field(default_factory=dict)
    requeue_sample: dict[str, list[tuple[str, int, str, str]]] = field(default_factory=dict)
    drain_s: float = 0.0
    wall_s: float = 0.0
    end_to_end_per_s: float = 0.0
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    end_rss_mib: dict[str, float] = field(default_factory=dict)
    rss_timeline: list[dict[str, float]] = field(default_factory=list)
    #: With ``view_timeout_s``: when the processor's view showed every submission terminal
    #: (seconds from the start of the burst; None: not within the wait), and the RSS then.
    view_caught_up_s: float | None = None
    view_rss_mib: dict[str, float] = field(default_factory=dict)
    status_view: dict[str, Any] | None = None
    crashes: list[str] = field(default_factory=list)
    crash_logs: dict[str, str] = field(default_factory=dict)
    ended_by: str = ""
    run_dir: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.produced == self.count
            and self.unaccounted == 0
            and self.rejected_without_reason == 0
            and self.duplicate_completions == 0
            and not self.crashes
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def burst_submission_template(run_tag: str) -> tuple[str, str]:
    """A submission encoded once with a placeholder task id (and its timestamp), so the
    producer pays a string replace per record, not a pydantic encode."""
    placeholder = "TASKIDPLACEHOLDER"
    event = TaskSubmitted.model_validate(
        {
            "occurred_at": datetime.now(UTC),
            "source": "burst",
            "task_id": placeholder,
            "idempotency_key": f"{placeholder}.k",
            "tenant": "burst",
            "task_type": "burst-true",
            "resources": {"cpu_milli": 1000, "memory_mib": 16, "allowed_hardware": ["cpu"]},
            "declared_work": {"runtime_s": 0.01},
            "command": ["true"],
            "env": {"BURST_RUN": run_tag},
        }
    )
    text = codec.encode(event).decode()
    check = codec.decode(text.replace(placeholder, "t-check").encode())
    if not isinstance(check, TaskSubmitted) or check.task_id != "t-check":
        raise ValueError("the burst submission template does not round-trip through the codec")
    return text, placeholder


def task_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:07d}" for i in range(count)]


def _producer_main(
    config: dict[str, Any], prefix: str, count: int, template: str, placeholder: str, out: Any
) -> None:  # pragma: no cover - runs in a spawned process
    """Produce ``count`` submissions as fast as possible; report (produced, seconds,
    delivery errors, peak RSS MiB) on ``out``."""
    import resource

    errors = [0]

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors[0] += 1

    producer = Producer({**config, **PRODUCER_SETTINGS})
    topic = TASKS_SUBMITTED
    t0 = time.perf_counter()
    for i in range(count):
        task_id = f"{prefix}{i:07d}"
        value = template.replace(placeholder, task_id).encode()
        while True:
            try:
                producer.produce(topic, value, key=task_id.encode(), on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out.put((count - left - errors[0], seconds, errors[0] + left, rss, time.process_time()))


class _Follower:
    """Verdicts and completions of the burst's tasks, read from the beginning (a lean
    fold: one small record per task, so 100,000 tasks stay cheap here too)."""

    def __init__(self, config: dict[str, Any], prefix: str) -> None:
        self.prefix = prefix
        self.lock = threading.Lock()
        self.verdicts: dict[str, tuple[str, str]] = {}  # task -> (state, reason)
        self.completion: dict[str, tuple[str, int]] = {}  # task -> first (event id, attempt)
        self.verdict_ids: dict[str, str] = {}  # task -> first verdict's event id
        #: Duplicate completions by kind (as in streamsched.chaos): different attempts,
        #: the same attempt twice, two verdicts.
        self.duplicates: dict[str, set[str]] = {
            "attempts": set(),
            "same_attempt": set(),
            "verdicts": set(),
        }
        #: Re-placements (attempt > 1) and lost reports: (type, attempt, node, reason).
        self.requeues: dict[str, list[tuple[str, int, str, str]]] = {}
        self.last_at = time.monotonic()
        #: node -> (arrival of its latest heartbeat, whether it lists running attempts)
        self.beats: dict[str, tuple[float, bool]] = {}
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                **config,
                "group.id": f"streamsched-burst-{os.getpid()}-{time.time_ns()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
            }
        )
        meta = AdminClient(config).list_topics(timeout=15).topics
        self._consumer.assign(
            [
                TopicPartition(t, p, OFFSET_BEGINNING)
                for t in (DECISIONS, TASK_EVENTS, NODE_HEARTBEATS)
                for p in meta[t].partitions
            ]
        )
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="burst-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for msg in self._consumer.consume(num_messages=2000, timeout=0.1):
                    error = msg.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            self.error = str(error)
                        continue
                    self._apply(msg.value() or b"")
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def _apply(self, raw: bytes) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "node.heartbeat":
            running = data.get("running")
            with self.lock:
                self.beats[str(data.get("node_id"))] = (time.monotonic(), bool(running))
            return
        task_id = data.get("task_id")
        if not isinstance(task_id, str) or not task_id.startswith(self.prefix):
            return
        with self.lock:
            if kind == "task.ended":
                if task_id not in self.verdicts:
                    self.last_at = time.monotonic()
                self.verdicts.setdefault(task_id, (str(data["state"]), ""))
                event_id = str(data.get("event_id"))
                if self.verdict_ids.setdefault(task_id, event_id) != event_id:
                    self.duplicates["verdicts"].add(task_id)
            elif kind == "task.rejected":
                if task_id not in self.verdicts:
                    self.last_at = time.monotonic()
                self.verdicts.setdefault(task_id, ("rejected", str(data.get("reason") or "")))
            elif (kind == "decision.audit" and data.get("attempt", 1) > 1) or kind in (
                "task.lost",
                "task.failed",
            ):
                node = str(data.get("chosen_node_id") or data.get("node_id") or "")
                self.requeues.setdefault(task_id, []).append(
                    (str(kind), int(data.get("attempt", 0)), node, str(data.get("reason"))[:200])
                )
            elif kind == "task.completed":
                event_id, attempt = str(data.get("event_id")), int(data.get("attempt", 0))
                first_id, first_attempt = self.completion.setdefault(task_id, (event_id, attempt))
                if first_id != event_id:
                    kind_of = "attempts" if first_attempt != attempt else "same_attempt"
                    self.duplicates[kind_of].add(task_id)

    def quiet_since(self, nodes: list[str], moment: float) -> bool:
        """Every node's latest heartbeat arrived after ``moment`` and lists nothing."""
        with self.lock:
            beats = [self.beats.get(n, (-math.inf, True)) for n in nodes]
        return all(at > moment and not busy for at, busy in beats)

    def verdict_count(self) -> int:
        with self.lock:
            return len(self.verdicts)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def _rss_now(cluster: LiveCluster, broker_pid: int | None) -> dict[str, float]:
    """The current RSS (MiB) of every child process and the broker."""
    pids: dict[str, int | None] = {n: c.process.pid for n, c in cluster.children.items()}
    pids["broker"] = broker_pid
    return {name: round(proc_status_mib(pid, "VmRSS"), 1) for name, pid in pids.items()}


def run_burst(
    cfg: BurstConfig,
    note: Callable[[str], None] = lambda _: None,
    progress: Callable[[dict[str, Any]], None] = lambda _: None,
) -> BurstResult:
    """Run the burst (see the module docstring). Never raises for a broken invariant (read
    :attr:`BurstResult.ok`); ValueError for bad settings, BurstError when the system
    cannot be started."""
    cfg.validate()
    t_wall = time.monotonic()
    run_dir = cfg.run_dir or Path(tempfile.mkdtemp(prefix="streamsched-burst-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    config_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    config_dict["command"] = ["true"]
    result = BurstResult(config=config_dict, machine=machine_info(), count=cfg.count)
    result.run_dir = str(run_dir)
    run_tag = f"b{os.getpid()}"
    prefix = f"burst-{run_tag}-"
    template, placeholder = burst_submission_template(run_tag)
    with EmbeddedBroker() as broker:
        config = client_config(broker.bootstrap_servers)
        ensure_topics(config, CORE_TOPIC_PARTITIONS)
        note(f"broker {broker.bootstrap_servers} (embedded); logs in {run_dir}")
        specs = [ExecutorSpec(f"burst-cpu-{i}", "cpu", cfg.slots) for i in range(cfg.executors)]
        ledger = Ledger()  # only for the readiness check (heartbeats)
        beats = TopicFollower(config, ledger)
        cluster = LiveCluster(broker.bootstrap_servers, run_dir, specs, app_id="burst-processor")
        follower: _Follower | None = None
        try:
            note(f"started processor, placement and {len(specs)} executors; waiting for them")
            try:
                cluster.wait_ready(ledger)
            except Exception as exc:
                raise BurstError(str(exc)) from None
            beats.close()
            follower = _Follower(config, prefix)
            _drive(
                cfg,
                cluster,
                broker.pid,
                follower,
                config,
                prefix,
                template,
                placeholder,
                result,
                note,
                progress,
            )
        finally:
            cluster.stop()
            if follower is not None:
                follower.close()
            with_broker = {**cluster.peak_rss, "broker": peak_rss_mib(broker.pid)}
            result.cpu_s["broker"] = round(process_cpu_s(broker.pid), 2)
        result.peak_rss_mib.update(with_broker)
        result.cpu_s = {**cluster.cpu_s(), **result.cpu_s}
        result.cpu_s["bench (follower)"] = round(time.process_time(), 2)
        result.peak_rss_mib["bench (follower)"] = own_peak_rss_mib()
        result.crashes = list(cluster.crashes)
        result.crash_logs = {n: cluster.children[n].log_tail(3000) for n in cluster.crashes}
        if follower is not None and follower.error is not None:  # its counts are incomplete
            result.crashes.append("bench (follower)")
            result.crash_logs["bench (follower)"] = follower.error
    if follower is not None:
        _tally(result, follower, task_ids(prefix, cfg.count))
    result.wall_s = time.monotonic() - t_wall
    return result


def _drive(
    cfg: BurstConfig,
    cluster: LiveCluster,
    broker_pid: int | None,
    follower: _Follower,
    config: dict[str, Any],
    prefix: str,
    template: str,
    placeholder: str,
    result: BurstResult,
    note: Callable[[str], None],
    progress: Callable[[dict[str, Any]], None],
) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    producer = ctx.Process(
        target=_producer_main,
        args=(config, prefix, cfg.count, template, placeholder, out),
        daemon=True,
    )
    note(f"producing {cfg.count:,} submissions at once")
    t0 = time.monotonic()
    producer.start()
    producer_peak = 0.0
    produced: tuple[int, float, int, float, float] | None = None
    last_timeline = -math.inf
    deadline = t0 + cfg.timeout_s
    while True:
        now = time.monotonic()
        if produced is None:
            producer_peak = max(producer_peak, peak_rss_mib(producer.pid))
            if not out.empty():
                produced = out.get()
                result.produced, result.produce_s = produced[0], produced[1]
                result.produce_per_s = produced[0] / max(produced[1], 1e-9)
                producer_peak = max(producer_peak, produced[3])
                result.cpu_s["producer"] = round(produced[4], 2)
                note(
                    f"produced {produced[0]:,} in {produced[1]:.1f} s "
                    f"({result.produce_per_s:,.0f}/s), {produced[2]} not delivered"
                )
            elif not producer.is_alive():
                raise BurstError(f"the producer process exited with code {producer.exitcode}")
        cluster.sample_rss()
        for name in cluster.check():
            note(f"{name} exited on its own (exit {cluster.children[name].process.returncode})")
        done = follower.verdict_count()
        if now - last_timeline >= TIMELINE_EVERY_S:
            last_timeline = now
            point = {"t_s": round(now - t0, 1), "verdicts": float(done)}
            point.update(_rss_now(cluster, broker_pid))
            result.rss_timeline.append(point)
            progress(
                {
                    "elapsed_s": now - t0,
                    "verdicts": done,
                    "count": cfg.count,
                    "produced": result.produced,
                }
            )
        if produced is not None and done >= cfg.count:
            nodes = list(cluster.specs)
            if follower.quiet_since(nodes, follower.last_at) or now - follower.last_at > SETTLE_S:
                result.ended_by = "every submission has a verdict"
                break
        if produced is not None and now - follower.last_at > cfg.idle_timeout_s:
            result.ended_by = f"no new verdict for {cfg.idle_timeout_s:g} s (idle timeout)"
            break
        if now > deadline:
            result.ended_by = f"timeout ({cfg.timeout_s:g} s)"
            break
        time.sleep(0.5)
    result.drain_s = time.monotonic() - t0
    result.end_to_end_per_s = follower.verdict_count() / max(result.drain_s, 1e-9)
    result.end_rss_mib.update(_rss_now(cluster, broker_pid))
    result.peak_rss_mib["producer"] = producer_peak
    producer.join(10)
    summary = view_json(cluster.status_url, "/summary", timeout_s=30.0)
    if isinstance(summary, dict):
        result.status_view = {"tasks": summary.get("tasks"), "per_state": summary.get("per_state")}
    if cfg.view_timeout_s > 0:
        _wait_for_view(cfg, cluster, broker_pid, result, t0, note)


def _view_terminal(summary: Any) -> int:
    if not isinstance(summary, dict):
        return -1
    per_state = summary.get("per_state") or {}
    return sum(int(per_state.get(s, 0)) for s in ("succeeded", "failed", "cancelled", "rejected"))


def _wait_for_view(
    cfg: BurstConfig,
    cluster: LiveCluster,
    broker_pid: int | None,
    result: BurstResult,
    t0: float,
    note: Callable[[str], None],
) -> None:
    """Until the processor's status view shows every submission terminal (it runs behind
    the placement agent under a burst), sampling memory on the way; its figures go to
    ``view_caught_up_s`` (from the start of the burst, None if it did not) and
    ``view_rss_mib`` (each process's RSS then)."""
    note(f"waiting up to {cfg.view_timeout_s:g} s for the processor's status view")
    deadline = time.monotonic() + cfg.view_timeout_s
    last_timeline = time.monotonic()
    summary: Any = None
    while time.monotonic() < deadline:
        cluster.sample_rss()
        summary = view_json(cluster.status_url, "/summary", timeout_s=30.0)
        if _view_terminal(summary) >= cfg.count:
            result.view_caught_up_s = round(time.monotonic() - t0, 1)
            break
        if time.monotonic() - last_timeline >= TIMELINE_EVERY_S:
            last_timeline = time.monotonic()
            point = {"t_s": round(last_timeline - t0, 1), "view_terminal": _view_terminal(summary)}
            point.update(_rss_now(cluster, broker_pid))
            result.rss_timeline.append(point)
            note(f"status view: {max(0, point['view_terminal']):,} of {cfg.count:,} terminal")
        time.sleep(2.0)
    cluster.sample_rss()
    result.view_rss_mib = _rss_now(cluster, broker_pid)
    if isinstance(summary, dict):
        result.status_view = {"tasks": summary.get("tasks"), "per_state": summary.get("per_state")}


def _tally(result: BurstResult, follower: _Follower, expected: list[str]) -> None:
    with follower.lock:
        verdicts = dict(follower.verdicts)
        duplicated = set().union(*follower.duplicates.values())
        result.duplicate_completions = len(duplicated)
        result.duplicates = {k: len(v) for k, v in follower.duplicates.items()}
        result.duplicate_sample = sorted(duplicated)[:20]
        requeues = dict(follower.requeues)
    result.requeued_tasks = len(requeues)
    result.requeue_sample = {t: requeues[t] for t in sorted(requeues)[:5]}
    result.requeue_reasons = dict(
        Counter(_shape(r[3]) for events in requeues.values() for r in events).most_common(10)
    )
    states: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    missing = []
    for task_id in expected:
        verdict = verdicts.get(task_id)
        if verdict is None:
            missing.append(task_id)
            continue
        state, reason = verdict
        states[state] += 1
        if state == "rejected":
            result.rejected += 1
            reasons[_shape(reason)] += 1
            result.rejected_without_reason += not reason.strip()
    result.terminal = len(expected) - len(missing) - result.rejected
    result.accepted = len(expected) - result.rejected
    result.unaccounted = len(missing)
    result.unaccounted_sample = missing[:20]
    result.states = dict(states)
    result.rejection_reasons = dict(reasons.most_common(10))


def _shape(reason: str) -> str:
    """A reason with its numbers and quoted names replaced, to count reasons by kind."""
    return re.sub(r"'[^']*'", "'...'", re.sub(r"\d+(\.\d+)?", "N", reason))[:160]


__all__ = ["BurstConfig", "BurstError", "BurstResult", "run_burst"]
