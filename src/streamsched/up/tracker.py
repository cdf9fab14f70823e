"""What ``streamsched up`` knows about its replay: a fold of the decisions and lifecycle
events it reads back from Kafka, and the simulator-style report computed from them.

The tracker is pure (no Kafka, no clock): :meth:`LiveTracker.apply` takes decoded wire
events with the wall time they occurred, so it is tested without a broker. Duplicates
(same ``event_id``) change nothing; a second completion of a task is counted in
``duplicate_completions`` and otherwise ignored.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from streamsched.scheduler.simulator import SimReport
from streamsched.scheduler.trace import TraceJob
from streamsched.schemas.decisions import DecisionAudit, TaskEnded
from streamsched.schemas.lifecycle import (
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskLost,
    TaskPreempted,
    TaskStarted,
)
from streamsched.schemas.nodes import NodeHeartbeat
from streamsched.schemas.tasks import TaskRejected

from .replay import ReplayClock

#: Terminal states a replayed task can reach.
TERMINAL = ("succeeded", "failed", "cancelled", "rejected")


@dataclass(slots=True)
class AttemptRecord:
    node_id: str
    hardware: str
    gpu_milli: int
    predicted_s: float
    decided_at_s: float  # trace seconds (the core's clock)
    started_at_s: float | None = None
    ended_at_s: float | None = None
    outcome: str | None = None


@dataclass(slots=True)
class TaskRecord:
    job: TraceJob
    submitted: bool = False
    state: str | None = None  # None: not terminal yet
    finished_at_s: float | None = None
    failures: int = 0
    attempts: dict[int, AttemptRecord] = field(default_factory=dict)

    @property
    def first_placement(self) -> tuple[str, str] | None:
        if not self.attempts:
            return None
        first = self.attempts[min(self.attempts)]
        return first.node_id, first.hardware


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Live progress, for the display."""

    trace_s: float
    submitted: int
    queued: int
    running: Mapping[str, int]
    done: int
    failed: int
    total: int
    forecast_mape: float | None
    nodes: int


class LiveTracker:
    """Folds the replay's events. ``jobs`` are the replayed trace jobs (ids unique);
    ``clock`` maps event wall times to trace seconds."""

    def __init__(self, jobs: tuple[TraceJob, ...], clock: ReplayClock) -> None:
        self.clock = clock
        self.tasks = {j.spec.task_id: TaskRecord(j) for j in jobs}
        self.nodes: dict[str, str] = {}  # node id -> hardware, from heartbeats
        self.first_seen: dict[str, float] = {}  # node id -> wall time of its first heartbeat
        self.duplicate_completions = 0
        self.preemptions = 0
        self.decisions = 0
        self.rejections: Counter[str] = Counter()
        self._seen: set[str] = set()
        self._errors: list[tuple[float, float]] = []  # (predicted, actual) of completions

    # ------------------------------------------------------------------ folding
    def submitted(self, task_id: str) -> None:
        record = self.tasks.get(task_id)
        if record is not None:
            record.submitted = True

    def apply(self, event: object, wall_s: float) -> None:
        """Fold one decoded wire event that occurred at ``wall_s`` (epoch seconds)."""
        event_id = getattr(event, "event_id", None)
        if event_id is not None:
            if event_id in self._seen:
                return
            self._seen.add(event_id)
        if isinstance(event, NodeHeartbeat):
            self.nodes[event.node_id] = event.hardware
            seen = self.first_seen.get(event.node_id)
            self.first_seen[event.node_id] = wall_s if seen is None else min(seen, wall_s)
            return
        record = self.tasks.get(getattr(event, "task_id", None) or "")
        if record is None:
            return  # not one of ours (another user of the same cluster)
        at = self.clock.trace(wall_s)
        match event:
            case DecisionAudit():
                self._on_audit(record, event)
            case TaskRejected():
                self.rejections[event.reason.split(" (")[0]] += 1
                self._end(record, "rejected", at)
            case TaskStarted():
                attempt = record.attempts.get(event.attempt)
                if attempt is not None and attempt.started_at_s is None:
                    attempt.started_at_s = at
            case TaskCompleted():
                if record.state == "succeeded":
                    self.duplicate_completions += 1
                    return
                attempt = record.attempts.get(event.attempt)
                if attempt is not None:
                    self._close(attempt, "completed", at)
                    self._errors.append((attempt.predicted_s, event.runtime_s))
                self._end(record, "succeeded", at)
            case TaskFailed():
                self._close_attempt(record, event.attempt, "failed", at)
                record.failures += 1
                if not event.retryable or record.failures > record.job.spec.max_retries:
                    self._end(record, "failed", at)
            case TaskPreempted():
                self.preemptions += 1
                self._close_attempt(record, event.attempt, "preempted", at)
            case TaskLost():
                self._close_attempt(record, event.attempt, "lost", at)
            case TaskCancelled():
                self._close_attempt(record, event.attempt, "cancelled", at)
                self._end(record, "cancelled", at)
            case TaskEnded():  # the scheduler's verdict (e.g. a dependent of a failed task)
                self._end(record, event.state, at)

    def _on_audit(self, record: TaskRecord, audit: DecisionAudit) -> None:
        if getattr(audit, "kind", "assign") != "assign" or audit.attempt in record.attempts:
            return
        self.decisions += 1
        spec = record.job.spec
        record.attempts[audit.attempt] = AttemptRecord(
            node_id=audit.chosen_node_id,
            hardware=audit.chosen_hardware,
            gpu_milli=spec.gpu_demand_milli,
            predicted_s=audit.predicted_runtime_s,
            decided_at_s=audit.decided_at_s,
        )

    def _close_attempt(self, record: TaskRecord, attempt: int, outcome: str, at: float) -> None:
        found = record.attempts.get(attempt)
        if found is not None:
            self._close(found, outcome, at)

    @staticmethod
    def _close(attempt: AttemptRecord, outcome: str, at: float) -> None:
        if attempt.ended_at_s is None:
            attempt.ended_at_s = at
            attempt.outcome = outcome

    @staticmethod
    def _end(record: TaskRecord, state: str, at: float) -> None:
        if record.state is None:
            record.state = state
            record.finished_at_s = at

    # ------------------------------------------------------------------ queries
    @property
    def terminal(self) -> int:
        return sum(1 for r in self.tasks.values() if r.state is not None)

    @property
    def all_terminal(self) -> bool:
        return self.terminal == len(self.tasks)

    def snapshot(self, wall_s: float) -> Snapshot:
        running: Counter[str] = Counter()
        queued = 0
        for r in self.tasks.values():
            if r.state is not None or not r.submitted:
                continue
            live = [a for a in r.attempts.values() if a.ended_at_s is None]
            if live:
                running[live[-1].hardware] += 1
            else:
                queued += 1
        states = Counter(r.state for r in self.tasks.values())
        return Snapshot(
            trace_s=self.clock.trace(wall_s),
            submitted=sum(1 for r in self.tasks.values() if r.submitted),
            queued=queued,
            running=dict(running),
            done=states["succeeded"],
            failed=states["failed"] + states["cancelled"] + states["rejected"],
            total=len(self.tasks),
            forecast_mape=self.forecast_mape(),
            nodes=len(self.nodes),
        )

    def forecast_mape(self) -> float | None:
        """Mean absolute relative error of the runtime predictions of completed attempts."""
        errors = [abs(p - a) / a for p, a in self._errors if a > 0]
        return float(np.mean(errors)) if errors else None

    def registration_order(self) -> list[str]:
        """Node ids in the order they registered (first heartbeat's time; the placement
        agent applies events in time order on a replay, so this is its node order)."""
        return sorted(self.first_seen, key=lambda n: (self.first_seen[n], n))

    def placements(self) -> dict[str, tuple[str, str]]:
        """First placement (node id, hardware class) of every placed task."""
        out = {}
        for task_id, r in self.tasks.items():
            first = r.first_placement
            if first is not None:
                out[task_id] = first
        return out

    def report(self, policy: str, trace: str, total_gpus: int, wall_s: float) -> SimReport:
        """The simulator's report, computed from what happened live (trace seconds)."""
        arrival = {t: r.job.arrival_s for t, r in self.tasks.items()}
        done = {
            t: r.finished_at_s
            for t, r in self.tasks.items()
            if r.state == "succeeded" and r.finished_at_s is not None
        }
        jct = np.array([done[t] - arrival[t] for t in sorted(done)], np.float64)
        starts = {
            t: min(a.decided_at_s for a in r.attempts.values())
            for t, r in self.tasks.items()
            if r.attempts
        }
        queue = [starts[t] - arrival[t] for t in starts]
        first = min(arrival.values(), default=0.0)
        last = max(done.values(), default=first)

        def pct(q: float) -> float:
            return float(np.percentile(jct, q)) if jct.size else 0.0

        states = Counter(r.state for r in self.tasks.values())
        return SimReport(
            policy=policy,
            trace=trace,
            jobs=int(jct.size),
            avg_jct_s=float(jct.mean()) if jct.size else 0.0,
            p50_jct_s=pct(50),
            p95_jct_s=pct(95),
            p99_jct_s=pct(99),
            makespan_s=last - first,
            avg_queue_s=float(np.mean(queue)) if queue else 0.0,
            gpu_utilization=self._utilization(total_gpus, first, last),
            deadline_misses=0,
            unallocated_gpu_fraction=None,
            runtime_mae_s=(
                float(np.mean([abs(p - a) for p, a in self._errors])) if self._errors else None
            ),
            wall_s=wall_s,
            submitted=sum(1 for r in self.tasks.values() if r.submitted),
            rejected=states["rejected"],
            unfinished=sum(1 for r in self.tasks.values() if r.state is None),
            preemptions=self.preemptions,
            decisions=self.decisions,
            rejection_reasons=dict(self.rejections),
            jct_s=jct.tolist(),
        )

    def _utilization(self, total_gpus: int, start: float, end: float) -> float:
        """Time-weighted share of GPUs allocated over [start, end]: an attempt holds its
        GPUs from its decision to its end (as in the simulator)."""
        if total_gpus <= 0 or end <= start:
            return 0.0
        busy = 0.0
        for r in self.tasks.values():
            for a in r.attempts.values():
                lo = max(a.decided_at_s, start)
                hi = min(a.ended_at_s if a.ended_at_s is not None else end, end)
                if hi > lo and math.isfinite(hi):
                    busy += (hi - lo) * a.gpu_milli / 1000
        return busy / (total_gpus * (end - start))


__all__ = ["TERMINAL", "AttemptRecord", "LiveTracker", "Snapshot", "TaskRecord"]
