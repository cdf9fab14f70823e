"""Core semantics the live system needs: lost attempts, heartbeat reconciliation, live
policy updates and preemption decisions. Events in, instructions compared; ``drive`` runs
``validate_state`` and the capacity check after every step."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest

from streamsched.scheduler.core import CoreConfig, SchedulerCore
from streamsched.scheduler.events import NodeUp, TaskLost, UpdatePolicy
from streamsched.scheduler.forecasting import RunningMeanForecaster
from streamsched.scheduler.instructions import (
    Assign,
    PolicyRejected,
    PolicyUpdated,
    Preempt,
    Reject,
    StaleEvent,
    StopAttempt,
)
from streamsched.scheduler.model import NodeSpec, TaskState
from streamsched.scheduler.policies import get_policy, params_version
from streamsched.testing import (
    assigns,
    completed,
    drive,
    lost,
    node,
    of_type,
    progress,
    started,
    submitted,
    task,
    transitions,
    up,
)

S = TaskState


def core_with(policy: str = "fifo", nodes: Iterable[NodeSpec] = (), **config: Any) -> SchedulerCore:
    """A core of the named policy with ``CoreConfig(**config)``, ``nodes`` registered at 0."""
    core = SchedulerCore(get_policy(policy), RunningMeanForecaster(), CoreConfig(**config))
    drive(core, [up(n) for n in nodes], 0.0)
    return core


def attempt_lost(task_id: str, attempt: int, reason: str = "executor crashed") -> TaskLost:
    return TaskLost(f"lost:{task_id}:{attempt}", task_id, attempt, reason)


def heartbeat(
    spec: NodeSpec, running: Iterable[tuple[str, int]] | None, reported_at_s: float | None = None
) -> NodeUp:
    listed = None if running is None else frozenset(running)
    return NodeUp(f"hb:{spec.node_id}:{sorted(listed or ())}", spec, listed, reported_at_s)


def policy_update(policy: str, stimulus_id: str = "pol", **fields: Any) -> UpdatePolicy:
    params = fields.pop("parameters", {})
    return UpdatePolicy(stimulus_id, policy, tuple(sorted(params.items())), **fields)


def snapshot(core: SchedulerCore) -> tuple[object, ...]:
    """What an event must not change if it is a duplicate or stale."""
    c, n = core.cluster, core.cluster.size
    tasks = tuple(
        (tid, r.state, r.attempt, r.row, r.progress, r.retries, r.losses)
        for tid, r in sorted(core.tasks.items())
    )
    return (
        tasks,
        tuple(sorted(core.queue.task_ids())),
        c.cpu_free[:n].tolist(),
        c.gpu_free[:n].tolist(),
        c.alive[:n].tolist(),
        core.decisions,
        core.policy.version,
    )


def place(core: SchedulerCore, task_id: str, now: float, *, start: bool = True) -> Assign:
    """Submit a one-GPU task, check it was assigned, deliver its start if ``start``."""
    (a,) = assigns(drive(core, submitted(task(task_id, gpus=1)), now))
    if start:
        drive(core, started(a.task_id, a.attempt, a.node_id), now)
    return a


N0, N1 = node("n0", gpus=1), node("n1", gpus=1)


# ====================================================================== lost attempts
def test_lost_attempt_is_requeued_without_a_retry_and_resumes_from_progress() -> None:
    core = core_with(nodes=[N0, N1])
    drive(core, submitted(task("t", gpus=1, max_retries=0)), 1.0)
    drive(core, [started("t", 1, "n0"), progress("t", 1, 0.4)], 2.0)
    out = drive(core, attempt_lost("t", 1, "OOM-killed executor"), 3.0)
    assert [(t.old, t.new) for t in transitions(out)] == [
        (S.RUNNING, S.QUEUED),
        (S.QUEUED, S.ASSIGNED),
    ]
    assert transitions(out)[0].reason == "attempt 1 lost: OOM-killed executor"
    (again,) = assigns(out)
    assert (again.attempt, again.resume_progress) == (2, 0.4)
    rec = core.tasks["t"]
    assert (rec.retries, rec.losses) == (0, 1)


@pytest.mark.parametrize(
    ("attempt", "event"),
    [
        pytest.param(1, "lost", id="stale attempt after reassignment"),
        pytest.param(2, None, id="current attempt"),
        pytest.param(3, "lost", id="attempt never issued"),
    ],
)
def test_lost_is_fenced_by_attempt(attempt: int, event: str | None) -> None:
    core = core_with(nodes=[N0, N1])
    place(core, "t", 1.0)
    drive(core, attempt_lost("t", 1), 2.0)  # now at attempt 2
    before = snapshot(core)
    out = drive(core, attempt_lost("t", attempt), 3.0)
    if event is None:
        assert core.tasks["t"].attempt == 3
        return
    assert out == [StaleEvent(f"lost:t:{attempt}", "t", attempt, 2, "lost")]
    assert snapshot(core) == before


def test_the_same_lost_report_twice_changes_nothing_the_second_time() -> None:
    core = core_with(nodes=[N0])  # one node: the re-queued task is placed again there
    place(core, "t", 1.0)
    drive(core, attempt_lost("t", 1), 2.0)
    before = snapshot(core)
    out = drive(core, attempt_lost("t", 1), 3.0)
    assert out == [StaleEvent("lost:t:1", "t", 1, 2, "lost")]
    assert snapshot(core) == before
    assert core.tasks["t"].losses == 1


def test_lost_report_for_a_queued_or_finished_task_is_stale() -> None:
    core = core_with(nodes=[N0])
    place(core, "a", 1.0)
    drive(core, submitted(task("b", gpus=1)), 1.0)  # queued behind a
    assert of_type(drive(core, attempt_lost("b", 0), 2.0), StaleEvent)
    drive(core, completed("a", 1), 3.0)
    assert of_type(drive(core, attempt_lost("a", 1), 4.0), StaleEvent)
    assert core.state_of("a") is S.SUCCEEDED


@pytest.mark.parametrize(("limit", "losses_survived"), [(0, 0), (2, 2), (5, 5)])
def test_a_task_lost_too_often_fails_and_cancels_its_dependents(
    limit: int, losses_survived: int
) -> None:
    core = core_with(nodes=[N0], max_lost_attempts=limit)
    place(core, "poison", 1.0)
    drive(core, submitted(task("child", depends_on=["poison"])), 1.0)
    for k in range(1, losses_survived + 1):
        drive(core, attempt_lost("poison", k), 1.0 + k)
        assert core.state_of("poison") is S.ASSIGNED
    out = drive(core, attempt_lost("poison", losses_survived + 1, "segfault"), 100.0)
    assert core.state_of("poison") is S.FAILED
    assert core.tasks["poison"].reason == (
        f"lost {limit + 1} attempts (more than max_lost_attempts={limit}); "
        f"last: attempt {limit + 1} lost: segfault"
    )
    assert core.state_of("child") is S.CANCELLED
    assert assigns(out) == []


def test_losses_are_unbounded_when_the_limit_is_none() -> None:
    core = core_with(nodes=[N0], max_lost_attempts=None)
    place(core, "t", 1.0)
    for k in range(1, 21):
        drive(core, attempt_lost("t", k), 1.0 + k)
    assert (core.state_of("t"), core.tasks["t"].attempt, core.tasks["t"].retries) == (
        S.ASSIGNED,
        21,
        0,
    )


def test_node_loss_counts_as_a_loss_of_each_attempt_on_it() -> None:
    core = core_with(nodes=[N0], max_lost_attempts=1)
    place(core, "t", 1.0)
    drive(core, lost("n0"), 2.0)
    drive(core, up(N0), 3.0)  # comes back empty: t placed again
    assert core.state_of("t") is S.ASSIGNED
    drive(core, lost("n0"), 4.0)
    assert core.state_of("t") is S.FAILED
    assert "more than max_lost_attempts=1" in core.tasks["t"].reason


@pytest.mark.parametrize(
    "config",
    [{"max_lost_attempts": -1}, {"reconcile_grace_s": -1.0}, {"reconcile_grace_s": math.nan}],
)
def test_bad_core_config_is_refused_with_its_name(config: dict[str, Any]) -> None:
    (name,) = config
    with pytest.raises(ValueError, match=name):
        CoreConfig(**config)


# ====================================================================== reconciliation
# (heartbeat time, attempts listed at earlier heartbeats with their times, the core's
# reconcile_grace_s, the heartbeat's reported_at_s) -> lost?
ABSENT_CASES = [
    pytest.param(20.0, [], 30.0, None, False, id="within grace of the assignment"),
    pytest.param(31.0, [], 30.0, None, True, id="never listed, grace passed"),
    pytest.param(40.0, [20.0], 30.0, None, False, id="listed 20 s ago"),
    pytest.param(51.0, [20.0], 30.0, None, True, id="not listed for 31 s"),
    pytest.param(31.0, [], 0.0, None, True, id="zero grace"),
    pytest.param(1e6, [], None, None, False, id="reconciliation disabled"),
    pytest.param(100.0, [], 30.0, 5.0, False, id="delayed heartbeat made at 5 s"),
    pytest.param(100.0, [], 30.0, 40.0, True, id="heartbeat made at 40 s, late"),
]


@pytest.mark.parametrize(("now", "listed_at", "grace", "reported_at", "is_lost"), ABSENT_CASES)
def test_attempt_missing_from_heartbeats_is_lost_after_the_grace(
    now: float,
    listed_at: list[float],
    grace: float | None,
    reported_at: float | None,
    is_lost: bool,
) -> None:
    core = core_with(nodes=[N0, N1], reconcile_grace_s=grace)
    (a,) = assigns(drive(core, submitted(task("t", gpus=1, max_retries=0)), 0.0))
    spec = N0 if a.node_id == "n0" else N1
    for when in listed_at:
        assert drive(core, heartbeat(spec, [("t", 1)]), when) == []
    out = drive(core, heartbeat(spec, [], reported_at), now)
    if not is_lost:
        assert out == []
        assert (core.state_of("t"), core.tasks["t"].attempt) == (S.ASSIGNED, 1)
        return
    requeued = [t for t in transitions(out, "t") if t.new is S.QUEUED]
    assert requeued[0].reason.startswith(f"attempt 1 lost: node {spec.node_id} does not run it")
    (again,) = assigns(out)
    assert again.attempt == 2
    assert core.tasks["t"].retries == 0
    # The same heartbeat again: the new attempt was just assigned, nothing is lost.
    assert drive(core, heartbeat(spec, [], reported_at), now) == []


def test_heartbeat_without_a_running_list_reconciles_nothing() -> None:
    core = core_with(nodes=[N0])
    place(core, "t", 0.0)
    assert drive(core, heartbeat(N0, None), 1e6) == []
    assert core.state_of("t") is S.RUNNING


def test_attempt_being_preempted_is_not_lost_while_its_confirmation_is_due() -> None:
    core = core_with(nodes=[N0])
    place(core, "t", 0.0)
    core.tasks["t"].stop_requested_at = 100.0  # as a preemption decision does
    assert drive(core, heartbeat(N0, []), 120.0) == []
    out = drive(core, heartbeat(N0, []), 131.0)
    assert [t.new for t in transitions(out, "t")][:1] == [S.QUEUED]


def _orphan_world() -> SchedulerCore:
    """``done`` finished on n0; ``moved`` lost its attempt 1 and runs attempt 2 on n0;
    ``live`` runs attempt 1 on n1."""
    core = core_with(nodes=[N0, N1])
    assert place(core, "done", 1.0).node_id == "n0"
    drive(core, completed("done", 1), 2.0)
    assert place(core, "moved", 3.0).node_id == "n0"
    assert place(core, "live", 4.0).node_id == "n1"
    (again,) = assigns(drive(core, attempt_lost("moved", 1), 5.0))
    assert (again.attempt, again.node_id) == (2, "n0")
    return core


ORPHAN_CASES = [
    pytest.param(("done", 1), "task done already succeeded", id="task ended"),
    pytest.param(("moved", 1), "task moved is at attempt 2, not 1", id="newer attempt"),
    pytest.param(("ghost", 1), None, id="unknown task: not ours"),
]


@pytest.mark.parametrize(("listed", "why"), ORPHAN_CASES)
def test_stale_attempts_a_node_still_runs_are_stopped(
    listed: tuple[str, int], why: str | None
) -> None:
    core = _orphan_world()
    out = drive(core, heartbeat(N1, [("live", 1), listed]), 8.0)
    if why is None:
        assert out == []
        return
    (stop,) = of_type(out, StopAttempt)
    assert (stop.task_id, stop.attempt, stop.node_id) == (*listed, "n1")
    assert stop.reason == f"orphan attempt: {why}"
    assert [i for i in out if not isinstance(i, StopAttempt)] == []


def test_attempt_placed_on_another_node_is_stopped_where_it_should_not_run() -> None:
    core = core_with(nodes=[N0, N1])
    a = place(core, "t", 1.0)
    other = N1 if a.node_id == "n0" else N0
    (stop,) = of_type(drive(core, heartbeat(other, [("t", 1)]), 2.0), StopAttempt)
    assert stop.reason == f"orphan attempt: attempt 1 of t is placed on node {a.node_id}"
    assert core.state_of("t") is S.RUNNING  # the real attempt is untouched


def test_repeated_heartbeats_repeat_a_stop_at_most_once_per_grace() -> None:
    core = core_with(nodes=[N0], reconcile_grace_s=30.0)
    place(core, "t", 1.0)
    drive(core, completed("t", 1), 2.0)
    orphan = heartbeat(N0, [("t", 1)])
    assert len(of_type(drive(core, orphan, 10.0), StopAttempt)) == 1
    before = snapshot(core)
    for now in (10.0, 15.0, 40.0):
        assert drive(core, orphan, now) == []  # no churn
    assert snapshot(core) == before
    assert len(of_type(drive(core, orphan, 41.0), StopAttempt)) == 1  # still there: again
    # Once the node stops listing it, it is forgotten.
    assert drive(core, heartbeat(N0, []), 42.0) == []
    assert core.orphan_stops == {}


def test_node_back_from_the_dead_is_told_to_stop_its_requeued_attempts() -> None:
    core = core_with(nodes=[N0, N1])
    a = place(core, "t", 1.0)
    spec = N0 if a.node_id == "n0" else N1
    drive(core, lost(spec.node_id), 20.0)  # re-queued onto the other node
    out = drive(core, heartbeat(spec, [("t", 1)]), 25.0)
    (stop,) = of_type(out, StopAttempt)
    assert (stop.task_id, stop.attempt, stop.node_id) == ("t", 1, spec.node_id)
    assert core.tasks["t"].attempt == 2


def test_listed_live_attempt_is_left_alone_and_refreshes_its_listing() -> None:
    core = core_with(nodes=[N0])
    place(core, "t", 0.0)
    for now in (25.0, 50.0, 75.0):
        assert drive(core, heartbeat(N0, [("t", 1)]), now) == []
    assert core.tasks["t"].last_listed_at == 75.0
    assert drive(core, heartbeat(N0, []), 100.0) == []  # 25 s unlisted: within grace


# ====================================================================== policy updates
def test_policy_update_switches_policy_and_later_decisions_name_it() -> None:
    core = core_with("fifo", nodes=[N0, N1])
    out = drive(core, policy_update("best-fit", parameters={"max_scan": 16}), 1.0)
    assert out == [
        PolicyUpdated(
            "pol", "best-fit", "best-fit/1+max_scan=16", "fifo", "fifo/1", (("max_scan", 16),), True
        )
    ]
    (a,) = assigns(drive(core, submitted(task("t", gpus=1)), 2.0))
    assert (a.decision.policy, a.decision.policy_version) == ("best-fit", "best-fit/1+max_scan=16")
    assert a.decision.reason.startswith("best-fit (most-allocated)")
    assert core.policy.params.max_scan == 16


def test_the_same_policy_update_twice_changes_nothing_the_second_time() -> None:
    core = core_with("fifo", nodes=[N0])
    update = policy_update("forecast", parameters={"sjf_weight": 10.0})
    drive(core, update, 1.0)
    before = snapshot(core)
    (again,) = drive(core, update, 2.0)
    assert isinstance(again, PolicyUpdated)
    assert not again.changed
    assert snapshot(core) == before


def test_parameters_are_declarative_not_cumulative() -> None:
    core = core_with("forecast")
    drive(core, policy_update("forecast", parameters={"sjf_weight": 10.0}), 1.0)
    (out,) = drive(core, policy_update("forecast", parameters={"max_scan": 64}), 2.0)
    assert isinstance(out, PolicyUpdated)
    assert core.policy.params == replace(get_policy("forecast").params, max_scan=64)
    assert out.version == "forecast/1+max_scan=64"


REJECTIONS = [
    pytest.param({"policy": "nope"}, "unknown policy 'nope'; known policies: fifo", id="policy"),
    pytest.param(
        {"policy": "oracle"}, "needs the true runtimes of every job", id="simulation-only"
    ),
    pytest.param(
        {"parameters": {"age_weight": 1.0}},
        "unknown policy parameter 'age_weight'; known parameters: ",
        id="unknown parameter",
    ),
    pytest.param(
        {"parameters": {"sjf_weight": True}},
        "policy parameter 'sjf_weight' must be a number, got bool True",
        id="bool",
    ),
    pytest.param(
        {"parameters": {"sjf_weight": "fast"}},
        "policy parameter 'sjf_weight' must be a number, got str 'fast'",
        id="string",
    ),
    pytest.param(
        {"parameters": {"sjf_weight": -1.0}},
        "policy parameter 'sjf_weight' must be >= 0, got -1.0",
        id="negative",
    ),
    pytest.param(
        {"parameters": {"sjf_weight": math.inf}},
        "policy parameter 'sjf_weight' must be finite, got inf",
        id="infinite",
    ),
    pytest.param(
        {"parameters": {"max_scan": 2.5}},
        "policy parameter 'max_scan' must be an integer, got 2.5",
        id="fractional int",
    ),
    pytest.param(
        {"parameters": {"max_scan": 0}},
        "policy parameter 'max_scan' must be >= 1, got 0",
        id="zero scan",
    ),
    pytest.param(
        {"parameters": {"wait_margin": 2.0}},
        "policy parameter 'wait_margin' must be in 0..1, got 2.0",
        id="above maximum",
    ),
    pytest.param(
        {"split_ratio": 0.5, "shadow_policy": "nope"},
        "unknown policy 'nope'",
        id="unknown shadow",
    ),
]


@pytest.mark.parametrize(("fields", "reason"), REJECTIONS)
def test_invalid_policy_update_is_rejected_and_changes_nothing(
    fields: dict[str, Any], reason: str
) -> None:
    core = core_with("forecast", nodes=[N0])
    drive(core, submitted(task("a", gpus=1)), 0.5)
    before = snapshot(core)
    policy = fields.pop("policy", "fifo")
    (out,) = drive(core, policy_update(policy, **fields), 1.0)
    assert isinstance(out, PolicyRejected)
    assert out.policy == policy
    assert reason in out.reason, out.reason
    assert snapshot(core) == before
    assert core.policy is not None
    assert core.policy.name == "forecast"


def test_integral_float_is_accepted_for_an_integer_parameter() -> None:
    core = core_with("forecast")
    drive(core, policy_update("forecast", parameters={"max_scan": 64.0}), 1.0)
    assert core.policy.params.max_scan == 64
    assert isinstance(core.policy.params.max_scan, int)


def test_switching_policy_reorders_the_waiting_queue() -> None:
    """Under fifo the long job waiting first runs next; after switching to forecast
    (shortest predicted first, aged) the short job does."""
    core = core_with("fifo", nodes=[N0])
    place(core, "busy", 0.0)
    drive(core, submitted(task("long", "sim", gpus=1, runtime_s=10_000.0)), 1.0)
    drive(core, submitted(task("short", "eval", gpus=1, runtime_s=10.0)), 2.0)
    assert [e[2] for e in core.queue.groups()[""]] == ["long", "short"]
    drive(core, policy_update("forecast"), 3.0)
    (a,) = assigns(drive(core, completed("busy", 1, 100.0), 100.0))
    assert a.task_id == "short"
    assert a.decision.policy_version == "forecast/1"


def test_switching_to_fair_share_regroups_the_queue_by_tenant() -> None:
    core = core_with("fifo", nodes=[N0])
    place(core, "busy", 0.0)
    for i, tenant in enumerate(["x", "y", "x"]):
        drive(core, submitted(task(f"q{i}", gpus=1, tenant=tenant)), 1.0 + i)
    drive(core, policy_update("forecast"), 5.0)  # validate_state ran: queue consistent
    assert sorted(core.queue.groups()) == ["x", "y"]
    drive(core, policy_update("fifo"), 6.0)
    assert sorted(core.queue.groups()) == [""]
    assert [e[2] for e in core.queue.groups()[""]] == ["q0", "q1", "q2"]  # order kept


def test_params_version_is_readable_or_a_digest_when_long() -> None:
    base = get_policy("forecast").params
    assert params_version("forecast/1", base) == "forecast/1"
    assert (
        params_version("forecast/1", replace(base, sjf_weight=2.5, max_scan=7))
        == "forecast/1+max_scan=7,sjf_weight=2.5"
    )
    many = replace(
        base,
        sjf_weight=1.5,
        max_scan=7,
        max_reservations=9,
        wait_margin=0.33,
        urgency_horizon_s=7200.0,
        preempt_factor=3.5,
        preempt_min_run_s=123.0,
        fair_share_s=3600.0,
    )
    digest = params_version("forecast/1", many)
    assert digest.startswith("forecast/1+p")
    assert len(digest) == len("forecast/1+p") + 12
    assert digest == params_version("forecast/1", many)  # deterministic


# ====================================================================== preemption audit
def test_preemption_carries_a_decision_explaining_it() -> None:
    core = SchedulerCore(
        get_policy("forecast", preempt_min_run_s=0.0), RunningMeanForecaster(), CoreConfig()
    )
    drive(core, up(node("n0", gpus=2)), 0.0)
    assigns(
        drive(core, submitted(task("batch", gpus=2, runtime_s=10_000.0, preemptible=True)), 0.0)
    )
    drive(core, started("batch", 1, "n0"), 0.0)
    out = drive(core, submitted(task("quick", gpus=2, runtime_s=100.0)), 10.0)
    (p,) = of_type(out, Preempt)
    d = p.decision
    assert d is not None
    assert (p.task_id, p.attempt, p.node_id, p.for_task_id) == ("batch", 1, "n0", "quick")
    assert (d.decision_id, d.task_id, d.attempt) == (p.decision_id, "quick", 1)
    assert (d.chosen_node_id, d.chosen_hardware, d.predicted_runtime_s) == ("n0", "gpu-v100", 100.0)
    assert (d.policy, d.policy_version, d.decided_at_s) == ("forecast", "forecast/1", 10.0)
    assert d.stimulus_id == "submit:quick"
    assert d.reason == (
        "forecast: preempt attempt 1 of batch (normal, ~9990s left, checkpoint kept) on n0 "
        "to make room for quick (normal, predicted 100s there): its remaining 9990s exceed "
        "2 x the newcomer's 100s"
    )
    assert core.tasks["batch"].stop_requested_at == 10.0


# ------------------------------------------------- dependents that overtake their upstream
def test_a_dependent_that_overtakes_its_upstream_waits_for_it() -> None:
    """Submissions are keyed by task id: a dependent can arrive before its upstream."""
    core = core_with(nodes=[N0], unknown_upstream_grace_s=60.0)
    out = drive(core, submitted(task("child", depends_on=["parent"])), 1.0)
    assert of_type(out, Reject) == []
    assert core.state_of("child") is S.SUBMITTED
    place(core, "parent", 2.0)
    assert core.state_of("child") is S.SUBMITTED  # waits for the parent to succeed
    out = drive(core, completed("parent", 1), 3.0)
    assert [a.task_id for a in assigns(out)] == ["child"]


@pytest.mark.parametrize(
    ("parent_event", "reason"),
    [
        pytest.param(None, "upstream parent was never submitted (waited 60 s)", id="never"),
        pytest.param(task("parent", gpus=99), "upstream parent was refused", id="parent refused"),
    ],
)
def test_a_dependent_whose_upstream_never_comes_is_cancelled(
    parent_event: Any, reason: str
) -> None:
    core = core_with(nodes=[N0], unknown_upstream_grace_s=60.0)
    drive(core, submitted(task("child", depends_on=["parent"])), 0.0)
    drive(core, submitted(task("grandchild", depends_on=["child"])), 0.0)
    if parent_event is not None:
        assert of_type(drive(core, submitted(parent_event), 5.0), Reject)
    else:
        drive(core, [], 60.0)
        assert core.state_of("child") is S.SUBMITTED  # not yet: 60 s have not passed
        drive(core, [], 60.5)
    assert (core.state_of("child"), core.tasks["child"].reason) == (S.CANCELLED, reason)
    assert core.state_of("grandchild") is S.CANCELLED
    assert core.unknown_upstreams == {}


def test_a_dependency_cycle_through_a_late_upstream_is_cancelled() -> None:
    core = core_with(nodes=[N0], unknown_upstream_grace_s=60.0)
    drive(core, submitted(task("a", depends_on=["b"])), 1.0)
    drive(core, submitted(task("b", depends_on=["a"])), 2.0)
    assert core.state_of("a") is S.CANCELLED
    assert core.tasks["a"].reason == "dependency cycle through b"
    assert core.state_of("b") is S.CANCELLED  # its only upstream was cancelled


def test_without_a_grace_an_unknown_upstream_is_refused_at_once() -> None:
    core = core_with(nodes=[N0])
    (reject,) = of_type(drive(core, submitted(task("child", depends_on=["parent"])), 1.0), Reject)
    assert "unknown task 'parent'" in reject.reason
    assert core.state_of("child") is None


def test_the_unknown_upstream_grace_must_be_a_finite_non_negative_number() -> None:
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="unknown_upstream_grace_s"):
            CoreConfig(unknown_upstream_grace_s=bad)
