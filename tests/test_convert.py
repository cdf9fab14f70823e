"""Wire models <-> core value types, events and instructions."""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

import streamsched.schemas as wire_schemas
import streamsched.schemas.commands as wire_schemas_commands
from streamsched.scheduler import events as core_events
from streamsched.scheduler.convert import (
    PRIORITY_TO_CORE,
    assignment_to_wire,
    cancel_outcome_to_wire,
    core_event_from_wire,
    core_time_from_datetime,
    datetime_from_core_time,
    deadline_s_from_wire,
    deadline_to_wire,
    decision_audit_to_wire,
    decision_candidate_to_wire,
    derived_event_id,
    node_spec_from_heartbeat,
    preemption_audit_to_wire,
    rejection_to_wire,
    task_requeued_to_wire,
    task_spec_from_event,
    wire_from_instruction,
    wire_records_from_instruction,
    wire_score,
)
from streamsched.scheduler.core import CoreConfig, SchedulerCore
from streamsched.scheduler.forecasting import RunningMeanForecaster
from streamsched.scheduler.instructions import (
    Assign,
    BreakerChanged,
    CancelRefused,
    Candidate,
    DeadlineInfeasible,
    Decision,
    Instruction,
    Learned,
    PolicyRejected,
    PolicyUpdated,
    Preempt,
    Reject,
    StaleEvent,
    StopAttempt,
    TaskTransition,
)
from streamsched.scheduler.model import NodeSpec, PriorityClass, TaskSpec, TaskState
from streamsched.scheduler.policies import get_policy
from streamsched.schemas import NodeHeartbeat, Priority, TaskRejected, TaskSubmitted
from streamsched.schemas.codec import decode, encode

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def submitted(**fields: Any) -> TaskSubmitted:
    base: dict[str, Any] = {
        "occurred_at": T0,
        "source": "tests",
        "event_id": "e-1",
        "task_id": "t-1",
        "idempotency_key": "k-1",
        "tenant": "vision",
        "task_type": "train-resnet50",
    }
    return TaskSubmitted(**{**base, **fields})


def test_full_submission() -> None:
    ev = submitted(
        declared_work={"steps": 5000, "epochs": 3, "input_bytes": 7_000, "runtime_s": 900.0},
        resources={
            "cpu_milli": 8000,
            "memory_mib": 32768,
            "gpus": 4,
            "allowed_hardware": ["gpu-v100", "gpu-p100"],
        },
        priority="critical",
        deadline=datetime(2025, 3, 3, 12, 0, tzinfo=UTC),
        governance={"data_region": "eu"},
        preemptible=True,
        depends_on=["prep-1", "prep-2"],
        max_retries=4,
    )
    assert task_spec_from_event(ev) == TaskSpec(
        task_id="t-1",
        task_type="train-resnet50",
        tenant="vision",
        cpu_milli=8000,
        memory_mib=32768,
        gpus=4,
        gpu_milli=1000,
        allowed_hardware=frozenset({"gpu-v100", "gpu-p100"}),
        priority=PriorityClass.CRITICAL,
        deadline_s=datetime(2025, 3, 3, 12, 0, tzinfo=UTC).timestamp(),
        preemptible=True,
        depends_on=("prep-1", "prep-2"),
        governance={"data_region": "eu"},
        declared_work=5000.0,
        declared_runtime_s=900.0,
        dataset_bytes=7_000,
        max_retries=4,
    )


def test_minimal_submission_uses_core_defaults() -> None:
    spec = task_spec_from_event(submitted())
    defaults = TaskSpec(task_id="t-1", task_type="train-resnet50", tenant="vision")
    assert spec == defaults


# (declared_work on the wire, declared_work in the core, dataset_bytes in the core)
DECLARED_WORK: list[tuple[dict[str, Any], float, int]] = [
    ({}, 0.0, 0),
    ({"steps": 100, "epochs": 3, "input_bytes": 5}, 100.0, 5),
    ({"steps": 0, "epochs": 3}, 0.0, 0),  # 0 steps is given: it wins over epochs
    ({"epochs": 3, "input_bytes": 5}, 3.0, 5),
    ({"input_bytes": 5}, 5.0, 5),
    ({"runtime_s": 60.0}, 0.0, 0),
]


@pytest.mark.parametrize(("work", "amount", "dataset_bytes"), DECLARED_WORK)
def test_declared_work(work: dict[str, Any], amount: float, dataset_bytes: int) -> None:
    spec = task_spec_from_event(submitted(declared_work=work))
    assert spec.declared_work == amount
    assert spec.dataset_bytes == dataset_bytes
    assert spec.declared_runtime_s == work.get("runtime_s")


def test_every_priority_maps_to_the_same_core_class() -> None:
    assert set(PRIORITY_TO_CORE) == set(Priority)
    for wire in Priority:
        core = task_spec_from_event(submitted(priority=wire)).priority
        assert core is PriorityClass(wire.value)
    assert {p.value for p in Priority} == {p.value for p in PriorityClass}


# (resources on the wire, core shape (cpu_milli, memory_mib, gpus, gpu_milli), GPU demand)
RESOURCES: list[tuple[dict[str, Any], tuple[int, int, int, int], int]] = [
    ({"cpu_milli": 500, "memory_mib": 256}, (500, 256, 0, 0), 0),
    ({"gpus": 1}, (1000, 1024, 1, 1000), 1000),
    ({"gpus": 8}, (1000, 1024, 8, 1000), 8000),
    ({"gpus": 1, "gpu_milli": 250}, (1000, 1024, 1, 250), 250),
]


@pytest.mark.parametrize(("resources", "shape", "gpu_demand"), RESOURCES)
def test_resources(resources: dict[str, Any], shape: tuple[int, ...], gpu_demand: int) -> None:
    spec = task_spec_from_event(submitted(resources=resources))
    assert spec.shape == shape
    assert spec.gpu_demand_milli == gpu_demand
    assert spec.is_gpu_share == (0 < resources.get("gpu_milli", 1000) < 1000)


def test_deadline_is_epoch_seconds_whatever_the_offset() -> None:
    ev = submitted(deadline="2025-03-03T14:00:00+02:00")
    assert task_spec_from_event(ev).deadline_s == datetime(2025, 3, 3, 12, tzinfo=UTC).timestamp()


def test_conversion_is_pure() -> None:
    ev = submitted(resources={"gpus": 2}, governance={"team": "a"})
    assert task_spec_from_event(ev) == task_spec_from_event(ev)
    spec = task_spec_from_event(ev)
    with pytest.raises(TypeError):
        spec.governance["team"] = "b"  # type: ignore[index]
    assert ev.governance == {"team": "a"}


def test_node_spec_from_heartbeat() -> None:
    hb = NodeHeartbeat(
        occurred_at=T0,
        source="executor/node-7",
        node_id="node-7",
        hardware="gpu-v100",
        capacity={"cpu_milli": 64000, "memory_mib": 262144, "gpus": 8},
        usage={"cpu_milli": 1000, "memory_mib": 2048, "gpus": 1},
        running=[{"task_id": "t-1", "attempt": 1}],
        labels={"data_region": "eu", "rack": "r12"},
        sequence=3,
    )
    node = node_spec_from_heartbeat(hb)
    assert node == NodeSpec(
        node_id="node-7",
        hardware="gpu-v100",
        cpu_milli=64000,
        memory_mib=262144,
        gpus=8,
        labels={"data_region": "eu", "rack": "r12"},
    )
    with pytest.raises(TypeError):
        node.labels["rack"] = "r13"  # type: ignore[index]


# ====================================================================== wire -> core events
WIRE = {"occurred_at": T0, "source": "executor/node-7"}
ATTEMPT = {**WIRE, "task_id": "t-1", "attempt": 3, "node_id": "node-7"}

# (wire event, the core event it maps to)
LIFECYCLE: list[tuple[wire_schemas.Event, core_events.Event]] = [
    (
        wire_schemas.TaskStarted(**ATTEMPT, event_id="w-started"),
        core_events.TaskStarted("w-started", "t-1", 3, "node-7"),
    ),
    (
        wire_schemas.TaskProgress(**ATTEMPT, event_id="w-progress", progress=0.25),
        core_events.TaskProgress("w-progress", "t-1", 3, 0.25),
    ),
    (
        wire_schemas.TaskCompleted(**ATTEMPT, event_id="w-completed", runtime_s=812.5),
        core_events.TaskCompleted("w-completed", "t-1", 3, 812.5),
    ),
    (
        wire_schemas.TaskFailed(
            **ATTEMPT, event_id="w-failed", reason="bad argv", exit_code=2, retryable=False
        ),
        core_events.TaskFailed("w-failed", "t-1", 3, "bad argv", exit_code=2, retryable=False),
    ),
    (
        wire_schemas.TaskFailed(**ATTEMPT, event_id="w-failed-oom", reason="OOM killed"),
        core_events.TaskFailed("w-failed-oom", "t-1", 3, "OOM killed", None, True),
    ),
    (
        wire_schemas.TaskPreempted(**ATTEMPT, event_id="w-preempted", progress=0.6),
        core_events.TaskPreempted("w-preempted", "t-1", 3, 0.6),
    ),
    (
        wire_schemas.TaskLost(**ATTEMPT, event_id="w-lost", reason="process vanished"),
        core_events.TaskLost("w-lost", "t-1", 3, "process vanished"),
    ),
    (
        wire_schemas.PolicyUpdate(**WIRE, event_id="w-policy", policy="forecast"),
        core_events.UpdatePolicy("w-policy", "forecast"),
    ),
    (
        wire_schemas.PolicyUpdate(
            **WIRE,
            event_id="w-policy-ab",
            policy="fifo",
            parameters={"sjf_weight": 10, "max_scan": 64},
            shadow_policy="forecast",
            split_ratio=0.5,
        ),
        core_events.UpdatePolicy(
            "w-policy-ab",
            "fifo",
            parameters=(("max_scan", 64), ("sjf_weight", 10)),
            split_ratio=0.5,
            shadow_policy="forecast",
        ),
    ),
    (
        wire_schemas.CancelTask(
            **WIRE, event_id="w-cancel", task_id="t-1", reason="not needed", requested_by="vision"
        ),
        core_events.CancelTask("w-cancel", "t-1", "not needed", requested_by="vision"),
    ),
]


def heartbeat(**fields: Any) -> NodeHeartbeat:
    base: dict[str, Any] = {
        **WIRE,
        "event_id": "w-hb",
        "node_id": "node-7",
        "hardware": "gpu-v100",
        "capacity": {"cpu_milli": 64000, "memory_mib": 262144, "gpus": 8},
        "usage": {"cpu_milli": 0, "memory_mib": 0, "gpus": 0},
        "labels": {"data_region": "eu"},
        "sequence": 0,
    }
    return NodeHeartbeat(**{**base, **fields})


@pytest.mark.parametrize(("event", "expected"), LIFECYCLE, ids=lambda x: getattr(x, "type", ""))
def test_lifecycle_event_maps_to_core(
    event: wire_schemas.Event, expected: core_events.Event
) -> None:
    got = core_event_from_wire(event, now_s=1e9)
    assert got == expected
    assert got is not None
    assert got.stimulus_id == event.event_id


def test_submission_maps_to_core_submission() -> None:
    ev = submitted(resources={"gpus": 2}, deadline=datetime(2025, 3, 4, tzinfo=UTC))
    got = core_event_from_wire(ev, now_s=T0.timestamp())
    assert got == core_events.TaskSubmitted("e-1", task_spec_from_event(ev))


def test_heartbeat_maps_to_node_up_with_capacity() -> None:
    got = core_event_from_wire(heartbeat(), now_s=1e9)
    assert isinstance(got, core_events.NodeUp)
    assert got.stimulus_id == "w-hb"
    assert got.running == frozenset()  # an empty list is a report: "runs nothing"
    assert got.reported_at_s == T0.timestamp()
    assert got.node == NodeSpec(
        node_id="node-7",
        hardware="gpu-v100",
        cpu_milli=64000,
        memory_mib=262144,
        gpus=8,
        labels={"data_region": "eu"},
    )


NON_STIMULI: list[wire_schemas.Event] = [
    wire_schemas.TaskCancelled(**ATTEMPT, reason="cancelled by user"),
    wire_schemas.AccessRefused(
        **WIRE, requested_by="ads", action="query", task_id="t-1", tenant="vision", reason="x"
    ),
    wire_schemas.ModelDrift(
        **WIRE,
        model="river-linear+drift",
        key="gpu-v100",
        model_version="river-linear@90",
        error_before=0.2,
        error_after=0.7,
        observations=90,
        window=40,
        adapted=True,
    ),
    wire_schemas.TaskEnded(**WIRE, task_id="t-1", state="failed", attempt=3, reason="x"),
    # The core's own re-queue (audit trail), not a stimulus: the loss itself was one.
    wire_schemas.TaskRequeued(
        **WIRE,
        task_id="t-1",
        attempt=3,
        previous_state="running",
        reason="no heartbeat for 11 s: node node-7",
        stimulus_id="heartbeat-timeout:node-7",
        decided_at_s=11.0,
    ),
    wire_schemas.DataIngested(
        **WIRE, dataset="imagenet", rows=10, bytes=1000, location="s3://bucket/key"
    ),
    wire_schemas.Assignment(
        **WIRE,
        decision_id="d-1",
        task_id="t-1",
        attempt=1,
        node_id="node-7",
        hardware="cpu",
        predicted_runtime_s=1.0,
        tenant="vision",
        task_type="etl",
    ),
    wire_schemas.DecisionAudit(
        **WIRE,
        decision_id="d-1",
        stimulus_id="e-1",
        task_id="t-1",
        attempt=1,
        policy="forecast",
        policy_version="forecast/1",
        model_version="m@0",
        decided_at_s=0.0,
        chosen_node_id="node-7",
        chosen_hardware="cpu",
        predicted_runtime_s=1.0,
        reason="only node",
    ),
    wire_schemas.TaskRejected(**WIRE, reason="invalid"),
    # The core's own output to executors, not a stimulus of the core.
    wire_schemas.StopAttempt(
        **WIRE, task_id="t-1", attempt=1, node_id="node-7", mode="cancel", reason="cancelled"
    ),
    # The placement agent's answers to commands (audit trail), not stimuli.
    wire_schemas.PolicyChanged(
        **WIRE, request_event_id="p-1", requested_by="cli", accepted=False, policy="x", reason="r"
    ),
    wire_schemas.CancelOutcome(
        **WIRE,
        task_id="t-1",
        request_event_id="c-1",
        requested_by="vision",
        reason="not needed",
        accepted=True,
        outcome="cancelled while queued",
    ),
    # The core's breaker transitions (audit trail), not stimuli.
    wire_schemas.BreakerChanged(
        **WIRE,
        decision_id="d-breaker-000001",
        hardware="cpu",
        state="closed",
        previous_state="half_open",
        reason="probe attempt 2 of t-1 completed: placement on cpu resumed",
        decided_at_s=5.0,
    ),
]


@pytest.mark.parametrize("event", NON_STIMULI, ids=lambda e: e.type)
def test_non_stimuli_map_to_none(event: wire_schemas.Event) -> None:
    assert core_event_from_wire(event, now_s=1e9) is None


def test_every_wire_event_type_has_a_mapping_test() -> None:
    covered = {ev.type for ev, _ in LIFECYCLE} | {ev.type for ev in NON_STIMULI}
    covered |= {"task.submitted", "node.heartbeat"}
    assert covered == set(wire_schemas.EVENT_TYPES)


# ====================================================================== time
def test_deadline_round_trip_is_epoch_seconds() -> None:
    deadline = datetime(2025, 3, 3, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    seconds = deadline_s_from_wire(deadline)
    assert seconds == datetime(2025, 3, 3, 12, 0, tzinfo=UTC).timestamp()
    assert deadline_to_wire(seconds) == deadline
    assert deadline_to_wire(seconds).tzinfo is UTC  # type: ignore[union-attr]
    assert deadline_s_from_wire(None) is None
    assert deadline_to_wire(None) is None
    assert datetime_from_core_time(core_time_from_datetime(T0)) == T0


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (core_time_from_datetime, datetime(2025, 3, 3, 12, 0)),  # naive
        (datetime_from_core_time, math.inf),
        (datetime_from_core_time, math.nan),
    ],
)
def test_time_conversion_refuses_ambiguous_input(call: Any, arg: Any) -> None:
    with pytest.raises(ValueError, match=r"naive|finite"):
        call(arg)


# ====================================================================== core -> wire
def placement_core() -> SchedulerCore:
    return SchedulerCore(get_policy("forecast"), RunningMeanForecaster())


def gpu_submission(**fields: Any) -> TaskSubmitted:
    return submitted(
        event_id="e-submit",
        resources={"gpus": 2, "cpu_milli": 4000, "memory_mib": 16384},
        command=["python", "train.py", "--epochs", "3"],
        env={"WANDB_MODE": "offline"},
        deadline=datetime(2025, 3, 4, tzinfo=UTC),
        **fields,
    )


def run(core: SchedulerCore, *wire_events: wire_schemas.Event, now_s: float) -> list[Instruction]:
    stimuli = [core_event_from_wire(ev, now_s=now_s) for ev in wire_events]
    return core.handle(*(s for s in stimuli if s is not None), now=now_s)


def test_core_assignment_is_valid_on_the_wire() -> None:
    core = placement_core()
    sub = gpu_submission()
    now_s = T0.timestamp()
    out = run(core, heartbeat(), sub, now_s=now_s)
    (assign,) = [ins for ins in out if isinstance(ins, Assign)]

    wire_out = wire_from_instruction(
        assign, submissions={sub.task_id: sub}, occurred_at=T0, source="placement/0"
    )
    assert isinstance(wire_out, tuple)
    assignment, audit = wire_out
    for record in (assignment, audit):
        assert decode(encode(record), now=T0) == record

    assert assignment.event_id == f"{assign.decision.decision_id}.assignment"
    assert audit.event_id == f"{assign.decision.decision_id}.audit"
    assert assignment.decision_id == audit.decision_id == assign.decision.decision_id
    assert (assignment.task_id, assignment.attempt, assignment.node_id) == ("t-1", 1, "node-7")
    assert assignment.hardware == audit.chosen_hardware == "gpu-v100"
    assert len(assignment.gpu_indices) == 2
    assert assignment.gpu_milli == 1000
    assert assignment.command == ("python", "train.py", "--epochs", "3")
    assert assignment.env == {"WANDB_MODE": "offline"}
    assert (assignment.tenant, assignment.task_type) == ("vision", "train-resnet50")
    assert assignment.predicted_runtime_s == assign.predicted_runtime_s
    assert audit.stimulus_id == "e-submit"  # the trace id follows the decision
    assert audit.policy == "forecast"
    assert audit.policy_version == assign.decision.policy_version
    assert audit.model_version == core.forecaster.version
    assert audit.decided_at_s == now_s
    assert audit.reason == assign.decision.reason
    assert audit.candidates
    assert [(c.node_id, c.hardware) for c in audit.candidates] == [
        (c.node_id, c.hardware) for c in assign.decision.candidates
    ]
    # Deterministic: converting again yields the same records (same event ids: dedupable).
    again = wire_from_instruction(
        assign, submissions={sub.task_id: sub}, occurred_at=T0, source="placement/0"
    )
    assert again == wire_out


def test_assignment_needs_the_matching_submission() -> None:
    core = placement_core()
    sub = gpu_submission()
    out = run(core, heartbeat(), sub, now_s=T0.timestamp())
    (assign,) = [ins for ins in out if isinstance(ins, Assign)]
    with pytest.raises(KeyError, match="t-1"):
        wire_from_instruction(assign, submissions={}, occurred_at=T0, source="placement/0")
    other = submitted(task_id="t-2")
    with pytest.raises(ValueError, match="t-2"):
        assignment_to_wire(assign, other, occurred_at=T0, source="placement/0")


def test_core_rejection_is_valid_on_the_wire() -> None:
    core = placement_core()
    sub = submitted(event_id="e-orphan", idempotency_key="k-orphan", depends_on=["ghost"])
    out = run(core, heartbeat(), sub, now_s=T0.timestamp())
    (reject,) = [ins for ins in out if isinstance(ins, Reject)]

    rejected = wire_from_instruction(
        reject, submissions={sub.task_id: sub}, occurred_at=T0, source="placement/0"
    )
    assert isinstance(rejected, TaskRejected)
    assert decode(encode(rejected), now=T0) == rejected
    assert rejected.event_id == "e-orphan.rejected"
    assert (rejected.task_id, rejected.idempotency_key) == ("t-1", "k-orphan")
    assert "ghost" in rejected.reason


# (submissions known to the agent, idempotency key echoed)
REJECT_KEYS: list[tuple[dict[str, TaskSubmitted], str | None]] = [
    ({}, None),
    ({"t-1": submitted(event_id="e-refused", idempotency_key="k-refused")}, "k-refused"),
    # The accepted submission of the same task id is not the refused one: no key.
    ({"t-1": submitted(event_id="e-accepted", idempotency_key="k-accepted")}, None),
]


@pytest.mark.parametrize(("known", "key"), REJECT_KEYS)
def test_rejection_echoes_only_the_refused_submissions_key(
    known: dict[str, TaskSubmitted], key: str | None
) -> None:
    ins = Reject("e-refused", "t-1", "task id reused with another idempotency key")
    rejected = wire_from_instruction(ins, submissions=known, occurred_at=T0, source="p")
    assert isinstance(rejected, TaskRejected)
    assert rejected.idempotency_key == key
    assert decode(encode(rejected), now=T0) == rejected


def test_long_reasons_and_ids_still_fit_the_wire() -> None:
    ins = Reject("e" * 256, "t-1", "x" * 10_000)
    rejected = rejection_to_wire(ins, None, occurred_at=T0, source="p")
    assert decode(encode(rejected), now=T0) == rejected
    assert len(rejected.event_id) <= 256
    assert rejected.event_id == derived_event_id("e" * 256, "rejected")
    assert derived_event_id("d-1", "audit") == "d-1.audit"


# (core score, wire score)
SCORES: list[tuple[float, float | None]] = [
    (-math.inf, None),
    (math.nan, None),
    (-12.5, -12.5),
    (0.0, 0.0),
    (math.inf, sys.float_info.max),
]


@pytest.mark.parametrize(("score", "expected"), SCORES)
def test_candidate_score(score: float, expected: float | None) -> None:
    assert wire_score(score) == expected
    wire_c = decision_candidate_to_wire(Candidate("n-1", "cpu", score, 10.0, 0.0))
    assert wire_c is not None
    assert wire_c.score == expected


# (predicted runtime, expected wait) that the wire cannot carry, or carries clamped
def test_candidate_durations() -> None:
    assert decision_candidate_to_wire(Candidate("n-1", "cpu", -math.inf, math.inf, 0.0)) is None
    assert decision_candidate_to_wire(Candidate("n-1", "cpu", 1.0, 5.0, math.inf)) is None
    clamped = decision_candidate_to_wire(Candidate("n-1", "cpu", 1.0, 5.0, -1e-12))
    assert clamped is not None
    assert clamped.expected_wait_s == 0.0


def test_audit_keeps_infeasible_candidates_with_null_score() -> None:
    decision = Decision(
        decision_id="d-00000007",
        stimulus_id="e-1",
        task_id="t-1",
        attempt=2,
        policy="forecast",
        policy_version="forecast/1",
        model_version="running-mean@3",
        decided_at_s=1_741_000_000.0,
        chosen_node_id="n-1",
        chosen_hardware="gpu-v100",
        predicted_runtime_s=100.0,
        reason="fastest",
        candidates=(
            Candidate("n-1", "gpu-v100", -100.0, 100.0, 0.0),
            Candidate("n-2", "gpu-p100", -math.inf, 180.0, 30.0),
            Candidate("n-3", "cpu", -math.inf, math.inf, 0.0),  # not expressible: left out
        ),
    )
    audit = decision_audit_to_wire(decision, occurred_at=T0, source="placement/0")
    assert decode(encode(audit), now=T0) == audit
    assert [(c.node_id, c.score, c.expected_wait_s) for c in audit.candidates] == [
        ("n-1", -100.0, 0.0),
        ("n-2", None, 30.0),
    ]


@pytest.mark.parametrize(
    ("ins", "mode", "decision_id", "for_task_id"),
    [
        (Preempt("s", "t-1", 1, "n-1", "room for t-2", "t-2", "d-1"), "preempt", "d-1", "t-2"),
        (StopAttempt("s", "t-1", 1, "n-1", "cancelled"), "cancel", None, None),
    ],
)
def test_stops_become_stop_attempt_commands_valid_on_the_wire(
    ins: Instruction, mode: str, decision_id: str | None, for_task_id: str | None
) -> None:
    cmd = wire_from_instruction(ins, submissions={}, occurred_at=T0, source="placement/0")
    assert isinstance(cmd, wire_schemas_commands.StopAttempt)
    assert (cmd.task_id, cmd.attempt, cmd.node_id, cmd.mode) == ("t-1", 1, "n-1", mode)
    assert (cmd.decision_id, cmd.for_task_id) == (decision_id, for_task_id)
    assert decode(encode(cmd), now=T0) == cmd
    again = wire_from_instruction(ins, submissions={}, occurred_at=T0, source="placement/0")
    assert again == cmd  # deterministic ids: a replay republishes the same command


OTHER_INSTRUCTIONS: list[Instruction] = [
    TaskTransition("s", "t-1", 1, TaskState.QUEUED, TaskState.ASSIGNED, "placed"),
    DeadlineInfeasible("s", "t-1", 100.0, 200.0),
    StaleEvent("s", "t-1", 1, 2, "completed"),
    Learned("s", "t-1", "cpu", 10.0, 12.0),
]


@pytest.mark.parametrize("ins", OTHER_INSTRUCTIONS, ids=lambda i: type(i).__name__)
def test_other_instructions_have_no_wire_form(ins: Instruction) -> None:
    assert wire_from_instruction(ins, submissions={}, occurred_at=T0, source="p") is None


def test_lost_attempt_is_requeued_by_the_core_without_using_a_retry() -> None:
    core = placement_core()
    sub = gpu_submission(max_retries=0)
    now_s = T0.timestamp()
    (assign,) = [i for i in run(core, heartbeat(), sub, now_s=now_s) if isinstance(i, Assign)]
    lost = wire_schemas.TaskLost(
        **WIRE, task_id="t-1", attempt=assign.attempt, node_id="node-7", reason="oom-killer"
    )
    out = run(core, lost, now_s=now_s + 5)
    (again,) = [i for i in out if isinstance(i, Assign)]
    assert again.attempt == assign.attempt + 1
    assert again.stimulus_id == lost.event_id
    assert core.tasks["t-1"].retries == 0  # max_retries=0, yet it runs again
    (requeued,) = [i for i in out if isinstance(i, TaskTransition) and i.new is TaskState.QUEUED]
    assert requeued.reason == "attempt 1 lost: oom-killer"


def test_heartbeat_running_list_reaches_the_core() -> None:
    """A heartbeat that lists an attempt the core has moved on from makes the core stop
    it (reconciliation); the wire stop command is valid."""
    core = placement_core()
    sub = gpu_submission()
    now_s = T0.timestamp()
    run(core, heartbeat(), sub, now_s=now_s)
    orphan = heartbeat(
        event_id="w-hb-2",
        occurred_at=T0 + timedelta(seconds=10),
        running=[{"task_id": "t-1", "attempt": 7}],
    )
    out = run(core, orphan, now_s=now_s + 10)
    (stop,) = [i for i in out if isinstance(i, StopAttempt)]
    assert (stop.task_id, stop.attempt, stop.node_id) == ("t-1", 7, "node-7")
    cmd = wire_from_instruction(stop, submissions={}, occurred_at=T0, source="placement/0")
    assert isinstance(cmd, wire_schemas_commands.StopAttempt)
    assert cmd.mode == "cancel"
    assert decode(encode(cmd), now=T0) == cmd


# ====================================================================== preemption audits
PREEMPT_DECISION = Decision(
    decision_id="d-00000009",
    stimulus_id="e-9",
    task_id="t-urgent",
    attempt=1,
    policy="forecast",
    policy_version="forecast/1",
    model_version="running-mean@4",
    decided_at_s=1741.5,
    chosen_node_id="n-1",
    chosen_hardware="gpu-v100",
    predicted_runtime_s=600.0,
    reason="forecast: preempt attempt 2 of t-batch on n-1 to make room for t-urgent",
    candidates=(),
)


def test_preemption_becomes_a_stop_and_a_preempt_audit() -> None:
    ins = Preempt(
        "e-9", "t-batch", 2, "n-1", "room for t-urgent", "t-urgent", "d-00000009", PREEMPT_DECISION
    )
    records = wire_records_from_instruction(
        ins, submissions={}, occurred_at=T0, source="placement/0"
    )
    stop, audit = records
    assert isinstance(stop, wire_schemas_commands.StopAttempt)
    assert isinstance(audit, wire_schemas.DecisionAudit)
    assert (stop.mode, stop.decision_id, stop.for_task_id) == ("preempt", "d-00000009", "t-urgent")
    assert audit.kind == "preempt"
    assert (audit.preempted_task_id, audit.preempted_attempt) == ("t-batch", 2)
    assert (audit.task_id, audit.attempt, audit.chosen_node_id) == ("t-urgent", 1, "n-1")
    assert audit.decision_id == stop.decision_id
    assert audit.event_id == "d-00000009.t-batch.2.audit"
    assert audit.reason == PREEMPT_DECISION.reason
    for record in records:
        assert decode(encode(record), now=T0) == record
    # Deterministic ids; the old single-record shape is kept for wire_from_instruction.
    assert records == wire_records_from_instruction(
        ins, submissions={}, occurred_at=T0, source="placement/0"
    )
    assert wire_from_instruction(
        ins, submissions={}, occurred_at=T0, source="p"
    ) == stop.model_copy(update={"source": "p"})


def test_hand_built_preemption_without_decision_has_no_audit() -> None:
    ins = Preempt("s", "t-1", 1, "n-1", "room for t-2", "t-2", "d-1")
    (stop,) = wire_records_from_instruction(ins, submissions={}, occurred_at=T0, source="p")
    assert isinstance(stop, wire_schemas_commands.StopAttempt)
    assert preemption_audit_to_wire(ins, occurred_at=T0, source="p") is None


def test_two_victims_of_one_decision_get_distinct_audit_ids() -> None:
    ids = {
        preemption_audit_to_wire(
            Preempt("s", victim, 1, "n-1", "room", "t-urgent", "d-1", PREEMPT_DECISION),
            occurred_at=T0,
            source="p",
        ).event_id  # type: ignore[union-attr]
        for victim in ("t-a", "t-b")
    }
    assert len(ids) == 2


def test_assignments_and_rejections_keep_their_records_in_the_flat_form() -> None:
    core = placement_core()
    sub = gpu_submission()
    out = run(core, heartbeat(), sub, now_s=T0.timestamp())
    (assign,) = [ins for ins in out if isinstance(ins, Assign)]
    kwargs: dict[str, Any] = {
        "submissions": {sub.task_id: sub},
        "occurred_at": T0,
        "source": "p",
    }
    assert wire_records_from_instruction(assign, **kwargs) == wire_from_instruction(
        assign, **kwargs
    )
    audit = wire_records_from_instruction(assign, **kwargs)[1]
    assert isinstance(audit, wire_schemas.DecisionAudit)
    assert (audit.kind, audit.preempted_task_id, audit.preempted_attempt) == ("assign", None, None)
    for ins in OTHER_INSTRUCTIONS:
        assert wire_records_from_instruction(ins, **kwargs) == ()
    stop = StopAttempt("s", "t-1", 1, "n-1", "cancelled")
    (cmd,) = wire_records_from_instruction(stop, **kwargs)
    assert isinstance(cmd, wire_schemas_commands.StopAttempt)


def test_core_preemption_audit_is_valid_on_the_wire() -> None:
    """End to end through the core: a critical task preempts a running preemptible one on
    the only node; the wire audit names victim, node, beneficiary and decision."""
    core = SchedulerCore(get_policy("forecast", preempt_min_run_s=0.0), RunningMeanForecaster())
    now_s = T0.timestamp()
    small = heartbeat(capacity={"cpu_milli": 8000, "memory_mib": 65536, "gpus": 2})
    batch = submitted(
        event_id="e-batch",
        task_id="t-batch",
        resources={"gpus": 2},
        preemptible=True,
        priority="low",
    )
    (first,) = [i for i in run(core, small, batch, now_s=now_s) if isinstance(i, Assign)]
    run(
        core,
        wire_schemas.TaskStarted(**WIRE, task_id="t-batch", attempt=1, node_id="node-7"),
        now_s=now_s + 1,
    )
    urgent = submitted(
        event_id="e-urgent", task_id="t-urgent", resources={"gpus": 2}, priority="critical"
    )
    out = run(core, urgent, now_s=now_s + 60)
    (preempt,) = [i for i in out if isinstance(i, Preempt)]
    stop, audit = wire_records_from_instruction(
        preempt, submissions={}, occurred_at=T0, source="placement/0"
    )
    assert isinstance(stop, wire_schemas_commands.StopAttempt)
    assert isinstance(audit, wire_schemas.DecisionAudit)
    assert audit.kind == "preempt"
    assert (audit.preempted_task_id, audit.preempted_attempt) == ("t-batch", first.attempt)
    assert (audit.task_id, audit.attempt) == ("t-urgent", 1)
    assert audit.chosen_node_id == stop.node_id == "node-7"
    assert audit.decision_id == preempt.decision_id
    assert audit.stimulus_id == "e-urgent"
    assert audit.policy_version == "forecast/1"
    assert "critical outranks low" in audit.reason
    assert "attempt 1 of t-batch" in audit.reason
    assert "on node-7" in audit.reason
    assert decode(encode(audit), now=T0) == audit


# ====================================================================== policy updates
def test_policy_update_switches_the_policy_named_in_later_audits() -> None:
    core = placement_core()
    sub = gpu_submission()
    now_s = T0.timestamp()
    update = wire_schemas.PolicyUpdate(
        **WIRE, event_id="w-pol", policy="best-fit", parameters={"max_scan": 32}
    )
    out = run(core, update, heartbeat(), sub, now_s=now_s)
    (changed,) = [i for i in out if isinstance(i, PolicyUpdated)]
    assert (changed.policy, changed.version, changed.changed) == (
        "best-fit",
        "best-fit/1+max_scan=32",
        True,
    )
    (assign,) = [i for i in out if isinstance(i, Assign)]
    _, audit = wire_records_from_instruction(
        assign, submissions={sub.task_id: sub}, occurred_at=T0, source="p"
    )
    assert isinstance(audit, wire_schemas.DecisionAudit)
    assert (audit.policy, audit.policy_version) == ("best-fit", "best-fit/1+max_scan=32")


def test_an_invalid_policy_update_is_rejected_with_a_reason() -> None:
    core = placement_core()
    update = wire_schemas.PolicyUpdate(
        **WIRE, event_id="w-ab", policy="fifo", split_ratio=0.5, shadow_policy="oracle"
    )
    (rejected,) = run(core, update, now_s=T0.timestamp())
    assert isinstance(rejected, PolicyRejected)
    assert "oracle" in rejected.reason
    assert core.policy.name == "forecast"
    assert wire_from_instruction(rejected, submissions={}, occurred_at=T0, source="p") is None


def test_policy_outcomes_become_policy_changed_records_naming_who_and_why() -> None:
    core = placement_core()
    good = wire_schemas.PolicyUpdate(
        **{**WIRE, "source": "ops/alice"},
        event_id="w-good",
        policy="best-fit",
        parameters={"max_scan": 32},
        shadow_policy="least-loaded",
    )
    bad = wire_schemas.PolicyUpdate(**WIRE, event_id="w-bad", policy="no-such-policy")
    out = run(core, good, bad, now_s=T0.timestamp())
    requests = {good.event_id: good, bad.event_id: bad}
    records = [
        r
        for ins in out
        for r in wire_records_from_instruction(
            ins, submissions={}, occurred_at=T0, source="placement:d", requests=requests
        )
    ]
    accepted, refused = records
    assert isinstance(accepted, wire_schemas.PolicyChanged)
    assert isinstance(refused, wire_schemas.PolicyChanged)
    assert (accepted.event_id, accepted.request_event_id) == ("w-good.policy", "w-good")
    assert (accepted.requested_by, accepted.accepted, accepted.changed) == (
        "ops/alice",
        True,
        True,
    )
    assert (accepted.policy, accepted.previous_policy) == ("best-fit", "forecast")
    assert accepted.shadow_policy == "least-loaded"
    assert accepted.parameters == {"max_scan": 32.0}
    assert "was forecast/" in accepted.reason
    assert "shadow least-loaded" in accepted.reason
    assert (refused.event_id, refused.accepted, refused.changed) == ("w-bad.policy", False, False)
    assert refused.requested_by == "executor/node-7"  # WIRE's source
    assert refused.policy == "no-such-policy"
    assert refused.reason.startswith("refused: ")
    assert "no-such-policy" in refused.reason
    assert refused.version is None
    for record in records:  # valid on the wire, round trip intact
        assert decode(encode(record)) == record


def test_a_policy_outcome_without_its_request_names_an_unknown_requester() -> None:
    ins = PolicyRejected("w-lost", "nope", "unknown policy 'nope'")
    (record,) = wire_records_from_instruction(ins, submissions={}, occurred_at=T0, source="p")
    assert isinstance(record, wire_schemas.PolicyChanged)
    assert record.requested_by == "unknown"


def test_an_unchanged_policy_update_is_recorded_as_accepted_without_change() -> None:
    core = placement_core()
    same = wire_schemas.PolicyUpdate(**WIRE, event_id="w-same", policy="forecast")
    (ins,) = run(core, same, now_s=T0.timestamp())
    (record,) = wire_records_from_instruction(
        ins, submissions={}, occurred_at=T0, source="p", requests={"w-same": same}
    )
    assert isinstance(record, wire_schemas.PolicyChanged)
    assert (record.accepted, record.changed) == (True, False)
    assert record.reason.startswith("already live")


def test_cancel_outcome_ids_are_derived_from_the_request() -> None:
    request = wire_schemas.CancelTask(
        **WIRE, event_id="w-cancel", task_id="t-1", reason="not needed", requested_by="vision"
    )
    refused = cancel_outcome_to_wire(
        request, accepted=False, outcome="refused", attempt=0, occurred_at=T0, source="p"
    )
    accepted = cancel_outcome_to_wire(
        request,
        accepted=True,
        outcome="cancelled while queued",
        attempt=0,
        occurred_at=T0,
        source="p",
    )
    # Same id either way: a redelivered cancel refused after the first one succeeded is a
    # duplicate for consumers, not a contradiction.
    assert refused.event_id == accepted.event_id == "w-cancel.cancel"
    assert (accepted.requested_by, accepted.reason, accepted.task_id) == (
        "vision",
        "not needed",
        "t-1",
    )


def test_a_replay_clock_maps_wire_times_into_core_time() -> None:
    """On a compressed replay clock, heartbeat times and deadlines are trace seconds too."""

    def replay(moment: datetime) -> float:  # trace seconds, 100x, starting at T0
        return (moment.timestamp() - T0.timestamp()) * 100.0

    hb = core_event_from_wire(heartbeat(), now_s=5.0, core_time=replay)
    assert isinstance(hb, core_events.NodeUp)
    assert hb.reported_at_s == 0.0
    deadline = datetime.fromtimestamp(T0.timestamp() + 60.0, tz=UTC)
    sub = core_event_from_wire(submitted(deadline=deadline), now_s=0.0, core_time=replay)
    assert isinstance(sub, core_events.TaskSubmitted)
    assert sub.spec.deadline_s == pytest.approx(6000.0)


def test_a_hardware_class_known_only_from_heartbeats_is_valid_in_assignments() -> None:
    """The core places on classes nodes registered with, built in or not."""
    data = heartbeat().model_dump()
    data["hardware"] = "gpu-h100x"
    hb = NodeHeartbeat.model_validate(data, context={"known_hardware": {"gpu-h100x"}})
    core = placement_core()
    sub = gpu_submission()
    out = run(core, hb, sub, now_s=T0.timestamp())
    (assign,) = [ins for ins in out if isinstance(ins, Assign)]
    wire_out = wire_from_instruction(
        assign, submissions={sub.task_id: sub}, occurred_at=T0, source="placement/0"
    )
    assert isinstance(wire_out, tuple)
    assignment, audit = wire_out
    assert assignment.hardware == audit.chosen_hardware == "gpu-h100x"


def test_a_terminal_transition_becomes_task_ended() -> None:
    """Every task the core settles is announced on the wire, whatever settled it."""
    from streamsched.scheduler.instructions import TaskTransition
    from streamsched.scheduler.model import TaskState

    ended = TaskTransition(
        "e-fail", "t-2", 0, TaskState.SUBMITTED, TaskState.CANCELLED, "upstream t-1 failed"
    )
    records = wire_records_from_instruction(ended, submissions={}, occurred_at=T0, source="p")
    assert len(records) == 1
    (record,) = records
    assert isinstance(record, wire_schemas.TaskEnded)
    assert (record.task_id, record.state, record.attempt) == ("t-2", "cancelled", 0)
    assert record.reason == "upstream t-1 failed"
    assert decode(encode(record), now=T0) == record
    again = wire_records_from_instruction(ended, submissions={}, occurred_at=T0, source="p")
    assert again == records  # deterministic event id: a replay republishes the same record
    queued = TaskTransition("e-sub", "t-3", 0, None, TaskState.QUEUED, "submitted")
    assert wire_records_from_instruction(queued, submissions={}, occurred_at=T0, source="p") == ()


def _requeues(
    out: list[Instruction], now_s: float | None = None
) -> list[wire_schemas.TaskRequeued]:
    records = [
        record
        for ins in out
        if isinstance(ins, TaskTransition)
        for record in wire_records_from_instruction(
            ins, submissions={}, occurred_at=T0, source="placement:p", now_s=now_s
        )
    ]
    return [r for r in records if isinstance(r, wire_schemas.TaskRequeued)]


def test_an_attempt_the_executor_reports_lost_is_requeued_on_the_audit_trail() -> None:
    core = placement_core()
    sub = gpu_submission()
    now_s = T0.timestamp()
    run(core, heartbeat(), sub, now_s=now_s)
    lost = wire_schemas.TaskLost(
        **WIRE, event_id="w-lost-1", task_id="t-1", attempt=1, node_id="node-7", reason="oom"
    )
    out = run(core, lost, now_s=now_s + 5)
    (record,) = _requeues(out, now_s=now_s + 5)
    assert (record.task_id, record.attempt, record.previous_state) == ("t-1", 1, "assigned")
    assert record.reason == "attempt 1 lost: oom"
    assert (record.stimulus_id, record.decided_at_s) == ("w-lost-1", now_s + 5)
    assert record.node_id is None  # the instruction does not name the node
    assert (record.event_id, record.source) == ("w-lost-1.t-1.1.requeued", "placement:p")
    assert decode(encode(record), now=T0) == record
    assert _requeues(out, now_s=now_s + 5) == [record]  # a replay republishes the same id
    (again,) = [i for i in out if isinstance(i, Assign)]
    assert again.attempt == 2  # the attempt the re-queue explains


def test_a_retryable_failure_with_retries_left_is_requeued_with_the_retry_count() -> None:
    core = placement_core()
    sub = gpu_submission(max_retries=2)
    now_s = T0.timestamp()
    run(core, heartbeat(), sub, now_s=now_s)
    started = wire_schemas.TaskStarted(
        **WIRE, event_id="w-start-1", task_id="t-1", attempt=1, node_id="node-7"
    )
    run(core, started, now_s=now_s + 1)
    failed = wire_schemas.TaskFailed(
        **WIRE, event_id="w-fail-1", task_id="t-1", attempt=1, node_id="node-7", reason="oom"
    )
    (record,) = _requeues(run(core, failed, now_s=now_s + 2), now_s=now_s + 2)
    assert (record.attempt, record.previous_state, record.stimulus_id) == (1, "running", "w-fail-1")
    assert record.reason.startswith("retry 1/2: oom (retry backoff ")


def test_a_silent_node_requeues_its_attempt_naming_the_node() -> None:
    core = SchedulerCore(
        get_policy("forecast"), RunningMeanForecaster(), CoreConfig(heartbeat_timeout_s=10.0)
    )
    now_s = T0.timestamp()
    run(core, heartbeat(), gpu_submission(), now_s=now_s)
    out = core.handle(now=now_s + 11.5)
    (record,) = _requeues(out)  # no now_s: occurred_at, as core time
    assert record.stimulus_id == "heartbeat-timeout:node-7"
    assert record.reason == "no heartbeat for 12 s: node node-7"
    assert record.decided_at_s == T0.timestamp()
    assert record.event_id == "heartbeat-timeout:node-7.t-1.1.requeued"


@pytest.mark.parametrize(
    "ins",
    [
        TaskTransition("s", "t-1", 0, None, TaskState.SUBMITTED, "accepted"),
        TaskTransition("s", "t-1", 0, TaskState.SUBMITTED, TaskState.QUEUED, "dependencies met"),
        TaskTransition("s", "t-1", 1, TaskState.QUEUED, TaskState.ASSIGNED, "placed"),
        TaskTransition("s", "t-1", 1, TaskState.ASSIGNED, TaskState.RUNNING, "started"),
    ],
    ids=lambda i: f"{i.old}->{i.new}",
)
def test_transitions_that_take_no_attempt_back_have_no_requeue_record(
    ins: TaskTransition,
) -> None:
    assert wire_records_from_instruction(ins, submissions={}, occurred_at=T0, source="p") == ()
    with pytest.raises(ValueError, match="is not a re-queue"):
        task_requeued_to_wire(ins, decided_at_s=0.0, occurred_at=T0, source="p")


# ---------------------------------------------------------------------- reliability
def test_a_cancel_by_another_tenant_is_refused_on_the_audit_trail() -> None:
    core = placement_core()
    sub = gpu_submission()  # tenant "vision"
    run(core, heartbeat(), sub, now_s=T0.timestamp())
    request = wire_schemas.CancelTask(
        **WIRE, event_id="w-steal", task_id="t-1", reason="mine now", requested_by="mallory"
    )
    (ins,) = run(core, request, now_s=T0.timestamp() + 1.0)
    assert isinstance(ins, CancelRefused)
    (record,) = wire_records_from_instruction(
        ins, submissions={sub.task_id: sub}, occurred_at=T0, source="placement:d"
    )
    assert isinstance(record, wire_schemas.CancelOutcome)
    assert decode(encode(record), now=T0) == record
    assert record.event_id == "w-steal.cancel"  # as for every cancel outcome
    assert (record.task_id, record.request_event_id, record.requested_by) == (
        "t-1",
        "w-steal",
        "mallory",
    )
    assert (record.accepted, record.reason, record.attempt) == (False, "mine now", 1)
    assert record.outcome.startswith("refused: 'mallory' does not own this task")
    assert core.state_of("t-1") is TaskState.ASSIGNED


def test_a_breaker_change_becomes_a_breaker_changed_record() -> None:
    core = SchedulerCore(
        get_policy("forecast"),
        RunningMeanForecaster(),
        CoreConfig(breaker_min_failures=1, breaker_window=1, breaker_cooldown_s=30.0),
    )
    sub = gpu_submission()
    now = T0.timestamp()
    run(core, heartbeat(), sub, now_s=now)
    fail = wire_schemas.TaskFailed(
        **{**ATTEMPT, "attempt": 1}, event_id="w-fail", reason="Xid 79", exit_code=1
    )
    out = run(core, fail, now_s=now + 5.0)
    (ins,) = [i for i in out if isinstance(i, BreakerChanged)]
    (record,) = wire_records_from_instruction(ins, submissions={}, occurred_at=T0, source="p")
    assert isinstance(record, wire_schemas.BreakerChanged)
    assert decode(encode(record), now=T0) == record
    assert record.event_id == f"{ins.decision_id}.breaker"
    assert (record.hardware, record.previous_state, record.state) == (
        "gpu-v100",
        "closed",
        "open",
    )
    assert (record.failed_tasks, record.succeeded, record.cooldown_s) == (1, 0, 30.0)
    assert (record.decided_at_s, record.half_open_at_s) == (now + 5.0, now + 35.0)
    assert "placement on gpu-v100 paused for 30 s" in record.reason


def test_an_admission_rejection_shows_as_rejected_in_the_status_view() -> None:
    """The processor folds the submission and the scheduler's ``task.rejected`` into the
    task's status: the submitter sees ``rejected`` and the reason."""
    from streamsched.streams.state import TaskState as StatusState
    from streamsched.streams.state import apply

    core = SchedulerCore(
        get_policy("forecast"), RunningMeanForecaster(), CoreConfig(max_queued_per_tenant=1)
    )
    first = submitted(event_id="e-1", task_id="t-1", idempotency_key="k-1")
    second = submitted(event_id="e-2", task_id="t-2", idempotency_key="k-2")
    out = run(core, first, second, now_s=T0.timestamp())  # no node: t-1 stays queued
    (reject,) = [i for i in out if isinstance(i, Reject)]
    (record,) = wire_records_from_instruction(
        reject, submissions={"t-2": second}, occurred_at=T0, source="placement:d"
    )
    assert isinstance(record, TaskRejected)
    assert record.idempotency_key == "k-2"
    status = apply(apply(None, second), record)
    assert status is not None
    assert status.state is StatusState.REJECTED
    assert status.rejection_reason == (
        "tenant 'vision' has 1 queued tasks (max_queued_per_tenant=1); submit again once "
        "some have started"
    )
