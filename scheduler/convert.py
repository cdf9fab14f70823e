"""Map wire models (:mod:`streamsched.schemas`) onto the core's value types, and back.

Pure functions: no clock, no I/O, no randomness. Imports flow ``schemas`` <- ``scheduler``:
the wire format never imports the core, so the priority enum exists on both sides and is
mapped here.

Time
    The core measures time in float seconds. **In the live system core time is Unix epoch
    seconds** (UTC): a wire deadline (an aware datetime) becomes ``deadline.timestamp()``,
    and a core time becomes an aware UTC datetime with :func:`datetime_from_core_time`.
    Trace loaders and the simulator may use another origin; they set core times themselves.
    Naive datetimes are refused: their meaning would depend on the host's time zone.

Wire -> core (:func:`core_event_from_wire`)
    Every stimulus takes the wire ``event_id`` as its ``stimulus_id``, so the trace id of
    the input follows the decisions it causes. Events that are not core stimuli map to
    ``None``.

Core -> wire (:func:`wire_from_instruction`)
    Event ids of the records made here are *derived*, not random: the assignment and audit
    of decision ``d-00000042`` are ``d-00000042.assignment`` and ``d-00000042.audit``; the
    rejection answering submission event ``e`` is ``e.rejected``. A placement agent that
    replays the same inputs re-makes the same decisions and republishes the same event ids,
    which consumers deduplicate (at-least-once delivery). This relies on decision ids being
    unique per core state: a placement agent that restarts *without* replaying its inputs
    must use a fresh ``CoreConfig.decision_prefix``. The audit of a preemption that stops
    attempt ``a`` of task ``v`` is ``<decision_id>.<v>.<a>.audit`` (one preemption decision
    may stop several attempts). The outcome of a policy update with event id ``e`` is
    ``e.policy``, that of a cancel command ``e.cancel`` (accepted or refused). A circuit
    breaker transition with decision id ``d-breaker-000003`` is ``d-breaker-000003.breaker``.
    The re-queue of attempt ``a`` of task ``t`` caused by stimulus ``s`` is
    ``s.t.a.requeued``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import BaseModel

from streamsched.schemas import commands as wire_commands
from streamsched.schemas import lifecycle as wire
from streamsched.schemas.codec import Event as WireEvent
from streamsched.schemas.decisions import (
    Assignment,
    BreakerChanged,
    CancelOutcome,
    DecisionAudit,
    DecisionCandidate,
    PolicyChanged,
    TaskEnded,
    TaskRequeued,
)
from streamsched.schemas.nodes import NodeHeartbeat
from streamsched.schemas.tasks import DeclaredWork, Priority, TaskRejected, TaskSubmitted
from streamsched.schemas.types import CONTEXT_KNOWN_HARDWARE, MAX_ID_CHARS, MAX_TEXT_CHARS

from . import events as core
from .instructions import (
    Assign,
    CancelRefused,
    Candidate,
    Decision,
    Instruction,
    PolicyRejected,
    PolicyUpdated,
    Preempt,
    Reject,
    ShadowAssign,
    TaskTransition,
)
from .instructions import BreakerChanged as CoreBreakerChanged
from .instructions import StopAttempt as CoreStopAttempt
from .model import NodeSpec, PriorityClass, TaskSpec, TaskState
from .statemachine import HOLDS_RESOURCES

#: Wire priority -> core priority. Every wire value must appear (checked by the tests).
PRIORITY_TO_CORE: dict[Priority, PriorityClass] = {
    Priority.CRITICAL: PriorityClass.CRITICAL,
    Priority.HIGH: PriorityClass.HIGH,
    Priority.NORMAL: PriorityClass.NORMAL,
    Priority.LOW: PriorityClass.LOW,
}

_M = TypeVar("_M", bound=BaseModel)

#: A wire record made from a core instruction.
WireRecord = (
    Assignment
    | DecisionAudit
    | TaskRejected
    | TaskEnded
    | TaskRequeued
    | PolicyChanged
    | CancelOutcome
    | BreakerChanged
    | wire_commands.StopAttempt
)
#: A command whose outcome the scheduler answers on ``sched.decisions``.
WireRequest = wire_commands.CancelTask | wire_commands.PolicyUpdate


# ====================================================================== time
def core_time_from_datetime(moment: datetime) -> float:
    """Core time (Unix epoch seconds) of an aware datetime. Raises ``ValueError`` for a naive
    one."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: core time needs a UTC offset")
    return moment.timestamp()


def datetime_from_core_time(seconds: float) -> datetime:
    """The aware UTC datetime of a core time (Unix epoch seconds). Raises ``ValueError`` for
    a non-finite time."""
    if not math.isfinite(seconds):
        raise ValueError(f"core time {seconds} is not finite")
    return datetime.fromtimestamp(seconds, tz=UTC)


def deadline_s_from_wire(
    deadline: datetime | None,
    core_time: Callable[[datetime], float] = core_time_from_datetime,
) -> float | None:
    """A wire deadline as core seconds (``None`` stays ``None``)."""
    return None if deadline is None else core_time(deadline)


def deadline_to_wire(deadline_s: float | None) -> datetime | None:
    """A core deadline as an aware UTC datetime (``None`` stays ``None``)."""
    return None if deadline_s is None else datetime_from_core_time(deadline_s)


# ====================================================================== wire -> core values
def declared_work_amount(work: DeclaredWork) -> float:
    """The size feature forecasters scale with: steps if given, else epochs, else input
    bytes, else 0 (unknown)."""
    for amount in (work.steps, work.epochs, work.input_bytes):
        if amount is not None:
            return float(amount)
    return 0.0


def task_spec_from_event(
    ev: TaskSubmitted, core_time: Callable[[datetime], float] = core_time_from_datetime
) -> TaskSpec:
    """The core's :class:`TaskSpec` for a submission. The deadline becomes core seconds
    through ``core_time`` (default: epoch seconds, the live system's core time); trace
    loaders that use another time origin set ``deadline_s`` themselves."""
    res = ev.resources
    return TaskSpec(
        task_id=ev.task_id,
        task_type=ev.task_type,
        tenant=ev.tenant,
        cpu_milli=res.cpu_milli,
        memory_mib=res.memory_mib,
        gpus=res.gpus,
        gpu_milli=res.gpu_milli,
        allowed_hardware=frozenset(res.allowed_hardware),
        priority=PRIORITY_TO_CORE[ev.priority],
        deadline_s=deadline_s_from_wire(ev.deadline, core_time),
        preemptible=ev.preemptible,
        depends_on=tuple(ev.depends_on),
        governance=MappingProxyType(dict(ev.governance)),
        declared_work=declared_work_amount(ev.declared_work),
        declared_runtime_s=ev.declared_work.runtime_s,
        dataset_bytes=ev.declared_work.input_bytes or 0,
        max_retries=ev.max_retries,
    )


def running_from_heartbeat(hb: NodeHeartbeat) -> frozenset[tuple[str, int]]:
    """The attempts a heartbeat lists as running, as ``(task_id, attempt)`` pairs."""
    return frozenset((item.task_id, item.attempt) for item in hb.running)


def node_spec_from_heartbeat(hb: NodeHeartbeat) -> NodeSpec:
    """The core's :class:`NodeSpec` for a heartbeat: hardware class, capacity and labels."""
    return NodeSpec(
        node_id=hb.node_id,
        hardware=hb.hardware,
        cpu_milli=hb.capacity.cpu_milli,
        memory_mib=hb.capacity.memory_mib,
        gpus=hb.capacity.gpus,
        labels=MappingProxyType(dict(hb.labels)),
    )


# ====================================================================== wire -> core events
def core_event_from_wire(
    event: WireEvent,
    *,
    now_s: float,
    core_time: Callable[[datetime], float] = core_time_from_datetime,
) -> core.Event | None:
    """The core stimulus for a wire event, or ``None`` when the event is not one.

    ``stimulus_id`` is the wire ``event_id``. Mappings:

    - ``task.submitted`` -> :class:`~.events.TaskSubmitted` (via :func:`task_spec_from_event`)
    - ``node.heartbeat`` -> :class:`~.events.NodeUp` with capacity and labels, the
      ``running`` attempts (reconciled by the core, see ``CoreConfig.reconcile_grace_s``)
      and ``reported_at_s`` = the heartbeat's ``occurred_at``; ``usage`` is not a core input
    - ``task.started`` / ``task.progress`` / ``task.completed`` / ``task.failed`` /
      ``task.preempted`` -> the core event of the same name, fields preserved
    - ``task.lost`` -> :class:`~.events.TaskLost` (the wire reason): it reports one attempt
      vanishing; the core re-queues it without using a retry (node loss as a whole is the
      heartbeat monitor's :class:`~.events.NodeLost`)
    - ``command.cancel_task`` -> :class:`~.events.CancelTask` with the wire reason and
      ``requested_by``: the core refuses (``CancelRefused``) a cancel by anyone but the
      task's tenant or an operator (``CoreConfig.cancel_operators``)
    - ``command.update_policy`` -> :class:`~.events.UpdatePolicy` (parameters as sorted
      pairs; the core validates them and answers ``PolicyUpdated`` or ``PolicyRejected``;
      whether the sender may change the policy is checked by the caller)
    - ``task.cancelled`` -> ``None``: the executor confirms a stop the core itself asked for
      (the task is already ``cancelled`` in the core and its resources released)
    - ``data.ingested``, ``task.assigned``, ``decision.audit``, ``task.rejected``,
      ``command.stop_attempt`` -> ``None``: not core stimuli (the stream processor and the
      audit log handle them; stops are the core's own output).

    ``now_s`` is the core time the event will be applied at. No current mapping depends on
    it; it is part of the signature so that call sites stay unchanged if a mapping ever
    needs it. ``core_time`` maps wire times (heartbeat ``occurred_at``, deadlines) to core
    time: Unix epoch seconds by default; a trace replay on a compressed clock passes its
    own mapping so that they are in trace seconds like ``now``.
    """
    del now_s  # documented above: not needed by any current mapping
    sid = event.event_id
    match event:
        case TaskSubmitted():
            return core.TaskSubmitted(sid, task_spec_from_event(event, core_time=core_time))
        case NodeHeartbeat():
            return core.NodeUp(
                sid,
                node_spec_from_heartbeat(event),
                running=running_from_heartbeat(event),
                reported_at_s=core_time(event.occurred_at),
                ended=frozenset((item.task_id, item.attempt) for item in event.ended),
                assignments_seen=event.assignments_seen,
            )
        case wire.TaskStarted():
            return core.TaskStarted(sid, event.task_id, event.attempt, event.node_id)
        case wire.TaskProgress():
            return core.TaskProgress(sid, event.task_id, event.attempt, event.progress)
        case wire.TaskCompleted():
            return core.TaskCompleted(sid, event.task_id, event.attempt, event.runtime_s)
        case wire.TaskFailed():
            return core.TaskFailed(
                sid,
                event.task_id,
                event.attempt,
                event.reason,
                exit_code=event.exit_code,
                retryable=event.retryable,
            )
        case wire.TaskPreempted():
            return core.TaskPreempted(sid, event.task_id, event.attempt, event.progress)
        case wire.TaskLost():
            return core.TaskLost(sid, event.task_id, event.attempt, event.reason)
        case wire_commands.CancelTask():
            return core.CancelTask(sid, event.task_id, event.reason, event.requested_by)
        case wire_commands.PolicyUpdate():
            return core.UpdatePolicy(
                sid,
                event.policy,
                parameters=tuple(sorted(event.parameters.items())),
                split_ratio=event.split_ratio,
                shadow_policy=event.shadow_policy,
            )
        case _:
            return None


# ====================================================================== core -> wire
_WHITESPACE = re.compile(r"\s")


def derived_event_id(base: str, suffix: str) -> str:
    """A deterministic event id ``<base>.<suffix>``; when that would exceed the wire's
    identifier length, ``<sha256 of base>.<suffix>`` instead."""
    candidate = f"{base}.{suffix}"
    if len(candidate) <= MAX_ID_CHARS and _WHITESPACE.search(candidate) is None:
        return candidate
    return f"{hashlib.sha256(base.encode('utf-8')).hexdigest()}.{suffix}"


def _text(value: str, fallback: str) -> str:
    """``value`` fitted to the wire's free-text field (1..4096 characters)."""
    if not value:
        return fallback
    if len(value) <= MAX_TEXT_CHARS:
        return value
    return value[: MAX_TEXT_CHARS - 1] + "\u2026"


def _seconds(value: float) -> float:
    """A core duration as a wire duration: a float >= 0 (tiny negative round-off is 0)."""
    return max(0.0, float(value))


def wire_score(score: float) -> float | None:
    """A candidate score for the wire: ``None`` for ``-inf``/``nan`` (infeasible; JSON has
    no infinities), else the score. ``+inf`` is clamped to the largest finite float."""
    if math.isnan(score) or score == -math.inf:
        return None
    if score == math.inf:
        return 1.7976931348623157e308
    return float(score)


def _from_core(model: type[_M], classes: Iterable[str], /, **fields: Any) -> _M:
    """``model(**fields)``, accepting the hardware classes the core placed on: the core
    only knows classes that nodes registered with (built-in or configured), so they are
    valid in this deployment even when not built in."""
    return model.model_validate(fields, context={CONTEXT_KNOWN_HARDWARE: frozenset(classes)})


def decision_candidate_to_wire(candidate: Candidate) -> DecisionCandidate | None:
    """The wire form of a candidate, or ``None`` if its predicted runtime or wait is not
    finite (an infeasible option the wire model cannot express; it is left out of the
    audit)."""
    if not (
        math.isfinite(candidate.predicted_runtime_s) and math.isfinite(candidate.expected_wait_s)
    ):
        return None
    return _from_core(
        DecisionCandidate,
        {candidate.hardware},
        node_id=candidate.node_id,
        hardware=candidate.hardware,
        score=wire_score(candidate.score),
        predicted_runtime_s=_seconds(candidate.predicted_runtime_s),
        expected_wait_s=_seconds(candidate.expected_wait_s),
    )


def decision_audit_to_wire(
    decision: Decision,
    *,
    occurred_at: datetime,
    source: str,
    preempted: tuple[str, int] | None = None,
    shadow: ShadowAssign | None = None,
) -> DecisionAudit:
    """The ``decision.audit`` record of a placement decision (event id
    ``<decision_id>.audit``), or with ``preempted=(task_id, attempt)`` of a preemption
    stopping that attempt (``kind="preempt"``, event id
    ``<decision_id>.<task_id>.<attempt>.audit``), or with ``shadow`` (whose ``decision``
    is ``decision``) of a shadow policy's would-be placement (``kind="shadow"``, event id
    ``<decision_id>.audit``, with the live decision it is compared with)."""
    candidates = tuple(
        wire_c
        for wire_c in map(decision_candidate_to_wire, decision.candidates)
        if wire_c is not None
    )
    base = decision.decision_id
    if preempted is not None:
        base = f"{base}.{preempted[0]}.{preempted[1]}"
    hardware = {decision.chosen_hardware, *(c.hardware for c in decision.candidates)}
    live: dict[str, str | None] = {}
    if shadow is not None:
        live = {
            "live_decision_id": shadow.live_decision_id,
            "live_node_id": shadow.live_node_id,
            "live_hardware": shadow.live_hardware,
        }
        if shadow.live_hardware is not None:
            hardware.add(shadow.live_hardware)
    kind = "shadow" if shadow is not None else "assign" if preempted is None else "preempt"
    return _from_core(
        DecisionAudit,
        hardware,
        event_id=derived_event_id(base, "audit"),
        kind=kind,
        **live,
        preempted_task_id=None if preempted is None else preempted[0],
        preempted_attempt=None if preempted is None else preempted[1],
        occurred_at=occurred_at,
        source=source,
        decision_id=decision.decision_id,
        stimulus_id=decision.stimulus_id,
        task_id=decision.task_id,
        attempt=decision.attempt,
        policy=decision.policy,
        policy_version=decision.policy_version,
        model_version=decision.model_version,
        decided_at_s=float(decision.decided_at_s),
        chosen_node_id=decision.chosen_node_id,
        chosen_hardware=decision.chosen_hardware,
        predicted_runtime_s=_seconds(decision.predicted_runtime_s),
        reason=_text(decision.reason, "no reason recorded"),
        candidates=candidates,
    )


def assignment_to_wire(
    ins: Assign, submission: TaskSubmitted, *, occurred_at: datetime, source: str
) -> Assignment:
    """The ``task.assigned`` record the executor runs (event id
    ``<decision_id>.assignment``). ``submission`` supplies what the core does not carry:
    command, env, tenant, task type, and the governance tags the executor re-checks."""
    if submission.task_id != ins.task_id:
        raise ValueError(
            f"submission is for task {submission.task_id!r}, the assignment for {ins.task_id!r}"
        )
    return _from_core(
        Assignment,
        {ins.hardware},
        event_id=derived_event_id(ins.decision.decision_id, "assignment"),
        occurred_at=occurred_at,
        source=source,
        decision_id=ins.decision.decision_id,
        task_id=ins.task_id,
        attempt=ins.attempt,
        node_id=ins.node_id,
        hardware=ins.hardware,
        gpu_indices=tuple(ins.gpu_indices),
        gpu_milli=ins.gpu_milli if ins.gpu_indices else 0,
        predicted_runtime_s=_seconds(ins.predicted_runtime_s),
        resume_progress=min(1.0, _seconds(ins.resume_progress)),
        command=submission.command,
        env=dict(submission.env),
        tenant=submission.tenant,
        task_type=submission.task_type,
        governance=dict(submission.governance),
        sequence=ins.sequence,
    )


def rejection_to_wire(
    ins: Reject, submission: TaskSubmitted | None, *, occurred_at: datetime, source: str
) -> TaskRejected:
    """The ``task.rejected`` answer to a refused submission (event id
    ``<stimulus_id>.rejected``); ``idempotency_key`` comes from ``submission`` if known."""
    return TaskRejected(
        event_id=derived_event_id(ins.stimulus_id, "rejected"),
        occurred_at=occurred_at,
        source=source,
        task_id=ins.task_id[:MAX_ID_CHARS],
        idempotency_key=submission.idempotency_key if submission is not None else None,
        reason=_text(ins.reason, "rejected by the scheduler"),
    )


def preemption_audit_to_wire(
    ins: Preempt, *, occurred_at: datetime, source: str
) -> DecisionAudit | None:
    """The ``decision.audit`` record (``kind="preempt"``) explaining a preemption, or
    ``None`` when the instruction carries no decision (built by hand)."""
    if ins.decision is None:
        return None
    return decision_audit_to_wire(
        ins.decision,
        occurred_at=occurred_at,
        source=source,
        preempted=(ins.task_id, ins.attempt),
    )


def task_ended_to_wire(ins: TaskTransition, *, occurred_at: datetime, source: str) -> TaskEnded:
    """The ``task.ended`` record of a transition into a terminal state (event id derived
    from the task and the stimulus, so a replay republishes the same id)."""
    if not ins.new.terminal:
        raise ValueError(f"{ins.task_id}: {ins.new.value} is not a terminal state")
    return TaskEnded(
        event_id=derived_event_id(f"{ins.stimulus_id}.{ins.task_id}", "ended"),
        occurred_at=occurred_at,
        source=source,
        task_id=ins.task_id,
        state=ins.new.value,
        attempt=ins.attempt,
        reason=_text(ins.reason, f"task {ins.new.value}"),
    )


def is_requeue(ins: TaskTransition) -> bool:
    """True if ``ins`` takes an attempt back: from a state holding a node (``assigned``,
    ``running``) to ``queued``."""
    return ins.old in HOLDS_RESOURCES and ins.new is TaskState.QUEUED


def task_requeued_to_wire(
    ins: TaskTransition,
    *,
    decided_at_s: float,
    occurred_at: datetime,
    source: str,
    node_id: str | None = None,
) -> TaskRequeued:
    """The ``task.requeued`` record of a transition that takes attempt ``ins.attempt`` back
    to ``queued`` (event id ``<stimulus_id>.<task_id>.<attempt>.requeued``, so a replay
    republishes the same id). ``decided_at_s`` is the core time of the call that made it;
    ``node_id`` the node the attempt was on, if the caller knows it (the instruction does
    not carry it)."""
    if not is_requeue(ins):
        old = ins.old.value if ins.old is not None else "new"
        raise ValueError(f"{ins.task_id}: {old} -> {ins.new.value} is not a re-queue")
    assert ins.old is not None  # is_requeue: assigned or running
    return TaskRequeued(
        event_id=derived_event_id(f"{ins.stimulus_id}.{ins.task_id}.{ins.attempt}", "requeued"),
        occurred_at=occurred_at,
        source=source,
        task_id=ins.task_id,
        attempt=ins.attempt,
        previous_state=ins.old.value,
        reason=_text(ins.reason, f"attempt {ins.attempt} re-queued"),
        node_id=node_id,
        stimulus_id=ins.stimulus_id[:MAX_ID_CHARS],
        decided_at_s=float(decided_at_s),
    )


def wire_records_from_instruction(
    ins: Instruction,
    *,
    submissions: Mapping[str, TaskSubmitted],
    occurred_at: datetime,
    source: str,
    requests: Mapping[str, WireRequest] | None = None,
    now_s: float | None = None,
) -> tuple[WireRecord, ...]:
    """Every wire record a core instruction becomes, in publishing order (empty when it
    has no wire form). Route each by its type:

    - :class:`Assignment` -> ``assignment_topic(hardware)``, keyed by node id;
    - ``command.stop_attempt`` -> the assignment topic of its node's hardware, keyed by
      node id (after the assignment it stops);
    - :class:`DecisionAudit` and :class:`TaskRejected` -> ``sched.decisions``, keyed by
      ``task_id``.

    :class:`~.instructions.Assign` -> ``(Assignment, DecisionAudit)``;
    :class:`~.instructions.Preempt` -> ``(StopAttempt, DecisionAudit)`` (the audit has
    ``kind="preempt"``; just the stop if the instruction has no decision);
    :class:`~.instructions.StopAttempt` -> ``(StopAttempt,)``;
    :class:`~.instructions.ShadowAssign` -> ``(DecisionAudit,)`` with ``kind="shadow"``
    (to ``sched.decisions`` only: a shadow decision never becomes an assignment);
    :class:`~.instructions.Reject` -> ``(TaskRejected,)``;
    a :class:`~.instructions.TaskTransition` into a terminal state -> ``(TaskEnded,)``
    (to ``sched.decisions``, keyed by ``task_id``);
    a :class:`~.instructions.TaskTransition` from ``assigned``/``running`` to ``queued``
    (an attempt taken back) -> ``(TaskRequeued,)`` (to ``sched.decisions``, keyed by
    ``task_id``), with ``decided_at_s`` = ``now_s``, the core time of the call that
    returned the instruction (default: ``occurred_at`` as core time, which is the live
    system's epoch seconds); other transitions -> ``()``;
    :class:`~.instructions.PolicyUpdated` / :class:`~.instructions.PolicyRejected` ->
    ``(PolicyChanged,)`` (to ``sched.decisions``, keyed ``"policy"``), naming as
    ``requested_by`` the source of the ``command.update_policy`` found in ``requests``
    (wire commands by event id) under the instruction's ``stimulus_id``, or ``unknown``;
    :class:`~.instructions.CancelRefused` -> ``(CancelOutcome,)`` with ``accepted=false``
    (to ``sched.decisions``, keyed by ``task_id``);
    :class:`~.instructions.BreakerChanged` -> ``(BreakerChanged,)`` (to
    ``sched.decisions``, keyed ``"breaker"``).
    Errors as :func:`wire_from_instruction`.
    """
    if isinstance(ins, CancelRefused):
        return (cancel_refusal_to_wire(ins, occurred_at=occurred_at, source=source),)
    if isinstance(ins, CoreBreakerChanged):
        return (breaker_change_to_wire(ins, occurred_at=occurred_at, source=source),)
    if isinstance(ins, PolicyUpdated | PolicyRejected):
        request = (requests or {}).get(ins.stimulus_id)
        policy_request = request if isinstance(request, wire_commands.PolicyUpdate) else None
        return (policy_change_to_wire(ins, policy_request, occurred_at=occurred_at, source=source),)
    if isinstance(ins, TaskTransition):
        if is_requeue(ins):
            decided_at_s = core_time_from_datetime(occurred_at) if now_s is None else now_s
            return (
                task_requeued_to_wire(
                    ins, decided_at_s=decided_at_s, occurred_at=occurred_at, source=source
                ),
            )
        if not ins.new.terminal:
            return ()
        return (task_ended_to_wire(ins, occurred_at=occurred_at, source=source),)
    if isinstance(ins, ShadowAssign):
        return (
            decision_audit_to_wire(
                ins.decision, occurred_at=occurred_at, source=source, shadow=ins
            ),
        )
    if isinstance(ins, Preempt):
        stop = stop_to_wire(ins, occurred_at=occurred_at, source=source)
        audit = preemption_audit_to_wire(ins, occurred_at=occurred_at, source=source)
        return (stop,) if audit is None else (stop, audit)
    out = wire_from_instruction(
        ins, submissions=submissions, occurred_at=occurred_at, source=source
    )
    if out is None:
        return ()
    return out if isinstance(out, tuple) else (out,)


def wire_from_instruction(
    ins: Instruction,
    *,
    submissions: Mapping[str, TaskSubmitted],
    occurred_at: datetime,
    source: str,
) -> tuple[Assignment, DecisionAudit] | TaskRejected | wire_commands.StopAttempt | None:
    """The wire record(s) for a core instruction.

    - :class:`~.instructions.Assign` -> ``(Assignment, DecisionAudit)``; the submission of
      the task must be in ``submissions`` (by task id), else ``KeyError``.
    - :class:`~.instructions.Reject` -> :class:`TaskRejected`, with the idempotency key of
      ``submissions[task_id]`` only if that is the refused submission (its ``event_id`` is
      the instruction's ``stimulus_id``); otherwise without a key (call
      :func:`rejection_to_wire` with the refused submission to echo its key).
    - :class:`~.instructions.Preempt` -> ``command.stop_attempt`` with ``mode="preempt"``
      (checkpoint kept), :class:`~.instructions.StopAttempt` -> the same with
      ``mode="cancel"``; event ids derived from the stimulus, task and attempt. The audit
      record of a preemption is *not* returned here (this shape is kept for callers that
      unpack every tuple as ``(assignment, audit)``): use
      :func:`wire_records_from_instruction`, which returns it too.
    - anything else (``TaskTransition``, ``DeadlineInfeasible``, ``StaleEvent``,
      ``Learned``, ``PolicyUpdated``, ``PolicyRejected``) -> ``None``: status, metrics and
      log material here (:func:`wire_records_from_instruction` turns policy outcomes into
      ``policy.changed`` records).

    ``occurred_at`` (aware) and ``source`` go into the envelopes.
    """
    if isinstance(ins, Assign):
        submission = submissions.get(ins.task_id)
        if submission is None:
            raise KeyError(f"no submission known for assigned task {ins.task_id!r}")
        return (
            assignment_to_wire(ins, submission, occurred_at=occurred_at, source=source),
            decision_audit_to_wire(ins.decision, occurred_at=occurred_at, source=source),
        )
    if isinstance(ins, Reject):
        known = submissions.get(ins.task_id)
        # Only the refused submission itself may lend its key: a submission that reuses an
        # accepted task id must not be answered with the accepted one's key.
        rejected = known if known is not None and known.event_id == ins.stimulus_id else None
        return rejection_to_wire(ins, rejected, occurred_at=occurred_at, source=source)
    if isinstance(ins, Preempt | CoreStopAttempt):
        return stop_to_wire(ins, occurred_at=occurred_at, source=source)
    return None


def stop_to_wire(
    ins: Preempt | CoreStopAttempt, *, occurred_at: datetime, source: str
) -> wire_commands.StopAttempt:
    """A core preemption or stop as the ``command.stop_attempt`` an executor acts on."""
    preempt = isinstance(ins, Preempt)
    base = f"{ins.stimulus_id}.{ins.task_id}.{ins.attempt}"
    return wire_commands.StopAttempt(
        event_id=derived_event_id(base, "preempt" if preempt else "stop"),
        occurred_at=occurred_at,
        source=source,
        task_id=ins.task_id,
        attempt=ins.attempt,
        node_id=ins.node_id,
        mode="preempt" if preempt else "cancel",
        reason=_text(ins.reason, "stopped by the scheduler"),
        decision_id=ins.decision_id if isinstance(ins, Preempt) else None,
        for_task_id=ins.for_task_id if isinstance(ins, Preempt) else None,
    )


def policy_change_to_wire(
    ins: PolicyUpdated | PolicyRejected,
    request: wire_commands.PolicyUpdate | None,
    *,
    occurred_at: datetime,
    source: str,
) -> PolicyChanged:
    """The ``policy.changed`` record of a policy update's outcome (event id
    ``<stimulus_id>.policy``). ``request`` is the update itself when known: its ``source``
    becomes ``requested_by`` (else ``unknown``)."""
    common: dict[str, Any] = {
        "event_id": derived_event_id(ins.stimulus_id, "policy"),
        "occurred_at": occurred_at,
        "source": source,
        "request_event_id": ins.stimulus_id[:MAX_ID_CHARS],
        "requested_by": request.source if request is not None else "unknown",
    }
    if isinstance(ins, PolicyRejected):
        return PolicyChanged(
            **common,
            accepted=False,
            policy=ins.policy,
            reason=_text(f"refused: {ins.reason}", "refused"),
        )
    return PolicyChanged(
        **common,
        accepted=True,
        changed=ins.changed,
        policy=ins.policy,
        version=ins.version,
        previous_policy=ins.previous_policy,
        previous_version=ins.previous_version,
        split_policy=ins.split_policy,
        split_version=ins.split_version,
        split_ratio=min(1.0, max(0.0, ins.split_ratio)),
        shadow_policy=ins.shadow_policy,
        shadow_version=ins.shadow_version,
        parameters={name: float(value) for name, value in ins.parameters},
        reason=_policy_reason(ins),
    )


def _policy_reason(ins: PolicyUpdated) -> str:
    """Why, in words: what an accepted update changed."""
    if not ins.changed:
        return f"already live: {ins.version}; nothing changed"
    parts = [
        f"live {ins.version}"
        + ("" if ins.version == ins.previous_version else f" (was {ins.previous_version})")
    ]
    if ins.split_version is not None:
        parts.append(f"A/B split: {ins.split_version} places {ins.split_ratio:.0%} of tasks")
    parts.append(f"shadow {ins.shadow_version}" if ins.shadow_version else "no shadow")
    return _text("; ".join(parts), "policy changed")


def cancel_outcome_to_wire(
    request: wire_commands.CancelTask,
    *,
    accepted: bool,
    outcome: str,
    attempt: int,
    occurred_at: datetime,
    source: str,
) -> CancelOutcome:
    """The ``task.cancel_outcome`` answer to a cancel command (event id
    ``<request event id>.cancel``, the same whether accepted or refused: a redelivered
    cancel that the first one made moot is deduplicated by consumers)."""
    return CancelOutcome(
        event_id=derived_event_id(request.event_id, "cancel"),
        occurred_at=occurred_at,
        source=source,
        task_id=request.task_id,
        request_event_id=request.event_id,
        requested_by=request.requested_by,
        reason=request.reason,
        accepted=accepted,
        outcome=_text(outcome, "cancelled" if accepted else "refused"),
        attempt=max(0, attempt),
    )


def cancel_refusal_to_wire(
    ins: CancelRefused, *, occurred_at: datetime, source: str
) -> CancelOutcome:
    """The ``task.cancel_outcome`` (``accepted=false``) of a cancel the core refused
    because the requester does not own the task (event id ``<stimulus_id>.cancel``, as
    for every cancel outcome)."""
    return CancelOutcome(
        event_id=derived_event_id(ins.stimulus_id, "cancel"),
        occurred_at=occurred_at,
        source=source,
        task_id=ins.task_id,
        request_event_id=ins.stimulus_id[:MAX_ID_CHARS],
        requested_by=ins.requested_by,
        reason=_text(ins.reason, "no reason given"),
        accepted=False,
        outcome=_text(ins.outcome, "refused"),
        attempt=max(0, ins.attempt),
    )


def breaker_change_to_wire(
    ins: CoreBreakerChanged, *, occurred_at: datetime, source: str
) -> BreakerChanged:
    """The ``breaker.changed`` audit record of a circuit breaker transition (event id
    ``<decision_id>.breaker``)."""
    return _from_core(
        BreakerChanged,
        {ins.hardware},
        event_id=derived_event_id(ins.decision_id, "breaker"),
        occurred_at=occurred_at,
        source=source,
        decision_id=ins.decision_id,
        hardware=ins.hardware,
        state=ins.state,
        previous_state=ins.previous_state,
        reason=_text(ins.reason, f"breaker {ins.state}"),
        failed_tasks=max(0, ins.failed_tasks),
        succeeded=max(0, ins.succeeded),
        cooldown_s=None if ins.cooldown_s is None else _seconds(ins.cooldown_s),
        half_open_at_s=ins.until_s if ins.state == "open" else None,
        decided_at_s=float(ins.decided_at_s),
    )
