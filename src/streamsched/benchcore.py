"""How the cost of one placement decision grows with the fleet and the backlog.

The benchmark drives :class:`~streamsched.scheduler.core.SchedulerCore` directly, as the
placement agent does, and times only :meth:`SchedulerCore.handle` with
:func:`time.perf_counter_ns` (the core itself never reads a clock). One grid point:

1. register ``nodes`` nodes: a quarter each of ``gpu-v100`` (8 GPUs), ``gpu-p100`` (4),
   ``gpu-t4`` (2) and CPU-only nodes;
2. teach the forecaster a few hundred observations, so predictions differ per hardware;
3. fill the cluster with a mixed workload (whole GPUs 1/2/4/8, GPU shares 100-900 milli,
   CPU-only tasks; several tenants; some hardware constraints) until about 90% of its GPUs
   are allocated, delivering ``TaskStarted`` for every assignment. Setup only, so this
   runs under a cheap first-fit policy; fill tasks left queued are cancelled;
4. switch to the measured policy (as a ``PolicyUpdate`` would) and submit more of the
   mix, with priorities and some deadlines, in batches of :data:`SUBMIT_CHUNK` until
   ``queued`` tasks wait (setup, so cycles scan at most :data:`SETUP_SCAN` tasks); then
   up to :data:`WARM_CYCLES` full cycles place what fits, and the queue is topped up.
   Grid points with the same node count share one cluster: the backlog grows in place;
5. steady state, with the policy's own parameters, ``decisions`` times: complete one
   random running attempt in one ``handle`` call (timed: it frees room and usually yields
   an ``Assign``); then, in a second call (timed as "bookkeeping", with the cycle skipped:
   the next timed call examines the same queue), start what was assigned and submit as
   many new tasks as were placed, so the backlog stays at ``queued``. A point stops early
   once its measuring loop has run ``budget_s`` seconds.

With ``split``, step 5 delivers the completion in its own untimed call (the event's
bookkeeping: release, learning, re-keying queued tasks whose predictions moved) and then
times a ``Tick`` that only runs the scheduling cycle: the cost of the decision alone.

Every task is non-preemptible (the preemption *search* still runs for blocked tasks; no
``Preempt`` is issued, so the driver needs no checkpoint logic). ``now`` advances 1 s per
decision. Nothing here asserts timings; the numbers are machine-dependent.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from streamsched.scheduler.core import CoreConfig, SchedulerCore
from streamsched.scheduler.events import (
    CancelTask,
    Event,
    NodeUp,
    TaskCompleted,
    TaskStarted,
    TaskSubmitted,
    Tick,
)
from streamsched.scheduler.forecasting import (
    DaskLikeForecaster,
    RunningMeanForecaster,
    RuntimeForecaster,
)
from streamsched.scheduler.instructions import Assign, Instruction
from streamsched.scheduler.model import NodeSpec, PriorityClass, TaskSpec
from streamsched.scheduler.policies import Policy, get_policy

__all__ = ["BenchPoint", "Workload", "machine_info", "make_nodes", "run_grid", "run_point"]

#: (hardware class, GPUs per node); CPU-only nodes have 0.
NODE_MIX: tuple[tuple[str, int], ...] = (
    ("gpu-v100", 8),
    ("gpu-p100", 4),
    ("gpu-t4", 2),
    ("cpu", 0),
)
#: How many times longer GPU work takes than on a V100.
GPU_SLOWDOWN = {"gpu-v100": 1.0, "gpu-p100": 1.7, "gpu-t4": 2.6}
TENANTS = ("vision", "nlp", "research", "serving", "data")
FILL_TARGET = 0.9
#: Roughly the mean GPU demand of the task mix (milli-GPU).
MEAN_GPU_DEMAND_MILLI = 1300.0
#: Tasks submitted per ``handle`` call while building the backlog.
SUBMIT_CHUNK = 5000
#: ``max_scan`` while building the backlog (setup, not measured).
SETUP_SCAN = 32
#: Full cycles of the measured policy before measuring (at most).
WARM_CYCLES = 3
#: The policy that fills the cluster during setup: first fit (cheap, and it packs nodes
#: in order, leaving whole nodes free as best fit does), skipping what does not fit.
FILL_POLICY = replace(get_policy("fifo"), name="bench-fill", backfill="greedy")


def make_nodes(count: int) -> list[NodeSpec]:
    """``count`` nodes cycling through :data:`NODE_MIX` (capacities as ``parse_cluster``)."""
    nodes = []
    for i in range(count):
        hardware, gpus = NODE_MIX[i % len(NODE_MIX)]
        if gpus:
            nodes.append(
                NodeSpec(f"{hardware}-{i}", hardware, 8000 * gpus + 8000, 65536 * gpus, gpus)
            )
        else:
            nodes.append(NodeSpec(f"cpu-{i}", "cpu", 64000, 262144))
    return nodes


@dataclass(frozen=True, slots=True)
class _Kind:
    task_type: str
    tenant: str
    #: Seconds per unit of declared work on a V100 (CPU-only tasks: on any node).
    seconds_per_unit: float


_KINDS = (
    _Kind("train-resnet50", "vision", 900.0),
    _Kind("train-bert", "nlp", 1200.0),
    _Kind("hpo-trial", "research", 300.0),
    _Kind("serve-embeddings", "serving", 600.0),
    _Kind("etl-shards", "data", 400.0),
)


class Workload:
    """A seeded generator of the benchmark's task mix and of their true runtimes."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.count = 0
        self.truth: dict[str, float] = {}

    def task(self, *, deadline_from_s: float | None = None) -> TaskSpec:
        """One task; with ``deadline_from_s``, 10% carry a deadline 0.5-24 h after it."""
        rng = self.rng
        self.count += 1
        task_id = f"t{self.count:07d}"
        kind, (gpus, gpu_milli, cpu_milli, memory_mib), allowed = self._shape()
        work = round(rng.uniform(0.5, 8.0), 2)
        deadline = None
        if deadline_from_s is not None and rng.random() < 0.1:
            deadline = deadline_from_s + rng.uniform(1800.0, 86400.0)
        pick = rng.random()
        priority = PriorityClass.NORMAL
        if pick < 0.2:
            priority = PriorityClass.HIGH if pick < 0.1 else PriorityClass.LOW
        tenant = kind.tenant if rng.random() < 0.8 else rng.choice(TENANTS)
        self.truth[task_id] = kind.seconds_per_unit * work * rng.lognormvariate(0.0, 0.2)
        return TaskSpec(
            task_id=task_id,
            task_type=kind.task_type,
            tenant=tenant,
            cpu_milli=cpu_milli,
            memory_mib=memory_mib,
            gpus=gpus,
            gpu_milli=gpu_milli,
            allowed_hardware=allowed,
            priority=priority,
            deadline_s=deadline,
            declared_work=work,
        )

    def _shape(self) -> tuple[_Kind, tuple[int, int, int, int], frozenset[str]]:
        """A kind, its (gpus, gpu_milli, cpu_milli, memory_mib) and allowed hardware."""
        rng = self.rng
        roll = rng.random()
        allowed: frozenset[str] = frozenset()
        if roll < 0.45:  # whole GPUs
            kind = _KINDS[0] if rng.random() < 0.5 else _KINDS[1]
            gpus = rng.choice((1, 1, 1, 2, 2, 4, 8))
            if kind is _KINDS[1] and rng.random() < 0.3:
                allowed = frozenset({"gpu-v100"})
            elif gpus <= 4 and rng.random() < 0.1:
                allowed = frozenset({"gpu-v100", "gpu-p100"})
            return kind, (gpus, 1000, 4000 * gpus, 16384 * gpus), allowed
        if roll < 0.6:  # one GPU, HPO
            return _KINDS[2], (1, 1000, 4000, 16384), allowed
        if roll < 0.8:  # GPU share
            if rng.random() < 0.3:
                allowed = frozenset({"gpu-t4"})
            return _KINDS[3], (1, 100 * rng.randint(1, 9), 2000, 8192), allowed
        cpu = rng.choice((2000, 4000, 8000, 16000, 32000))  # CPU only
        if rng.random() < 0.5:
            allowed = frozenset({"cpu"})
        return _KINDS[4], (0, 0, cpu, 4 * cpu), allowed

    def runtime_s(self, spec: TaskSpec, hardware: str) -> float:
        """True runtime of ``spec`` on ``hardware`` (GPU work is slower on older GPUs)."""
        base = self.truth[spec.task_id]
        return base * GPU_SLOWDOWN.get(hardware, 1.0) if spec.gpus else base

    def teach(self, forecaster: RuntimeForecaster, observations: int = 300) -> None:
        """Feed ``observations`` learned runtimes on every hardware a task may use."""
        for _ in range(observations):
            spec = self.task()
            classes = sorted(spec.allowed_hardware) or [h for h, _ in NODE_MIX if h != "cpu"]
            if not spec.gpus:
                classes = sorted(spec.allowed_hardware) or ["cpu"]
            hardware = self.rng.choice(classes)
            forecaster.learn(spec, hardware, self.runtime_s(spec, hardware))


@dataclass(slots=True)
class BenchPoint:
    """The measurements of one (nodes, queued) grid point. Latencies in microseconds."""

    policy: str
    nodes: int
    queued_target: int
    queued_at_start: int
    queued_at_end: int
    running_at_start: int
    gpu_allocated_at_start: float
    gpu_allocated_at_end: float
    setup_s: float
    decisions: int
    #: True when the point stopped before ``decisions`` because its time budget ran out.
    stopped_by_budget: bool
    p50_us: float
    p99_us: float
    max_us: float
    mean_us: float
    assigns_per_call: float
    calls_without_assign: int
    #: The start + arrival call after each completion (its cycle skipped).
    bookkeeping_p50_us: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Driver:
    """Plays the executors around one core: tracks running attempts, starts assignments."""

    def __init__(self, nodes: int, policy: Policy, seed: int) -> None:
        self.workload = Workload(seed)
        self.forecaster = _forecaster(policy)
        self.core = SchedulerCore(FILL_POLICY, self.forecaster, CoreConfig(seed=seed))
        self.rng = random.Random(seed + 1)
        self.running: list[tuple[str, int]] = []
        self.pending_starts: list[TaskStarted] = []
        self.now = 0.0
        self.core.handle(*(NodeUp(f"up:{n.node_id}", n) for n in make_nodes(nodes)), now=0.0)
        self.workload.teach(self.forecaster)
        self.total_gpu_milli = self.core.cluster.totals()[2]

    def gpu_allocated(self) -> float:
        total = self.total_gpu_milli
        return self.core.cluster.gpu_allocated_milli() / total if total else 0.0

    def handle(self, *events: Event) -> int:
        """One ``handle`` call; remember its assignments (to start later); return how many."""
        return self.take(self.core.handle(*events, now=self.now))

    def take(self, out: list[Instruction]) -> int:
        placed = 0
        for ins in out:
            if isinstance(ins, Assign):
                placed += 1
                self.pending_starts.append(
                    TaskStarted(f"start:{ins.task_id}", ins.task_id, ins.attempt, ins.node_id)
                )
        return placed

    def starts(self) -> list[TaskStarted]:
        events, self.pending_starts = self.pending_starts, []
        self.running += [(ev.task_id, ev.attempt) for ev in events]
        return events

    def arrivals(self, count: int, *, deadlines: bool) -> list[TaskSubmitted]:
        frm = self.now if deadlines else None
        specs = (self.workload.task(deadline_from_s=frm) for _ in range(count))
        return [TaskSubmitted(f"sub:{s.task_id}", s) for s in specs]

    def submit(self, count: int, *, deadlines: bool) -> None:
        """Submit ``count`` new tasks in chunks of :data:`SUBMIT_CHUNK`, then settle."""
        while count > 0:
            n = min(count, SUBMIT_CHUNK)
            count -= n
            self.handle(*self.starts(), *self.arrivals(n, deadlines=deadlines))
        self.settle()

    def settle(self) -> None:
        """Start what was assigned; run cycles until one places nothing (a cycle examines
        at most ``max_scan`` queued tasks, so a big batch takes several)."""
        placed = 1
        while placed or self.pending_starts:
            placed = self.handle(*self.starts())

    def complete_random(self) -> TaskCompleted:
        i = self.rng.randrange(len(self.running))
        self.running[i], self.running[-1] = self.running[-1], self.running[i]
        task_id, attempt = self.running.pop()
        rec = self.core.tasks[task_id]
        assert rec.hardware is not None
        runtime = self.workload.runtime_s(rec.spec, rec.hardware)
        return TaskCompleted(f"done:{task_id}", task_id, attempt, runtime)


def _forecaster(policy: Policy) -> RuntimeForecaster:
    if policy.forecaster == "oracle":
        raise ValueError("policy 'oracle' needs true runtimes; bench core cannot run it")
    return DaskLikeForecaster() if policy.forecaster == "dask-like" else RunningMeanForecaster()


def _with_scan(policy: Policy, max_scan: int) -> Policy:
    return replace(policy, params=replace(policy.params, max_scan=max_scan))


def _fill(driver: _Driver) -> None:
    """Step 3 of the module docstring (the driver's core runs :data:`FILL_POLICY`)."""
    core = driver.core
    while driver.gpu_allocated() < FILL_TARGET:
        free = (FILL_TARGET - driver.gpu_allocated()) * driver.total_gpu_milli
        # Batches sized to what still fits, so that few fill tasks are left queued.
        batch = max(8, min(SUBMIT_CHUNK, int(free / MEAN_GPU_DEMAND_MILLI * 0.7)))
        before = len(core.queue)
        driver.submit(batch, deadlines=False)
        if len(core.queue) - before > 0.8 * batch:
            break  # saturated: what is left does not fit
    driver.handle(*(CancelTask(f"setup:{t}", t, "bench setup") for t in core.queue.task_ids()))


def _backlog(driver: _Driver, policy: Policy, queued: int) -> None:
    """Step 4: grow the ready queue to ``queued`` with cheap cycles, run up to
    :data:`WARM_CYCLES` full cycles of ``policy`` (they place what fits and prefers not
    to wait), then top the queue up again."""
    core, cheap = driver.core, _with_scan(policy, SETUP_SCAN)
    core.policy = cheap
    while len(core.queue) < queued:
        driver.submit(queued - len(core.queue), deadlines=True)
    core.policy = policy
    for _ in range(WARM_CYCLES):
        if not driver.handle(*driver.starts()):
            break
    core.policy = cheap
    driver.submit(queued - len(core.queue), deadlines=True)
    core.policy = policy


def _measure(
    driver: _Driver,
    policy: Policy,
    decisions: int,
    budget_s: float,
    on_decision: Callable[[int, int], None] | None,
    split: bool = False,
) -> dict[str, Any]:
    """Step 5: the steady-state loop; returns the measured fields of a BenchPoint."""
    core, quiet = driver.core, _with_scan(policy, 0)
    queued_at_start, running_at_start = len(core.queue), len(driver.running)
    alloc_at_start = driver.gpu_allocated()
    gc.collect()
    gc.freeze()  # setup objects never die: keep them out of the collector (see docstring)
    latencies_ns: list[int] = []
    bookkeeping_ns: list[int] = []
    assigns: list[int] = []
    stop_at = time.perf_counter() + budget_s
    while len(latencies_ns) < decisions and driver.running and time.perf_counter() < stop_at:
        driver.now += 1.0
        event: Event = driver.complete_random()
        if split:
            core.policy = quiet
            driver.handle(event)
            core.policy = policy
            event = Tick(f"tick:{driver.now:g}")
        t0 = time.perf_counter_ns()
        out = core.handle(event, now=driver.now)
        latencies_ns.append(time.perf_counter_ns() - t0)
        placed = driver.take(out)
        assigns.append(placed)
        events: list[Event] = [*driver.starts(), *driver.arrivals(placed, deadlines=True)]
        core.policy = quiet
        t0 = time.perf_counter_ns()
        driver.handle(*events)
        bookkeeping_ns.append(time.perf_counter_ns() - t0)
        core.policy = policy
        if on_decision is not None:
            on_decision(len(latencies_ns), decisions)
    lat = np.array(latencies_ns, np.float64) / 1000.0
    return {
        "queued_at_start": queued_at_start,
        "queued_at_end": len(core.queue),
        "running_at_start": running_at_start,
        "gpu_allocated_at_start": round(alloc_at_start, 4),
        "gpu_allocated_at_end": round(driver.gpu_allocated(), 4),
        "decisions": len(latencies_ns),
        "stopped_by_budget": len(latencies_ns) < decisions,
        "p50_us": _pct(lat, 50),
        "p99_us": _pct(lat, 99),
        "max_us": _pct(lat, 100),
        "mean_us": round(float(lat.mean()), 1) if lat.size else math.nan,
        "assigns_per_call": round(float(np.mean(assigns)), 3) if assigns else 0.0,
        "calls_without_assign": assigns.count(0),
        "bookkeeping_p50_us": _pct(np.array(bookkeeping_ns, np.float64) / 1000.0, 50),
    }


def _pct(values: npt.NDArray[np.float64], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values.size else math.nan


def run_grid(
    nodes: Sequence[int],
    queued: Sequence[int],
    decisions: int,
    *,
    policy: str = "forecast",
    params: Mapping[str, float] | None = None,
    seed: int = 0,
    budget_s: float = math.inf,
    on_point: Callable[[BenchPoint], None] | None = None,
    on_decision: Callable[[int, int], None] | None = None,
    split: bool = False,
) -> list[BenchPoint]:
    """Measure every (nodes, queued) pair: up to ``decisions`` completion calls each,
    stopping a point early after ``budget_s`` seconds of measuring.

    Nodes outer, queued ascending: one cluster is filled per node count and its backlog
    grown in place from one queue size to the next (``setup_s`` of the first point of a
    node count includes the fill). Raises ValueError for bad sizes or policy parameters.
    """
    if not nodes or min(nodes) < len(NODE_MIX):
        raise ValueError(f"node counts must be >= {len(NODE_MIX)}, got {list(nodes)}")
    if not queued or min(queued) < 1 or decisions < 1:
        raise ValueError(
            f"queue sizes and decisions must be >= 1, got {list(queued)} and {decisions}"
        )
    measured = get_policy(policy, **(params or {}))
    _forecaster(measured)  # fail fast, before any setup
    points = []
    for n in nodes:
        start = time.perf_counter()
        driver = _Driver(n, measured, seed)
        _fill(driver)
        for q in sorted(set(queued)):
            _backlog(driver, measured, q)
            setup_s = time.perf_counter() - start
            fields = _measure(driver, measured, decisions, budget_s, on_decision, split)
            point = BenchPoint(
                policy=policy, nodes=n, queued_target=q, setup_s=round(setup_s, 3), **fields
            )
            points.append(point)
            if on_point is not None:
                on_point(point)
            start = time.perf_counter()
    return points


def run_point(
    nodes: int,
    queued: int,
    decisions: int,
    *,
    policy: str = "forecast",
    params: Mapping[str, float] | None = None,
    seed: int = 0,
    budget_s: float = math.inf,
) -> BenchPoint:
    """One grid point (see :func:`run_grid`)."""
    points = run_grid(
        [nodes], [queued], decisions, policy=policy, params=params, seed=seed, budget_s=budget_s
    )
    return points[0]


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
    }
