"""Node failure risk: the online model (scheduler/failure.py) and its soft penalty in the
forecast family's scoring."""

from __future__ import annotations

import pickle

import pytest

from streamsched.scheduler.events import TaskLost
from streamsched.scheduler.failure import NodeRiskModel, RiskParams
from streamsched.scheduler.model import TaskState
from streamsched.scheduler.policies import get_policy
from streamsched.scheduler.simulator import SimConfig, Simulator
from streamsched.scheduler.trace import Trace, TraceJob
from streamsched.testing import (
    assigns,
    completed,
    drive,
    failed,
    lost,
    new_core,
    node,
    submitted,
    task,
    up,
)

HOUR = 3600.0


def beats(model: NodeRiskModel, node_id: str, start: float, end: float, every: float) -> None:
    t = start
    while t <= end:
        model.observe_heartbeat(node_id, t)
        t += every


# ---------------------------------------------------------------------- the model
def test_unknown_node_gets_the_fleet_prior() -> None:
    model = NodeRiskModel()
    assert model.risk("never-seen", 0.0) == pytest.approx(RiskParams().base_rate)
    assert model.risks(0.0) == {}
    assert 0.0 <= model.risk("never-seen", 1e9) <= 1.0


def test_losses_raise_risk_and_more_losses_raise_it_more() -> None:
    model = NodeRiskModel()
    prior = model.risk("a", 0.0)
    model.observe_attempt_end("a", "lost", 10.0)
    one = model.risk("a", 10.0)
    model.observe_node_lost("a", 20.0)
    two = model.risk("a", 20.0)
    assert prior < one < two <= 1.0
    assert model.risk("b", 20.0) < one  # the fleet prior moved less than the node


def test_successes_lower_risk_and_failures_weigh_less_than_losses() -> None:
    model = NodeRiskModel()
    for i in range(20):
        model.observe_attempt_end("good", "succeeded", float(i))
    assert model.risk("good", 20.0) < model.fleet_risk(20.0)
    model.observe_attempt_end("f", "failed", 30.0)
    model.observe_attempt_end("l", "lost", 30.0)
    assert model.risk("f", 30.0) < model.risk("l", 30.0)


def test_heartbeat_gaps_raise_risk_on_time_beats_do_not() -> None:
    model = NodeRiskModel()
    beats(model, "steady", 0.0, 600.0, 2.0)
    beats(model, "gappy", 0.0, 300.0, 2.0)
    beats(model, "gappy", 360.0, 600.0, 2.0)  # a 60 s silence: 30 x the usual interval
    prior = model.fleet_risk(600.0)
    assert model.risk("steady", 600.0) == pytest.approx(prior)
    assert model.risk("gappy", 600.0) > prior + 0.02
    assert list(model.risky_nodes(600.0)) == ["gappy"]


def test_duplicate_heartbeats_add_nothing() -> None:
    model = NodeRiskModel()
    beats(model, "a", 0.0, 20.0, 2.0)
    before = model.risks(20.0)
    for _ in range(5):
        model.observe_heartbeat("a", 20.0)
        model.observe_heartbeat("a", 10.0)  # reordered: older than the last one
    assert model.risks(20.0) == before


def test_risk_decays_back_towards_the_prior() -> None:
    model = NodeRiskModel(RiskParams(halflife_s=HOUR))
    model.observe_node_lost("a", 0.0)
    fresh = model.risk("a", 0.0)
    later = model.risk("a", 3 * HOUR)
    much_later = model.risk("a", 48 * HOUR)
    assert fresh > later > much_later
    assert much_later == pytest.approx(model.fleet_risk(48 * HOUR), abs=1e-6)


def test_deterministic_picklable_and_clone_is_unfitted() -> None:
    def feed(model: NodeRiskModel) -> None:
        beats(model, "a", 0.0, 100.0, 2.0)
        beats(model, "a", 150.0, 200.0, 2.0)
        model.observe_attempt_end("a", "lost", 120.0)
        model.observe_attempt_end("b", "succeeded", 130.0)
        model.observe_attempt_end("b", "failed", 140.0)
        model.observe_node_lost("c", 160.0)

    one, two = NodeRiskModel(), NodeRiskModel()
    feed(one)
    feed(two)
    assert one.risks(300.0) == two.risks(300.0)
    copy = pickle.loads(pickle.dumps(one))
    assert copy.risks(300.0) == one.risks(300.0)
    copy.observe_attempt_end("a", "lost", 310.0)
    one.observe_attempt_end("a", "lost", 310.0)
    assert copy.risks(400.0) == one.risks(400.0)
    fresh = one.clone()
    assert fresh.params == one.params
    assert fresh.risks(400.0) == {}
    assert fresh.name == "node-risk"


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="unknown attempt outcome 'exploded' for node 'a'"):
        NodeRiskModel().observe_attempt_end("a", "exploded", 0.0)
    with pytest.raises(ValueError, match="halflife_s must be"):
        NodeRiskModel(RiskParams(halflife_s=0.0))


# ---------------------------------------------------------------------- the core
def _three_equal_nodes(risk_weight: float | None = None) -> list[str]:
    """Three one-GPU v100 nodes; t1 lands on a (row order breaks the tie), its attempt is
    lost, and the retry is placed in the same call (never on a again while another node
    fits: a retry avoids the nodes it failed on); then t2 comes. Returns the nodes t1's
    attempts and t2 got: t2 has a and c to choose from, and only the risk penalty tells
    them apart."""
    params = {} if risk_weight is None else {"risk_weight": risk_weight}
    nodes = [node("a", gpus=1), node("b", gpus=1), node("c", gpus=1)]
    core = new_core("forecast", nodes=nodes, params=params)
    (first,) = assigns(drive(core, submitted(task("t1", gpus=1)), 1.0))
    out = drive(core, TaskLost("lost:t1", "t1", 1, "executor died"), 2.0)
    (second,) = assigns(out)
    assert core.node_risk.risk("a", 2.0) > core.node_risk.fleet_risk(2.0)
    (third,) = assigns(drive(core, submitted(task("t2", gpus=1)), 3.0))
    return [first.node_id, second.node_id, third.node_id]


def test_the_risky_node_is_avoided_when_an_equal_one_fits() -> None:
    assert _three_equal_nodes() == ["a", "b", "c"]


def test_risk_weight_zero_disables_the_penalty() -> None:
    assert _three_equal_nodes(risk_weight=0.0) == ["a", "b", "a"]


def test_the_risky_node_is_still_used_when_it_is_the_only_fit() -> None:
    core = new_core("forecast", nodes=[node("a", gpus=1), node("b", gpus=1)])
    drive(core, lost("a"), 1.0)
    drive(core, up(node("a", gpus=1)), 2.0)  # back, but with a loss on its record
    (on_b,) = assigns(drive(core, submitted(task("t1", gpus=1)), 3.0))
    assert on_b.node_id == "b"
    (on_a,) = assigns(drive(core, submitted(task("t2", gpus=1)), 4.0))
    assert on_a.node_id == "a"
    assert "node a failure risk" in on_a.decision.reason, on_a.decision.reason
    by_node = {c.node_id: c for c in on_a.decision.candidates}
    assert by_node["a"].score < -(4.0 + by_node["a"].predicted_runtime_s)  # penalised


def test_core_feeds_the_model_from_outcomes() -> None:
    core = new_core("forecast", nodes=[node("a", gpus=1)])
    model = core.node_risk
    (a1,) = assigns(drive(core, submitted(task("ok", gpus=1)), 1.0))
    drive(core, completed("ok", a1.attempt, 10.0), 11.0)
    after_success = model.risk("a", 11.0)
    assert after_success < model.fleet_risk(11.0)
    (a2,) = assigns(drive(core, submitted(task("bug", gpus=1, max_retries=0)), 12.0))
    drive(core, failed("bug", a2.attempt, "bad argv", retryable=False), 13.0)
    assert model.risk("a", 13.0) == pytest.approx(after_success, rel=1e-3)  # task's fault
    (a3,) = assigns(drive(core, submitted(task("flaky", gpus=1)), 14.0))
    drive(core, failed("flaky", a3.attempt, "CUDA error", retryable=True), 15.0)
    assert model.risk("a", 15.0) > after_success + 0.01


# ---------------------------------------------------------------------- the simulator
def _faulty_run(faults: tuple[tuple[str, float], ...]) -> Simulator:
    jobs = tuple(TraceJob(task(f"j{i}", gpus=1), float(i), {"gpu-v100": 1000.0}) for i in range(4))
    sim = Simulator(
        Trace("tiny", jobs),
        [node("a", gpus=2), node("b", gpus=2)],
        get_policy("forecast"),
        config=SimConfig(node_faults=faults, fault_downtime_s=100.0),
    )
    sim.run()
    return sim


def test_simulated_node_faults_lose_attempts_and_teach_the_model() -> None:
    sim = _faulty_run((("a", 500.0),))
    assert sum(rec.losses for rec in sim.core.tasks.values()) == 2  # a ran two jobs
    assert all(rec.state is TaskState.SUCCEEDED for rec in sim.core.tasks.values())
    assert sim.core.node_risk.risk("a", 600.0) > sim.core.node_risk.risk("b", 600.0)
    clean = _faulty_run(())
    assert sum(rec.losses for rec in clean.core.tasks.values()) == 0


def test_a_fault_on_an_unknown_node_is_named() -> None:
    with pytest.raises(ValueError, match=r"node_faults\[0\]: unknown node 'zz'"):
        _faulty_run((("zz", 1.0),))
