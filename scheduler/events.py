"""Stimuli: everything that can change the core's state.

Every stimulus carries a ``stimulus_id`` that follows the consequences it causes (decision
records, log lines, Kafka headers), as in dask/distributed's worker state machine.
Attempt numbers are fencing tokens: an event from an attempt other than the task's current
one is recorded but changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import NodeSpec, TaskSpec


@dataclass(frozen=True, slots=True)
class Stimulus:
    stimulus_id: str


@dataclass(frozen=True, slots=True)
class NodeUp(Stimulus):
    """A node registered or heartbeated. Idempotent: a known node only refreshes liveness."""

    node: NodeSpec


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
class CancelTask(Stimulus):
    task_id: str
    reason: str = "cancelled by user"


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
    | CancelTask
    | Tick
)
