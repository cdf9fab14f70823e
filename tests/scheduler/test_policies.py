"""Policies, one behaviour at a time: events in, instructions compared (dask-style).

Each test builds a small cluster, feeds events to ``SchedulerCore.handle`` through
``drive`` (which runs ``validate_state`` after every step) and checks the Assign,
Preempt, Reject and DeadlineInfeasible instructions that come back.
"""

from __future__ import annotations

import math
import pickle

import pytest

from streamsched.scheduler.core import SchedulerCore
from streamsched.scheduler.events import Event
from streamsched.scheduler.forecasting import DaskLikeForecaster, RunningMeanForecaster
from streamsched.scheduler.instructions import (
    Assign,
    DeadlineInfeasible,
    Instruction,
    Preempt,
    Reject,
)
from streamsched.scheduler.model import NodeSpec, PriorityClass, TaskState
from streamsched.scheduler.policies import POLICY_NAMES, get_policy
from streamsched.testing import (
    assigns,
    completed,
    drive,
    failed,
    gpu_cluster,
    new_core,
    node,
    of_type,
    preempted,
    started,
    submitted,
    task,
    tick,
    transitions,
    up,
)

GREEDY = ("random", "round-robin", "least-loaded", "best-fit", "dask-like")
FORECAST_FAMILY = ("forecast", "forecast-river", "oracle")


def placed(out: list[Instruction]) -> dict[str, str]:
    """task id -> node id of the assignments in ``out``."""
    return {a.task_id: a.node_id for a in assigns(out)}


def run_and_finish(
    core: SchedulerCore, out: list[Instruction], now: float, runtime_s: float = 1.0
) -> list[Instruction]:
    """Start and complete every attempt assigned in ``out`` at ``now``; return what the
    core does next."""
    events: list[Event] = []
    for a in assigns(out):
        events += [
            started(a.task_id, a.attempt, a.node_id),
            completed(a.task_id, a.attempt, runtime_s),
        ]
    return drive(core, events, now)


def test_registry_is_what_the_table_documents() -> None:
    assert set(POLICY_NAMES) == {"fifo", *GREEDY, *FORECAST_FAMILY}
    for name in POLICY_NAMES:
        policy = get_policy(name)
        assert policy.name == name
        assert policy.version.startswith(f"{name}/")
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        get_policy("nope")
    assert get_policy("forecast", sjf_weight=3.0).params.sjf_weight == 3.0


# ---------------------------------------------------------------------- head of line
#: Who gets the free GPU when a 4-GPU head cannot start and a 1-GPU task waits behind it.
HEAD_OF_LINE = {
    "fifo": set(),  # strict FIFO: the head blocks the queue
    **{name: {"small"} for name in GREEDY},  # greedy backfill: skip what does not fit
    # EASY backfill: "small" (600 s predicted by default) would end after the head's
    # reservation (when "r" is predicted to end) and the head needs every GPU.
    "forecast": set(),
    "forecast-river": set(),
    "oracle": set(),
}


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_head_of_line_blocking(policy: str) -> None:
    core = new_core(policy, nodes=gpu_cluster(v100=1))
    assert placed(drive(core, submitted(task("r", gpus=1)), 1.0)) == {"r": "gpu-v100-0"}
    out = drive(core, [submitted(task("wide", gpus=4)), submitted(task("small", gpus=1))], 2.0)
    assert set(placed(out)) == HEAD_OF_LINE[policy]
    assert core.state_of("wide") is TaskState.QUEUED


# ---------------------------------------------------------------------- node choice
def _pinned_cluster() -> tuple[NodeSpec, ...]:
    return (
        node("n0", "gpu-v100", gpus=4),
        node("n1", "gpu-v100", gpus=4, labels={"pin": "yes"}),
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("fifo", "n0"),  # first fit
        ("best-fit", "n1"),  # pack onto the fuller node
        ("least-loaded", "n0"),  # spread onto the emptier node
        # Same predicted completion; FGD: on n1 the 1-GPU task would leave a single free
        # GPU that the popular 2-GPU shape (the filler's) cannot use.
        ("forecast", "n0"),
    ],
)
def test_pack_or_spread(policy: str, expected: str) -> None:
    core = new_core(policy, nodes=_pinned_cluster())
    filler = task("filler", gpus=2, governance={"pin": "yes"})
    assert placed(drive(core, submitted(filler), 1.0)) == {"filler": "n1"}
    assert placed(drive(core, submitted(task("t", gpus=1)), 2.0)) == {"t": expected}


def test_round_robin_rotates_over_nodes() -> None:
    core = new_core("round-robin", nodes=[node(f"c{i}") for i in range(3)])
    out = drive(core, [submitted(task(f"t{i}")) for i in range(5)], 1.0)
    assert [a.node_id for a in assigns(out)] == ["c0", "c1", "c2", "c0", "c1"]
    # The rotation continues across cycles.
    assert placed(drive(core, submitted(task("t5")), 2.0)) == {"t5": "c2"}


def test_random_is_reproducible_with_the_same_seed() -> None:
    def choices(seed: int) -> list[str]:
        core = new_core("random", seed=seed, nodes=[node(f"c{i}") for i in range(4)])
        out = drive(core, [submitted(task(f"t{i}")) for i in range(24)], 1.0)
        return [a.node_id for a in assigns(out)]

    first = choices(7)
    assert len(first) == 24
    assert choices(7) == first
    assert choices(8) != first
    assert len(set(first)) > 1


@pytest.mark.parametrize(("policy", "expected"), [("dask-like", "n1"), ("least-loaded", "n0")])
def test_dask_like_picks_least_occupancy(policy: str, expected: str) -> None:
    # n0 holds one long task, n1 three short ones: n1 is fuller but has less work queued.
    model = DaskLikeForecaster()
    model.learn(task("seen", "long"), "cpu", 1000.0)
    model.learn(task("seen", "short"), "cpu", 1.0)
    nodes = [node("n0", labels={"pin": "0"}), node("n1", labels={"pin": "1"})]
    core = new_core(policy, model, nodes=nodes)
    drive(core, submitted(task("long", "long", governance={"pin": "0"})), 1.0)
    drive(core, [submitted(task(f"s{i}", "short", governance={"pin": "1"})) for i in range(3)], 2.0)
    assert placed(drive(core, submitted(task("new", "short")), 3.0)) == {"new": expected}


# ---------------------------------------------------------------------- heterogeneity
def _hetero_core(model: RunningMeanForecaster, policy: str = "forecast") -> SchedulerCore:
    return new_core(policy, model, nodes=gpu_cluster(k80=1, v100=1, gpus_per_node=1))


def test_forecast_picks_the_faster_hardware(hetero_forecaster: RunningMeanForecaster) -> None:
    core = _hetero_core(hetero_forecaster)
    (a,) = assigns(drive(core, submitted(task("a", "resnet", gpus=1)), 1.0))
    assert (a.node_id, a.hardware, a.predicted_runtime_s) == ("gpu-v100-0", "gpu-v100", 100.0)
    decision = a.decision
    assert decision.policy == "forecast"
    assert decision.chosen_hardware == "gpu-v100"
    by_hw = {c.hardware: c.predicted_runtime_s for c in decision.candidates}
    assert by_hw == {"gpu-k80": 300.0, "gpu-v100": 100.0}
    # A first-fit baseline takes the first node, the slow one.
    core = _hetero_core(taught_copy(hetero_forecaster), "fifo")
    assert placed(drive(core, submitted(task("a", "resnet", gpus=1)), 1.0)) == {"a": "gpu-k80-0"}


def taught_copy(model: RunningMeanForecaster) -> RunningMeanForecaster:
    return pickle.loads(pickle.dumps(model))  # type: ignore[no-any-return]


def test_forecast_waits_for_fast_hardware_busy_briefly(
    hetero_forecaster: RunningMeanForecaster,
) -> None:
    core = _hetero_core(hetero_forecaster)
    drive(core, submitted(task("a", "resnet", gpus=1)), 1.0)
    drive(core, started("a", 1, "gpu-v100-0"), 1.0)
    # v100 frees at ~101 and finishes b at ~201; k80 now would finish at 310.
    out = drive(core, submitted(task("b", "resnet", gpus=1)), 10.0)
    assert assigns(out) == []
    assert core.state_of("b") is TaskState.QUEUED
    out = drive(core, completed("a", 1, 100.0), 101.0)
    (b,) = assigns(out)
    assert (b.task_id, b.node_id) == ("b", "gpu-v100-0")
    assert any(c.hardware == "gpu-k80" for c in b.decision.candidates)


def test_forecast_takes_slow_hardware_when_fast_is_busy_long(
    hetero_forecaster: RunningMeanForecaster,
) -> None:
    core = _hetero_core(hetero_forecaster)
    drive(core, submitted(task("l", "long", gpus=1, hardware="gpu-v100")), 1.0)
    drive(core, started("l", 1, "gpu-v100-0"), 1.0)
    (b,) = assigns(drive(core, submitted(task("b", "resnet", gpus=1)), 10.0))
    assert (b.task_id, b.node_id, b.predicted_runtime_s) == ("b", "gpu-k80-0", 300.0)
    waited = [c for c in b.decision.candidates if c.hardware == "gpu-v100"]
    assert len(waited) == 1
    assert waited[0].expected_wait_s > 10_000 - 10.0  # v100 frees after 10,000 s; now is 10


def test_forecast_waits_behind_a_reservation_when_it_pays() -> None:
    model = RunningMeanForecaster()
    model.learn(task("seen", "resnet", gpus=1), "gpu-v100", 100.0)
    model.learn(task("seen", "resnet", gpus=1), "gpu-k80", 900.0)
    core = _hetero_core(model)
    drive(core, submitted(task("a", "resnet", gpus=1)), 0.0)
    drive(core, started("a", 1, "gpu-v100-0"), 0.0)
    # "w" (v100 only, 50 s) goes first and reserves v100 from ~100 s; "b" could start on
    # v100 at ~150 s and end at ~250 s, or on k80 now and end at 910 s.
    out = drive(
        core,
        [
            submitted(task("w", "quick", gpus=1, hardware="gpu-v100", runtime_s=50)),
            submitted(task("b", "resnet", gpus=1)),
        ],
        10.0,
    )
    assert placed(out) == {}  # actual: {"b": "gpu-k80-0"}


# ---------------------------------------------------------------------- queue order
@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_priority_classes_order_the_queue(policy: str) -> None:
    core = new_core(policy, nodes=[node("g", gpus=1)])
    drive(core, submitted(task("blocker", gpus=1)), 0.0)
    drive(core, started("blocker", 1, "g"), 0.0)
    classes = ["low", "normal", "high", "critical"]
    for i, cls in enumerate(classes):
        out = drive(core, submitted(task(cls, gpus=1, priority=cls)), 1.0 + i)
        assert assigns(out) == []
    order = []
    out = drive(core, completed("blocker", 1, 600.0), 600.0)
    for step in range(4):
        (a,) = assigns(out)
        order.append(a.task_id)
        out = run_and_finish(core, out, 1000.0 * (step + 1), 600.0)
    assert order == ["critical", "high", "normal", "low"]
    assert [p.rank for p in PriorityClass] == [0, 1, 2, 3]


@pytest.mark.parametrize("sjf_weight", [1.0, 10.0, None], ids=["w1", "w10", "default"])
def test_aging_lets_an_old_long_task_beat_new_short_ones(sjf_weight: float | None) -> None:
    # One GPU; a 1000 s task waits while 100 s tasks keep arriving, one every 100 s.
    # Aged shortest-first: key = submitted + w * runtime, so the long task (key
    # 1 + 1000 w) is overtaken only by short tasks submitted before 1 + 900 w.
    params = {} if sjf_weight is None else {"sjf_weight": sjf_weight}
    core = new_core("forecast", nodes=[node("g", gpus=1)], params=params)
    w = core.policy.params.sjf_weight
    first_k = math.ceil((1.0 + 900.0 * w) / 100.0)  # first arrival the long task beats
    drive(core, submitted(task("s0", "short", gpus=1, runtime_s=100)), 0.0)
    drive(core, submitted(task("long", "long", gpus=1, runtime_s=1000)), 1.0)
    running, assigned_at = "s0", {}
    for k in range(1, first_k + 2):
        now = 100.0 * k
        events: list[Event] = [started(running, 1, "g"), completed(running, 1, 100.0)]
        events.append(submitted(task(f"s{k}", "short", gpus=1, runtime_s=100)))
        (a,) = assigns(drive(core, events, now))
        assigned_at[a.task_id] = now
        running = a.task_id
        if running == "long":
            break
    assert assigned_at["long"] == 100.0 * first_k
    assert all(t < 100.0 * first_k for tid, t in assigned_at.items() if tid != "long")


def test_deadline_urgency_goes_before_shorter_tasks() -> None:
    core = new_core("forecast", nodes=[node("g", gpus=1)])
    drive(core, submitted(task("blocker", gpus=1, runtime_s=600)), 0.0)
    drive(core, started("blocker", 1, "g"), 0.0)
    specs = [
        task("free", "a", gpus=1, runtime_s=100),
        task("later", "b", gpus=1, runtime_s=500, deadline_s=3000.0),
        task("sooner", "c", gpus=1, runtime_s=500, deadline_s=2000.0),
    ]
    out = drive(core, [submitted(s) for s in specs], 1.0)
    assert of_type(out, DeadlineInfeasible) == []
    order = []
    out = drive(core, completed("blocker", 1, 600.0), 600.0)
    for now in (1100.0, 1600.0, 1700.0):
        (a,) = assigns(out)
        order.append(a.task_id)
        out = run_and_finish(core, out, now, 500.0)
    assert order == ["sooner", "later", "free"]


def test_deadline_infeasible_is_flagged_at_submission() -> None:
    core = new_core("forecast", nodes=[node("g", gpus=1)])
    out = drive(
        core,
        [
            submitted(task("late", "a", gpus=1, runtime_s=500, deadline_s=100.0)),
            submitted(task("fine", "b", gpus=1, runtime_s=50, deadline_s=10_000.0)),
        ],
        10.0,
    )
    assert of_type(out, DeadlineInfeasible) == [
        DeadlineInfeasible("submit:late", "late", 100.0, 510.0)
    ]


def test_deadline_infeasible_is_flagged_when_the_wait_makes_it_late() -> None:
    core = new_core("forecast", nodes=[node("g", gpus=1)])
    drive(core, submitted(task("blocker", "x", gpus=1, runtime_s=800)), 0.0)
    drive(core, started("blocker", 1, "g"), 0.0)
    # 500 s alone would meet the deadline; behind the blocker (ends ~800) it cannot.
    out = drive(core, submitted(task("d", "y", gpus=1, runtime_s=500, deadline_s=1000.0)), 1.0)
    (flag,) = of_type(out, DeadlineInfeasible)
    assert (flag.task_id, flag.deadline_s, flag.predicted_finish_s) == ("d", 1000.0, 1300.0)
    # It is flagged once only.
    out = drive(core, tick(2.0), 2.0)
    assert of_type(out, DeadlineInfeasible) == []


# ---------------------------------------------------------------------- backfill
def _backfill_scenario(policy: str) -> tuple[SchedulerCore, list[Instruction]]:
    core = new_core(policy, nodes=[node("g", gpus=4)])
    drive(core, submitted(task("r", "r", gpus=2, runtime_s=1000)), 0.0)
    drive(core, started("r", 1, "g"), 0.0)
    # The wide task is first in line (shortest), blocked until "r" ends at ~1000.
    specs = [
        task("wide", "w", gpus=4, runtime_s=200),
        task("short", "s", gpus=1, runtime_s=300),
        task("long", "l", gpus=1, runtime_s=5000),
    ]
    return core, drive(core, [submitted(s) for s in specs], 1.0)


def test_easy_backfill_admits_short_task_and_protects_reservation() -> None:
    core, out = _backfill_scenario("forecast")
    # "short" ends (301) before the wide task's reservation (1000); "long" would delay it.
    assert placed(out) == {"short": "g"}
    drive(core, [started("short", 1, "g"), completed("short", 1, 300.0)], 301.0)
    assert core.state_of("long") is TaskState.QUEUED
    out = drive(core, [started("r", 1, "g"), completed("r", 1, 1000.0)], 1000.0)
    assert placed(out) == {"wide": "g"}
    assert core.state_of("long") is TaskState.QUEUED


def test_greedy_backfill_lets_long_task_delay_the_wide_one() -> None:
    core, out = _backfill_scenario("best-fit")
    assert placed(out) == {"short": "g", "long": "g"}
    out = drive(core, [started("r", 1, "g"), completed("r", 1, 1000.0)], 1000.0)
    assert assigns(out) == []  # "long" still holds a GPU: the wide task starves


# ---------------------------------------------------------------------- preemption
#: The preemption tunables the scenarios below are written for (the defaults, pinned).
PREEMPTION = {"preempt_min_run_s": 300.0, "preempt_factor": 2.0, "max_preemptions": 2}


def _preemption_scenario(preemptible: bool, policy: str = "forecast") -> SchedulerCore:
    core = new_core(policy, nodes=[node("g", gpus=1)], params=PREEMPTION)
    victim = task("victim", "long", gpus=1, runtime_s=10_000, preemptible=preemptible)
    assert placed(drive(core, submitted(victim), 0.0)) == {"victim": "g"}
    drive(core, started("victim", 1, "g"), 0.0)
    return core


def test_preemption_waits_for_min_run_then_evicts_long_task() -> None:
    core = _preemption_scenario(preemptible=True)
    out = drive(core, submitted(task("short", "short", gpus=1, runtime_s=100)), 100.0)
    assert of_type(out, Preempt) == []  # the victim has run 100 s < preempt_min_run_s
    out = drive(core, tick(400.0), 400.0)
    (p,) = of_type(out, Preempt)
    assert (p.task_id, p.attempt, p.node_id, p.for_task_id) == ("victim", 1, "g", "short")
    assert p.decision_id.startswith("d-")
    # Nothing moves until the executor confirms the stop; asking again changes nothing.
    assert core.state_of("victim") is TaskState.RUNNING
    assert of_type(drive(core, tick(401.0), 401.0), Preempt) == []
    out = drive(core, preempted("victim", 1, 0.04), 402.0)
    assert [(t.task_id, t.old, t.new) for t in transitions(out, "victim")] == [
        ("victim", TaskState.RUNNING, TaskState.QUEUED)
    ]
    assert placed(out) == {"short": "g"}
    # When the short task is done, the victim resumes from its checkpoint, attempt 2.
    out = drive(core, [started("short", 1, "g"), completed("short", 1, 100.0)], 502.0)
    (resume,) = assigns(out)
    assert (resume.task_id, resume.attempt) == ("victim", 2)
    assert resume.resume_progress == pytest.approx(0.04)
    assert resume.predicted_runtime_s == pytest.approx(10_000 * 0.96)


@pytest.mark.parametrize(
    ("preemptible", "policy"),
    [(False, "forecast"), (False, "oracle"), (True, "fifo"), (True, "best-fit")],
)
def test_no_preemption_of_non_preemptible_or_by_baselines(preemptible: bool, policy: str) -> None:
    core = _preemption_scenario(preemptible, policy)
    drive(core, submitted(task("short", "short", gpus=1, runtime_s=100)), 100.0)
    for now in (400.0, 1000.0, 5000.0, 9000.0):
        out = drive(core, tick(now), now)
        assert of_type(out, Preempt) == []
        assert assigns(out) == []


def test_higher_priority_class_preempts_regardless_of_length() -> None:
    core = _preemption_scenario(preemptible=True)
    spec = task("urgent", "u", gpus=1, runtime_s=50_000, priority="critical")
    out = drive(core, submitted(spec), 500.0)
    assert [(p.task_id, p.for_task_id) for p in of_type(out, Preempt)] == [("victim", "urgent")]


def test_one_pending_preemption_is_enough_for_one_task() -> None:
    core = new_core("forecast", nodes=[node("n0", gpus=1), node("n1", gpus=1)])
    victims = [task(f"v{i}", "long", gpus=1, runtime_s=10_000, preemptible=True) for i in (0, 1)]
    drive(core, [submitted(v) for v in victims], 0.0)
    drive(core, [started("v0", 1, "n0"), started("v1", 1, "n1")], 0.0)
    out = drive(core, submitted(task("short", "short", gpus=1, runtime_s=100)), 400.0)
    assert [p.task_id for p in of_type(out, Preempt)] == ["v0"]
    # Any event before the executor confirms v0's stop runs a cycle; "short" needs one GPU
    # and one is already being freed for it.
    out = drive(core, tick(401.0), 401.0)
    assert of_type(out, Preempt) == []  # actual: Preempt(v1, for_task_id="short")


# ---------------------------------------------------------------------- fair share
@pytest.mark.parametrize(("policy", "b_first"), [("forecast", True), ("best-fit", False)])
def test_fair_share_serves_the_quiet_tenant_early(policy: str, b_first: bool) -> None:
    # Holding the whole cluster costs a tenant a day of queue position (pinned here).
    params = {"fair_share_s": 86400.0} if policy == "forecast" else {}
    core = new_core(policy, nodes=[node("g0", gpus=1), node("g1", gpus=1)], params=params)
    flood = [task(f"a{i}", gpus=1, tenant="a", runtime_s=600) for i in range(6)]
    out = drive(core, [submitted(s) for s in flood], 0.0)
    assert placed(out) == {"a0": "g0", "a1": "g1"}
    out = drive(core, submitted(task("b0", gpus=1, tenant="b", runtime_s=600)), 1.0)
    assert assigns(out) == []
    out = drive(core, [started("a0", 1, "g0"), completed("a0", 1, 600.0)], 600.0)
    assert placed(out) == ({"b0": "g0"} if b_first else {"a2": "g0"})


# ---------------------------------------------------------------------- dependencies
@pytest.mark.parametrize("policy", ["fifo", "best-fit", "forecast"])
def test_child_waits_for_upstream_success(policy: str) -> None:
    core = new_core(policy, nodes=[node("c0"), node("c1")])
    assert placed(drive(core, submitted(task("up")), 1.0)) == {"up": "c0"}
    out = drive(core, submitted(task("child", depends_on=["up"])), 2.0)
    assert [t.new for t in transitions(out, "child")] == [TaskState.SUBMITTED]
    assert assigns(out) == []  # resources are free, but upstream has not succeeded
    out = drive(core, [started("up", 1, "c0"), completed("up", 1, 5.0)], 7.0)
    assert [t.new for t in transitions(out, "child")] == [TaskState.QUEUED, TaskState.ASSIGNED]
    assert set(placed(out)) == {"child"}
    # A dependency that already succeeded does not hold a new task back.
    assert set(placed(drive(core, submitted(task("late", depends_on=["up"])), 8.0))) == {"late"}


def test_upstream_failure_cancels_the_whole_chain() -> None:
    core = new_core("fifo", nodes=[node("c0")])
    drive(core, submitted(task("up", max_retries=0)), 1.0)
    drive(core, submitted(task("mid", depends_on=["up"])), 2.0)
    drive(core, submitted(task("leaf", depends_on=["mid", "up"])), 3.0)
    out = drive(core, failed("up", 1, "boom"), 4.0)
    assert {t.task_id: t.new for t in transitions(out)} == {
        "up": TaskState.FAILED,
        "mid": TaskState.CANCELLED,
        "leaf": TaskState.CANCELLED,
    }
    # A task submitted after its upstream failed is cancelled at once, with the reason.
    out = drive(core, submitted(task("after", depends_on=["up"])), 5.0)
    assert [t.new for t in transitions(out, "after")] == [TaskState.SUBMITTED, TaskState.CANCELLED]
    assert "upstream up" in transitions(out, "after")[-1].reason


def test_unknown_dependency_is_rejected_with_reason() -> None:
    core = new_core("fifo", nodes=[node("c0")])
    out = drive(core, submitted(task("child", depends_on=["ghost"])), 1.0)
    (reject,) = of_type(out, Reject)
    assert reject.task_id == "child"
    assert "ghost" in reject.reason
    assert core.state_of("child") is None
    assert transitions(out) == []


# ---------------------------------------------------------------------- placement rules
@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_two_half_gpu_shares_land_on_the_same_gpu(policy: str) -> None:
    core = new_core(policy, nodes=[node("g", gpus=4)])
    out = drive(core, [submitted(task(f"s{i}", share=500)) for i in range(2)], 1.0)
    first, second = assigns(out)
    assert first.gpu_indices == second.gpu_indices
    assert len(first.gpu_indices) == 1
    assert first.gpu_milli == second.gpu_milli == 500
    # The GPU is now full; a third share goes to another GPU, and whole GPUs stay whole.
    (third,) = assigns(drive(core, submitted(task("s2", share=300)), 2.0))
    assert third.gpu_indices != first.gpu_indices
    (whole,) = assigns(drive(core, submitted(task("w", gpus=2)), 3.0))
    assert whole.gpu_milli == 1000
    assert not set(whole.gpu_indices) & {*first.gpu_indices, *third.gpu_indices}


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_governance_tag_never_lands_on_a_node_with_another_label(policy: str) -> None:
    nodes = [
        node("us", gpus=8, labels={"data_region": "us"}),
        node("bare", gpus=8),
        node("eu", gpus=1, labels={"data_region": "eu"}),
    ]
    core = new_core(policy, nodes=nodes)
    eu = {"data_region": "eu"}
    assert placed(drive(core, submitted(task("e0", gpus=1, governance=eu)), 1.0)) == {"e0": "eu"}
    drive(core, started("e0", 1, "eu"), 1.0)
    for now in (2.0, 400.0, 4000.0):
        out = drive(core, submitted(task(f"e{int(now)}", gpus=1, governance=eu)), now)
        assert assigns(out) == []
    out = drive(core, completed("e0", 1, 5000.0), 5000.0)
    assert set(placed(out).values()) == {"eu"}


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_allowed_hardware_is_respected(policy: str) -> None:
    core = new_core(policy, nodes=gpu_cluster(v100=2, k80=1, gpus_per_node=1))
    assert placed(drive(core, submitted(task("k0", gpus=1, hardware="gpu-k80")), 1.0)) == {
        "k0": "gpu-k80-0"
    }
    drive(core, started("k0", 1, "gpu-k80-0"), 1.0)
    out = drive(core, submitted(task("k1", gpus=1, hardware="gpu-k80")), 2.0)
    assert assigns(out) == []  # two v100 GPUs are free, but k1 may only use k80
    multi = task("m", gpus=1, hardware=["gpu-k80", "gpu-p100"])
    assert assigns(drive(core, submitted(multi), 3.0)) == []
    out = drive(core, completed("k0", 1, 100.0), 100.0)
    assert set(placed(out).values()) == {"gpu-k80-0"}


def test_reject_unplaceable_config() -> None:
    wide = task("wide", gpus=8)
    wrong_class = task("p100", gpus=1, hardware="gpu-p100")
    strict = new_core("fifo", reject_unplaceable=True, nodes=gpu_cluster(v100=2))
    out = drive(strict, [submitted(wide), submitted(wrong_class)], 1.0)
    assert [r.task_id for r in of_type(out, Reject)] == ["wide", "p100"]
    assert all("no registered node can ever host it" in r.reason for r in of_type(out, Reject))
    assert transitions(out) == []

    lenient = new_core("fifo", nodes=gpu_cluster(v100=2))
    out = drive(lenient, [submitted(wide), submitted(wrong_class)], 1.0)
    assert of_type(out, Reject) == []
    assert lenient.state_of("wide") is lenient.state_of("p100") is TaskState.QUEUED
    # Once a node that can host it registers, the waiting task runs.
    out = drive(lenient, submitted(task("noop")), 2.0)  # fifo: head "wide" still blocks
    assert assigns(out) == []
    out = drive(lenient, up(node("big", "gpu-v100", gpus=8)), 3.0)
    assert placed(out) == {"wide": "big"}


def test_more_gpus_than_any_node_can_have_is_always_rejected() -> None:
    core = new_core("fifo", max_gpus_per_node=8, nodes=gpu_cluster(v100=1))
    (reject,) = of_type(drive(core, submitted(task("huge", gpus=16)), 1.0), Reject)
    assert "16 GPUs" in reject.reason


def test_assignments_carry_an_explainable_decision() -> None:
    core = new_core("best-fit", nodes=gpu_cluster(v100=1, k80=1))
    (a,) = assigns(drive(core, submitted(task("t", gpus=1)), 5.0))
    assert isinstance(a, Assign)
    d = a.decision
    assert (d.task_id, d.attempt, d.stimulus_id, d.decided_at_s) == ("t", 1, "submit:t", 5.0)
    assert d.policy_version == "best-fit/1"
    assert d.model_version.startswith("running-mean@")
    assert d.chosen_node_id == a.node_id
    assert {c.hardware for c in d.candidates} == {"gpu-v100", "gpu-k80"}
    assert d.reason


# ---------------------------------------------------------------------- learned forecaster
def test_forecast_river_decisions_name_the_learned_model() -> None:
    from streamsched.scheduler.simulator import forecaster_for

    policy = get_policy("forecast-river")
    assert policy.forecaster == "river-linear"
    core = new_core("forecast-river", forecaster_for(policy), nodes=gpu_cluster(v100=1))
    out = drive(core, submitted(task("a", gpus=1)), 1.0)
    (first,) = assigns(out)
    assert first.decision.policy == "forecast-river"
    assert first.decision.model_version == "river-linear+drift@g0:river-linear@0"
    out = run_and_finish(core, out, 2.0, runtime_s=50.0)
    out = drive(core, submitted(task("b", gpus=1)), 60.0)
    (second,) = assigns(out)
    assert second.decision.model_version == "river-linear+drift@g0:river-linear@1"
    # The learned runtime of the type (not the 600 s default) is what the policy predicts.
    assert second.decision.predicted_runtime_s == pytest.approx(50.0)
