"""Instructions: what the core asks the outside world to do or to know.

The core never performs I/O. The live system turns instructions into Kafka records; the
simulator turns them into future events on its virtual clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import TaskState


@dataclass(frozen=True, slots=True)
class Candidate:
    """One option the policy weighed for a decision (for the audit trail)."""

    node_id: str
    hardware: str
    #: Higher is better; ``-inf`` never appears for a chosen candidate.
    score: float
    predicted_runtime_s: float
    #: Predicted wait before the task could start there (0 when it fits now).
    expected_wait_s: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The explanation of one placement or preemption: why this node, what else was there."""

    decision_id: str
    stimulus_id: str
    task_id: str
    attempt: int
    policy: str
    policy_version: str
    model_version: str
    decided_at_s: float
    chosen_node_id: str
    chosen_hardware: str
    predicted_runtime_s: float
    reason: str
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True, slots=True)
class Instruction:
    stimulus_id: str


@dataclass(frozen=True, slots=True)
class Assign(Instruction):
    """Run ``task_id`` attempt ``attempt`` on ``node_id`` (publish to its hardware topic)."""

    task_id: str
    attempt: int
    node_id: str
    hardware: str
    #: Indices of the node's GPUs the attempt may use (``CUDA_VISIBLE_DEVICES``).
    gpu_indices: tuple[int, ...]
    #: Milli-GPU per listed GPU (1000 for whole GPUs).
    gpu_milli: int
    predicted_runtime_s: float
    #: Fraction of the task's work already done by earlier attempts (checkpoint restart).
    resume_progress: float
    decision: Decision
    #: Number of this assignment among those made to the node (1, 2, ...): the node's
    #: heartbeats say up to which one it has consumed (``NodeUp.assignments_seen``).
    sequence: int | None = None


@dataclass(frozen=True, slots=True)
class Preempt(Instruction):
    """Stop an attempt, keeping its checkpoint; it is re-queued when the stop is confirmed.

    ``decision`` explains it for the audit trail: ``decision.task_id`` is the task the room
    is made for (``for_task_id``), ``decision.attempt`` the attempt it will get next,
    ``chosen_node_id`` the node being freed, ``predicted_runtime_s`` the newcomer's
    predicted runtime there, and ``reason`` which attempt is stopped and why. The core
    always sets it; ``None`` is accepted for instructions built by hand.
    """

    task_id: str
    attempt: int
    node_id: str
    reason: str
    #: The task the preemption makes room for.
    for_task_id: str
    decision_id: str
    decision: Decision | None = None


@dataclass(frozen=True, slots=True)
class StopAttempt(Instruction):
    """Kill an attempt whose task was cancelled or failed upstream, or an orphan a node
    still runs although the core has moved on (no checkpoint kept)."""

    task_id: str
    attempt: int
    node_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reject(Instruction):
    """A submission was refused; nothing about it is kept but this answer."""

    task_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class CancelRefused(Instruction):
    """A cancel command was refused: ``requested_by`` neither owns the task (its tenant)
    nor is an operator (``CoreConfig.cancel_operators``). Nothing changed; the outcome
    goes to the audit trail (``task.cancel_outcome`` with ``accepted=false``)."""

    task_id: str
    #: The task's attempt when the command was applied (0: it never ran).
    attempt: int
    requested_by: str
    #: The reason the requester gave.
    reason: str
    #: Why the scheduler refused, in words.
    outcome: str


@dataclass(frozen=True, slots=True)
class BreakerChanged(Instruction):
    """The circuit breaker of hardware class ``hardware`` moved from ``previous_state``
    to ``state`` (``closed``, ``open``, ``half_open``; see :mod:`.breaker`), with why.
    ``failed_tasks``/``succeeded`` are the window's counts behind an opening (different
    tasks failed there, successful attempts); ``cooldown_s`` the cool-down in force
    (``None`` when closed) and ``until_s`` when an open breaker turns half-open. Goes to
    the audit trail (``breaker.changed`` on ``sched.decisions``) with its decision id."""

    decision_id: str
    hardware: str
    previous_state: str
    state: str
    reason: str
    failed_tasks: int
    succeeded: int
    cooldown_s: float | None
    until_s: float | None
    decided_at_s: float


@dataclass(frozen=True, slots=True)
class TaskTransition(Instruction):
    """A task changed state (the status view and the audit log follow these)."""

    task_id: str
    attempt: int
    old: TaskState | None
    new: TaskState
    reason: str


@dataclass(frozen=True, slots=True)
class DeadlineInfeasible(Instruction):
    """Flagged as early as forecasts allow: the deadline will most likely be missed."""

    task_id: str
    deadline_s: float
    predicted_finish_s: float


@dataclass(frozen=True, slots=True)
class StaleEvent(Instruction):
    """An event from a stale attempt, or a duplicate: recorded, ignored."""

    task_id: str
    attempt: int
    current_attempt: int
    event: str


@dataclass(frozen=True, slots=True)
class Learned(Instruction):
    """A completed attempt taught the runtime forecaster something (error is predicted -
    observed, in seconds)."""

    task_id: str
    hardware: str
    predicted_runtime_s: float
    observed_runtime_s: float


@dataclass(frozen=True, slots=True)
class PolicyUpdated(Instruction):
    """A policy update was applied (``changed``) or named the configuration already live
    (``changed=False``, nothing done). ``policy``/``version`` are the live policy after the
    update (decisions carry it, except those of the split's arm, which carry
    ``split_policy``); ``parameters`` are its values that differ from the defaults."""

    policy: str
    version: str
    previous_policy: str
    previous_version: str
    parameters: tuple[tuple[str, float], ...]
    changed: bool
    #: The A/B split now in force: ``split_policy`` (version ``split_version``) places the
    #: tasks whose stable hash falls below ``split_ratio``; ``policy`` places the rest.
    #: ``None``/1.0 when there is no split.
    split_policy: str | None = None
    split_version: str | None = None
    split_ratio: float = 1.0
    #: The shadow policy now evaluated beside the live one (``None``: no shadow).
    shadow_policy: str | None = None
    shadow_version: str | None = None


@dataclass(frozen=True, slots=True)
class PolicyRejected(Instruction):
    """A policy update was refused (unknown policy, shadow policy or parameter, a bad value,
    a simulation-only policy live, a shadow equal to the live policy); the live policy,
    split and shadow are unchanged. ``reason`` names what is wrong."""

    policy: str
    reason: str


@dataclass(frozen=True, slots=True)
class ShadowAssign(Instruction):
    """What the shadow policy would have done: place attempt ``attempt`` of ``task_id`` on
    ``node_id``. Evaluated on the same state as the live cycle of the same call, on a copy:
    it never changes the core's state and is never executed (no assignment, no stop); it
    goes to the audit trail only (``decision.audit`` with ``kind="shadow"``).

    Emitted once per task attempt: the first cycle in which the shadow would place the task
    (later cycles that would place it again are not repeated). ``predicted_start_s`` is that
    cycle's time (a shadow places now or not at all), ``predicted_completion_s`` adds
    ``predicted_runtime_s``. ``live_*`` describe the live decision for the same attempt in
    the same cycle, or are ``None`` when the live policy did not place the task then (it
    kept it waiting; its later ``Assign`` of the same attempt number is the comparison)."""

    task_id: str
    attempt: int
    node_id: str
    hardware: str
    predicted_runtime_s: float
    predicted_start_s: float
    predicted_completion_s: float
    decision: Decision
    live_decision_id: str | None = None
    live_node_id: str | None = None
    live_hardware: str | None = None

    @property
    def agreement(self) -> str:
        """``same_node``, ``same_hardware``, ``different`` (live placed the task elsewhere
        in the same cycle) or ``live_waited`` (live did not place it in that cycle)."""
        if self.live_node_id is None:
            return "live_waited"
        if self.live_node_id == self.node_id:
            return "same_node"
        return "same_hardware" if self.live_hardware == self.hardware else "different"
