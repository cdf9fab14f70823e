"""Hypothesis property: random interleavings of lost attempts, heartbeats that list random
(current and stale) attempts, node losses, returns and policy updates never double-book
capacity, never change a finished task, never use up a retry, never stop an attempt the
core still runs there, cause no churn when a heartbeat repeats, and replay identically.

``drive`` runs ``validate_state`` and the capacity check after every step.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsched.scheduler.core import CoreConfig, SchedulerCore
from streamsched.scheduler.events import Event, NodeUp, TaskLost, UpdatePolicy
from streamsched.scheduler.forecasting import RunningMeanForecaster
from streamsched.scheduler.instructions import (
    Assign,
    Instruction,
    StopAttempt,
    TaskTransition,
)
from streamsched.scheduler.model import NodeSpec, TaskSpec, TaskState
from streamsched.scheduler.policies import get_policy
from streamsched.scheduler.statemachine import HOLDS_RESOURCES
from streamsched.testing import completed, drive, lost, node, started, submitted, task, tick, up

S = TaskState
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: (policy, its parameters): fifo, and forecast with eager preemption.
POLICIES = [
    pytest.param("fifo", {}, id="fifo"),
    pytest.param(
        "forecast", {"preempt_min_run_s": 0.0, "preempt_factor": 1.0}, id="forecast-eager"
    ),
]
UPDATES = [
    UpdatePolicy("pol:fifo", "fifo"),
    UpdatePolicy("pol:forecast", "forecast", (("sjf_weight", 10.0),)),
    UpdatePolicy("pol:best-fit", "best-fit"),
    UpdatePolicy("pol:bad", "forecast", (("max_scan", 0),)),  # rejected
]

Op = tuple[str, int, int]  # kind, index, seed of a subset


@dataclass
class Script:
    nodes: list[NodeSpec]
    tasks: list[TaskSpec]
    steps: list[tuple[Op, float]]
    grace: float
    max_lost: int | None


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    nodes = [node(f"n{i}", gpus=draw(st.integers(1, 3))) for i in range(draw(st.integers(1, 3)))]
    tasks = [
        task(
            f"t{i}",
            gpus=draw(st.integers(1, 2)),
            preemptible=draw(st.booleans()),
            priority=draw(st.sampled_from(["low", "normal", "high"])),
            runtime_s=draw(st.sampled_from([10.0, 1000.0])),
            max_retries=draw(st.integers(0, 1)),
        )
        for i in range(draw(st.integers(1, 6)))
    ]
    index = st.integers(0, 50)
    ops = st.one_of(
        st.tuples(st.just("submit"), st.just(0), st.just(0)),
        st.tuples(st.sampled_from(["start", "complete", "lost"]), index, st.just(0)),
        st.tuples(st.just("heartbeat"), index, st.integers(0, 2**16)),
        st.tuples(st.just("heartbeat"), index, st.integers(0, 2**16)),
        st.tuples(st.sampled_from(["node-lost", "up", "policy", "tick"]), index, st.just(0)),
    )
    steps = draw(
        st.lists(st.tuples(ops, st.sampled_from([0.0, 5.0, 20.0, 40.0])), min_size=10, max_size=50)
    )
    return Script(
        nodes,
        tasks,
        [(("submit", 0, 0), 1.0)] * len(tasks) + steps,
        grace=draw(st.sampled_from([0.0, 10.0, 30.0])),
        max_lost=draw(st.sampled_from([None, 1, 3])),
    )


@dataclass
class Run:
    batches: list[tuple[float, Event]] = field(default_factory=list)
    outputs: list[list[Instruction]] = field(default_factory=list)


def new(policy: str, params: dict[str, float], script: Script) -> SchedulerCore:
    config = CoreConfig(reconcile_grace_s=script.grace, max_lost_attempts=script.max_lost)
    return SchedulerCore(get_policy(policy, **params), RunningMeanForecaster(), config)


def event_for(
    core: SchedulerCore, script: Script, op: Op, assigned: list[Assign], next_task: int
) -> Event:
    kind, i, seed = op
    if kind == "submit" and next_task < len(script.tasks):
        return submitted(script.tasks[next_task])
    if kind in ("start", "complete", "lost") and assigned:
        a = assigned[-1 - i % len(assigned)]  # recent ones mostly, stale ones too
        if kind == "start":
            return started(a.task_id, a.attempt, a.node_id)
        if kind == "complete":
            return completed(a.task_id, a.attempt, 5.0)
        return TaskLost(f"lost:{a.task_id}:{a.attempt}", a.task_id, a.attempt, "vanished")
    spec = script.nodes[i % len(script.nodes)]
    if kind == "heartbeat":
        # A random subset of every attempt ever assigned to this node, current and stale.
        mine = sorted({(a.task_id, a.attempt) for a in assigned if a.node_id == spec.node_id})
        listed = frozenset(x for k, x in enumerate(mine) if seed >> (k % 16) & 1)
        return NodeUp(f"hb:{spec.node_id}:{seed}", spec, listed)
    if kind == "node-lost":
        return lost(spec.node_id)
    if kind == "up":
        return up(spec)
    if kind == "policy":
        return UPDATES[i % len(UPDATES)]
    return tick(float(i))


def check_stops(core: SchedulerCore, out: list[Instruction], ev: Event) -> None:
    """A stop never names an attempt the core still runs on that node; a heartbeat's
    stops name attempts that heartbeat listed."""
    for stop in (i for i in out if isinstance(i, StopAttempt)):
        rec = core.tasks.get(stop.task_id)
        if rec is None:  # compacted: it has ended
            state = core.state_of(stop.task_id)
            assert state is not None, stop
            assert state.terminal, stop
        else:
            assert not (
                rec.attempt == stop.attempt
                and rec.state in HOLDS_RESOURCES
                and rec.node_id == stop.node_id
            ), stop
        if isinstance(ev, NodeUp) and stop.reason.startswith("orphan"):
            assert ev.running is not None
            assert (stop.task_id, stop.attempt) in ev.running


def play(core: SchedulerCore, script: Script) -> Run:
    run = Run()
    now = 0.0
    drive(core, [up(n) for n in script.nodes], now)
    assigned: list[Assign] = []
    next_task = 0
    for op, dt in script.steps:
        ev = event_for(core, script, op, assigned, next_task)
        next_task += op[0] == "submit"
        now += dt
        out = drive(core, ev, now)
        run.batches.append((now, ev))
        run.outputs.append(out)
        check_stops(core, out, ev)
        assigned += [i for i in out if isinstance(i, Assign)]
        if isinstance(ev, NodeUp):
            # The same heartbeat again at once: no new stop, nothing lost (no churn).
            again = drive(core, ev, now)
            run.batches.append((now, ev))
            run.outputs.append(again)
            assert not any(isinstance(i, StopAttempt) for i in again), again
            assert not any(isinstance(i, TaskTransition) and i.new is S.QUEUED for i in again), (
                again
            )
            assigned += [i for i in again if isinstance(i, Assign)]
    return run


@pytest.mark.parametrize(("policy", "params"), POLICIES)
@SETTINGS
@given(script=scripts())
def test_lost_and_heartbeat_interleavings_keep_every_invariant(
    policy: str, params: dict[str, float], script: Script
) -> None:
    core = new(policy, params, script)
    run = play(core, script)
    instructions = [i for out in run.outputs for i in out]

    # Nothing here fails an attempt: losses never use up a retry.
    assert all(rec.retries == 0 for rec in core.tasks.values())
    # Losses are bounded: a task that lost more than the limit has failed.
    for rec in core.tasks.values():
        if script.max_lost is not None and rec.losses > script.max_lost:
            assert rec.state is S.FAILED, rec.spec.task_id

    # Terminal states never change; a task completes at most once.
    transitions = [i for i in instructions if isinstance(i, TaskTransition)]
    succeeded = Counter(t.task_id for t in transitions if t.new is S.SUCCEEDED)
    assert all(n == 1 for n in succeeded.values()), succeeded
    ended: set[str] = set()
    for t in transitions:
        assert t.task_id not in ended, t
        if t.new.terminal:
            ended.add(t.task_id)

    # Attempt numbers go up by one per assignment.
    attempts: dict[str, int] = {}
    for a in (i for i in instructions if isinstance(i, Assign)):
        assert a.attempt == attempts.get(a.task_id, 0) + 1, a
        attempts[a.task_id] = a.attempt

    # Same events, same instructions.
    replay = new(policy, params, script)
    replay.handle(*[up(n) for n in script.nodes], now=0.0)
    for (now, ev), expected in zip(run.batches, run.outputs, strict=True):
        assert replay.handle(ev, now=now) == expected
