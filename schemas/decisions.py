"""Decision records: the assignment an executor runs, and the audit record explaining it.

Both carry the same ``decision_id``, which also appears in log lines and Kafka headers.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
)

from .envelope import EventEnvelope, WireModel
from .types import (
    MAX_GPUS,
    MAX_LIST_ITEMS,
    Argv,
    Attempt,
    EnvMap,
    Fraction,
    HardwareClass,
    Identifier,
    Labels,
    Text,
    fail,
)

_GpuIndex = Annotated[StrictInt, Field(ge=0, lt=MAX_GPUS)]
_Seconds = Annotated[StrictFloat, Field(ge=0)]


class Assignment(EventEnvelope):
    """Run attempt ``attempt`` of ``task_id`` on ``node_id``. Published to the topic of its
    hardware class, ``sched.assignments.<hardware>``.

    Carries everything the executor needs, so it never looks up the submission.
    """

    type: Literal["task.assigned"] = "task.assigned"
    decision_id: Identifier
    task_id: Identifier
    attempt: Attempt
    node_id: Identifier
    hardware: HardwareClass
    gpu_indices: tuple[_GpuIndex, ...] = Field(
        default=(),
        max_length=MAX_GPUS,
        description="Indices of the node's GPUs the attempt may use (CUDA_VISIBLE_DEVICES).",
    )
    gpu_milli: StrictInt = Field(
        default=0, ge=0, le=1000, description="Milli-GPU per listed GPU (1000: whole GPUs)."
    )
    predicted_runtime_s: _Seconds
    resume_progress: Fraction = Field(
        default=0.0, description="Fraction of the work done by earlier attempts (checkpoint)."
    )
    command: Argv = ()
    env: EnvMap = Field(default_factory=dict)
    tenant: Identifier
    task_type: Identifier
    governance: Labels = Field(
        default_factory=dict,
        description="The task's governance tags (e.g. data_region=eu): the executor "
        "refuses the attempt unless its node carries each as an equal label.",
    )
    sequence: StrictInt | None = Field(
        default=None,
        ge=1,
        description="Number of this assignment among those the scheduler made to the node "
        "(1, 2, ...): its heartbeats report the highest one consumed (`assignments_seen`).",
    )

    @field_validator("gpu_indices")
    @classmethod
    def _distinct_gpus(cls, indices: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(indices)) != len(indices):
            fail("duplicate_item", f"GPU indices must be distinct, got {list(indices)}")
        return indices

    @field_validator("gpu_milli")
    @classmethod
    def _gpu_milli_matches(cls, gpu_milli: int, info: ValidationInfo) -> int:
        indices = info.data.get("gpu_indices")
        if indices is None:
            return gpu_milli
        if not indices and gpu_milli != 0:
            fail("gpu_milli_without_gpus", f"gpu_milli={gpu_milli} needs gpu_indices")
        if indices and gpu_milli == 0:
            fail("gpu_milli_zero", "must be 1..1000 when gpu_indices are given")
        if len(indices) > 1 and gpu_milli != 1000:
            fail("gpu_share_multi_gpu", "a GPU share (gpu_milli < 1000) uses exactly one GPU")
        return gpu_milli


class DecisionCandidate(WireModel):
    """One option the policy weighed. ``score`` is higher-is-better, or null when the
    candidate was infeasible (``-inf`` in the core; JSON has no infinities)."""

    node_id: Identifier
    hardware: HardwareClass
    score: StrictFloat | None
    predicted_runtime_s: _Seconds
    expected_wait_s: _Seconds = Field(description="Predicted wait before the start, seconds.")


class DecisionAudit(EventEnvelope):
    """Why a placement or preemption was made, or what a shadow policy would have done.
    Published to ``sched.decisions``.

    ``kind="assign"`` (the default): ``task_id`` attempt ``attempt`` was placed on
    ``chosen_node_id``. ``kind="preempt"``: attempt ``preempted_attempt`` of
    ``preempted_task_id``, running on ``chosen_node_id``, is stopped (checkpoint kept) to
    make room for ``task_id``, whose next attempt is ``attempt``; ``predicted_runtime_s``
    is ``task_id``'s predicted runtime there. One record per stopped attempt; the records
    of one preemption share its ``decision_id``. The ``preempted_*`` fields are set exactly
    when ``kind`` is ``preempt``.

    ``kind="shadow"``: the shadow policy ``policy`` would have placed attempt ``attempt`` of
    ``task_id`` on ``chosen_node_id`` at ``decided_at_s`` (predicted to start then and to
    finish ``predicted_runtime_s`` later). Never executed: no assignment exists for its
    ``decision_id`` (``<prefix>-shadow-<n>``), and consumers of task state ignore it.
    ``live_decision_id``, ``live_node_id`` and ``live_hardware`` name the live decision for
    the same attempt in the same scheduling cycle, or are null when the live policy did not
    place the task then; they are set only on shadow audits.
    """

    type: Literal["decision.audit"] = "decision.audit"
    kind: Literal["assign", "preempt", "shadow"] = Field(
        default="assign",
        description="What was decided: a placement, a preemption, or a shadow policy's "
        "would-be placement (never executed).",
    )
    decision_id: Identifier
    stimulus_id: Identifier = Field(description="The event that triggered the decision.")
    task_id: Identifier
    attempt: Attempt
    policy: Identifier
    policy_version: Identifier
    model_version: Identifier = Field(description="Version of the forecasting models used.")
    decided_at_s: StrictFloat = Field(description="Scheduler-core time of the decision, seconds.")
    chosen_node_id: Identifier
    chosen_hardware: HardwareClass
    predicted_runtime_s: _Seconds
    reason: Text
    candidates: tuple[DecisionCandidate, ...] = Field(default=(), max_length=MAX_LIST_ITEMS)
    preempted_task_id: Identifier | None = Field(
        default=None, description="Preemptions only: the task whose attempt is stopped."
    )
    preempted_attempt: Attempt | None = Field(
        default=None,
        validate_default=True,
        description="Preemptions only: the attempt stopped.",
    )

    live_decision_id: Identifier | None = Field(
        default=None, description="Shadow only: the live decision of the same attempt."
    )
    live_node_id: Identifier | None = Field(
        default=None, description="Shadow only: the node the live policy chose."
    )
    live_hardware: HardwareClass | None = Field(
        default=None,
        validate_default=True,
        description="Shadow only: the hardware class the live policy chose.",
    )

    @field_validator("live_hardware")
    @classmethod
    def _live_fields_need_shadow(cls, hardware: str | None, info: ValidationInfo) -> str | None:
        names = ("kind", "live_decision_id", "live_node_id")
        if any(name not in info.data for name in names):
            return hardware  # an earlier field failed; its error is reported already
        given = [info.data["live_decision_id"], info.data["live_node_id"], hardware]
        if info.data["kind"] != "shadow" and any(v is not None for v in given):
            fail(
                "live_fields_without_shadow",
                'live_decision_id, live_node_id and live_hardware need kind="shadow"',
            )
        if any(v is None for v in given) and any(v is not None for v in given):
            fail(
                "live_fields_incomplete",
                "live_decision_id, live_node_id and live_hardware are given together or not at all",
            )
        return hardware

    @field_validator("preempted_attempt")
    @classmethod
    def _preempted_fields_match_kind(cls, attempt: int | None, info: ValidationInfo) -> int | None:
        if "kind" not in info.data or "preempted_task_id" not in info.data:
            return attempt  # an earlier field failed; its error is reported already
        given = (info.data["preempted_task_id"] is not None, attempt is not None)
        if info.data["kind"] == "preempt" and given != (True, True):
            fail(
                "preempt_without_victim",
                "a preemption audit needs preempted_task_id and preempted_attempt",
            )
        if info.data["kind"] != "preempt" and any(given):
            fail(
                "assign_with_victim",
                'preempted_task_id and preempted_attempt need kind="preempt"',
            )
        return attempt


class TaskEnded(EventEnvelope):
    """The scheduler settled a task for good. Published to ``sched.decisions`` (keyed by
    task id) once per task, whatever ended it: a completion, a cancel, a failure past the
    retry budget, too many lost attempts, or the failure of a task it depends on (which
    cancels it before it ever ran). This is the scheduler's verdict; executors' lifecycle
    events report attempts."""

    type: Literal["task.ended"] = "task.ended"
    task_id: Identifier
    state: Literal["succeeded", "failed", "cancelled"]
    attempt: StrictInt = Field(ge=0, description="The last attempt (0: it never ran).")
    reason: Text


class TaskRequeued(EventEnvelope):
    """The scheduler took an attempt back and queued the task again: its node was lost, its
    node's heartbeats stopped listing it, the executor reported it lost, it failed with
    retries left, or its preemption was confirmed. Published to ``sched.decisions`` (keyed
    by task id) once per attempt taken back (event id
    ``<stimulus_id>.<task_id>.<attempt>.requeued``, so a replay republishes the same id).

    ``attempt`` is the attempt that ended (the next assignment carries a higher number);
    ``previous_state`` the state it was taken back from; ``reason`` the scheduler's words,
    e.g. ``no heartbeat for 11 s: node n0`` or ``retry 1/2: oom (retry backoff 1.0 s)``;
    ``stimulus_id`` the event that caused it (``heartbeat-timeout:<node_id>`` when the
    scheduler's heartbeat monitor declared the node lost); ``decided_at_s`` scheduler-core
    seconds, like ``decided_at_s`` of ``decision.audit``; ``node_id`` the node the attempt
    was on, or null when the scheduler's instruction does not name it (``reason`` names the
    node when the node is the cause)."""

    type: Literal["task.requeued"] = "task.requeued"
    task_id: Identifier
    attempt: Attempt = Field(description="The attempt that ended.")
    previous_state: Literal["assigned", "running"]
    reason: Text
    node_id: Identifier | None = Field(
        default=None, description="The node the attempt was on; null when not known."
    )
    stimulus_id: Identifier = Field(description="The event that caused the re-queue.")
    decided_at_s: StrictFloat = Field(description="Scheduler-core time of the re-queue, seconds.")


_ParamValue = StrictFloat | StrictInt


class PolicyChanged(EventEnvelope):
    """The outcome of a ``command.update_policy``: applied (``accepted``) or refused.
    Published by the placement agent to ``sched.decisions``, keyed ``"policy"``, once per
    update (event id ``<request_event_id>.policy``, so a replay republishes the same id).

    ``requested_by`` is the update's ``source``; ``reason`` says why: what changed (or
    that the configuration was already live, ``changed=false``) or what is wrong with a
    refused update. Accepted: ``policy``/``version`` are the live policy after the update,
    ``previous_*`` the one before, ``split_*`` and ``shadow_*`` the A/B split and shadow
    policy now in force, ``parameters`` the live policy's values that differ from its
    defaults. Refused: ``policy`` is the policy the update asked for, and nothing changed
    (the version, previous, split and shadow fields are null).
    """

    type: Literal["policy.changed"] = "policy.changed"
    request_event_id: Identifier = Field(description="event_id of the command.update_policy.")
    requested_by: Identifier = Field(description="Who asked: the update's source.")
    accepted: StrictBool = Field(description="False: refused, nothing changed.")
    changed: StrictBool = Field(default=False, description="True when the configuration changed.")
    policy: Identifier
    version: Identifier | None = None
    previous_policy: Identifier | None = None
    previous_version: Identifier | None = None
    split_policy: Identifier | None = None
    split_version: Identifier | None = None
    split_ratio: Fraction = 1.0
    shadow_policy: Identifier | None = None
    shadow_version: Identifier | None = None
    parameters: dict[Identifier, _ParamValue] = Field(
        default_factory=dict,
        max_length=MAX_LIST_ITEMS,
        description="The live policy's parameters that differ from its defaults.",
    )
    reason: Text


class CancelOutcome(EventEnvelope):
    """The outcome of a ``command.cancel_task``: ``accepted`` (the task was live and is now
    cancelled; its ``task.ended`` follows) or refused (the task had already ended, or the
    scheduler has no record of it). Published by the placement agent to
    ``sched.decisions``, keyed by task id (event id ``<request_event_id>.cancel``: a
    redelivered cancel, refused because the first one ended the task, carries the same id
    and is dropped by consumers that deduplicate).

    ``requested_by`` and ``reason`` are the request's; ``outcome`` is the scheduler's
    answer in words; ``attempt`` the task's attempt when the command was applied (0: it
    never ran, or is unknown)."""

    type: Literal["task.cancel_outcome"] = "task.cancel_outcome"
    task_id: Identifier
    request_event_id: Identifier = Field(description="event_id of the command.cancel_task.")
    requested_by: Identifier = Field(description="Who asked: the command's requested_by.")
    reason: Text = Field(description="Why the requester cancelled.")
    accepted: StrictBool
    outcome: Text = Field(description="What the scheduler did, e.g. 'cancelled while running'.")
    attempt: StrictInt = Field(default=0, ge=0)


BreakerState = Literal["closed", "open", "half_open"]


class BreakerChanged(EventEnvelope):
    """The circuit breaker of a hardware class changed state. Published by the placement
    agent to ``sched.decisions``, keyed ``"breaker"`` (event id
    ``<decision_id>.breaker``, so a replay republishes the same id).

    ``open``: placement on ``hardware`` is paused, because ``failed_tasks`` different
    tasks failed there within the breaker's window against ``succeeded`` successful
    attempts (``reason`` gives the thresholds), or because the half-open probe failed;
    ``half_open_at_s`` is when one probe attempt will be allowed (``cooldown_s`` after
    ``decided_at_s``). ``half_open``: the cool-down is over; one probe attempt may be
    placed. ``closed``: the probe completed (or ran for a cool-down without failing);
    placement resumed. Times are scheduler-core seconds, like ``decided_at_s`` of
    ``decision.audit``."""

    type: Literal["breaker.changed"] = "breaker.changed"
    decision_id: Identifier
    hardware: HardwareClass
    state: BreakerState
    previous_state: BreakerState
    reason: Text
    failed_tasks: StrictInt = Field(
        default=0, ge=0, description="Different tasks failed on the class in the window."
    )
    succeeded: StrictInt = Field(
        default=0, ge=0, description="Successful attempts on the class in the window."
    )
    cooldown_s: _Seconds | None = Field(
        default=None, description="The cool-down in force; null when closed."
    )
    half_open_at_s: StrictFloat | None = Field(
        default=None, description="Open only: when a probe attempt will be allowed."
    )
    decided_at_s: StrictFloat = Field(description="Scheduler-core time of the change, seconds.")
