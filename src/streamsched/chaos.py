"""Fault injection on the live system (``streamsched chaos``).

One run, always on an embedded Tansu broker of its own (it kills processes: never point it
at a shared cluster):

1. Start the stream processor, the placement agent and ``executors`` executor agents as
   real ``streamsched`` subprocesses (as ``streamsched up`` does), on a few hardware
   classes (``cpu``, ``gpu-v100``, ``gpu-k80`` in turn), each with ``slots`` slots.
2. Submit ``tasks`` short tasks at a steady wall-clock rate; each runs a real command
   (default ``sleep 0.2``, argv, no shell) on an executor.
3. While they run, inject faults at evenly spaced times over the first 80% of the
   submission window, the kinds in a seeded random order (a fault does not wait for the
   previous one to recover, so a recovery may include a later fault's effect):

   - SIGKILL a random executor, start it again after ``restart_delay_s`` with the same
     node id and log directory (it reconciles through its journal);
   - SIGKILL the processor and start it again at once (same app id);
   - SIGKILL the placement agent and start it again at once (same decision prefix, so it
     finds its own journal topic if it keeps one).

4. Read ``sched.decisions``, ``sched.tasks.events`` and ``sched.nodes.heartbeats`` from the
   beginning with a consumer of its own, until every task is terminal and every executor's
   latest heartbeat lists nothing running (at most :data:`SETTLE_S` more: a stale attempt
   that completes late still counts), or the timeout.

Definitions (all counted from the topics, never from a component's own report):

- **terminal**: tasks with a ``task.ended`` (succeeded, failed or cancelled) or a
  ``task.rejected`` on ``sched.decisions``: the scheduler's verdict.
- **lost**: submitted tasks without such a verdict when the run ends (the timeout, or no
  verdict for ``idle_timeout_s`` once every fault is over). ``lost == tasks - terminal``;
  the report splits them into ``lost_never_placed`` (no decision audit at all) and
  ``lost_after_placement``.
- **duplicate_completions**: tasks whose work completed more than once, any of:
  ``task.completed`` events of two or more different attempts (the command ran to success
  twice, even if the scheduler fenced the second: a stale attempt's result is recorded but
  never changes the outcome, yet the job *ran* twice); two ``task.completed`` with
  different event ids for the same attempt (the executor ran or reported one attempt
  twice); two ``task.ended`` with different event ids (two verdicts). Harmless, and not
  counted: a record whose event id was already seen (a producer retry, a replayed input,
  outputs a restarted placement agent re-emits from its journal), counted in
  ``redelivered_events``; and end events of attempts that had already ended (e.g. the
  ``task.lost`` an executor killed between reporting and journaling sends on restart),
  counted in ``stale_attempt_events``. ``duplicate_histories`` and ``lost_histories``
  list every record of the first few such tasks, as evidence.
- **recovery** (per fault, seconds from the SIGKILL, on this process's monotonic clock, as
  the records arrive here):

  - executor kill: until every attempt that was in flight on the node at the kill (placed
    there, no end event yet) is settled again (a later attempt of its task placed, or the
    task ended) and the restarted executor is heard from again (its first heartbeat);
  - processor restart: until the new processor's status view answers and counts at least
    as many terminal tasks as the topics had shown at the kill (it caught up past the
    fault); the view merely answering is recorded as ``view_answering_s``;
  - placement restart: until the first verdict (``task.ended``) not seen before arrives,
    at least :data:`NEW_PROCESS_GUARD_S` after the new agent was started (so it is the new
    agent's: a verdict the old one made and the new one republishes from its journal has
    the same event id and does not count). The agent restarts with the same decision
    prefix, as an operator restarting it would (its journal topic is named after it).

  ``max_recovery_s`` is the largest of them; a fault that never recovered is listed in
  ``unrecovered_faults`` (and makes ``max_recovery_s`` null).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import resource
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamsched.benchpipeline import process_cpu_s
from streamsched.broker import EmbeddedBroker, client_config, ensure_topics, free_port
from streamsched.fuzz import peak_rss_mib
from streamsched.schemas import codec
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.schemas.topics import (
    CORE_TOPIC_PARTITIONS,
    DECISIONS,
    NODE_HEARTBEATS,
    TASK_EVENTS,
    TASKS_SUBMITTED,
)
from streamsched.up.processes import Child, stop_all, streamsched_argv

#: Hardware classes of the executors, in turn.
HARDWARE_CLASSES = ("cpu", "gpu-v100", "gpu-k80")
#: GPU tasks may run on either GPU class.
GPU_CLASSES = ("gpu-v100", "gpu-k80")
#: Default submission window: at least this long per fault (recoveries take a few s).
SECONDS_PER_FAULT = 6.0
#: Seconds between executor heartbeats (the placement agent loses a node after 15 s).
HEARTBEAT_S = 1.0
#: How long the processor's status view and the executors' first heartbeats may take.
STARTUP_TIMEOUT_S = 120.0
#: A record that arrives this soon after a restart is still the old process's (Python
#: alone takes longer to start here): placement recovery counts the first new verdict after.
NEW_PROCESS_GUARD_S = 1.0
#: Once every task is terminal, the run goes on until every executor's heartbeat lists
#: nothing running (a stale attempt may still complete late, and would be a duplicate),
#: at most this long.
SETTLE_S = 15.0
#: Records of an attempt's end (its first one settles the attempt).
TERMINAL_STATES = ("succeeded", "failed", "cancelled", "rejected")
ATTEMPT_END_TYPES = frozenset(
    {"task.completed", "task.failed", "task.lost", "task.cancelled", "task.preempted"}
)


class ChaosError(RuntimeError):
    """The run could not be carried out (a component did not start); the message says why."""


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    tasks: int = 2000
    kills: int = 10
    processor_restarts: int = 2
    placement_restarts: int = 2
    executors: int = 4
    slots: int = 4
    task_s: float = 0.2
    #: Submissions per second; None: over max(tasks / 50 s, SECONDS_PER_FAULT per fault).
    rate: float | None = None
    restart_delay_s: float = 1.0
    #: After the last submission, the run ends at this timeout at the latest.
    timeout_s: float = 240.0
    #: Once every fault is over, the run ends when no verdict arrived for this long.
    idle_timeout_s: float = 45.0
    seed: int = 0
    run_dir: Path | None = None

    def validate(self) -> None:
        if self.tasks < 1:
            raise ValueError(f"--tasks must be at least 1, got {self.tasks}")
        for name in ("kills", "processor_restarts", "placement_restarts"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
        if self.executors < 2:
            raise ValueError(
                f"--executors must be at least 2 (one is killed), got {self.executors}"
            )
        if self.slots < 1:
            raise ValueError(f"--slots must be at least 1, got {self.slots}")
        if not (math.isfinite(self.task_s) and self.task_s >= 0):
            raise ValueError(f"--task-s must be a number >= 0, got {self.task_s}")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"--rate must be positive, got {self.rate}")
        for name in ("restart_delay_s", "timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a number >= 0")

    @property
    def faults(self) -> int:
        return self.kills + self.processor_restarts + self.placement_restarts

    def submission_rate(self) -> float:
        if self.rate is not None:
            return self.rate
        window = max(self.tasks / 50.0, SECONDS_PER_FAULT * self.faults, 1.0)
        return self.tasks / window


# ============================================================================ the ledger
@dataclass(slots=True)
class _Task:
    submitted_at: float = math.nan
    verdicts: dict[str, tuple[str, float, str]] = field(default_factory=dict)  # id -> v
    rejected: str | None = None
    placed: dict[int, tuple[str, float]] = field(default_factory=dict)  # attempt -> node, at
    completions: dict[int, set[str]] = field(default_factory=dict)  # attempt -> event ids
    ended_attempts: set[int] = field(default_factory=set)
    #: (seconds since submission, type, attempt, node, reason) of each record about it.
    history: list[tuple[float, str, int, str, str]] = field(default_factory=list)

    @property
    def terminal_at(self) -> float | None:
        times = [at for _state, at, _src in self.verdicts.values()]
        return min(times) if times else None

    @property
    def state(self) -> str | None:
        if self.verdicts:
            return min(self.verdicts.values(), key=lambda v: v[1])[0]
        return "rejected" if self.rejected is not None else None


class Ledger:
    """What the topics say happened, folded as records arrive (thread-safe). Times are
    this process's monotonic clock when the record was read."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tasks: dict[str, _Task] = {}
        self.seen_ids: set[str] = set()
        self.redelivered = 0
        self.stale_attempt_events = 0
        self.inflight: dict[str, set[tuple[str, int]]] = {}  # node -> attempts
        self.verdict_times: list[float] = []
        self.heartbeats: dict[str, list[float]] = {}  # node -> arrival times
        self.busy: dict[str, bool] = {}  # node -> its latest heartbeat lists attempts
        self.types: Counter[str] = Counter()

    def expect(self, task_id: str, at: float) -> None:
        with self.lock:
            self.tasks.setdefault(task_id, _Task()).submitted_at = at

    def apply(self, data: dict[str, Any], at: float) -> None:
        kind = data.get("type")
        event_id = str(data.get("event_id", ""))
        with self.lock:
            if kind == "node.heartbeat":
                node_id = str(data.get("node_id"))
                self.heartbeats.setdefault(node_id, []).append(at)
                running = data.get("running")
                self.busy[node_id] = bool(running) if isinstance(running, list) else True
                return
            if event_id in self.seen_ids:
                self.redelivered += 1
                return
            self.seen_ids.add(event_id)
            self.types[str(kind)] += 1
            task_id = data.get("task_id")
            if not isinstance(task_id, str) or task_id not in self.tasks:
                return  # another run's, or not about a task
            task = self.tasks[task_id]
            handler = _HANDLERS.get(str(kind))
            if handler is not None:
                node = data.get("node_id") or data.get("chosen_node_id") or ""
                attempt = data.get("attempt")
                task.history.append(
                    (
                        round(at - task.submitted_at, 3),
                        str(kind),
                        attempt if isinstance(attempt, int) else -1,
                        str(node),
                        str(data.get("reason") or "")[:200],
                    )
                )
                handler(self, task_id, task, data, at)

    def _audit(self, task_id: str, task: _Task, data: dict[str, Any], at: float) -> None:
        if data.get("kind", "assign") != "assign":
            return
        attempt, node = int(data["attempt"]), str(data["chosen_node_id"])
        task.placed.setdefault(attempt, (node, at))
        if task.terminal_at is None:
            self.inflight.setdefault(node, set()).add((task_id, attempt))

    def _attempt_end(self, task_id: str, task: _Task, data: dict[str, Any], at: float) -> None:
        attempt, node = int(data["attempt"]), str(data["node_id"])
        if data["type"] == "task.completed":
            task.completions.setdefault(attempt, set()).add(str(data["event_id"]))
        if attempt in task.ended_attempts or task.terminal_at is not None:
            self.stale_attempt_events += 1
        task.ended_attempts.add(attempt)
        self.inflight.get(node, set()).discard((task_id, attempt))

    def _ended(self, task_id: str, task: _Task, data: dict[str, Any], at: float) -> None:
        source = str(data.get("source", ""))
        task.verdicts[str(data["event_id"])] = (str(data["state"]), at, source)
        self.verdict_times.append(at)
        for attempt, (node, _at) in task.placed.items():
            self.inflight.get(node, set()).discard((task_id, attempt))

    def _rejected(self, task_id: str, task: _Task, data: dict[str, Any], at: float) -> None:
        if task.rejected is None:
            task.rejected = str(data.get("reason", ""))
            task.verdicts.setdefault(str(data["event_id"]), ("rejected", at, "rejected"))
            self.verdict_times.append(at)

    # ------------------------------------------------------------------ queries
    def terminal(self) -> int:
        with self.lock:
            return sum(1 for t in self.tasks.values() if t.verdicts)

    def inflight_on(self, node: str) -> set[tuple[str, int]]:
        with self.lock:
            return set(self.inflight.get(node, ()))

    def settled_at(self, task_id: str, attempt: int) -> float | None:
        """When attempt ``attempt`` of ``task_id`` stopped holding up the task: a later
        attempt was placed, or the task ended."""
        with self.lock:
            task = self.tasks[task_id]
            times = [at for a, (_n, at) in task.placed.items() if a > attempt]
            if task.terminal_at is not None:
                times.append(task.terminal_at)
            return min(times) if times else None

    def heartbeat_after(self, node_id: str, moment: float | None) -> float | None:
        """When ``node_id``'s first heartbeat after ``moment`` arrived (None: not yet)."""
        if moment is None:
            return None
        with self.lock:
            times = self.heartbeats.get(node_id, [])
            i = bisect_right(times, moment)
            return times[i] if i < len(times) else None

    def quiet_since(self, nodes: Iterable[str], moment: float) -> bool:
        """Every one of ``nodes`` sent a heartbeat after ``moment``, and its latest one
        lists no running attempt (nothing is left to complete late)."""
        with self.lock:
            return all(
                (self.heartbeats.get(n) or [-math.inf])[-1] > moment and not self.busy.get(n)
                for n in nodes
            )

    def first_verdict_after(self, moment: float) -> float | None:
        """When the first verdict not seen before arrived after ``moment``."""
        with self.lock:
            i = bisect_right(self.verdict_times, moment)
            return self.verdict_times[i] if i < len(self.verdict_times) else None

    def last_verdict_at(self) -> float | None:
        with self.lock:
            return max(self.verdict_times) if self.verdict_times else None

    def duplicates(self) -> dict[str, list[str]]:
        """Task ids per kind of duplicate completion (see the module docstring)."""
        with self.lock:
            out: dict[str, list[str]] = {"attempts": [], "same_attempt": [], "verdicts": []}
            for task_id, task in self.tasks.items():
                if len(task.completions) > 1:
                    out["attempts"].append(task_id)
                if any(len(ids) > 1 for ids in task.completions.values()):
                    out["same_attempt"].append(task_id)
                if len(task.verdicts) > 1:
                    out["verdicts"].append(task_id)
            return out


_HANDLERS: dict[str, Callable[[Ledger, str, _Task, dict[str, Any], float], None]] = {
    "decision.audit": Ledger._audit,
    "task.ended": Ledger._ended,
    "task.rejected": Ledger._rejected,
    **{kind: Ledger._attempt_end for kind in ATTEMPT_END_TYPES},
}


class TopicFollower:
    """Reads topics from the beginning into a :class:`Ledger`, in a thread."""

    TOPICS = (DECISIONS, TASK_EVENTS, NODE_HEARTBEATS)

    def __init__(self, config: dict[str, Any], ledger: Ledger) -> None:
        self.ledger = ledger
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                **config,
                "group.id": f"streamsched-chaos-{os.getpid()}-{time.time_ns()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 20,
            }
        )
        meta = AdminClient(config).list_topics(timeout=15).topics
        self._consumer.assign(
            [
                TopicPartition(topic, p, OFFSET_BEGINNING)
                for topic in self.TOPICS
                for p in meta[topic].partitions
            ]
        )
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="chaos-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for msg in self._consumer.consume(num_messages=1000, timeout=0.1):
                    error = msg.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            self.error = str(error)
                        continue
                    try:
                        data = json.loads(msg.value() or b"")
                    except ValueError:
                        continue
                    if isinstance(data, dict):
                        self.ledger.apply(data, time.monotonic())
        except Exception as exc:  # reported in the result; the run then fails
            self.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


# ============================================================================ the cluster
@dataclass(frozen=True, slots=True)
class ExecutorSpec:
    node_id: str
    hardware: str
    slots: int

    def argv(self, log_dir: Path) -> list[str]:
        gpus = self.slots if self.hardware != "cpu" else 0
        return streamsched_argv(
            "executor",
            "--node-id",
            self.node_id,
            "--hardware",
            self.hardware,
            "--cpus",
            str(self.slots),
            "--gpus",
            str(gpus),
            "--memory",
            "16GiB",
            "--heartbeat-s",
            repr(HEARTBEAT_S),
            "--log-dir",
            str(log_dir / self.node_id),
        )


def executor_specs(count: int, slots: int, prefix: str = "chaos") -> list[ExecutorSpec]:
    return [
        ExecutorSpec(
            f"{prefix}-{HARDWARE_CLASSES[i % len(HARDWARE_CLASSES)]}-{i}",
            HARDWARE_CLASSES[i % len(HARDWARE_CLASSES)],
            slots,
        )
        for i in range(count)
    ]


class LiveCluster:
    """The processor, the placement agent and the executors as child processes, with
    SIGKILL and restart. Peak RSS is sampled for every incarnation (the largest kept per
    component)."""

    def __init__(
        self,
        servers: str,
        run_dir: Path,
        executors: list[ExecutorSpec],
        app_id: str = "streamsched-processor",
    ) -> None:
        self.env = {"KAFKA_BOOTSTRAP_SERVERS": servers, "PYTHONUNBUFFERED": "1"}
        self.run_dir = run_dir
        self.specs = {spec.node_id: spec for spec in executors}
        self.web_port = free_port()
        self.app_id = app_id
        self.peak_rss: dict[str, float] = {}
        self._cpu: dict[tuple[str, int], float] = {}
        self.children: dict[str, Child] = {}
        self.expected_down: set[str] = set()
        self.crashes: list[str] = []
        self.start("processor")
        self.start("placement")
        for node_id in self.specs:
            self.start(node_id)

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def argv(self, name: str) -> list[str]:
        if name == "processor":
            return streamsched_argv(
                "processor",
                "--web-port",
                str(self.web_port),
                "--app-id",
                self.app_id,
                "--no-restore",
                "--loglevel",
                "warning",
            )
        if name == "placement":
            return streamsched_argv("placement", "--no-warm-start", "--decision-prefix", "chaos")
        return self.specs[name].argv(self.run_dir / "attempts")

    def start(self, name: str) -> None:
        self.children[name] = Child(name, self.argv(name), self.run_dir, self.env)
        self.expected_down.discard(name)

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` and reap it (its peak RSS is sampled first)."""
        child = self.children[name]
        self.sample_rss()
        self.expected_down.add(name)
        if child.alive:
            child.process.send_signal(signal.SIGKILL)
        child.wait(time.monotonic() + 10.0)

    def sample_rss(self) -> None:
        """Sample the peak RSS and the CPU time of every live child."""
        for name, child in self.children.items():
            if child.alive:
                pid = child.process.pid
                rss = peak_rss_mib(pid)
                if math.isfinite(rss):
                    self.peak_rss[name] = max(self.peak_rss.get(name, 0.0), rss)
                cpu = process_cpu_s(pid)
                if math.isfinite(cpu):
                    self._cpu[(name, pid)] = cpu

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds used per component, every incarnation summed (as last sampled)."""
        out: dict[str, float] = {}
        for (name, _pid), seconds in self._cpu.items():
            out[name] = out.get(name, 0.0) + seconds
        return {name: round(v, 2) for name, v in out.items()}

    def check(self) -> list[str]:
        """Names of children that died without being killed (recorded once each)."""
        dead = []
        for name, child in self.children.items():
            if name not in self.expected_down and not child.alive:
                self.expected_down.add(name)
                self.crashes.append(name)
                dead.append(name)
        return dead

    def alive_executors(self) -> list[str]:
        return [n for n in self.specs if n not in self.expected_down and self.children[n].alive]

    def stop(self) -> dict[str, int | None]:
        self.sample_rss()
        live = [c for n, c in self.children.items() if n not in self.expected_down]
        return stop_all(live, grace_s=15.0)

    def wait_ready(self, ledger: Ledger, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Until the status view answers and every executor has sent a heartbeat."""
        deadline = time.monotonic() + timeout_s
        view = False
        while time.monotonic() < deadline:
            dead = self.check()
            if dead:
                raise ChaosError(f"{dead[0]} exited at start: {self.children[dead[0]].log_tail()}")
            view = view or view_answers(self.status_url)
            with ledger.lock:
                beating = set(ledger.heartbeats) >= set(self.specs)
            if view and beating:
                return
            time.sleep(0.3)
        raise ChaosError(f"the system was not ready within {timeout_s:g} s (logs: {self.run_dir})")


def view_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/summary", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def view_json(url: str, path: str, timeout_s: float = 5.0) -> Any:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=timeout_s) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


# ============================================================================ faults
@dataclass(slots=True)
class Fault:
    kind: str  # "executor", "processor" or "placement"
    planned_at_s: float
    target: str = ""
    injected_at: float | None = None
    restarted_at: float | None = None
    recovered_at: float | None = None
    inflight: list[tuple[str, int]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def recovery_s(self) -> float | None:
        if self.injected_at is None or self.recovered_at is None:
            return None
        return self.recovered_at - self.injected_at

    def to_dict(self, t0: float) -> dict[str, Any]:
        def rel(at: float | None) -> float | None:
            return None if at is None else round(at - t0, 3)

        return {
            "kind": self.kind,
            "target": self.target,
            "planned_at_s": round(self.planned_at_s, 3),
            "injected_at_s": rel(self.injected_at),
            "restarted_at_s": rel(self.restarted_at),
            "recovery_s": self.recovery_s(),
            "inflight_attempts": len(self.inflight),
            **self.detail,
        }


def plan_faults(cfg: ChaosConfig, window_s: float, rng: random.Random) -> list[Fault]:
    """The faults in a seeded random order, evenly spaced over 10%..80% of the window (so
    that work is still arriving after the last one)."""
    kinds = (
        ["executor"] * cfg.kills
        + ["processor"] * cfg.processor_restarts
        + ["placement"] * cfg.placement_restarts
    )
    rng.shuffle(kinds)
    n = len(kinds)
    start, end = 0.1 * window_s, 0.8 * window_s
    step = (end - start) / max(1, n - 1)
    return [Fault(kind, start + i * step) for i, kind in enumerate(kinds)]


class _ProcessorProbe(threading.Thread):
    """After a processor restart: when the new status view answers, and when it counts at
    least as many terminal tasks as the topics had shown at the kill (it caught up)."""

    def __init__(self, fault: Fault, url: str, until: float) -> None:
        super().__init__(name="chaos-view-probe", daemon=True)
        self.fault, self.url, self.until = fault, url, until

    def run(self) -> None:
        fault = self.fault
        assert fault.injected_at is not None
        wanted = int(fault.detail["terminal_at_kill"])
        answered = False
        while time.monotonic() < self.until:
            summary = view_json(self.url, "/summary", timeout_s=2.0)
            if isinstance(summary, dict):
                if not answered:
                    answered = True
                    fault.detail["view_answering_s"] = round(
                        time.monotonic() - fault.injected_at, 3
                    )
                per_state = summary.get("per_state") or {}
                if sum(int(per_state.get(s, 0)) for s in TERMINAL_STATES) >= wanted:
                    fault.recovered_at = time.monotonic()
                    return
            time.sleep(0.1)


class FaultDriver:
    """Injects the planned faults and measures when each has recovered."""

    def __init__(
        self, cfg: ChaosConfig, cluster: LiveCluster, ledger: Ledger, faults: list[Fault]
    ) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.ledger = ledger
        self.faults = faults
        self.rng = random.Random(cfg.seed + 1)
        self.next = 0
        self.pending_restart: dict[str, float] = {}  # executor -> monotonic due
        self.probes: list[_ProcessorProbe] = []

    @property
    def done(self) -> bool:
        return self.next >= len(self.faults) and not self.pending_restart

    def step(self, elapsed_s: float, note: Callable[[str], None]) -> None:
        now = time.monotonic()
        for name, due in list(self.pending_restart.items()):
            if now >= due:
                del self.pending_restart[name]
                self.cluster.start(name)
                for fault in self.faults:
                    if fault.target == name and fault.restarted_at is None:
                        fault.restarted_at = time.monotonic()
        for fault in self.faults[: self.next]:
            if fault.recovered_at is None:
                self._check_recovered(fault)
        if self.next >= len(self.faults):
            return
        fault = self.faults[self.next]
        if elapsed_s >= fault.planned_at_s:
            self._inject(fault, note)
            self.next += 1

    def _inject(self, fault: Fault, note: Callable[[str], None]) -> None:
        cluster = self.cluster
        if fault.kind == "executor":
            candidates = [n for n in cluster.alive_executors() if n not in self.pending_restart]
            fault.target = self.rng.choice(candidates)
            fault.inflight = sorted(self.ledger.inflight_on(fault.target))
            fault.injected_at = time.monotonic()
            cluster.kill(fault.target)
            self.pending_restart[fault.target] = time.monotonic() + self.cfg.restart_delay_s
        else:
            fault.target = fault.kind
            fault.injected_at = time.monotonic()
            cluster.kill(fault.kind)
            cluster.start(fault.kind)
            fault.restarted_at = time.monotonic()
            if fault.kind == "processor":
                fault.detail["terminal_at_kill"] = self.ledger.terminal()
                probe = _ProcessorProbe(fault, cluster.status_url, time.monotonic() + 300.0)
                probe.start()
                self.probes.append(probe)
        note(
            f"SIGKILL {fault.target}"
            + (f" ({len(fault.inflight)} attempts in flight)" if fault.kind == "executor" else "")
        )

    def _check_recovered(self, fault: Fault) -> None:
        assert fault.injected_at is not None
        if fault.kind == "executor":
            times = [self.ledger.settled_at(t, a) for t, a in fault.inflight]
            times.append(self.ledger.heartbeat_after(fault.target, fault.restarted_at))
            if all(t is not None for t in times):
                fault.recovered_at = max(t for t in times if t is not None)
        elif fault.kind == "placement" and fault.restarted_at is not None:
            at = self.ledger.first_verdict_after(fault.restarted_at + NEW_PROCESS_GUARD_S)
            if at is not None:
                fault.recovered_at = at
        # processor faults are settled by their probe thread


# ============================================================================ the run
@dataclass(slots=True)
class ChaosResult:
    config: dict[str, Any]
    machine: dict[str, Any]
    tasks: int = 0
    submitted: int = 0
    terminal: int = 0
    lost: int = 0
    duplicate_completions: int = 0
    executor_kills: int = 0
    processor_restarts: int = 0
    placement_restarts: int = 0
    max_recovery_s: float | None = None
    wall_s: float = 0.0
    run_s: float = 0.0
    states: dict[str, int] = field(default_factory=dict)
    lost_never_placed: int = 0
    lost_after_placement: int = 0
    lost_sample: list[str] = field(default_factory=list)
    lost_histories: dict[str, list[tuple[float, str, int, str, str]]] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    duplicate_sample: list[str] = field(default_factory=list)
    #: Every record of the first few duplicated (lost) tasks: (s after the submission,
    #: type, attempt, node, reason).
    duplicate_histories: dict[str, list[tuple[float, str, int, str, str]]] = field(
        default_factory=dict
    )
    redelivered_events: int = 0
    stale_attempt_events: int = 0
    attempts: dict[str, int] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    unrecovered_faults: int = 0
    recovery_s_by_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)
    crash_logs: dict[str, str] = field(default_factory=dict)
    status_view: dict[str, Any] | None = None
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    run_dir: str = ""
    ended_by: str = ""
    follower_error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicate_completions == 0
            and self.terminal == self.tasks
            and not self.crashes
            and self.follower_error is None
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def machine_info() -> dict[str, Any]:
    """Where the figures were measured: CPUs usable by this process, the CPU model, load."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "nproc": usable,
        "cpu_model": model or platform.processor(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "broker": "embedded Tansu",
    }


def own_peak_rss_mib() -> float:
    """This process's peak RSS (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def chaos_submission(task_id: str, index: int, task_s: float) -> TaskSubmitted:
    """Even indices: a CPU task that may run on any class; odd: a one-GPU task."""
    command = ["sleep", f"{task_s:g}"] if task_s > 0 else ["true"]
    if index % 2 == 0:
        resources: dict[str, Any] = {"cpu_milli": 1000, "memory_mib": 64}
    else:
        resources = {
            "cpu_milli": 1000,
            "memory_mib": 64,
            "gpus": 1,
            "allowed_hardware": list(GPU_CLASSES),
        }
    return TaskSubmitted.model_validate(
        {
            "occurred_at": datetime.now(UTC),
            "source": "chaos",
            "task_id": task_id,
            "idempotency_key": f"{task_id}.k",
            "tenant": "chaos",
            "task_type": "chaos-sleep",
            "resources": resources,
            "declared_work": {"runtime_s": max(task_s, 0.01)},
            "command": command,
            "max_retries": 3,
        }
    )


def run_chaos(
    cfg: ChaosConfig,
    note: Callable[[str], None] = lambda _: None,
    progress: Callable[[dict[str, Any]], None] = lambda _: None,
) -> ChaosResult:
    """Run the chaos experiment (see the module docstring). Never raises for a broken
    invariant (read :attr:`ChaosResult.ok`); ValueError for bad settings, ChaosError when
    the system cannot be started."""
    cfg.validate()
    t_wall = time.monotonic()
    info = machine_info()
    run_dir = cfg.run_dir or Path(tempfile.mkdtemp(prefix="streamsched-chaos-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    config_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    config_dict["rate"] = cfg.submission_rate()
    config_dict["command"] = ["sleep", f"{cfg.task_s:g}"] if cfg.task_s > 0 else ["true"]
    result = ChaosResult(config=config_dict, machine=info, tasks=cfg.tasks, run_dir=str(run_dir))
    with EmbeddedBroker() as broker:
        config = client_config(broker.bootstrap_servers)
        ensure_topics(config, CORE_TOPIC_PARTITIONS)
        note(f"broker {broker.bootstrap_servers} (embedded); logs in {run_dir}")
        ledger = Ledger()
        follower = TopicFollower(config, ledger)
        specs = executor_specs(cfg.executors, cfg.slots, prefix=f"chaos{os.getpid() % 1000}")
        run_tag = f"r{os.getpid()}"
        cluster = LiveCluster(broker.bootstrap_servers, run_dir, specs)
        try:
            note(
                f"started processor, placement and {len(specs)} executors "
                f"({', '.join(f'{s.node_id}' for s in specs)}); waiting for them"
            )
            cluster.wait_ready(ledger)
            _drive(cfg, cluster, ledger, config, run_tag, result, note, progress)
        finally:
            result.exit_codes = cluster.stop()
            follower.close()
        result.peak_rss_mib = {**cluster.peak_rss, "broker": peak_rss_mib(broker.pid)}
        result.cpu_s = {**cluster.cpu_s(), "broker": round(process_cpu_s(broker.pid), 2)}
        result.cpu_s["chaos (this process)"] = round(time.process_time(), 2)
        result.peak_rss_mib["chaos (this process)"] = own_peak_rss_mib()
        result.crashes = list(cluster.crashes)
        result.crash_logs = {n: cluster.children[n].log_tail(3000) for n in cluster.crashes}
        result.follower_error = follower.error
    _tally(result, ledger)
    result.wall_s = time.monotonic() - t_wall
    return result


def _drive(
    cfg: ChaosConfig,
    cluster: LiveCluster,
    ledger: Ledger,
    config: dict[str, Any],
    run_tag: str,
    result: ChaosResult,
    note: Callable[[str], None],
    progress: Callable[[dict[str, Any]], None],
) -> None:
    rate = cfg.submission_rate()
    window_s = cfg.tasks / rate
    rng = random.Random(cfg.seed)
    faults = plan_faults(cfg, window_s, rng)
    driver = FaultDriver(cfg, cluster, ledger, faults)
    producer = Producer({**config, "acks": "all", "linger.ms": 5})
    prefix = f"chaos-{run_tag}-"
    note(
        f"submitting {cfg.tasks} tasks at {rate:.1f}/s over {window_s:.0f} s; "
        f"{len(faults)} faults planned"
    )
    t0 = time.monotonic()
    sent = 0
    last_sample = last_progress = 0.0
    last_verdict_seen = t0
    deadline: float | None = None
    while True:
        now = time.monotonic()
        elapsed = now - t0
        due = min(cfg.tasks, int(elapsed * rate) + 1)
        while sent < due:
            task_id = f"{prefix}{sent:06d}"
            event = chaos_submission(task_id, sent, cfg.task_s)
            ledger.expect(task_id, time.monotonic())
            producer.produce(
                TASKS_SUBMITTED,
                codec.encode(event),
                key=task_id.encode(),
                headers=[("type", event.type)],
            )
            sent += 1
        producer.poll(0)
        if sent == cfg.tasks and deadline is None:
            producer.flush(10)
            deadline = time.monotonic() + cfg.timeout_s
        driver.step(elapsed, note)
        for name in cluster.check():
            note(f"{name} exited on its own (exit {cluster.children[name].process.returncode})")
        if now - last_sample >= 2.0:
            last_sample = now
            cluster.sample_rss()
        terminal = ledger.terminal()
        last = ledger.last_verdict_at()
        if last is not None:
            last_verdict_seen = max(last_verdict_seen, last)
        if now - last_progress >= 1.0:
            last_progress = now
            progress(
                {
                    "elapsed_s": elapsed,
                    "submitted": sent,
                    "terminal": terminal,
                    "faults": driver.next,
                    "of_faults": len(faults),
                }
            )
        if sent == cfg.tasks and driver.done:
            settled = terminal >= cfg.tasks and (
                ledger.quiet_since(cluster.specs, last_verdict_seen)
                or now - last_verdict_seen > SETTLE_S
            )
            if settled and all(f.recovered_at is not None for f in faults):
                result.ended_by = "every task terminal"
                break
            if settled and now - last_verdict_seen > SETTLE_S:
                result.ended_by = "every task terminal (a fault never recovered)"
                break
            if now - max(last_verdict_seen, _last_fault_at(faults, t0)) > cfg.idle_timeout_s:
                result.ended_by = f"no verdict for {cfg.idle_timeout_s:g} s (idle timeout)"
                break
        if deadline is not None and now > deadline:
            result.ended_by = f"timeout ({cfg.timeout_s:g} s after the last submission)"
            break
        time.sleep(0.05)
    result.run_s = time.monotonic() - t0
    result.submitted = sent
    producer.flush(10)
    time.sleep(1.0)  # the last records in flight reach the follower
    result.status_view = _status_view(cluster)
    for probe in driver.probes:
        probe.until = 0.0
    result.faults = [f.to_dict(t0) for f in faults]
    result.executor_kills = sum(1 for f in faults if f.kind == "executor" and f.injected_at)
    result.processor_restarts = sum(1 for f in faults if f.kind == "processor" and f.injected_at)
    result.placement_restarts = sum(1 for f in faults if f.kind == "placement" and f.injected_at)
    recoveries = [f.recovery_s() for f in faults if f.injected_at is not None]
    result.unrecovered_faults = sum(1 for r in recoveries if r is None)
    known = [r for r in recoveries if r is not None]
    result.max_recovery_s = (
        max(known) if known and result.unrecovered_faults == 0 else (None if known else 0.0)
    )
    by_kind: dict[str, list[float]] = {}
    for f in faults:
        r = f.recovery_s()
        if r is not None:
            by_kind.setdefault(f.kind, []).append(r)
    result.recovery_s_by_kind = {
        k: {"count": len(v), "max": max(v), "mean": sum(v) / len(v)} for k, v in by_kind.items()
    }


def _last_fault_at(faults: list[Fault], t0: float) -> float:
    times = [f.restarted_at or f.injected_at or t0 for f in faults]
    return max(times, default=t0)


def _status_view(cluster: LiveCluster) -> dict[str, Any] | None:
    """The processor's own counts (a cross-check; the verdicts come from the topics)."""
    if "processor" not in cluster.children:
        return None
    summary = view_json(cluster.status_url, "/summary", timeout_s=10.0)
    if not isinstance(summary, dict):
        return {"answered": False}
    return {"answered": True, "tasks": summary.get("tasks"), "per_state": summary.get("per_state")}


def _tally(result: ChaosResult, ledger: Ledger) -> None:
    with ledger.lock:
        tasks = dict(ledger.tasks)
        result.redelivered_events = ledger.redelivered
        result.stale_attempt_events = ledger.stale_attempt_events
        result.attempts = {
            "placed": sum(len(t.placed) for t in tasks.values()),
            "completed_events": ledger.types["task.completed"],
            "lost_events": ledger.types["task.lost"],
            "failed_events": ledger.types["task.failed"],
        }
    states: Counter[str] = Counter()
    lost: list[str] = []
    never_placed = 0
    for task_id, task in sorted(tasks.items()):
        state = task.state
        if state is None:
            lost.append(task_id)
            never_placed += not task.placed
            states["not terminal"] += 1
        else:
            states[state] += 1
    result.terminal = result.tasks - len(lost)
    result.lost = len(lost)
    result.lost_never_placed = never_placed
    result.lost_after_placement = len(lost) - never_placed
    result.lost_sample = lost[:20]
    result.lost_histories = {t: tasks[t].history for t in lost[:5]}
    result.states = dict(states)
    dup = ledger.duplicates()
    result.duplicates = {k: len(v) for k, v in dup.items()}
    dup_ids = sorted(set().union(*dup.values()))
    result.duplicate_completions = len(dup_ids)
    result.duplicate_sample = dup_ids[:20]
    result.duplicate_histories = {t: tasks[t].history for t in dup_ids[:5]}


__all__ = [
    "ChaosConfig",
    "ChaosError",
    "ChaosResult",
    "ExecutorSpec",
    "Ledger",
    "LiveCluster",
    "TopicFollower",
    "executor_specs",
    "machine_info",
    "own_peak_rss_mib",
    "run_chaos",
    "view_answers",
    "view_json",
]
