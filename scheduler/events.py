"""Stimuli: everything that can change the core's state.

Every stimulus carries a ``stimulus_id`` that follows the consequences it causes (decision
records, log lines, Kafka headers), as in dask/distributed's worker state machine.
Attempt numbers are fencing tokens: an event from an attempt other than the task's current
one is recorded but changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import NodeSpec, TaskSpec

#: A policy parameter value as it arrives in a policy update (validated by the core).
ParamValue = bool | int | float | str


@dataclass(frozen=True, slots=True)
class Stimulus:
    stimulus_id: str


@dataclass(frozen=True, slots=True)
class NodeUp(Stimulus):
    """A node registered or heartbeated. Idempotent: a known node only refreshes liveness.

    ``running`` is what the node reports it runs, as ``(task_id, attempt)`` pairs, or
    ``None`` when the report carries no such list (manual registration, the simulator):
    then nothing is reconciled. With a list and ``CoreConfig.reconcile_grace_s`` set, the
    core reconciles it with its own view (see ``SchedulerCore._reconcile``): an attempt the
    core placed on the node that the node has not listed for the grace period is lost
    (:class:`TaskLost` semantics), and a listed attempt the core considers stale gets a
    ``StopAttempt``. ``reported_at_s`` is when the node made the report (core time, from
    its own clock), if known; reconciliation measures absences up to the earlier of it and
    ``now``, so a delayed heartbeat never makes an attempt look missing for longer. An
    attempt the node lists as ``ended``, or assigned after ``assignments_seen``, is not
    missing.
    """

    node: NodeSpec
    running: frozenset[tuple[str, int]] | None = None
    reported_at_s: float | None = None
    #: Attempts the node ended recently (their terminal events are on their way): not
    #: running, not lost either.
    ended: frozenset[tuple[str, int]] = frozenset()
    #: The highest assignment sequence (``Assign.sequence``) the node has consumed, if it
    #: says: an attempt assigned with a higher one has not reached it yet (on its way).
    assignments_seen: int | None = None
    #: False when the reader knows it has unread attempt events (it is behind on their
    #: topic): an attempt missing from ``running`` may have ended in what is not read
    #: yet, so this heartbeat declares nothing lost (it still stops orphans).
    reconcile_losses: bool = True


@dataclass(frozen=True, slots=True)
class NodeLost(Stimulus):
    """A node is gone (heartbeat timeout, drained, crashed). Its attempts are re-queued."""

    node_id: str
    reason: str = "node lost"


@dataclass(frozen=True, slots=True)
class TaskSubmitted(Stimulus):
    spec: TaskSpec


@dataclass(frozen=True, slots=True)
class TaskStarted(Stimulus):
    task_id: str
    attempt: int
    node_id: str


@dataclass(frozen=True, slots=True)
class TaskProgress(Stimulus):
    """Fraction (0..1) of the task's whole work done, including earlier attempts."""

    task_id: str
    attempt: int
    progress: float


@dataclass(frozen=True, slots=True)
class TaskCompleted(Stimulus):
    task_id: str
    attempt: int
    #: Wall seconds the attempt ran.
    runtime_s: float


@dataclass(frozen=True, slots=True)
class TaskFailed(Stimulus):
    task_id: str
    attempt: int
    reason: str
    exit_code: int | None = None
    #: False for failures a retry cannot fix (bad command, invalid input).
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class TaskPreempted(Stimulus):
    """The executor stopped an attempt on request; ``progress`` is the whole-task fraction
    done (checkpoint-restart: the next attempt resumes from there)."""

    task_id: str
    attempt: int
    progress: float


@dataclass(frozen=True, slots=True)
class TaskLost(Stimulus):
    """An attempt vanished without an outcome: its executor or process died, or its node
    does not run it. The node or executor was lost, not the task: the attempt is re-queued
    with a new attempt number **without** using one of the task's ``max_retries``, and
    resumes from the last progress reported. Bounded by ``CoreConfig.max_lost_attempts``
    (a poison task that kills every executor fails instead of walking the fleet). Fenced
    by ``attempt``: a stale report changes nothing; a repeated one is stale too."""

    task_id: str
    attempt: int
    reason: str = "attempt lost"


@dataclass(frozen=True, slots=True)
class UpdatePolicy(Stimulus):
    """Switch the live policy and/or its parameters (``command.update_policy``).

    Declarative: the new policy is the built-in ``policy`` with ``parameters`` (sorted
    ``(name, value)`` pairs) overriding its :class:`~.policies.PolicyParams` defaults;
    parameters not named take their defaults. An invalid update is answered with a
    ``PolicyRejected`` instruction and changes nothing.

    ``split_ratio`` (0..1) is the A/B split: the fraction of tasks, chosen by a stable hash
    of their id (:func:`~.policies.split_fraction`), that ``policy`` places; the rest stay
    with the live policy. 1.0 switches over fully (and ends any split); 0.0, or naming the
    live policy itself, ends the split. ``shadow_policy`` names a built-in policy (with its
    default parameters) evaluated beside the live one on every cycle and recorded
    (:class:`~.instructions.ShadowAssign`), never acted on; ``None`` ends shadow mode.
    Every update states the whole configuration (policy, parameters, split, shadow).
    """

    policy: str
    parameters: tuple[tuple[str, ParamValue], ...] = ()
    split_ratio: float = 1.0
    shadow_policy: str | None = None


@dataclass(frozen=True, slots=True)
class CancelTask(Stimulus):
    """Cancel a task. ``requested_by`` is who asks (the wire command's ``requested_by``):
    the core refuses it (``CancelRefused``) unless it is the task's tenant or one of
    ``CoreConfig.cancel_operators``. ``None`` (the simulator, cores driven by hand) is
    not checked."""

    task_id: str
    reason: str = "cancelled by user"
    requested_by: str | None = None


@dataclass(frozen=True, slots=True)
class Tick(Stimulus):
    """Time passed; lets the core run a scheduling cycle with a new ``now``."""


Event = (
    NodeUp
    | NodeLost
    | TaskSubmitted
    | TaskStarted
    | TaskProgress
    | TaskCompleted
    | TaskFailed
    | TaskPreempted
    | TaskLost
    | CancelTask
    | UpdatePolicy
    | Tick
)
