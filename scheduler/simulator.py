"""A discrete-event simulator: a virtual clock (never sleeps) driving the same core.

The simulator plays the part of the outside world: it submits trace jobs at their arrival
times, registers the nodes, and turns the core's instructions into future events (an
assignment starts at once and completes after the job's *true* runtime on the chosen
hardware; a preemption is confirmed at once with the progress made). Events that fall on
the same instant are handed to the core in one ``handle`` call, in arrival order.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .core import CoreConfig, SchedulerCore
from .events import (
    CancelTask,
    Event,
    NodeLost,
    NodeUp,
    TaskCompleted,
    TaskPreempted,
    TaskProgress,
    TaskStarted,
    Tick,
)
from .events import TaskSubmitted as Submitted
from .forecasting import (
    DaskLikeForecaster,
    OracleForecaster,
    RunningMeanForecaster,
    RuntimeForecaster,
)
from .instructions import (
    Assign,
    DeadlineInfeasible,
    Instruction,
    Learned,
    Preempt,
    Reject,
    StopAttempt,
    TaskTransition,
)
from .model import NodeSpec, TaskSpec, TaskState
from .policies import Policy
from .trace import Trace, TraceJob


@dataclass(frozen=True, slots=True)
class SimConfig:
    #: False: jobs never finish; arrivals stop once their GPU demand reaches ``fill`` times
    #: the cluster's GPUs, and a job that cannot be placed on arrival is dropped (the
    #: packing experiment of the fragmentation paper).
    departures: bool = True
    fill: float = 1.0
    #: True seconds a resumed attempt spends restoring its checkpoint.
    restart_overhead_s: float = 30.0
    #: An executor reports progress this long after an attempt starts (0: never), as a
    #: training job reports its step count.
    progress_report_s: float = 600.0
    seed: int = 0
    #: Injected node failures, as ``(node_id, at_s)``: the node is lost at ``at_s`` (its
    #: attempts are re-queued) and registers again ``fault_downtime_s`` later, empty.
    node_faults: tuple[tuple[str, float], ...] = ()
    fault_downtime_s: float = 600.0
    #: ``CoreConfig`` fields set for the run, as ``(name, value)`` pairs, over
    #: :data:`SIMULATION_CORE`, e.g. ``(("max_distinct_failed_nodes", 3),)``.
    core_overrides: tuple[tuple[str, Any], ...] = ()


#: ``CoreConfig`` fields the simulator sets unlike the live defaults: no retry backoff,
#: no bound on the nodes a task may fail on, no circuit breakers, no admission bound, and
#: task records kept to the end (the report counts them; a run is bounded anyway).
#: The simulator's failures are injected node losses, which none of these would act on
#: differently, but the figures must not depend on it (``SimConfig.core_overrides``
#: turns any of them on).
SIMULATION_CORE: dict[str, Any] = {
    "retry_backoff_s": 0.0,
    "max_distinct_failed_nodes": None,
    "breaker_min_failures": None,
    "max_queued_per_tenant": None,
    "stop_attempts_of_lost_nodes": False,
    "forget_terminal_after_s": None,
}


@dataclass(slots=True)
class SimReport:
    policy: str
    trace: str
    jobs: int
    avg_jct_s: float
    p50_jct_s: float
    p95_jct_s: float
    p99_jct_s: float
    makespan_s: float
    avg_queue_s: float
    gpu_utilization: float
    deadline_misses: int
    unallocated_gpu_fraction: float | None
    runtime_mae_s: float | None
    wall_s: float
    submitted: int = 0
    rejected: int = 0
    unfinished: int = 0
    dropped_unplaceable: int = 0
    preemptions: int = 0
    decisions: int = 0
    deadline_flags: int = 0
    skipped_by_loader: int = 0
    rejection_reasons: dict[str, int] = field(default_factory=dict)
    jct_s: list[float] = field(default_factory=list, repr=False)
    utilization: list[tuple[float, float]] = field(default_factory=list, repr=False)
    fill_curve: list[tuple[float, float]] = field(default_factory=list, repr=False)

    def to_dict(self, series: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not series:
            for key in ("jct_s", "utilization", "fill_curve"):
                data.pop(key)
        return data


def make_forecaster(policy: Policy, trace: Trace) -> RuntimeForecaster:
    """The forecaster a policy runs with in simulation (the oracle reads ``trace``)."""
    if policy.forecaster == "oracle":
        return OracleForecaster({j.spec.task_id: j.true_runtime_s for j in trace.jobs})
    return forecaster_for(policy)


def forecaster_for(policy: Policy) -> RuntimeForecaster:
    """A fresh, unfitted forecaster of the kind ``policy`` names, built without any
    knowledge of the workload (so the live placement agent can call it too).

    Raises ``ValueError`` for ``"oracle"``, which needs the true runtimes of a trace
    (use :func:`make_forecaster`). ``river-linear`` imports River lazily, so the other
    policies never pay its import time."""
    if policy.forecaster == "oracle":
        raise ValueError(
            f"policy {policy.name!r}: the oracle forecaster needs a trace's true runtimes; "
            "use make_forecaster(policy, trace) in simulation"
        )
    if policy.forecaster == "dask-like":
        return DaskLikeForecaster()
    if policy.forecaster == "river-linear":
        from .drift import drifting
        from .learned import RiverRuntimeForecaster

        # Inside the drift wrapper, as in the stream processor: the same model kind, so
        # the placement agent can warm-start from the processor's checkpoints, and it
        # refits when its errors drift (on the Gavel/Philly traces it never does, and the
        # simulated results are identical to the bare model's).
        return drifting(RiverRuntimeForecaster())
    return RunningMeanForecaster()


def _true_runtime(job: TraceJob, hardware: str) -> float:
    value = job.true_runtime_s.get(hardware, job.true_runtime_s.get("*"))
    if value is None:
        raise AssertionError(
            f"{job.spec.task_id} placed on {hardware}, which the trace says it cannot use"
        )
    return value


class Simulator:
    def __init__(
        self,
        trace: Trace,
        nodes: Sequence[NodeSpec],
        policy: Policy,
        forecaster: RuntimeForecaster | None = None,
        config: SimConfig | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock`` (e.g. ``time.perf_counter``) only measures the report's ``wall_s``;
        the simulation itself runs on its virtual clock. Without one, ``wall_s`` is 0."""
        self.trace = trace
        self.nodes = tuple(nodes)
        self.policy = policy
        self.config = config or SimConfig()
        self.core = SchedulerCore(
            policy,
            forecaster or make_forecaster(policy, trace),
            CoreConfig(
                reject_unplaceable=True,
                seed=self.config.seed,
                max_gpus_per_node=max([8, *(n.gpus for n in self.nodes)]),
                **{**SIMULATION_CORE, **dict(self.config.core_overrides)},
            ),
        )
        self.on_progress = on_progress
        self._clock = clock or (lambda: 0.0)
        self._heap: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()
        self._jobs: dict[str, TraceJob] = {}
        self._arrival: dict[str, float] = {}
        self._first_start: dict[str, float] = {}
        self._finish: dict[str, float] = {}
        self._attempt_start: dict[tuple[str, int], float] = {}
        self._live: set[tuple[str, int]] = set()
        self._errors: list[float] = []
        self._rejections: Counter[str] = Counter()
        self._preemptions = 0
        self._deadline_flags = 0
        self._dropped = 0
        self._util: list[tuple[float, float]] = []
        self._fill_curve: list[tuple[float, float]] = []
        self._wakeups: set[float] = set()

    # ------------------------------------------------------------------ driving
    def _push(self, at: float, event: Event) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), event))

    def run(self) -> SimReport:
        wall = self._clock()
        for node in self.nodes:
            self._push(0.0, NodeUp(f"node-up:{node.node_id}", node))
        self._push_faults()
        jobs = self._arrivals()
        for job in jobs:
            self._jobs[job.spec.task_id] = job
            self._arrival[job.spec.task_id] = job.arrival_s
            self._push(job.arrival_s, Submitted(f"submit:{job.spec.task_id}", job.spec))
        total_gpu_milli = sum(n.gpus for n in self.nodes) * 1000
        arrived_gpu = 0.0
        handled = 0
        while self._heap:
            now = self._heap[0][0]
            batch = []
            while self._heap and self._heap[0][0] == now:
                batch.append(heapq.heappop(self._heap)[2])
            out = self.core.handle(*batch, now=now)
            self._apply(out, now)
            if self.core.deferred:
                self._wake_deferred()
            if self.core.retry_wait:
                self._wake_retries()
            handled += len(batch)
            if not self.config.departures:
                arrived_gpu += sum(
                    ev.spec.gpu_demand_milli for ev in batch if isinstance(ev, Submitted)
                )
                self._drop_unplaced(now)
                if total_gpu_milli:
                    alloc = self.core.cluster.gpu_allocated_milli()
                    self._fill_curve.append(
                        (arrived_gpu / total_gpu_milli, 1 - alloc / total_gpu_milli)
                    )
            elif total_gpu_milli:
                self._util.append((now, self.core.cluster.gpu_allocated_milli() / total_gpu_milli))
            if self.on_progress is not None and handled % 512 < len(batch):
                self.on_progress(len(self._finish) + self._dropped, len(jobs))
        return self._report(jobs, self._clock() - wall, total_gpu_milli)

    def _wake_deferred(self) -> None:
        """Schedule a ``Tick`` when each deferred task's ``defer_max_s`` runs out, so the
        bound holds even if no other event comes by then (the live system has heartbeats)."""
        limit = self.core.policy.params.defer_max_s
        for since, _ in self.core.deferred.values():
            due = since + limit
            if due not in self._wakeups:
                self._wakeups.add(due)
                self._push(due, Tick(f"defer-expiry:{due:g}"))

    def _wake_retries(self) -> None:
        """Schedule a ``Tick`` when the next retry backoff ends (only with
        ``retry_backoff_s`` overridden: the simulator's default retries at once)."""
        due = self.core.next_retry_at()
        if due is not None and due not in self._wakeups:
            self._wakeups.add(due)
            self._push(due, Tick(f"retry-due:{due:g}"))

    def _push_faults(self) -> None:
        """Schedule the configured node faults; ValueError naming an unknown node."""
        by_id = {n.node_id: n for n in self.nodes}
        for i, (node_id, at) in enumerate(self.config.node_faults):
            spec = by_id.get(node_id)
            if spec is None:
                known = ", ".join(sorted(by_id))
                raise ValueError(f"node_faults[{i}]: unknown node {node_id!r}; nodes: {known}")
            self._push(at, NodeLost(f"fault:{node_id}:{i}", node_id, "injected fault"))
            back = at + self.config.fault_downtime_s
            self._push(back, NodeUp(f"fault-up:{node_id}:{i}", spec))

    def _arrivals(self) -> list[TraceJob]:
        jobs = sorted(self.trace.jobs, key=lambda j: j.arrival_s)
        if self.config.departures or not jobs:
            return jobs
        # Packing experiment: replay the trace (cycling, with fresh ids) until the arrived
        # GPU demand reaches the target fill of the cluster's GPUs.
        target = self.config.fill * sum(n.gpus for n in self.nodes) * 1000
        out: list[TraceJob] = []
        demand = 0.0
        for lap in itertools.count():
            if lap and demand == 0:
                break
            for j in jobs:
                if demand >= target:
                    return out
                spec = j.spec if lap == 0 else _renamed(j, lap)
                out.append(TraceJob(spec, float(len(out)), j.true_runtime_s, j.source_ref))
                demand += spec.gpu_demand_milli
        return out

    def _drop_unplaced(self, now: float) -> None:
        queued = [t for t, r in self.core.tasks.items() if r.state is TaskState.QUEUED]
        if not queued:
            return
        self._dropped += len(queued)
        out = self.core.handle(
            *(CancelTask(f"drop:{t}", t, "cannot be placed on arrival") for t in queued),
            now=now,
        )
        self._apply(out, now)

    # ------------------------------------------------------------------ instructions
    def _apply(self, out: list[Instruction], now: float) -> None:
        for ins in out:
            if isinstance(ins, Assign):
                self._on_assign(ins, now)
            elif isinstance(ins, Preempt):
                self._on_preempt(ins, now)
            elif isinstance(ins, StopAttempt):
                self._live.discard((ins.task_id, ins.attempt))
            elif isinstance(ins, TaskTransition) and ins.new.terminal:
                if ins.new is TaskState.SUCCEEDED:
                    self._finish[ins.task_id] = now
            elif isinstance(ins, Reject):
                self._rejections[ins.reason.split(" (")[0]] += 1
            elif isinstance(ins, Learned):
                self._errors.append(abs(ins.predicted_runtime_s - ins.observed_runtime_s))
            elif isinstance(ins, DeadlineInfeasible):
                self._deadline_flags += 1

    def _on_assign(self, ins: Assign, now: float) -> None:
        job = self._jobs[ins.task_id]
        key = (ins.task_id, ins.attempt)
        self._live.add(key)
        self._attempt_start[key] = now
        self._first_start.setdefault(ins.task_id, now)
        self._push(now, TaskStarted(f"start:{ins.task_id}:{ins.attempt}", *key, ins.node_id))
        if not self.config.departures:
            return
        truth = _true_runtime(job, ins.hardware)
        if not math.isfinite(truth):
            return
        overhead = self.config.restart_overhead_s if ins.resume_progress > 0 else 0.0
        runtime = truth * (1.0 - ins.resume_progress) + overhead
        self._push(
            now + runtime,
            TaskCompleted(f"done:{ins.task_id}:{ins.attempt}", *key, runtime_s=runtime),
        )
        report = self.config.progress_report_s
        if report > 0 and overhead + report < runtime:
            progress = ins.resume_progress + report / truth
            self._push(
                now + overhead + report,
                TaskProgress(f"progress:{ins.task_id}:{ins.attempt}", *key, progress),
            )

    def _on_preempt(self, ins: Preempt, now: float) -> None:
        key = (ins.task_id, ins.attempt)
        if key not in self._live:
            return
        self._live.discard(key)
        self._preemptions += 1
        rec = self.core.tasks[ins.task_id]
        assert rec.hardware is not None
        truth = _true_runtime(self._jobs[ins.task_id], rec.hardware)
        overhead = self.config.restart_overhead_s if rec.progress > 0 else 0.0
        worked = max(0.0, now - self._attempt_start[key] - overhead)
        progress = min(rec.progress + worked / truth, 0.999) if math.isfinite(truth) else 0.0
        self._push(now, TaskPreempted(f"preempted:{ins.task_id}:{ins.attempt}", *key, progress))

    # ------------------------------------------------------------------ report
    def _report(self, jobs: list[TraceJob], wall_s: float, total_gpu_milli: int) -> SimReport:
        jct = np.array(
            [self._finish[t] - self._arrival[t] for t in sorted(self._finish)], np.float64
        )
        queue = [self._first_start[t] - self._arrival[t] for t in self._first_start]
        first = min(self._arrival.values(), default=0.0)
        last = max(self._finish.values(), default=first)
        misses = 0
        for tid, job in self._jobs.items():
            deadline = job.spec.deadline_s
            if deadline is not None and self._finish.get(tid, math.inf) > deadline:
                misses += 1
        unallocated = None
        if not self.config.departures and total_gpu_milli:
            unallocated = 1 - self.core.cluster.gpu_allocated_milli() / total_gpu_milli
        terminal = sum(
            1 for r in self.core.tasks.values() if r.state is not None and r.state.terminal
        )

        def pct(q: float) -> float:
            return float(np.percentile(jct, q)) if jct.size else 0.0

        return SimReport(
            policy=self.policy.name,
            trace=self.trace.name,
            jobs=int(jct.size),
            avg_jct_s=float(jct.mean()) if jct.size else 0.0,
            p50_jct_s=pct(50),
            p95_jct_s=pct(95),
            p99_jct_s=pct(99),
            makespan_s=last - first,
            avg_queue_s=float(np.mean(queue)) if queue else 0.0,
            gpu_utilization=_time_weighted(self._util, first, last),
            deadline_misses=misses,
            unallocated_gpu_fraction=unallocated,
            runtime_mae_s=float(np.mean(self._errors)) if self._errors else None,
            wall_s=wall_s,
            submitted=len(jobs),
            rejected=sum(self._rejections.values()),
            unfinished=len(self.core.tasks) - terminal,
            dropped_unplaceable=self._dropped,
            preemptions=self._preemptions,
            decisions=self.core.decisions,
            deadline_flags=self._deadline_flags,
            skipped_by_loader=len(self.trace.skipped),
            rejection_reasons=dict(self._rejections),
            jct_s=jct.tolist(),
            utilization=self._util,
            fill_curve=self._fill_curve,
        )


def _time_weighted(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """Mean of a step function given as (time, value) samples over [start, end]."""
    if not samples or end <= start:
        return 0.0
    total = 0.0
    for (t0, v), (t1, _) in itertools.pairwise([*samples, (end, 0.0)]):
        lo, hi = max(t0, start), min(t1, end)
        if hi > lo:
            total += v * (hi - lo)
    return total / (end - start)


def _renamed(job: TraceJob, lap: int) -> TaskSpec:
    return replace(job.spec, task_id=f"{job.spec.task_id}#{lap}")
