"""The audit trail of one task: every record about it on the scheduler's topics, as a
time-ordered story (``streamsched audit TASK_ID``).

:func:`build_story` is pure: it takes decoded events (from any topics, in any order, with
redeliveries) and keeps those about the task, deduplicated on ``event_id``, ordered by
``occurred_at`` (equal times: cause before effect, e.g. a cancel request before its
outcome, a re-queue before the next attempt's decision, a decision before its shadow;
else the order given). :func:`read_events` reads the topics a story needs from a broker.
:func:`policy_changes` lists the ``policy.changed`` records.

What belongs to a task's story:

- ``sched.tasks.submitted``: its submissions (``task.submitted``);
- ``sched.commands``: cancel commands for it (``command.cancel_task``);
- ``sched.decisions``: its rejections, decision audits (placements, shadow placements,
  preemptions made for it), preemption audits that stop one of *its* attempts (keyed by
  the task the room is made for, so they sit in that task's partition: all partitions
  are read), cancel outcomes, re-queues of its attempts (``task.requeued``: why the
  scheduler took an attempt back and ran another), and ``task.ended``;
- ``sched.tasks.events``: the executors' reports of its attempts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from streamsched.schemas.commands import CancelTask
from streamsched.schemas.decisions import (
    CancelOutcome,
    DecisionAudit,
    PolicyChanged,
    TaskEnded,
    TaskRequeued,
)
from streamsched.schemas.envelope import EventEnvelope
from streamsched.schemas.lifecycle import (
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskLost,
    TaskPreempted,
    TaskProgress,
    TaskStarted,
)
from streamsched.schemas.tasks import TaskRejected, TaskSubmitted
from streamsched.schemas.tenancy import AccessRefused
from streamsched.schemas.topics import COMMANDS, DECISIONS, TASK_EVENTS, TASKS_SUBMITTED

__all__ = [
    "AUDIT_TOPICS",
    "Story",
    "StoryEntry",
    "UnknownTaskError",
    "build_story",
    "policy_changes",
    "read_events",
]

#: The topics a task's story is read from.
AUDIT_TOPICS: tuple[str, ...] = (TASKS_SUBMITTED, DECISIONS, TASK_EVENTS, COMMANDS)


class UnknownTaskError(ValueError):
    """No submission of the task was found."""


@dataclass(frozen=True, slots=True)
class StoryEntry:
    """One step of a task's story.

    ``what`` is a short tag (``submitted``, ``rejected``, ``decision``, ``shadow decision``,
    ``preemption``, ``preempted by``, ``started``, ``progress``, ``completed``, ``failed``,
    ``preempted``, ``lost``, ``requeued``, ``cancelled``, ``cancel requested``,
    ``cancel accepted``, ``cancel refused``, ``ended``); ``who`` the producer or
    requester; ``why`` the reason in words; ``decision_id`` the decision behind it, if
    any; ``event`` the record as JSON."""

    at: datetime
    what: str
    who: str
    why: str
    event_id: str
    event_type: str
    decision_id: str | None = None
    attempt: int | None = None
    event: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "what": self.what,
            "who": self.who,
            "why": self.why,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "decision_id": self.decision_id,
            "attempt": self.attempt,
            "event": dict(self.event),
        }


@dataclass(frozen=True, slots=True)
class Story:
    """A task's story: its entries in time order, and the verdict (the ``task.ended``
    state, ``rejected``, or ``None`` while the task is not settled)."""

    task_id: str
    entries: tuple[StoryEntry, ...]
    verdict: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "verdict": self.verdict,
            "entries": [e.to_dict() for e in self.entries],
        }


def build_story(task_id: str, events: Iterable[EventEnvelope]) -> Story:
    """The story of ``task_id`` from ``events`` (see the module docstring). Raises
    :class:`UnknownTaskError` when no ``task.submitted`` of the task is among them."""
    seen: set[str] = set()
    entries: list[StoryEntry] = []
    submitted = False
    for event in events:
        if event.event_id in seen:
            continue
        entry = _entry(task_id, event)
        if entry is None:
            continue
        seen.add(event.event_id)
        submitted = submitted or isinstance(event, TaskSubmitted)
        entries.append(entry)
    if not submitted:
        others = f" ({len(entries)} other record(s) name it)" if entries else ""
        raise UnknownTaskError(f"no record of task {task_id!r} on {TASKS_SUBMITTED}{others}")
    entries.sort(key=lambda e: (e.at, _RANK.get(e.what, len(_RANK))))  # stable
    return Story(task_id, tuple(entries), _verdict(entries))


#: Order of entries with equal times (one batch of the placement agent stamps all its
#: records alike): cause before effect; anything else keeps the order read.
_RANK: dict[str, int] = {
    name: i
    for i, name in enumerate(
        (
            "submitted",
            "rejected",
            "cancel requested",
            "preemption",
            "preempted by",
            "requeued",
            "decision",
            "shadow decision",
            "cancel accepted",
            "cancel refused",
            "access refused",
            "ended",
        )
    )
}


def policy_changes(events: Iterable[EventEnvelope]) -> list[PolicyChanged]:
    """The ``policy.changed`` records among ``events``, deduplicated, in time order."""
    out: dict[str, PolicyChanged] = {}
    for event in events:
        if isinstance(event, PolicyChanged):
            out.setdefault(event.event_id, event)
    return sorted(out.values(), key=lambda e: e.occurred_at)


def read_events(
    config: Mapping[str, Any], topics: tuple[str, ...] = AUDIT_TOPICS, *, timeout_s: float = 30.0
) -> list[EventEnvelope]:
    """Every decodable record of ``topics`` (all partitions, from the beginning). Raises
    ``OSError`` naming the broker when it cannot be reached."""
    from streamsched.shadowreport import read_records

    records = read_records(config, topics, timeout_s=timeout_s)
    return [r for r in records if isinstance(r, EventEnvelope)]


def _verdict(entries: list[StoryEntry]) -> str | None:
    for entry in reversed(entries):
        if entry.what == "ended":
            return str(entry.event.get("state"))
    if any(e.what == "rejected" for e in entries) and not any(
        e.what in ("decision", "started") for e in entries
    ):
        return "rejected"
    return None


def _make(
    event: EventEnvelope,
    what: str,
    why: str,
    *,
    who: str | None = None,
    decision_id: str | None = None,
    attempt: int | None = None,
) -> StoryEntry:
    return StoryEntry(
        at=event.occurred_at,
        what=what,
        who=who if who is not None else event.source,
        why=why,
        event_id=event.event_id,
        event_type=event.type,
        decision_id=decision_id,
        attempt=attempt,
        event=event.model_dump(mode="json"),
    )


def _entry(task_id: str, event: EventEnvelope) -> StoryEntry | None:
    """The story entry of ``event`` for ``task_id``, or ``None`` if it is not about it."""
    if isinstance(event, DecisionAudit):
        return _audit_entry(task_id, event)
    if getattr(event, "task_id", None) != task_id:
        return None
    match event:
        case TaskSubmitted():
            who = f"{event.tenant} via {event.source}"
            return _make(event, "submitted", _submission_summary(event), who=who)
        case TaskRejected():
            return _make(event, "rejected", event.reason)
        case CancelTask():
            return _make(event, "cancel requested", event.reason, who=event.requested_by)
        case CancelOutcome():
            what = "cancel accepted" if event.accepted else "cancel refused"
            why = f"{event.outcome} (request {event.request_event_id}: {event.reason})"
            return _make(event, what, why, who=event.requested_by, attempt=event.attempt)
        case AccessRefused():
            why = f"{event.action} refused: {event.reason}"
            return _make(event, "access refused", why, who=event.requested_by)
        case TaskEnded():
            why = f"{event.state}: {event.reason}"
            return _make(event, "ended", why, attempt=event.attempt)
        case TaskRequeued():
            why = f"attempt {event.attempt} taken back while {event.previous_state}: {event.reason}"
            if event.node_id is not None:
                why += f" (on {event.node_id})"
            return _make(event, "requeued", why, attempt=event.attempt)
        case TaskStarted():
            return _make(event, "started", f"on {event.node_id}", attempt=event.attempt)
        case TaskProgress():
            return _make(event, "progress", f"{event.progress:.0%}", attempt=event.attempt)
        case TaskCompleted():
            why = f"on {event.node_id} in {event.runtime_s:.1f} s"
            return _make(event, "completed", why, attempt=event.attempt)
        case TaskFailed():
            why = f"{event.reason} (exit code {event.exit_code}, retryable {event.retryable})"
            return _make(event, "failed", why, attempt=event.attempt)
        case TaskPreempted():
            why = f"stopped at {event.progress:.0%}, checkpoint kept"
            return _make(event, "preempted", why, attempt=event.attempt)
        case TaskLost():
            return _make(event, "lost", event.reason, attempt=event.attempt)
        case TaskCancelled():
            why = event.reason or "stopped on the scheduler's request"
            return _make(event, "cancelled", why, attempt=event.attempt)
        case _:
            return None


def _audit_entry(task_id: str, ev: DecisionAudit) -> StoryEntry | None:
    """Placements and shadow placements of the task, preemptions made for it, and
    preemptions that stop one of its attempts."""
    policy = f"policy {ev.policy_version}, model {ev.model_version}"
    if ev.kind == "preempt" and ev.preempted_task_id == task_id:
        why = f"{ev.reason} (to make room for {ev.task_id}; {policy})"
        return _make(
            ev, "preempted by", why, decision_id=ev.decision_id, attempt=ev.preempted_attempt
        )
    if ev.task_id != task_id:
        return None
    where = f"{ev.chosen_node_id} ({ev.chosen_hardware})"
    predicted = f"predicted runtime {ev.predicted_runtime_s:.1f} s"
    if ev.kind == "shadow":
        live = ev.live_decision_id or "none in that cycle"
        why = f"[shadow, never executed] would place on {where}, {predicted}; {ev.reason} "
        why += f"({policy}; live decision {live})"
        return _make(ev, "shadow decision", why, decision_id=ev.decision_id, attempt=ev.attempt)
    if ev.kind == "preempt":
        victim = f"{ev.preempted_task_id} attempt {ev.preempted_attempt}"
        why = f"stops {victim} on {where}: {ev.reason} ({policy})"
        return _make(ev, "preemption", why, decision_id=ev.decision_id, attempt=ev.attempt)
    why = f"assigned to {where}, {predicted}: {ev.reason} ({policy})"
    return _make(ev, "decision", why, decision_id=ev.decision_id, attempt=ev.attempt)


def _submission_summary(ev: TaskSubmitted) -> str:
    res = ev.resources
    parts = [
        f"{ev.task_type} for tenant {ev.tenant}",
        f"priority {ev.priority.value}",
        f"{res.cpu_milli} mCPU, {res.memory_mib} MiB, {res.gpus} GPU(s)",
    ]
    if res.allowed_hardware:
        parts.append("on " + ", ".join(res.allowed_hardware))
    if ev.deadline is not None:
        parts.append(f"deadline {ev.deadline.isoformat()}")
    if ev.depends_on:
        parts.append("after " + ", ".join(ev.depends_on))
    parts.append(f"key {ev.idempotency_key}")
    return "; ".join(parts)
