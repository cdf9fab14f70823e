"""The task state machine as a table: which state may follow which.

States only move forward, except the documented re-queue (``assigned``/``running`` back to
``queued`` when a node is lost, an attempt is preempted or a retryable failure happens),
which always comes with a new attempt number.
"""

from __future__ import annotations

from .model import TaskState

S = TaskState

ALLOWED: dict[TaskState | None, frozenset[TaskState]] = {
    None: frozenset({S.SUBMITTED}),
    S.SUBMITTED: frozenset({S.QUEUED, S.CANCELLED, S.FAILED}),
    S.QUEUED: frozenset({S.ASSIGNED, S.CANCELLED, S.FAILED}),
    # A completion may overtake its start event (different partitions): assigned may end.
    S.ASSIGNED: frozenset({S.RUNNING, S.QUEUED, S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    S.RUNNING: frozenset({S.QUEUED, S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

#: States in which an attempt holds resources on a node.
HOLDS_RESOURCES = frozenset({S.ASSIGNED, S.RUNNING})


class IllegalTransitionError(AssertionError):
    """A bug: the core tried a transition the table forbids."""


def check(old: TaskState | None, new: TaskState, task_id: str) -> None:
    if new not in ALLOWED[old]:
        raise IllegalTransitionError(f"task {task_id}: {old} -> {new} is not allowed")
