"""Hypothesis properties of the core over random clusters and random event sequences.

A generated *script* (nodes, tasks, and a list of abstract operations) is played against a
core: operations that need an attempt pick one of the assignments issued so far (old ones
too, so stale events happen), and some operations redeliver an earlier event verbatim
(duplicates). The events actually delivered are recorded, so a second fresh core can be fed
exactly the same input. After every step ``drive`` runs ``validate_state`` and checks that
no free CPU, memory or GPU count went negative.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsched.scheduler.core import SchedulerCore
from streamsched.scheduler.events import Event
from streamsched.scheduler.instructions import Assign, Instruction, Preempt, TaskTransition
from streamsched.scheduler.model import NodeSpec, TaskSpec, TaskState
from streamsched.scheduler.policies import POLICY_NAMES
from streamsched.testing import (
    cancel,
    completed,
    drive,
    failed,
    lost,
    new_core,
    node,
    preempted,
    progress,
    run_world,
    started,
    submitted,
    task,
    tick,
    up,
)

HARDWARE = ("cpu", "gpu-k80", "gpu-v100")
REGIONS = ("us", "eu")
#: How much slower each class runs a task than v100 (the executors' truth).
SLOWDOWN = {"cpu": 5.0, "gpu-k80": 3.0, "gpu-v100": 1.0}
#: Every policy, plus ``forecast`` with eager preemption (no minimum run, factor 1) so that
#: random sequences reach the preemption code.
EAGER = {"preempt_min_run_s": 0.0, "preempt_factor": 1.0}
S = TaskState
PROPERTY_POLICIES = [pytest.param(name, {}, id=name) for name in POLICY_NAMES] + [
    pytest.param("forecast", EAGER, id="forecast-eager-preemption")
]

SETTINGS = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------- strategies
@st.composite
def node_specs(draw: st.DrawFn, i: int) -> NodeSpec:
    hardware = draw(st.sampled_from(HARDWARE))
    gpus = 0 if hardware == "cpu" else draw(st.integers(1, 4))
    region = draw(st.sampled_from((None, *REGIONS)))
    return node(
        f"n{i}",
        hardware,
        gpus=gpus,
        cpu_milli=draw(st.sampled_from([4000, 8000, 16000])),
        memory_mib=draw(st.sampled_from([8192, 32768])),
        labels={"region": region} if region else {},
    )


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeSpec]:
    count = draw(st.integers(1, 5))
    return [draw(node_specs(i)) for i in range(count)]


@st.composite
def task_specs(draw: st.DrawFn, i: int, allow_huge: bool = True) -> TaskSpec:
    shape = draw(st.sampled_from(["cpu", "whole", "whole", "share", "share"]))
    if allow_huge and draw(st.sampled_from([False] * 19 + [True])):
        shape = "huge"
    gpus, share = 0, None
    if shape == "whole":
        gpus = draw(st.integers(1, 4))
    elif shape == "share":
        share = draw(st.sampled_from([250, 500, 750]))
    elif shape == "huge":
        gpus = 16  # more than any node may have: rejected
    region = draw(st.sampled_from((None, None, None, *REGIONS)))
    if gpus == 0 and share is None:
        hardware = draw(st.sampled_from([(), (), (), ("cpu",), ("cpu", "gpu-k80")]))
    else:
        hardware = draw(st.sampled_from([(), (), (), ("gpu-v100",), ("gpu-k80", "gpu-v100")]))
    earlier = [f"t{j}" for j in range(i)]
    deps = draw(st.lists(st.sampled_from(earlier), max_size=2, unique=True)) if earlier else []
    return task(
        f"t{i}",
        draw(st.sampled_from(["a", "b", "c"])),
        gpus=gpus,
        share=share,
        cpu_milli=draw(st.sampled_from([500, 1000, 4000])),
        memory_mib=draw(st.sampled_from([512, 4096])),
        hardware=hardware,
        tenant=draw(st.sampled_from(["x", "y"])),
        priority=draw(st.sampled_from(["low", "normal", "normal", "high", "critical"])),
        deadline_s=draw(st.sampled_from([None, None, 50.0, 5000.0])),
        preemptible=draw(st.booleans()),
        depends_on=deps,
        governance={"region": region} if region else {},
        runtime_s=draw(st.sampled_from([None, 10.0, 100.0, 1000.0])),
        max_retries=draw(st.integers(0, 2)),
    )


#: An abstract operation: (kind, index, live, value). ``index`` picks a node, a task, an
#: attempt or an earlier event; attempt operations pick among the attempts the core still
#: runs when ``live`` (most of the time), else among every assignment ever made (stale
#: ones included); ``value`` is the runtime, progress, or (for "fail") retryable if > 0.
Op = tuple[str, int, bool, float]

_LIVE = st.sampled_from([True, True, True, False])


_ZERO, _NOT_LIVE, _NO_VALUE = st.just(0), st.just(False), st.just(0.0)


def op(
    kind: str,
    index: st.SearchStrategy[int] = _ZERO,
    live: st.SearchStrategy[bool] = _NOT_LIVE,
    value: st.SearchStrategy[float] = _NO_VALUE,
) -> st.SearchStrategy[Op]:
    return st.tuples(st.just(kind), index, live, value)


_ATTEMPT = st.integers(0, 7)
_START = op("start", _ATTEMPT, _LIVE)
_COMPLETE = op("complete", _ATTEMPT, _LIVE, st.sampled_from([0.0, 5.0, 200.0]))
_TICK = op("tick")
OPS = st.one_of(
    op("submit"),
    _START,
    _START,
    _START,
    _COMPLETE,
    _COMPLETE,
    op("fail", _ATTEMPT, _LIVE, st.sampled_from([0.0, 1.0])),
    op("preempt", _ATTEMPT, _LIVE, st.sampled_from([0.0, 0.5, 1.0])),
    op("progress", _ATTEMPT, _LIVE, st.sampled_from([0.1, 0.6])),
    op("lost", st.integers(0, 4)),
    op("up", st.integers(0, 4)),
    op("cancel", st.integers(0, 9)),
    op("dup", st.integers(0, 30)),
    _TICK,
    _TICK,
)


@dataclass
class Script:
    nodes: list[NodeSpec]
    tasks: list[TaskSpec]
    #: (operation, seconds to advance before it, batched with the next operation)
    steps: list[tuple[Op, float, bool]]


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    nodes = draw(clusters())
    tasks = [draw(task_specs(i)) for i in range(draw(st.integers(2, 10)))]
    # Submissions first-ish (so that later operations find attempts to act on), then a
    # random interleaving.
    submits: list[tuple[Op, float, bool]] = [(("submit", 0, False, 0.0), 1.0, False)]
    submits *= draw(st.integers(0, len(tasks)))
    steps = draw(
        st.lists(
            st.tuples(OPS, st.sampled_from([0.0, 1.0, 60.0, 400.0]), st.booleans()),
            min_size=15,
            max_size=60,
        )
    )
    steps = submits + steps
    return Script(nodes, tasks, steps)


# ---------------------------------------------------------------------- playing a script
@dataclass
class Run:
    """What playing a script gave: the batches delivered (with their time) and the
    instructions of each."""

    batches: list[tuple[float, list[Event]]] = field(default_factory=list)
    outputs: list[list[Instruction]] = field(default_factory=list)


def play(core: SchedulerCore, script: Script) -> Run:
    run = Run()
    now = 0.0
    drive_and_check(core, run, [up(n) for n in script.nodes], now)
    assignments: list[Assign] = []
    delivered: list[Event] = []
    next_task = 0
    batch: list[Event] = []
    for (kind, index, live, value), dt, batched in script.steps:
        event: Event | None = None
        if kind == "submit" and next_task < len(script.tasks):
            event = submitted(script.tasks[next_task])
            next_task += 1
        elif kind in ("start", "complete", "fail", "preempt", "progress") and assignments:
            wanted = (S.ASSIGNED,) if kind == "start" else (S.ASSIGNED, S.RUNNING)
            pool = [x for x in assignments if is_live(core, x, wanted)] if live else []
            pool = pool or assignments
            event = attempt_event(kind, pool[-1 - index % len(pool)], value)
        elif kind == "lost":
            event = lost(script.nodes[index % len(script.nodes)].node_id)
        elif kind == "up":
            event = up(script.nodes[index % len(script.nodes)])
        elif kind == "cancel":
            event = cancel(f"t{index % max(next_task, 1)}")
        elif kind == "dup" and delivered:
            event = delivered[index % len(delivered)]
        if event is None:
            event = tick(now)
        batch.append(event)
        if batched:
            continue
        now += dt
        out = drive_and_check(core, run, batch, now)
        delivered += batch
        assignments += [i for i in out if isinstance(i, Assign)]
        batch = []
    if batch:
        drive_and_check(core, run, batch, now + 1.0)
    return run


def attempt_event(kind: str, a: Assign, value: float) -> Event:
    """The executor's report ``kind`` about the attempt ``a`` made."""
    if kind == "start":
        return started(a.task_id, a.attempt, a.node_id)
    if kind == "complete":
        return completed(a.task_id, a.attempt, value)
    if kind == "fail":
        return failed(a.task_id, a.attempt, "boom", retryable=value > 0)
    if kind == "preempt":
        return preempted(a.task_id, a.attempt, value)
    return progress(a.task_id, a.attempt, value)


def is_live(core: SchedulerCore, a: Assign, states: tuple[TaskState, ...]) -> bool:
    rec = core.tasks.get(a.task_id)  # None: ended and compacted
    return rec is not None and rec.attempt == a.attempt and rec.state in states


def drive_and_check(
    core: SchedulerCore, run: Run, batch: list[Event], now: float
) -> list[Instruction]:
    out = drive(core, batch, now)  # validate_state + capacity check
    run.batches.append((now, batch))
    run.outputs.append(out)
    check_assignments(core, out)
    return out


def check_assignments(core: SchedulerCore, out: list[Instruction]) -> None:
    """Hard rules every Assign obeys, checked against the core's view right after."""
    c = core.cluster
    for a in out:
        if isinstance(a, Preempt):
            assert core.tasks[a.task_id].spec.preemptible, a
            assert core.policy.preemption, a
        if not isinstance(a, Assign):
            continue
        spec = core.tasks[a.task_id].spec
        row = c.index[a.node_id]
        node_spec = c.specs[row]
        assert c.alive[row], f"{a.task_id} assigned to dead node {a.node_id}"
        assert a.hardware == node_spec.hardware
        if spec.allowed_hardware:
            assert node_spec.hardware in spec.allowed_hardware, (a.task_id, node_spec)
        for key, value in spec.governance.items():
            assert node_spec.labels.get(key) == value, (a.task_id, dict(spec.governance), node_spec)
        for dep in spec.depends_on:
            assert core.state_of(dep) is TaskState.SUCCEEDED, (a.task_id, dep)
        assert spec.cpu_milli <= node_spec.cpu_milli
        assert spec.memory_mib <= node_spec.memory_mib
        if spec.gpus == 0:
            assert a.gpu_indices == ()
        elif spec.is_gpu_share:
            assert len(a.gpu_indices) == 1
            assert a.gpu_milli == spec.gpu_milli
        else:
            assert len(set(a.gpu_indices)) == spec.gpus
            assert a.gpu_milli == 1000
        assert all(0 <= g < node_spec.gpus for g in a.gpu_indices)


def all_instructions(run: Run) -> list[Instruction]:
    return [i for out in run.outputs for i in out]


# ---------------------------------------------------------------------- properties
@pytest.mark.parametrize(("policy", "params"), PROPERTY_POLICIES)
@SETTINGS
@given(script=scripts())
def test_random_event_sequences_keep_every_invariant(
    policy: str, params: dict[str, float], script: Script
) -> None:
    core = new_core(policy, params=params)
    run = play(core, script)
    instructions = all_instructions(run)

    # A task completes at most once; terminal states never change.
    transitions = [i for i in instructions if isinstance(i, TaskTransition)]
    succeeded = Counter(t.task_id for t in transitions if t.new is TaskState.SUCCEEDED)
    assert all(n == 1 for n in succeeded.values()), succeeded
    ended: set[str] = set()
    for t in transitions:
        assert t.task_id not in ended, f"{t.task_id} moved after a terminal state: {t}"
        if t.new.terminal:
            ended.add(t.task_id)

    # Attempt numbers are fencing tokens: each assignment of a task takes the next one.
    attempts: dict[str, int] = {}
    for a in instructions:
        if isinstance(a, Assign):
            assert a.attempt == attempts.get(a.task_id, 0) + 1, a
            attempts[a.task_id] = a.attempt
            assert (a.decision.task_id, a.decision.attempt) == (a.task_id, a.attempt)

    # Same events, same instructions (dataclass equality, floats included).
    replay = new_core(policy, params=params)
    for (now, batch), expected in zip(run.batches, run.outputs, strict=True):
        assert replay.handle(*batch, now=now) == expected


def fits_somewhere(spec: TaskSpec, nodes: list[NodeSpec]) -> bool:
    for n in nodes:
        if spec.allowed_hardware and n.hardware not in spec.allowed_hardware:
            continue
        if any(n.labels.get(k) != v for k, v in spec.governance.items()):
            continue
        if (
            spec.cpu_milli <= n.cpu_milli
            and spec.memory_mib <= n.memory_mib
            and spec.gpus <= n.gpus
        ):
            return True
    return False


#: Nodes, (arrival time, task) pairs, and each task's work (seconds on v100).
World = tuple[list[NodeSpec], list[tuple[float, TaskSpec]], dict[str, float]]


@st.composite
def finite_worlds(draw: st.DrawFn) -> World:
    nodes = draw(clusters())
    arrivals: list[tuple[float, TaskSpec]] = []
    work: dict[str, float] = {}
    now = 0.0
    for i in range(draw(st.integers(1, 14))):
        spec = draw(task_specs(i, allow_huge=False))
        # Only tasks that fit somewhere, depending only on tasks that are in the stream.
        spec = replace(spec, depends_on=tuple(d for d in spec.depends_on if d in work))
        if not fits_somewhere(spec, nodes):
            continue
        now += draw(st.sampled_from([0.0, 0.0, 10.0, 100.0, 1000.0]))
        arrivals.append((now, spec))
        work[spec.task_id] = draw(st.sampled_from([5.0, 50.0, 500.0, 5000.0]))
    return nodes, arrivals, work


@pytest.mark.parametrize(
    "params", [pytest.param({}, id="forecast"), pytest.param(EAGER, id="eager-preemption")]
)
@SETTINGS
@given(world=finite_worlds())
def test_forecast_places_every_task_of_a_finite_stream(
    params: dict[str, float],
    world: World,
) -> None:
    nodes, arrivals, work = world
    core = new_core("forecast", nodes=nodes, params=params)

    def runtime(a: Assign) -> float:
        return work[a.task_id] * SLOWDOWN[a.hardware] * (1.0 - a.resume_progress)

    log = run_world(core, [(t, submitted(s)) for t, s in arrivals], runtime, max_steps=5000)
    states = {s.task_id: core.state_of(s.task_id) for _, s in arrivals}
    assert all(state is TaskState.SUCCEEDED for state in states.values()), states
    # No thrashing: a task is preempted at most max_preemptions times.
    assigned = Counter(i.task_id for i in log if isinstance(i, Assign))
    assert max(assigned.values(), default=0) <= 1 + core.policy.params.max_preemptions
