"""Heartbeat reconciliation must not declare lost an attempt that finished (its terminal
event not read yet) or that has not reached its node (the executor down or behind): both
made a chaos run execute tasks twice. And a lost node is told to stop what it held."""

from __future__ import annotations

from typing import Any

from streamsched.scheduler.core import UNREAD_ASSIGNMENT_GRACES, CoreConfig, SchedulerCore
from streamsched.scheduler.events import NodeUp
from streamsched.scheduler.forecasting import RunningMeanForecaster
from streamsched.scheduler.instructions import StopAttempt
from streamsched.scheduler.model import NodeSpec, TaskState
from streamsched.scheduler.policies import get_policy
from streamsched.testing import (
    assigns,
    completed,
    drive,
    lost,
    node,
    of_type,
    submitted,
    task,
    transitions,
    up,
)

S = TaskState
GRACE = 10.0
N0, N1 = node("n0", gpus=1), node("n1", gpus=1)


def core_with(*nodes: NodeSpec, **config: Any) -> SchedulerCore:
    config.setdefault("reconcile_grace_s", GRACE)
    core = SchedulerCore(get_policy("fifo"), RunningMeanForecaster(), CoreConfig(**config))
    drive(core, [up(n) for n in nodes], 0.0)
    return core


def beat(
    spec: NodeSpec,
    running: frozenset[tuple[str, int]] = frozenset(),
    *,
    ended: frozenset[tuple[str, int]] = frozenset(),
    seen: int | None = None,
    at: float = 0.0,
) -> NodeUp:
    return NodeUp(f"hb:{spec.node_id}:{at}", spec, running, at, ended=ended, assignments_seen=seen)


def test_assignments_are_numbered_per_node() -> None:
    core = core_with(node("n0", gpus=2), node("n1", gpus=1))
    out = drive(core, [submitted(task(f"t{i}", gpus=1)) for i in range(3)], 1.0)
    numbers: dict[str, list[int | None]] = {}
    for a in assigns(out):
        numbers.setdefault(a.node_id, []).append(a.sequence)
    assert numbers == {"n0": [1, 2], "n1": [1]}
    assert {core.tasks[a.task_id].assign_seq for a in assigns(out)} == {1, 2}


def test_an_attempt_that_ended_is_not_lost_while_its_event_is_on_its_way() -> None:
    core = core_with(N0)
    drive(core, submitted(task("t", gpus=1)), 1.0)
    out = drive(core, beat(N0, ended=frozenset({("t", 1)}), seen=1, at=30.0), 30.0)
    assert not transitions(out)  # not lost: it ended there
    out = drive(core, completed("t", 1), 31.0)
    assert [t.new for t in transitions(out)] == [S.SUCCEEDED]
    assert core.tasks["t"].attempt == 1


def test_an_attempt_its_node_has_not_consumed_is_on_its_way() -> None:
    core = core_with(N0)
    (a,) = assigns(drive(core, submitted(task("t", gpus=1)), 1.0))
    assert a.sequence == 1
    out = drive(core, beat(N0, seen=0, at=30.0), 30.0)  # restarted, still catching up
    assert not transitions(out)
    assert core.tasks["t"].state is S.ASSIGNED
    out = drive(core, beat(N0, seen=1, at=31.0), 31.0)  # consumed it, and does not run it
    (requeued,) = transitions(out)[:1]
    assert (requeued.old, requeued.new) == (S.ASSIGNED, S.QUEUED)
    assert "not listed by its heartbeats" in requeued.reason


def test_an_assignment_never_consumed_is_lost_after_many_graces() -> None:
    core = core_with(N0)
    drive(core, submitted(task("t", gpus=1)), 1.0)
    limit = 1.0 + UNREAD_ASSIGNMENT_GRACES * GRACE
    assert not transitions(drive(core, beat(N0, seen=0, at=limit - 1.0), limit - 1.0))
    out = drive(core, beat(N0, seen=0, at=limit + 1.0), limit + 1.0)
    assert transitions(out)[0].new is S.QUEUED
    assert "its assignment 1 never consumed" in transitions(out)[0].reason


def test_without_the_new_fields_a_missing_attempt_is_lost_after_the_grace() -> None:
    core = core_with(N0)
    drive(core, submitted(task("t", gpus=1)), 1.0)
    assert not transitions(drive(core, beat(N0, at=1.0 + GRACE - 1.0), 1.0 + GRACE - 1.0))
    out = drive(core, beat(N0, at=1.0 + GRACE + 1.0), 1.0 + GRACE + 1.0)
    assert transitions(out)[0].new is S.QUEUED


def test_a_lost_node_is_told_to_stop_the_attempts_it_held() -> None:
    core = core_with(N0, N1)
    (a,) = assigns(drive(core, submitted(task("t", gpus=1)), 1.0))
    out = drive(core, lost(a.node_id, "no heartbeat for 11 s"), 2.0)
    (stop,) = of_type(out, StopAttempt)
    assert (stop.task_id, stop.attempt, stop.node_id) == ("t", 1, a.node_id)
    assert "lost, attempt re-queued" in stop.reason
    (retry,) = assigns(out)
    assert (retry.attempt, retry.node_id) == (2, "n1" if a.node_id == "n0" else "n0")


def test_the_simulator_setting_sends_no_stop_to_a_lost_node() -> None:
    core = core_with(N0, N1, stop_attempts_of_lost_nodes=False)
    (a,) = assigns(drive(core, submitted(task("t", gpus=1)), 1.0))
    assert not of_type(drive(core, lost(a.node_id), 2.0), StopAttempt)
