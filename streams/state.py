"""The status view's state, as pure folds over wire events (no I/O, no clock, no Kafka).

:func:`apply` folds the events of one task into a :class:`TaskStatus`; :func:`apply_heartbeat`
folds heartbeats into a :class:`NodeStatus`; :func:`apply_ingest` folds ``data.ingested``
events into a :class:`DatasetStatus`. The stream processor keeps their results in faust
tables, but nothing here knows about faust.

Contract of every fold (delivery is at-least-once and topics are read concurrently):

- **Idempotent**: applying an event a second time returns an equal record.
- **Forward-only**: a task moves submitted -> queued -> assigned -> running ->
  succeeded | failed | cancelled; the only way back is the re-queue that ends an attempt
  (preempted, lost, retryable failure with retries left), and the next attempt has a
  higher number. ``rejected`` is a terminal state of submissions the scheduler refused.
- **Fenced by attempt**: an attempt event (``task.started`` ... ``task.lost``) of an
  attempt older than the current one, or of an attempt that already ended, is recorded in
  ``stale_events`` but never changes the outcome; nothing changes a terminal state.
- **Order-tolerant**: the submission, the decision audit and the executor's events come
  from different topics, so any may arrive first; a later-arriving record fills in what
  it knows (tenant, prediction, decision reason) without moving the state backwards.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

from ..schemas.codec import Event
from ..schemas.commands import CancelTask
from ..schemas.data import DataIngested
from ..schemas.decisions import DecisionAudit, TaskEnded
from ..schemas.lifecycle import (
    AttemptEvent,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskLost,
    TaskPreempted,
    TaskProgress,
    TaskStarted,
)
from ..schemas.nodes import NodeHeartbeat
from ..schemas.tasks import TaskRejected, TaskSubmitted

#: Retries the scheduler allows when the submission has not been seen (schema default).
DEFAULT_MAX_RETRIES: Final = 2
#: Event ids remembered per task (beyond them, idempotence rests on the state machine).
RECENT_EVENT_IDS: Final = 64
#: Stale attempt events kept per task (the count keeps growing).
STALE_KEPT: Final = 20
#: ``data.ingested`` event ids remembered per dataset for deduplication.
RECENT_INGESTS: Final = 1024
#: Submission fields kept in ``TaskStatus.spec``: what the learned models need to rebuild
#: the task's features (see ``streams/models.py``), not its command or environment.
SPEC_FIELDS: Final = frozenset({"task_type", "tenant", "resources", "declared_work"})


class TaskState(enum.StrEnum):
    """States of the status view (the scheduler's states, plus ``rejected``)."""

    SUBMITTED = "submitted"
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


TERMINAL_STATES: Final = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.REJECTED}
)
#: States in which the current attempt holds a node.
ACTIVE_STATES: Final = frozenset({TaskState.ASSIGNED, TaskState.RUNNING})


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what the faust tables and the web view hold)."""
        return self.model_dump(mode="json")


class StaleEvent(_Record):
    """An attempt event that arrived too late to count (recorded for the audit trail)."""

    event_id: str
    type: str
    attempt: int
    node_id: str
    occurred_at: datetime
    why: str


class PendingCancel(_Record):
    """A cancel command that arrived before the task's submission (topics are read
    independently): applied when the submission shows who owns the task."""

    requested_by: str
    reason: str
    occurred_at: datetime


class TaskStatus(_Record):
    """Everything the status view knows about one task.

    ``attempt`` is the highest attempt seen (0 before any assignment); ``node``,
    ``hardware``, the decision fields, ``started_at`` and ``actual_runtime_s`` describe that
    attempt. ``retries`` counts retryable failures that re-queued the task. ``spec`` is the
    submission's :data:`SPEC_FIELDS` as JSON (None until the submission is seen).
    """

    task_id: str
    tenant: str | None = None
    task_type: str | None = None
    state: TaskState
    node: str | None = None
    hardware: str | None = None
    attempt: int = 0
    attempt_ended: bool = False
    progress: float = 0.0
    predicted_runtime_s: float | None = None
    actual_runtime_s: float | None = None
    decision_id: str | None = None
    decision_reason: str | None = None
    rejection_reason: str | None = None
    failure_reason: str | None = None
    cancel_reason: str | None = None
    depends_on: tuple[str, ...] = ()
    max_retries: int | None = None
    retries: int = 0
    submitted_at: datetime | None = None
    assigned_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    stale_count: int = 0
    stale_events: tuple[StaleEvent, ...] = ()
    recent_event_ids: tuple[str, ...] = ()
    spec: dict[str, Any] | None = None
    pending_cancel: PendingCancel | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


#: Events :func:`apply` understands (others are returned unchanged).
TASK_EVENT_TYPES: Final = (
    TaskSubmitted,
    TaskRejected,
    DecisionAudit,
    TaskEnded,
    CancelTask,
    TaskStarted,
    TaskProgress,
    TaskCompleted,
    TaskFailed,
    TaskPreempted,
    TaskCancelled,
    TaskLost,
)


def task_id_of(event: Event) -> str | None:
    """The task an event is about, or None (not a task event, or a rejection of a
    submission whose id could not be read)."""
    if isinstance(event, TASK_EVENT_TYPES):
        return event.task_id
    return None


def apply(status: TaskStatus | None, event: Event) -> TaskStatus | None:
    """Fold ``event`` into ``status`` (None: the task is not known yet).

    Returns the new record, or ``status`` itself when the event is not about a task or
    changes nothing. See the module docstring for the guarantees.
    """
    task_id = task_id_of(event)
    if task_id is None:
        return status
    if status is not None and event.event_id in status.recent_event_ids:
        return status
    current = status or TaskStatus(task_id=task_id, state=TaskState.SUBMITTED)
    new = _apply(current, event)
    if new is current and status is not None:
        return status
    return new.model_copy(
        update={
            "recent_event_ids": (*new.recent_event_ids, event.event_id)[-RECENT_EVENT_IDS:],
            "updated_at": _later(new.updated_at, event.occurred_at),
        }
    )


def _apply(st: TaskStatus, ev: Event) -> TaskStatus:
    if isinstance(ev, TaskSubmitted):
        return _submitted(st, ev)
    if isinstance(ev, TaskRejected):
        return _rejected(st, ev)
    if isinstance(ev, DecisionAudit):
        return _audit(st, ev)
    if isinstance(ev, TaskEnded):
        return _ended(st, ev)
    if isinstance(ev, CancelTask):
        return _cancel_command(st, ev)
    if isinstance(ev, AttemptEvent):
        return _attempt_event(st, ev)
    return st


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def _submitted(st: TaskStatus, ev: TaskSubmitted) -> TaskStatus:
    if st.submitted_at is not None:  # a repeated submission (same id) changes nothing
        return st
    update: dict[str, Any] = {
        "tenant": ev.tenant,
        "task_type": ev.task_type,
        "depends_on": ev.depends_on,
        "max_retries": ev.max_retries,
        "submitted_at": ev.occurred_at,
        "spec": ev.model_dump(mode="json", include=set(SPEC_FIELDS)),
    }
    if st.state == TaskState.SUBMITTED and st.attempt == 0:
        update["state"] = TaskState.SUBMITTED if ev.depends_on else TaskState.QUEUED
    pending = st.pending_cancel
    if pending is not None:
        update["pending_cancel"] = None
        if pending.requested_by == ev.tenant and update.get("state") is not None:
            update.update(
                state=TaskState.CANCELLED,
                cancel_reason=pending.reason,
                finished_at=pending.occurred_at,
            )
    return st.model_copy(update=update)


def _rejected(st: TaskStatus, ev: TaskRejected) -> TaskStatus:
    if st.state not in (TaskState.SUBMITTED, TaskState.QUEUED) or st.attempt > 0:
        return st  # the task was accepted; this refuses a duplicate submission of its id
    return st.model_copy(
        update={
            "state": TaskState.REJECTED,
            "rejection_reason": ev.reason,
            "finished_at": ev.occurred_at,
        }
    )


def _decision_fields(ev: DecisionAudit) -> dict[str, Any]:
    return {
        "hardware": ev.chosen_hardware,
        "predicted_runtime_s": ev.predicted_runtime_s,
        "decision_id": ev.decision_id,
        "decision_reason": ev.reason,
    }


def _audit(st: TaskStatus, ev: DecisionAudit) -> TaskStatus:
    if getattr(ev, "kind", "assign") != "assign":
        # A preemption audit (the victim's executor reports task.preempted), or a shadow
        # policy's would-be placement (never executed): neither moves the task.
        return st
    if ev.attempt == st.attempt and st.decision_id is None:
        # The executor's events of this attempt came first: fill in the decision only.
        return st.model_copy(update={**_decision_fields(ev), "assigned_at": ev.occurred_at})
    if ev.attempt <= st.attempt or st.terminal:
        return st  # an older decision, or a repeat
    return _new_attempt(st, ev.attempt, ev.chosen_node_id, ev.occurred_at).model_copy(
        update=_decision_fields(ev)
    )


def _new_attempt(st: TaskStatus, attempt: int, node: str, at: datetime) -> TaskStatus:
    return st.model_copy(
        update={
            "state": TaskState.ASSIGNED,
            "attempt": attempt,
            "attempt_ended": False,
            "node": node,
            "hardware": None,
            "predicted_runtime_s": None,
            "actual_runtime_s": None,
            "decision_id": None,
            "decision_reason": None,
            "assigned_at": at,
            "started_at": None,
        }
    )


def _ended(st: TaskStatus, ev: TaskEnded) -> TaskStatus:
    """The scheduler's verdict: final whatever the view inferred before (a dependent
    cancelled before it ran, a task failed after too many lost attempts, a cancel that
    raced a completion). A repeat of the same verdict changes nothing."""
    state = TaskState(ev.state)
    if ev.attempt > st.attempt and st.terminal and st.attempt_ended:
        # The view settled on an earlier attempt's report (read before the decision that
        # superseded it): the verdict names the attempt that counts, and the earlier
        # outcome is recorded as stale after all.
        return _ended(_superseded(st, ev), ev)
    if st.state == state and st.finished_at is not None:
        return st
    update: dict[str, Any] = {"state": state, "finished_at": ev.occurred_at}
    if state == TaskState.FAILED:
        update["failure_reason"] = ev.reason
    elif state == TaskState.CANCELLED:
        update["cancel_reason"] = ev.reason
    if ev.attempt >= st.attempt:
        update["attempt_ended"] = True
    return st.model_copy(update=update)


#: The attempt event type behind each terminal state the view infers from one.
_OUTCOME_TYPES: Final = {
    TaskState.SUCCEEDED: "task.completed",
    TaskState.FAILED: "task.failed",
    TaskState.CANCELLED: "task.cancelled",
}


def _superseded(st: TaskStatus, ev: TaskEnded) -> TaskStatus:
    """``st`` with its settled attempt recorded as stale and reopened at ``ev``'s attempt
    (state, timings and outcome details cleared; the verdict fills them in)."""
    record = StaleEvent(
        event_id=f"{ev.event_id}.superseded",
        type=_OUTCOME_TYPES.get(st.state, st.state.value),
        attempt=st.attempt,
        node_id=st.node or "",
        occurred_at=st.finished_at or ev.occurred_at,
        why=f"attempt {st.attempt} superseded by attempt {ev.attempt} (the scheduler's verdict)",
    )
    return st.model_copy(
        update={
            "state": TaskState.RUNNING,
            "attempt": ev.attempt,
            "attempt_ended": False,
            "node": None,
            "finished_at": None,
            "actual_runtime_s": None,
            "failure_reason": None,
            "cancel_reason": None,
            "stale_count": st.stale_count + 1,
            "stale_events": (*st.stale_events, record)[-STALE_KEPT:],
        }
    )


def _cancel_command(st: TaskStatus, ev: CancelTask) -> TaskStatus:
    """A queued task is cancelled by the scheduler at once (no executor reports it); an
    assigned or running one ends when its executor reports ``task.cancelled``. Only its
    own tenant may cancel a task: a cancel by another (``requested_by``) changes nothing
    (the scheduler refuses it). A cancel seen before the submission waits for it."""
    if st.submitted_at is None and st.attempt == 0 and not st.terminal:
        pending = PendingCancel(
            requested_by=ev.requested_by, reason=ev.reason, occurred_at=ev.occurred_at
        )
        return st.model_copy(update={"pending_cancel": pending})
    if st.state not in (TaskState.SUBMITTED, TaskState.QUEUED) or st.submitted_at is None:
        return st
    if ev.requested_by != st.tenant:
        return st
    return st.model_copy(
        update={
            "state": TaskState.CANCELLED,
            "cancel_reason": ev.reason,
            "finished_at": ev.occurred_at,
        }
    )


def _stale_reason(st: TaskStatus, ev: AttemptEvent) -> str | None:
    if st.terminal:
        return f"task already {st.state.value}"
    if ev.attempt < st.attempt:
        return f"attempt {ev.attempt} superseded by attempt {st.attempt}"
    if ev.attempt == st.attempt and st.attempt_ended:
        return f"attempt {ev.attempt} already ended"
    return None


def _attempt_event(st: TaskStatus, ev: AttemptEvent) -> TaskStatus:
    if _completes_a_settled_success(st, ev):
        # The scheduler's task.ended (sched.decisions) overtook the executor's completion
        # (sched.tasks.events): the verdict stands, the completion brings the runtime.
        assert isinstance(ev, TaskCompleted)
        return st.model_copy(
            update={
                "actual_runtime_s": ev.runtime_s,
                "progress": 1.0,
                "attempt_ended": True,
                "node": st.node or ev.node_id,
            }
        )
    why = _stale_reason(st, ev)
    if why is not None:
        if isinstance(ev, TaskStarted | TaskProgress) and ev.attempt == st.attempt:
            return st  # a late start/progress of the attempt that ended: nothing to record
        return _record_stale(st, ev, why)
    if ev.attempt > st.attempt:  # the executor's report overtook the decision audit
        st = _new_attempt(st, ev.attempt, ev.node_id, ev.occurred_at)
    if isinstance(ev, TaskStarted):
        return _running(st, ev.occurred_at)
    if isinstance(ev, TaskProgress):
        return _running(st, ev.occurred_at).model_copy(
            update={"progress": max(st.progress, ev.progress)}
        )
    return _attempt_outcome(st, ev)


def _completes_a_settled_success(st: TaskStatus, ev: AttemptEvent) -> bool:
    return (
        isinstance(ev, TaskCompleted)
        and st.state == TaskState.SUCCEEDED
        and ev.attempt == st.attempt
        and st.actual_runtime_s is None
    )


def _running(st: TaskStatus, at: datetime) -> TaskStatus:
    if st.state == TaskState.RUNNING:
        return st
    return st.model_copy(update={"state": TaskState.RUNNING, "started_at": st.started_at or at})


def _attempt_outcome(st: TaskStatus, ev: AttemptEvent) -> TaskStatus:
    ended: dict[str, Any] = {"attempt_ended": True}
    if isinstance(ev, TaskCompleted):
        return st.model_copy(
            update={
                **ended,
                "state": TaskState.SUCCEEDED,
                "actual_runtime_s": ev.runtime_s,
                "progress": 1.0,
                "finished_at": ev.occurred_at,
            }
        )
    if isinstance(ev, TaskFailed):
        budget = DEFAULT_MAX_RETRIES if st.max_retries is None else st.max_retries
        if ev.retryable and st.retries < budget:
            return st.model_copy(
                update={
                    **ended,
                    "state": TaskState.QUEUED,
                    "retries": st.retries + 1,
                    "failure_reason": ev.reason,
                }
            )
        return st.model_copy(
            update={
                **ended,
                "state": TaskState.FAILED,
                "failure_reason": ev.reason,
                "finished_at": ev.occurred_at,
            }
        )
    if isinstance(ev, TaskPreempted):
        progress = max(st.progress, ev.progress)
        return st.model_copy(update={**ended, "state": TaskState.QUEUED, "progress": progress})
    if isinstance(ev, TaskLost):
        return st.model_copy(
            update={**ended, "state": TaskState.QUEUED, "failure_reason": ev.reason}
        )
    if isinstance(ev, TaskCancelled):
        return st.model_copy(
            update={
                **ended,
                "state": TaskState.CANCELLED,
                "cancel_reason": ev.reason or st.cancel_reason,
                "finished_at": ev.occurred_at,
            }
        )
    return st


def _record_stale(st: TaskStatus, ev: AttemptEvent, why: str) -> TaskStatus:
    record = StaleEvent(
        event_id=ev.event_id,
        type=ev.type,
        attempt=ev.attempt,
        node_id=ev.node_id,
        occurred_at=ev.occurred_at,
        why=why,
    )
    return st.model_copy(
        update={
            "stale_count": st.stale_count + 1,
            "stale_events": (*st.stale_events, record)[-STALE_KEPT:],
        }
    )


def forecast_observation(
    old: TaskStatus | None, new: TaskStatus
) -> tuple[str, float, float] | None:
    """``(hardware, predicted_s, actual_s)`` when ``new`` is the first record of a
    succeeded task that knows both its attempt's prediction and its actual runtime, else
    None: each completed task is observed once, whichever of the audit or the completion
    arrived last."""
    if new.state != TaskState.SUCCEEDED or new.predicted_runtime_s is None:
        return None
    if new.actual_runtime_s is None or new.hardware is None:
        return None
    if (
        old is not None
        and old.state == TaskState.SUCCEEDED
        and old.predicted_runtime_s is not None
        and old.actual_runtime_s is not None
    ):
        return None
    return new.hardware, new.predicted_runtime_s, new.actual_runtime_s


def became_terminal(old: TaskStatus | None, new: TaskStatus) -> bool:
    """True when ``new`` is the step into a terminal state."""
    return new.terminal and (old is None or not old.terminal)


# ---------------------------------------------------------------------- nodes


class NodeStatus(_Record):
    """The latest heartbeat of a node. Liveness is not stored (it depends on the clock):
    see :func:`seconds_since_seen`."""

    node_id: str
    hardware: str
    capacity: dict[str, int]
    usage: dict[str, int]
    labels: dict[str, str] = {}
    running: tuple[tuple[str, int], ...] = ()
    first_seen: datetime
    last_seen: datetime
    sequence: int


def apply_heartbeat(node: NodeStatus | None, hb: NodeHeartbeat) -> NodeStatus:
    """Fold a heartbeat: newer ones (by ``occurred_at``, then ``sequence``) replace the
    record; older or repeated ones change nothing."""
    if node is not None and (hb.occurred_at, hb.sequence) <= (node.last_seen, node.sequence):
        return node
    return NodeStatus(
        node_id=hb.node_id,
        hardware=hb.hardware,
        capacity=hb.capacity.model_dump(),
        usage=hb.usage.model_dump(),
        labels=dict(hb.labels),
        running=tuple((r.task_id, r.attempt) for r in hb.running),
        first_seen=node.first_seen if node is not None else hb.occurred_at,
        last_seen=hb.occurred_at,
        sequence=hb.sequence,
    )


def seconds_since_seen(node: NodeStatus, now: datetime) -> float:
    """How long ago ``node`` last heartbeated, as of ``now`` (never negative)."""
    return max(0.0, (now - node.last_seen).total_seconds())


# ---------------------------------------------------------------------- datasets


class DatasetStatus(_Record):
    """Totals of a dataset over the distinct ``data.ingested`` events seen."""

    dataset: str
    rows_total: int = 0
    bytes_total: int = 0
    ingestions: int = 0
    last_location: str | None = None
    last_ingested_at: datetime | None = None
    recent_event_ids: tuple[str, ...] = ()


def apply_ingest(ds: DatasetStatus | None, ev: DataIngested) -> tuple[DatasetStatus, bool]:
    """Fold a ``data.ingested`` event; the flag is False for a duplicate (same
    ``event_id`` among the last :data:`RECENT_INGESTS`), which changes nothing."""
    current = ds or DatasetStatus(dataset=ev.dataset)
    if ev.event_id in current.recent_event_ids:
        return current, False
    return (
        current.model_copy(
            update={
                "rows_total": current.rows_total + ev.rows,
                "bytes_total": current.bytes_total + ev.bytes,
                "ingestions": current.ingestions + 1,
                "last_location": ev.location,
                "last_ingested_at": _later(current.last_ingested_at, ev.occurred_at),
                "recent_event_ids": (*current.recent_event_ids, ev.event_id)[-RECENT_INGESTS:],
            }
        ),
        True,
    )


# ---------------------------------------------------------------------- queries


def summarize(statuses: Iterable[TaskStatus]) -> dict[str, Any]:
    """Counts per state, and per hardware class and state (tasks never assigned are
    counted under ``"none"``)."""
    per_state: dict[str, int] = {s.value: 0 for s in TaskState}
    per_hardware: dict[str, dict[str, int]] = {}
    total = 0
    for st in statuses:
        total += 1
        per_state[st.state.value] += 1
        row = per_hardware.setdefault(st.hardware or "none", {})
        row[st.state.value] = row.get(st.state.value, 0) + 1
    return {"tasks": total, "per_state": per_state, "per_hardware": per_hardware}


def select(
    statuses: Iterable[TaskStatus],
    state: TaskState | None = None,
    tenant: str | None = None,
    limit: int = 50,
) -> list[TaskStatus]:
    """The ``limit`` most recently updated tasks matching ``state`` and ``tenant``."""
    chosen = [
        st
        for st in statuses
        if (state is None or st.state == state) and (tenant is None or st.tenant == tenant)
    ]
    chosen.sort(key=lambda st: (st.updated_at is not None, st.updated_at, st.task_id))
    return list(reversed(chosen))[: max(0, limit)]


def load_task(data: Mapping[str, Any] | None) -> TaskStatus | None:
    """A :class:`TaskStatus` from its JSON form (None stays None)."""
    return None if data is None else TaskStatus.model_validate(data)
