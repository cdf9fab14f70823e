"""Shadow mode and A/B splits of placement policies, live through ``UpdatePolicy``.

The central property: a shadow policy changes nothing. The same world is played with and
without a shadow, and every non-shadow instruction and the final state must be identical.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pytest

from streamsched.scheduler.convert import wire_records_from_instruction
from streamsched.scheduler.core import SchedulerCore
from streamsched.scheduler.cycle import run_cycle
from streamsched.scheduler.events import Event, UpdatePolicy
from streamsched.scheduler.instructions import (
    Assign,
    Instruction,
    PolicyRejected,
    PolicyUpdated,
    ShadowAssign,
)
from streamsched.scheduler.policies import split_fraction
from streamsched.scheduler.queue import ReadyQueue
from streamsched.scheduler.shadow import fork, shadow_cycle
from streamsched.schemas.codec import decode, encode
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.errors import InvalidEvent
from streamsched.schemas.export import event_json_schema
from streamsched.schemas.lifecycle import TaskCompleted
from streamsched.shadowreport import NoShadowDecisionsError, compare
from streamsched.testing import (
    assigns,
    completed,
    drive,
    gpu_cluster,
    new_core,
    of_type,
    run_world,
    submitted,
    task,
    up,
)


def update(policy: str, sid: str = "pol", **fields: Any) -> UpdatePolicy:
    params = fields.pop("parameters", {})
    return UpdatePolicy(sid, policy, tuple(sorted(params.items())), **fields)


def snapshot(core: SchedulerCore) -> tuple[object, ...]:
    c, n = core.cluster, core.cluster.size
    return (
        tuple(
            (tid, r.state, r.attempt, r.node_id, r.gpu_indices, r.predicted_s, r.decision_id)
            for tid, r in sorted(core.tasks.items())
        ),
        tuple(sorted(core.queue.task_ids())),
        c.cpu_free[:n].tolist(),
        c.gpu_free[:n].tolist(),
        core.occupancy_s[:n].tolist(),
        core.row_next_end[:n].tolist(),
        core.decisions,
        core.round_robin_next,
        core.rng.bit_generator.state["state"],
        sorted(core.tenant_alloc.items()),
    )


def workload(seed: int, n: int = 60) -> list[tuple[float, Event]]:
    """Mixed GPU jobs (whole GPUs, shares, several types, tenants, deadlines)."""
    rnd = random.Random(seed)
    out: list[tuple[float, Event]] = []
    for i in range(n):
        kind = rnd.choice(["train", "eval", "sweep"])
        size = rnd.choice([{"gpus": 1}, {"gpus": 2}, {"share": 500}, {"gpus": 4}])
        spec = task(
            f"t{i:03d}",
            kind,
            tenant=rnd.choice(["a", "b"]),
            runtime_s=rnd.choice([60.0, 600.0, 3600.0]),
            preemptible=rnd.random() < 0.3,
            **size,  # type: ignore[arg-type]
        )
        out.append((float(i * rnd.choice([5, 20, 60])), submitted(spec)))
    return out


RUNTIME = {"train": 900.0, "eval": 60.0, "sweep": 300.0}


def play(
    policy: str,
    shadow: str | None,
    seed: int,
    split: tuple[str, float] | None = None,
    params: dict[str, float] | None = None,
) -> tuple[SchedulerCore, list[Instruction]]:
    core = new_core(policy, nodes=gpu_cluster(v100=2, k80=3), seed=seed)
    events: list[tuple[float, Event]] = []
    if params is not None:
        events.append((0.2, update(policy, "params", parameters=params)))
    if shadow is not None:
        events.append(
            (0.5, update(policy, "shadow-on", shadow_policy=shadow, parameters=params or {}))
        )
    if split is not None:
        events.append((0.5, update(split[0], "split-on", split_ratio=split[1])))
    events += workload(seed)

    def runtime(a: Assign) -> float:
        base = RUNTIME[core.tasks[a.task_id].spec.task_type]
        return base * (2.0 if a.hardware == "gpu-k80" else 1.0) * (1 - a.resume_progress)

    log = run_world(core, events, runtime)
    return core, log


def real(log: Iterable[Instruction]) -> list[Instruction]:
    return [i for i in log if not isinstance(i, ShadowAssign | PolicyUpdated)]


# ====================================================================== shadow
@pytest.mark.parametrize(
    ("live", "shadow"),
    [("forecast", "fifo"), ("fifo", "forecast"), ("best-fit", "random"), ("random", "best-fit")],
)
@pytest.mark.parametrize("seed", [1, 2])
def test_shadow_changes_nothing_the_live_policy_decides(live: str, shadow: str, seed: int) -> None:
    plain_core, plain = play(live, None, seed)
    shadow_core, shadowed = play(live, shadow, seed)
    assert real(shadowed) == real(plain)
    assert snapshot(shadow_core) == snapshot(plain_core)
    decided = of_type(shadowed, ShadowAssign)
    assert decided, "the shadow policy decided nothing"
    assert {s.decision.policy for s in decided} == {shadow}
    # one shadow decision per task attempt, each with its own decision id
    assert len({(s.task_id, s.attempt) for s in decided}) == len(decided)
    assert len({s.decision.decision_id for s in decided}) == len(decided)
    live_ids = {a.decision.decision_id for a in assigns(shadowed)}
    assert not live_ids & {s.decision.decision_id for s in decided}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shadow_of_the_same_scorers_with_other_parameters_changes_nothing(seed: int) -> None:
    """Both use the fragmentation (FGD) scorer and its per-row cache: the shadow's own
    allocations must not leave entries the live cycle would read."""
    params = {"sjf_weight": 1.0, "wait_margin": 0.5}
    plain_core, plain = play("forecast", None, seed, params=params)
    shadow_core, shadowed = play("forecast", "forecast", seed, params=params)
    assert of_type(shadowed, ShadowAssign)
    assert real(shadowed) == real(plain)
    assert snapshot(shadow_core) == snapshot(plain_core)


def test_shadow_decisions_are_never_executed() -> None:
    """run_world executes every Assign; a ShadowAssign is not one, and no task ran twice
    or on a node only the shadow chose."""
    _, log = play("fifo", "forecast", 3)
    ran = Counter((a.task_id, a.attempt) for a in assigns(log))
    assert set(ran.values()) == {1}
    shadow_ids = {s.decision.decision_id for s in of_type(log, ShadowAssign)}
    assert shadow_ids
    assert not any(a.decision.decision_id in shadow_ids for a in assigns(log))
    assert not any(isinstance(i, Assign) and "shadow" in i.decision.decision_id for i in log)


def test_shadow_pairs_with_the_live_decision_of_the_same_cycle() -> None:
    core = new_core("fifo", nodes=gpu_cluster(v100=1, k80=1))
    (ok,) = drive(core, update("fifo", shadow_policy="forecast"), 0.5)
    assert isinstance(ok, PolicyUpdated)
    assert (ok.shadow_policy, ok.shadow_version, ok.changed) == ("forecast", "forecast/1", True)
    out = drive(core, submitted(task("t", gpus=1)), 1.0)
    (live,) = assigns(out)
    (shadow,) = of_type(out, ShadowAssign)
    assert (shadow.task_id, shadow.attempt) == ("t", 1)
    assert shadow.live_decision_id == live.decision.decision_id
    assert shadow.live_node_id == live.node_id
    assert shadow.predicted_start_s == 1.0
    assert shadow.predicted_completion_s == 1.0 + shadow.predicted_runtime_s
    assert shadow.decision.decision_id == "d-shadow-00000001"
    assert shadow.decision.reason.startswith("shadow of fifo/1: forecast (")
    assert shadow.agreement in {"same_node", "same_hardware", "different"}
    assert out.index(live) < out.index(shadow)  # next to, after, the real decision


def test_shadow_that_would_place_a_task_the_live_policy_keeps_waiting() -> None:
    """fifo (strict) blocks behind a big head job; forecast backfills the small one: the
    shadow decision says so (live_waited), once, however many cycles pass."""
    core = new_core("fifo", nodes=gpu_cluster(v100=1))  # 4 GPUs
    drive(core, update("fifo", shadow_policy="forecast"), 0.0)
    drive(core, submitted(task("busy", gpus=2, runtime_s=100.0)), 1.0)
    drive(core, submitted(task("big", gpus=4, runtime_s=100.0)), 2.0)
    out = drive(core, submitted(task("small", gpus=1, runtime_s=10.0)), 3.0)
    assert assigns(out) == []  # fifo: the head "big" blocks
    (shadow,) = of_type(out, ShadowAssign)
    assert (shadow.task_id, shadow.agreement) == ("small", "live_waited")
    assert of_type(drive(core, [], 4.0), ShadowAssign) == []  # not repeated
    assert core.shadow_decided == {"small": 1}
    drive(core, completed("busy", 1, 50.0), 50.0)  # "big" runs, "small" still waits
    assert core.shadow_decided == {"small": 1}
    (placed,) = assigns(drive(core, completed("big", 1, 50.0), 100.0))
    assert (placed.task_id, placed.attempt) == ("small", 1)
    assert core.shadow_decided == {}  # forgotten once no longer queued


def test_shadow_run_is_deterministic() -> None:
    _, first = play("forecast", "random", 5)
    _, second = play("forecast", "random", 5)
    assert first == second


# ====================================================================== A/B split
def test_split_fraction_is_stable_uniform_and_monotone_in_the_ratio() -> None:
    ids = [f"task-{i}" for i in range(1000)]
    fractions = [split_fraction(t) for t in ids]
    assert fractions == [split_fraction(t) for t in ids]  # stable
    assert all(0.0 <= f < 1.0 for f in fractions)
    in_b = sum(f < 0.3 for f in fractions)
    assert 260 <= in_b <= 340, in_b  # ~30%, 4 standard deviations
    b30 = {t for t, f in zip(ids, fractions, strict=True) if f < 0.3}
    b50 = {t for t, f in zip(ids, fractions, strict=True) if f < 0.5}
    assert b30 < b50  # raising the ratio only moves tasks into the candidate arm


def test_split_routes_tasks_by_hash_and_the_audit_names_the_arm() -> None:
    core = new_core("fifo", nodes=gpu_cluster(v100=8, gpus_per_node=8))
    (ok,) = drive(core, update("best-fit", split_ratio=0.3, parameters={"max_scan": 64}), 0.5)
    assert isinstance(ok, PolicyUpdated)
    assert (ok.policy, ok.split_policy, ok.split_version, ok.split_ratio) == (
        "fifo",
        "best-fit",
        "best-fit/1+max_scan=64",
        0.3,
    )
    placed = []
    for batch in range(4):  # a cycle examines max_scan=128 tasks: 50 per call
        ids = range(50 * batch, 50 * batch + 50)
        placed += assigns(drive(core, [submitted(task(f"t{i}", share=100)) for i in ids], 1.0))
    assert len(placed) == 200
    for a in placed:
        expected = "best-fit" if split_fraction(a.task_id) < 0.3 else "fifo"
        assert a.decision.policy == expected
        assert a.decision.reason.startswith(expected)
    share = sum(a.decision.policy == "best-fit" for a in placed) / 200
    assert 0.2 <= share <= 0.4, share
    assert core.policy.name == "fifo"  # queue order and mechanisms stay the live policy's


def test_split_ratio_change_promotion_and_demotion_live() -> None:
    core = new_core("fifo", nodes=gpu_cluster(v100=1))
    drive(core, update("best-fit", split_ratio=0.3), 0.5)
    (ratio,) = drive(core, update("best-fit", split_ratio=0.6), 1.0)
    assert isinstance(ratio, PolicyUpdated)
    assert (ratio.changed, ratio.split_ratio, core.split_ratio) == (True, 0.6, 0.6)
    (promote,) = drive(core, update("best-fit", split_ratio=1.0), 2.0)
    assert isinstance(promote, PolicyUpdated)
    assert (promote.policy, promote.previous_policy, promote.split_policy) == (
        "best-fit",
        "fifo",
        None,
    )
    assert core.policy.name == "best-fit"
    assert core.split_policy is None
    drive(core, update("random", split_ratio=0.5), 3.0)
    (demote,) = drive(core, update("random", split_ratio=0.0), 4.0)
    assert isinstance(demote, PolicyUpdated)
    assert (demote.policy, demote.split_policy, demote.split_ratio) == ("best-fit", None, 1.0)
    assert core.split_policy is None
    (same,) = drive(core, update("best-fit"), 5.0)
    assert isinstance(same, PolicyUpdated)
    assert not same.changed


def test_shadow_promotion_and_demotion_live() -> None:
    core = new_core("fifo", nodes=gpu_cluster(v100=1))
    drive(core, update("fifo", shadow_policy="forecast"), 0.5)
    assert core.shadow_policy is not None
    (promoted,) = drive(core, update("forecast"), 1.0)  # the shadow becomes live
    assert isinstance(promoted, PolicyUpdated)
    assert (promoted.policy, promoted.previous_policy, promoted.shadow_policy) == (
        "forecast",
        "fifo",
        None,
    )
    assert core.shadow_policy is None
    drive(core, update("forecast", shadow_policy="fifo"), 2.0)
    (cleared,) = drive(core, update("forecast"), 3.0)  # demotion: the shadow is cleared
    assert isinstance(cleared, PolicyUpdated)
    assert cleared.changed
    assert cleared.shadow_policy is None
    out = drive(core, submitted(task("t", gpus=1)), 4.0)
    assert of_type(out, ShadowAssign) == []


REJECTIONS = [
    pytest.param(
        {"shadow_policy": "nope"}, "shadow_policy: unknown policy 'nope'", id="unknown shadow"
    ),
    pytest.param(
        {"shadow_policy": "oracle"},
        "shadow_policy: policy 'oracle' needs the true runtimes",
        id="simulation-only shadow",
    ),
    pytest.param(
        {"shadow_policy": "forecast"},
        "shadow_policy 'forecast' is the live policy (forecast/1)",
        id="shadow is live",
    ),
    pytest.param(
        {"policy": "oracle", "split_ratio": 0.5},
        "policy 'oracle' needs the true runtimes",
        id="simulation-only split",
    ),
    pytest.param({"split_ratio": 1.5}, "split_ratio must be a number in 0..1, got 1.5", id="ratio"),
    pytest.param(
        {"split_ratio": float("nan")}, "split_ratio must be a number in 0..1, got nan", id="nan"
    ),
]


@pytest.mark.parametrize(("fields", "reason"), REJECTIONS)
def test_bad_updates_are_rejected_with_a_reason_and_change_nothing(
    fields: dict[str, Any], reason: str
) -> None:
    core = new_core("forecast", nodes=gpu_cluster(v100=1))
    drive(core, update("forecast", shadow_policy="fifo"), 0.0)
    drive(core, submitted(task("a", gpus=1)), 0.5)
    before = (snapshot(core), core.policy, core.split_policy, core.shadow_policy)
    policy = fields.pop("policy", "forecast")
    (out,) = drive(core, update(policy, **fields), 1.0)
    assert isinstance(out, PolicyRejected)
    assert reason in out.reason, out.reason
    assert (snapshot(core), core.policy, core.split_policy, core.shadow_policy) == before


def test_split_with_shadow_keeps_the_real_decisions_identical() -> None:
    core_a, plain = play("forecast", None, 7, split=("best-fit", 0.4))
    core_b, shadowed = play("forecast", "fifo", 7, split=("best-fit", 0.4))
    assert real(shadowed) == real(plain)
    assert snapshot(core_a) == snapshot(core_b)
    arms = {a.decision.policy for a in assigns(plain)}
    assert arms == {"forecast", "best-fit"}


def test_node_registration_after_shadow_on_is_seen_by_both() -> None:
    core = new_core("fifo")
    drive(core, update("fifo", shadow_policy="least-loaded"), 0.0)
    drive(core, up(gpu_cluster(v100=1)[0]), 0.5)
    out = drive(core, submitted(task("t", gpus=1)), 1.0)
    assert len(assigns(out)) == 1
    assert len(of_type(out, ShadowAssign)) == 1


# ====================================================================== wire and report
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _shadow_and_live() -> tuple[ShadowAssign, Assign]:
    core = new_core("fifo", nodes=gpu_cluster(v100=2))
    drive(core, update("fifo", shadow_policy="least-loaded"), 0.5)
    drive(core, submitted(task("busy", gpus=1)), 0.7)
    out = drive(core, submitted(task("t", gpus=1)), 1.0)
    (shadow,) = of_type(out, ShadowAssign)
    (live,) = assigns(out)
    return shadow, live


def test_shadow_becomes_an_audit_only_never_an_assignment() -> None:
    shadow, live = _shadow_and_live()
    records = wire_records_from_instruction(
        shadow, submissions={}, occurred_at=T0, source="placement"
    )
    (audit,) = records  # no Assignment: nothing for an executor to run
    assert isinstance(audit, DecisionAudit)
    assert audit.kind == "shadow"
    assert audit.event_id == f"{shadow.decision.decision_id}.audit"
    assert (audit.policy, audit.chosen_node_id) == ("least-loaded", shadow.node_id)
    assert (audit.live_decision_id, audit.live_node_id, audit.live_hardware) == (
        live.decision.decision_id,
        live.node_id,
        live.hardware,
    )
    assert decode(encode(audit), now=T0) == audit


def test_shadow_audit_validation_is_strict() -> None:
    shadow, _ = _shadow_and_live()
    (audit,) = wire_records_from_instruction(shadow, submissions={}, occurred_at=T0, source="p")
    payload = json.loads(encode(audit))
    with pytest.raises(InvalidEvent, match='need kind="shadow"'):
        decode(json.dumps({**payload, "kind": "assign"}), now=T0)
    with pytest.raises(InvalidEvent, match="given together or not at all"):
        decode(json.dumps({**payload, "live_node_id": None}), now=T0)
    with pytest.raises(InvalidEvent, match='need kind="preempt"'):
        decode(json.dumps({**payload, "preempted_task_id": "x", "preempted_attempt": 1}), now=T0)
    waited = {**payload, "live_decision_id": None, "live_node_id": None, "live_hardware": None}
    assert decode(json.dumps(waited), now=T0).kind == "shadow"  # type: ignore[union-attr]


def test_exported_schema_knows_the_shadow_kind() -> None:
    schema = event_json_schema("decision.audit")
    assert "shadow" in schema["properties"]["kind"]["enum"]
    assert {"live_decision_id", "live_node_id", "live_hardware"} <= set(schema["properties"])


def _audit(
    kind: str, task_id: str, node: str, hw: str, at: float, runtime: float, **kw: Any
) -> DecisionAudit:
    fields: dict[str, Any] = {
        "event_id": f"{kind}-{task_id}",
        "occurred_at": T0,
        "source": "p",
        "kind": kind,
        "decision_id": f"{kind}-{task_id}",
        "stimulus_id": "s",
        "task_id": task_id,
        "attempt": 1,
        "policy": "least-loaded" if kind == "shadow" else "forecast",
        "policy_version": "least-loaded/1" if kind == "shadow" else "forecast/1",
        "model_version": "m",
        "decided_at_s": at,
        "chosen_node_id": node,
        "chosen_hardware": hw,
        "predicted_runtime_s": runtime,
        "reason": "r",
        **kw,
    }
    return DecisionAudit.model_validate(fields)


def test_report_compares_agreement_predictions_and_actual_runtimes() -> None:
    done = TaskCompleted(
        event_id="c", occurred_at=T0, source="x", task_id="a", attempt=1, node_id="n1",
        runtime_s=110.0,
    )  # fmt: skip
    records = [
        _audit("assign", "a", "n1", "gpu-v100", 10.0, 100.0),
        _audit("shadow", "a", "n1", "gpu-v100", 10.0, 100.0),
        _audit("shadow", "b", "n2", "gpu-v100", 10.0, 50.0),  # live waited 30 s
        _audit("assign", "b", "n3", "gpu-v100", 40.0, 60.0),
        _audit("shadow", "c", "n4", "gpu-k80", 10.0, 80.0),  # live not placed yet
        done,
    ]
    (row,) = compare(records)
    assert (row.shadow_policy, row.decisions, row.paired, row.live_pending) == (
        "least-loaded",
        3,
        2,
        1,
    )
    assert (row.agreement_node, row.agreement_hardware) == (0.5, 1.0)
    assert (row.mean_shadow_runtime_s, row.mean_live_runtime_s) == (75.0, 80.0)
    assert (row.mean_shadow_completion_s, row.mean_live_completion_s) == (75.0, 95.0)
    assert (row.finished, row.mean_actual_runtime_s) == (1, 110.0)
    with pytest.raises(NoShadowDecisionsError, match=r"no shadow decisions on sched\.decisions"):
        compare(records[:1])


def _full_queue_shadow(core: SchedulerCore, now: float) -> list[Instruction]:
    """The reference: the shadow cycle on a fork whose queue holds every queued task under
    the shadow's order (what ``_head_queue`` truncates)."""
    assert core.shadow_policy is not None
    f = fork(core, core.shadow_policy)
    f.queue = ReadyQueue()
    for tid in core.queue.task_ids_by_arrival():
        rec = core.tasks[tid]
        key, latest_start, _ = f._queue_position(rec)
        f.queue.push(tid, rec.spec.tenant if f.policy.fair_share else "", key, latest_start)
    run_cycle(f, now, "ref")
    return [i for i in f._out if isinstance(i, Assign)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_shadow_queue_head_decides_like_the_whole_queue(seed: int) -> None:
    """A long backlog (more than 2 x max_scan per tenant, deadlines among them) behind a
    head task strict fifo can never place: the shadow's truncated queue gives the same
    would-be placements as the whole queue, as deadlines come within the urgency
    horizon."""
    rnd = random.Random(seed)
    core = new_core("fifo", nodes=gpu_cluster(v100=3, k80=3, gpus_per_node=4))
    drive(core, update("fifo", shadow_policy="forecast"), 0.0)
    specs = [task("blocker", gpus=8)] + [
        task(
            f"t{i:04d}",
            rnd.choice(["train", "eval", "sweep"]),
            gpus=rnd.choice([0, 0, 0, 0, 0, 0, 1, 2, 4]),  # CPU-only ones fit: a deep scan
            cpu_milli=100,
            tenant=rnd.choice(["a", "b"]),
            deadline_s=rnd.choice([None, None, None, 8000.0 + 20 * i]),
            runtime_s=rnd.choice([60.0, 3600.0]),
        )
        for i in range(700)
    ]
    drive(core, [submitted(s) for s in specs], 1.0)
    assert len(core.queue) == 701  # nothing placed live
    for now in (5.0, 5000.0, 9000.0, 20000.0):
        reference = _full_queue_shadow(core, now)
        truncated = shadow_cycle(core, now, "ref")
        assert reference
        assert [i for i in truncated if isinstance(i, Assign)] == reference
