"""Reliability rules of the core: retry backoff and budget, a bound on the nodes a task
may fail on, per-tenant admission, cancels only by the owner, circuit breakers per
hardware class. Events in, instructions compared; ``validate_state`` after every step."""

from __future__ import annotations

import re
from typing import Any

import pytest

from streamsched.scheduler.breaker import BreakerState
from streamsched.scheduler.core import CoreConfig, SchedulerCore
from streamsched.scheduler.events import CancelTask, TaskLost
from streamsched.scheduler.forecasting import RunningMeanForecaster, RuntimeForecaster
from streamsched.scheduler.instructions import (
    Assign,
    BreakerChanged,
    CancelRefused,
    Instruction,
    Reject,
    StaleEvent,
    StopAttempt,
)
from streamsched.scheduler.model import NodeSpec, TaskState
from streamsched.scheduler.policies import get_policy
from streamsched.testing import (
    assigns,
    completed,
    drive,
    failed,
    lost,
    node,
    of_type,
    started,
    submitted,
    task,
    tick,
    transitions,
    up,
)

S = TaskState

#: No backoff, no breaker, no node bound: each test turns on what it is about.
QUIET: dict[str, Any] = {
    "retry_backoff_s": 0.0,
    "max_distinct_failed_nodes": None,
    "breaker_min_failures": None,
}


def core_with(
    nodes: list[NodeSpec],
    policy: str = "best-fit",
    forecaster: RuntimeForecaster | None = None,
    **config: Any,
) -> SchedulerCore:
    """A core of ``policy`` with ``CoreConfig(**{**QUIET, **config})``, nodes up at 0."""
    core = SchedulerCore(
        get_policy(policy), forecaster or RunningMeanForecaster(), CoreConfig(**{**QUIET, **config})
    )
    if nodes:
        drive(core, [up(n) for n in nodes], 0.0)
    return core


def gpus(*names: str, hardware: str = "gpu-v100") -> list[NodeSpec]:
    return [node(n, hardware, gpus=1) for n in names]


def only(out: list[Instruction], kind: type[Any]) -> Any:
    (one,) = of_type(out, kind)
    return one


# ====================================================================== backoff
def test_a_retry_waits_out_an_exponential_backoff_capped_at_the_maximum() -> None:
    core = core_with(gpus("n0"), retry_backoff_s=2.0, retry_backoff_max_s=5.0, retry_jitter=0.0)
    drive(core, submitted(task("t", gpus=1, max_retries=4)), 1.0)
    now = 1.0
    for attempt, delay in ((1, 2.0), (2, 4.0), (3, 5.0), (4, 5.0)):
        now += 10.0
        out = drive(core, failed("t", attempt, "oom"), now)
        (queued,) = transitions(out)
        assert (queued.old, queued.new) == (S.ASSIGNED, S.QUEUED)
        assert queued.reason == f"retry {attempt}/4: oom (retry backoff {delay:.1f} s)"
        assert assigns(out) == []
        assert core.retry_wait == {"t": now + delay}
        assert "t" not in core.queue  # queued, but not placeable yet
        assert assigns(drive(core, tick(now + delay - 0.01), now + delay - 0.01)) == []
        (a,) = assigns(drive(core, tick(now + delay), now + delay))
        assert (a.attempt, a.node_id) == (attempt + 1, "n0")
        assert core.retry_wait == {}
        now += delay


def test_retry_jitter_is_a_stable_hash_within_its_bound() -> None:
    config = CoreConfig(retry_backoff_s=10.0, retry_backoff_max_s=1000.0, retry_jitter=0.5)
    ids = [f"task-{i}" for i in range(50)]
    delays = [config.retry_delay_s(tid, 2) for tid in ids]
    assert all(10.0 <= d <= 20.0 for d in delays)  # nominal 20 s, up to half shorter
    assert len(set(delays)) == len(ids)  # spread, not one value for everybody
    again = CoreConfig(retry_backoff_s=10.0, retry_backoff_max_s=1000.0, retry_jitter=0.5)
    assert [again.retry_delay_s(tid, 2) for tid in ids] == delays  # no random draw
    other_seed = CoreConfig(
        retry_backoff_s=10.0, retry_backoff_max_s=1000.0, retry_jitter=0.5, seed=1
    )
    assert [other_seed.retry_delay_s(tid, 2) for tid in ids] != delays
    assert config.retry_delay_s("task-0", 1) != config.retry_delay_s("task-0", 2) / 2


def test_without_backoff_a_retry_is_placed_in_the_same_call() -> None:
    """The simulator's setting (``retry_backoff_s=0``): the behaviour before backoffs."""
    core = core_with(gpus("n0"))
    drive(core, submitted(task("t", gpus=1)), 1.0)
    out = drive(core, failed("t", 1, "oom"), 2.0)
    assert [t.new for t in transitions(out)] == [S.QUEUED, S.ASSIGNED]
    assert transitions(out)[0].reason == "retry 1/2: oom"


def test_a_task_cancelled_during_its_backoff_is_never_placed() -> None:
    core = core_with(gpus("n0"), retry_backoff_s=5.0, retry_jitter=0.0)
    drive(core, submitted(task("t", gpus=1)), 1.0)
    drive(core, failed("t", 1), 2.0)
    out = drive(core, CancelTask("c", "t", "not needed"), 3.0)
    assert [(t.old, t.new) for t in transitions(out)] == [(S.QUEUED, S.CANCELLED)]
    assert of_type(out, StopAttempt) == []  # it held no node
    assert drive(core, tick(7.0), 7.0) == []
    assert core.next_retry_at() is None


def test_tasks_waiting_out_a_backoff_leave_the_node_to_others() -> None:
    core = core_with(gpus("n0"), retry_backoff_s=60.0, retry_jitter=0.0)
    drive(core, submitted(task("flaky", gpus=1)), 1.0)
    drive(core, submitted(task("other", gpus=1)), 1.5)
    (a,) = assigns(drive(core, failed("flaky", 1), 2.0))
    assert a.task_id == "other"


# ====================================================================== retry budget
@pytest.mark.parametrize("budget", [0, 1])
def test_a_used_up_retry_budget_is_the_terminal_reason(budget: int) -> None:
    core = core_with(gpus("n0"))
    drive(core, submitted(task("t", gpus=1, max_retries=budget)), 1.0)
    drive(core, submitted(task("child", depends_on=["t"])), 1.0)
    for attempt in range(1, budget + 1):
        drive(core, failed("t", attempt, "exit code 3"), 1.0 + attempt)
    out = drive(core, failed("t", budget + 1, "exit code 3"), 10.0)
    assert [(t.task_id, t.new, t.reason) for t in transitions(out)] == [
        (
            "t",
            S.FAILED,
            f"retry budget used up ({budget} of max_retries={budget} retries made); "
            "last failure: exit code 3",
        ),
        ("child", S.CANCELLED, "upstream t failed"),
    ]


def test_a_non_retryable_failure_keeps_its_own_reason() -> None:
    core = core_with(gpus("n0"))
    drive(core, submitted(task("t", gpus=1)), 1.0)
    out = drive(core, failed("t", 1, "argv[0] not found", retryable=False), 2.0)
    assert [(t.new, t.reason) for t in transitions(out)] == [(S.FAILED, "argv[0] not found")]


# ====================================================================== distinct nodes
def test_a_task_failing_on_different_nodes_stops_naming_them() -> None:
    core = core_with(gpus("n0", "n1", "n2", "n3"), max_distinct_failed_nodes=3)
    (a,) = assigns(drive(core, submitted(task("t", gpus=1, max_retries=9)), 1.0))
    placed = [a.node_id]
    for attempt in (1, 2):
        (a,) = assigns(drive(core, failed("t", attempt, "CUDA error"), 1.0 + attempt))
        placed.append(a.node_id)
    assert placed == ["n0", "n1", "n2"]  # each retry avoids the nodes it failed on
    out = drive(core, failed("t", 3, "CUDA error"), 5.0)
    assert [(t.new, t.reason) for t in transitions(out)] == [
        (
            S.FAILED,
            "failed on 3 different nodes (n0, n1, n2) (max_distinct_failed_nodes=3); "
            "last: CUDA error",
        )
    ]
    assert core.tasks["t"].retries == 2  # budget left: the nodes stopped it
    assert assigns(out) == []


def test_only_failures_count_towards_the_nodes_and_a_retry_avoids_where_it_was_lost() -> None:
    core = core_with(gpus("n0", "n1", "n2", "n3", "n4"), max_distinct_failed_nodes=3)
    (a,) = assigns(drive(core, submitted(task("t", gpus=1, max_retries=9)), 1.0))
    assert a.node_id == "n0"
    (a,) = assigns(drive(core, TaskLost("tl", "t", 1, "process vanished"), 2.0))
    assert a.node_id == "n1"  # avoids n0, where it was lost; the loss counts for nothing
    (a,) = assigns(drive(core, failed("t", 2, "oom"), 3.0))
    assert a.node_id == "n2"
    (a,) = assigns(drive(core, lost("n2", "no heartbeat"), 4.0))  # the node's fault
    assert a.node_id == "n3"
    (a,) = assigns(drive(core, failed("t", 4, "oom"), 5.0))
    assert a.node_id == "n4"
    out = drive(core, failed("t", 5, "oom"), 6.0)
    assert [(t.new, t.reason) for t in transitions(out)] == [
        (
            S.FAILED,
            "failed on 3 different nodes (n1, n3, n4) (max_distinct_failed_nodes=3); last: oom",
        )
    ]


def test_a_retry_goes_back_to_its_node_when_nothing_else_fits() -> None:
    core = core_with(gpus("n0", "n1"), max_distinct_failed_nodes=3)
    drive(core, submitted(task("t", gpus=1)), 1.0)
    drive(core, submitted(task("busy", gpus=1)), 1.0)  # holds n1
    (a,) = assigns(drive(core, failed("t", 1), 2.0))
    assert a.node_id == "n0"


def test_without_a_node_bound_a_task_retries_until_its_budget() -> None:
    core = core_with(gpus("n0", "n1", "n2", "n3"))
    drive(core, submitted(task("t", gpus=1, max_retries=4)), 1.0)
    for attempt in range(1, 5):
        assert assigns(drive(core, failed("t", attempt), 1.0 + attempt))
    out = drive(core, failed("t", 5), 9.0)
    assert transitions(out)[0].reason.startswith("retry budget used up (4 of max_retries=4")


# ====================================================================== admission
def test_submissions_beyond_the_tenant_bound_are_rejected_with_the_reason() -> None:
    core = core_with([], max_queued_per_tenant=2)  # no nodes: everything waits
    drive(core, submitted(task("a1", tenant="a")), 1.0)
    drive(core, submitted(task("a2", tenant="a", depends_on=["a1"])), 1.0)  # counts too
    out = drive(core, submitted(task("a3", tenant="a")), 2.0)
    assert out == [
        Reject(
            "submit:a3",
            "a3",
            "tenant 'a' has 2 queued tasks (max_queued_per_tenant=2); submit again once "
            "some have started",
        )
    ]
    assert "a3" not in core.tasks  # nothing kept but the answer
    assert transitions(drive(core, submitted(task("b1", tenant="b")), 3.0))  # other tenant
    # Once one of a's tasks starts, a has room again.
    drive(core, up(node("n0")), 4.0)
    assert core.waiting_by_tenant == {"a": 1}
    out = drive(core, submitted(task("a3", tenant="a")), 5.0)
    assert [t.new for t in transitions(out)] == [S.SUBMITTED, S.QUEUED, S.ASSIGNED]


def test_re_queued_tasks_are_never_refused_by_the_bound() -> None:
    core = core_with(gpus("n0"), max_queued_per_tenant=1, retry_backoff_s=9.0)
    drive(core, submitted(task("a1", tenant="a", gpus=1)), 1.0)
    drive(core, submitted(task("a2", tenant="a", gpus=1)), 1.0)  # waits behind a1
    out = drive(core, failed("a1", 1), 2.0)  # a1 back to queued: 2 waiting now
    assert [t.new for t in transitions(out, "a1")] == [S.QUEUED]
    assert core.waiting_by_tenant == {"a": 1}  # a2 got the node
    assert of_type(out, Reject) == []


# ====================================================================== cancel
def _running(core: SchedulerCore, tenant: str = "team-a") -> Assign:
    (a,) = assigns(drive(core, submitted(task("t", gpus=1, tenant=tenant)), 1.0))
    drive(core, started("t", 1, a.node_id), 2.0)
    return a


def test_a_cancel_by_another_tenant_is_refused_and_changes_nothing() -> None:
    core = core_with(gpus("n0"))
    _running(core)
    out = drive(core, CancelTask("c1", "t", "mine now", requested_by="team-b"), 3.0)
    refused_outcome = (
        "refused: 'team-b' does not own this task (a tenant may cancel only its own tasks; "
        "operators are listed in cancel_operators)"
    )
    assert out == [CancelRefused("c1", "t", 1, "team-b", "mine now", refused_outcome)]
    assert core.tasks["t"].state is S.RUNNING
    # A finished task is refused the same way: another tenant learns nothing about it.
    drive(core, completed("t", 1), 4.0)
    out = drive(core, CancelTask("c2", "t", "x", requested_by="team-b"), 5.0)
    assert out == [CancelRefused("c2", "t", 1, "team-b", "x", refused_outcome)]


@pytest.mark.parametrize("who", ["team-a", "ops", None])
def test_the_owner_an_operator_or_an_unchecked_cancel_goes_through(who: str | None) -> None:
    core = core_with(gpus("n0"), cancel_operators=("ops",))
    a = _running(core)
    out = drive(core, CancelTask("c", "t", "not needed", requested_by=who), 3.0)
    assert [(t.new, t.reason) for t in transitions(out)] == [(S.CANCELLED, "not needed")]
    assert of_type(out, StopAttempt)[0].node_id == a.node_id


def test_a_cancel_of_an_unknown_task_stays_a_stale_event() -> None:
    core = core_with(gpus("n0"))
    out = drive(core, CancelTask("c", "nope", "typo", requested_by="team-b"), 1.0)
    assert out == [StaleEvent("c", "nope", 0, 0, "cancel")]


# ====================================================================== breakers
BREAKER: dict[str, Any] = {
    "breaker_min_failures": 3,
    "breaker_failure_ratio": 0.5,
    "breaker_window_s": 100.0,
    "breaker_cooldown_s": 10.0,
    "breaker_max_cooldown_s": 25.0,
}


def v100(task_id: str, **fields: Any) -> Any:
    return task(task_id, gpus=1, hardware="gpu-v100", max_retries=0, **fields)


def trip(core: SchedulerCore, at: float = 2.0) -> BreakerChanged:
    """Fail three different tasks on the v100 nodes; the breaker change they cause."""
    for i in range(3):
        drive(core, submitted(v100(f"f{i}")), at)
    out: list[Instruction] = []
    for i in range(3):
        out += drive(core, failed(f"f{i}", 1, "Xid 79: GPU fell off the bus"), at + 1)
    change: BreakerChanged = only(out, BreakerChanged)
    return change


def breaker_core(**config: Any) -> SchedulerCore:
    nodes = gpus("v0", "v1", "v2") + gpus("k0", hardware="gpu-k80")
    return core_with(nodes, **{**BREAKER, **config})


def test_the_breaker_opens_pauses_the_class_probes_and_closes() -> None:
    core = breaker_core()
    opened = trip(core)
    assert (opened.hardware, opened.previous_state, opened.state) == ("gpu-v100", "closed", "open")
    assert (opened.failed_tasks, opened.succeeded, opened.cooldown_s) == (3, 0, 10.0)
    assert (opened.until_s, opened.decided_at_s) == (13.0, 3.0)
    assert opened.decision_id == "d-breaker-000001"
    assert opened.reason == (
        "3 different tasks failed on gpu-v100 in the last 100 s against 0 successful "
        "attempts (failure ratio 1.00 >= 0.5, at least 3 tasks): placement on gpu-v100 "
        "paused for 10 s"
    )
    # Paused: a v100-only task waits although v100 nodes are idle; others use k80.
    assert assigns(drive(core, submitted(v100("p")), 4.0)) == []
    (elsewhere,) = assigns(drive(core, submitted(task("any", gpus=1)), 5.0))
    assert elsewhere.hardware == "gpu-k80"
    assert drive(core, tick(12.9), 12.9) == []
    # Cool-down over: half-open, and the waiting task is the one probe.
    out = drive(core, tick(13.0), 13.0)
    half = only(out, BreakerChanged)
    assert (half.previous_state, half.state, half.until_s) == ("open", "half_open", None)
    (probe,) = assigns(out)
    assert probe.task_id == "p"
    assert "probe attempt of the half-open circuit breaker of gpu-v100" in probe.decision.reason
    assert assigns(drive(core, submitted(v100("q")), 14.0)) == []  # one probe at a time
    # The probe completes: closed, and placement on v100 resumes in the same call.
    out = drive(core, [started("p", 1, probe.node_id), completed("p", 1, 5.0)], 15.0)
    closed = only(out, BreakerChanged)
    assert (closed.previous_state, closed.state, closed.cooldown_s) == ("half_open", "closed", None)
    assert closed.reason == "probe attempt 1 of p completed: placement on gpu-v100 resumed"
    assert [a.task_id for a in assigns(out)] == ["q"]
    assert core.breaker_state("gpu-v100") is BreakerState.CLOSED


def test_a_failed_probe_reopens_with_a_doubled_cooldown_up_to_the_cap() -> None:
    core = breaker_core()
    until = trip(core).until_s
    assert until is not None
    for i, cooldown in enumerate((20.0, 25.0, 25.0)):
        drive(core, submitted(v100(f"p{i}")), until - 1.0)
        (probe,) = assigns(drive(core, tick(until), until))
        out = drive(core, failed(probe.task_id, 1, "Xid 79"), until + 1.0)
        reopened = only(out, BreakerChanged)
        assert (reopened.previous_state, reopened.state) == ("half_open", "open")
        assert (reopened.cooldown_s, reopened.until_s) == (cooldown, until + 1.0 + cooldown)
        assert reopened.reason == (
            f"probe attempt 1 of {probe.task_id} failed: placement on gpu-v100 paused for "
            f"{cooldown:g} s"
        )
        until = reopened.until_s
        assert until is not None


def test_a_probe_that_runs_a_cooldown_without_failing_closes_the_breaker() -> None:
    core = breaker_core()
    trip(core)
    drive(core, submitted(v100("long")), 4.0)
    (probe,) = assigns(drive(core, tick(13.0), 13.0))
    drive(core, started("long", 1, probe.node_id), 14.0)
    assert of_type(drive(core, tick(23.9), 23.9), BreakerChanged) == []
    closed = only(drive(core, tick(24.0), 24.0), BreakerChanged)
    assert closed.state == "closed"
    assert (
        closed.reason
        == "probe attempt 1 of long ran 10 s without failing: placement on gpu-v100 resumed"
    )


def test_a_probe_lost_without_an_outcome_frees_the_probe_slot() -> None:
    core = breaker_core()
    trip(core)
    drive(core, submitted(v100("p1")), 4.0)
    drive(core, submitted(v100("p2")), 4.0)
    (probe,) = assigns(drive(core, tick(13.0), 13.0))
    out = drive(core, TaskLost("tl", probe.task_id, 1, "executor restarted"), 14.0)
    assert of_type(out, BreakerChanged) == []  # a loss is no verdict on the class
    (next_probe,) = assigns(out)  # one new probe, not two
    assert "probe attempt of the half-open circuit breaker" in next_probe.decision.reason


def test_one_task_failing_again_and_again_does_not_trip_the_breaker() -> None:
    core = breaker_core()
    drive(core, submitted(task("poison", gpus=1, hardware="gpu-v100", max_retries=9)), 1.0)
    out: list[Instruction] = []
    for attempt in range(1, 8):
        out += drive(core, failed("poison", attempt, "segfault"), 1.0 + attempt)
    assert of_type(out, BreakerChanged) == []


def test_successes_in_the_window_keep_the_breaker_closed() -> None:
    core = breaker_core()
    for i in range(4):
        (a,) = assigns(drive(core, submitted(v100(f"ok{i}")), 1.0))
        drive(core, completed(a.task_id, 1, 1.0), 1.5)
    out: list[Instruction] = []
    for i in range(3):
        drive(core, submitted(v100(f"f{i}")), 2.0)
    for i in range(3):
        out += drive(core, failed(f"f{i}", 1), 3.0)  # 3 failed tasks vs 4 successes: 0.43
    assert of_type(out, BreakerChanged) == []
    # Outcomes older than the window no longer count: 4 failed tasks against 4 successes
    # would trip it (ratio 0.5), one failure alone does not.
    drive(core, submitted(v100("late")), 200.0)
    assert of_type(drive(core, failed("late", 1), 201.0), BreakerChanged) == []


def test_non_retryable_failures_are_the_tasks_fault_and_never_trip_the_breaker() -> None:
    core = breaker_core()
    for i in range(3):
        drive(core, submitted(v100(f"bad{i}")), 1.0)
    out: list[Instruction] = []
    for i in range(3):
        out += drive(core, failed(f"bad{i}", 1, "no such file", retryable=False), 2.0)
    assert of_type(out, BreakerChanged) == []


def test_forecast_places_on_slower_hardware_rather_than_wait_for_a_paused_class(
    hetero_forecaster: RunningMeanForecaster,
) -> None:
    nodes = gpus("v0") + gpus("k0", hardware="gpu-k80")
    core = core_with(nodes, "forecast", hetero_forecaster, **BREAKER)
    for i in range(3):
        (a,) = assigns(drive(core, submitted(v100(f"f{i}")), 1.0 + i))
        drive(core, failed(a.task_id, 1), 1.5 + i)
    assert core.breaker_state("gpu-v100") is BreakerState.OPEN
    (a,) = assigns(drive(core, submitted(task("r", "resnet", gpus=1)), 5.0))
    assert a.hardware == "gpu-k80"  # v100 (3x faster, idle) is paused
    assert {c.hardware for c in a.decision.candidates} == {"gpu-k80"}


def test_without_breakers_nothing_pauses() -> None:
    core = breaker_core(breaker_min_failures=None)
    for i in range(3):
        drive(core, submitted(v100(f"f{i}")), 1.0)
    out: list[Instruction] = []
    for i in range(3):
        out += drive(core, failed(f"f{i}", 1), 2.0)
    assert of_type(out, BreakerChanged) == []
    assert assigns(drive(core, submitted(v100("p")), 3.0))


def test_breaker_decisions_replay_identically() -> None:
    def run() -> list[Instruction]:
        core = breaker_core()
        out: list[Instruction] = [trip(core)]
        drive(core, submitted(v100("p")), 4.0)
        out += drive(core, tick(13.0), 13.0)
        out += drive(core, [started("p", 1, "v0"), completed("p", 1)], 14.0)
        return out

    assert run() == run()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("breaker_min_failures", 0, "breaker_min_failures must be >= 1"),
        ("breaker_failure_ratio", 0.0, "breaker_failure_ratio must be in"),
        ("breaker_cooldown_s", 0.0, "breaker_cooldown_s must be a finite number > 0"),
        ("breaker_max_cooldown_s", 5.0, "breaker_max_cooldown_s (5) must be >= "),
        ("breaker_window", 2, "breaker_window (2) must be >= breaker_min_failures (3)"),
        ("retry_backoff_s", -1.0, "retry_backoff_s must be a finite number >= 0"),
        ("retry_jitter", 1.0, "retry_jitter must be in [0, 1)"),
        ("max_distinct_failed_nodes", 0, "max_distinct_failed_nodes must be >= 1 or None"),
        ("max_queued_per_tenant", 0, "max_queued_per_tenant must be >= 1 or None"),
    ],
)
def test_bad_configuration_is_named(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        CoreConfig(**{**BREAKER, field: value})
