"""Task lifecycle events that executors report for an attempt (``sched.tasks.events``).

Every one names the attempt (the fencing token it was assigned with) and the node: events of
a stale attempt are recorded by the scheduler but never change the task's outcome.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt

from .envelope import EventEnvelope
from .types import Attempt, Fraction, Identifier, Text


class AttemptEvent(EventEnvelope):
    """Fields common to lifecycle events: which attempt of which task, on which node."""

    task_id: Identifier
    attempt: Attempt
    node_id: Identifier


class TaskStarted(AttemptEvent):
    """The executor started the attempt."""

    type: Literal["task.started"] = "task.started"


class TaskProgress(AttemptEvent):
    """Progress report: fraction of the task's whole work done, earlier attempts included."""

    type: Literal["task.progress"] = "task.progress"
    progress: Fraction


class TaskCompleted(AttemptEvent):
    """The attempt finished successfully (exit code 0)."""

    type: Literal["task.completed"] = "task.completed"
    runtime_s: StrictFloat = Field(ge=0, description="Wall seconds the attempt ran.")
    exit_code: Literal[0] = 0


class TaskFailed(AttemptEvent):
    """The attempt failed. ``retryable`` is false for failures a retry cannot fix (bad
    command, invalid input)."""

    type: Literal["task.failed"] = "task.failed"
    reason: Text
    exit_code: StrictInt | None = Field(default=None, description="Process exit code, if any.")
    retryable: StrictBool = True


class TaskPreempted(AttemptEvent):
    """The executor stopped the attempt on request, keeping its checkpoint; ``progress`` is
    the fraction of the whole task done, from which the next attempt resumes."""

    type: Literal["task.preempted"] = "task.preempted"
    progress: Fraction


class TaskCancelled(AttemptEvent):
    """The executor stopped the attempt because the task was cancelled."""

    type: Literal["task.cancelled"] = "task.cancelled"
    reason: Text | None = None


class TaskLost(AttemptEvent):
    """The attempt is gone without an outcome (node lost, process vanished)."""

    type: Literal["task.lost"] = "task.lost"
    reason: Text
