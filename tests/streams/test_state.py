"""The status view's folds: every event type, idempotence, forward-only, attempt fencing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from streamsched.schemas.codec import Event
from streamsched.schemas.commands import CancelTask
from streamsched.schemas.data import DataIngested
from streamsched.schemas.decisions import DecisionAudit, TaskEnded
from streamsched.schemas.lifecycle import (
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskLost,
    TaskPreempted,
    TaskProgress,
    TaskStarted,
)
from streamsched.schemas.nodes import NodeHeartbeat
from streamsched.schemas.tasks import TaskRejected, TaskSubmitted
from streamsched.streams.state import (
    TaskState,
    TaskStatus,
    apply,
    apply_heartbeat,
    apply_ingest,
    became_terminal,
    forecast_observation,
    select,
    summarize,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
_clock = itertools.count()


def _env() -> dict[str, Any]:
    return {"occurred_at": T0 + timedelta(seconds=next(_clock)), "source": "test"}


def submitted(task_id: str = "t1", **extra: Any) -> TaskSubmitted:
    return TaskSubmitted(
        **_env(), task_id=task_id, idempotency_key=f"k-{task_id}", tenant="vision",
        task_type="train", **extra,
    )  # fmt: skip


def audit(attempt: int = 1, node: str = "n1", predicted: float = 100.0) -> DecisionAudit:
    return DecisionAudit(
        **_env(), decision_id=f"d-{attempt}", stimulus_id="s", task_id="t1", attempt=attempt,
        policy="forecast", policy_version="1", model_version="m", decided_at_s=0.0,
        chosen_node_id=node, chosen_hardware="gpu-v100", predicted_runtime_s=predicted,
        reason=f"why {attempt}",
    )  # fmt: skip


def att(kind: type, attempt: int = 1, node: str = "n1", **extra: Any) -> Any:
    return kind(**_env(), task_id="t1", attempt=attempt, node_id=node, **extra)


def fold(*events: Event, start: TaskStatus | None = None) -> TaskStatus:
    status = start
    for ev in events:
        status = apply(status, ev)
    assert status is not None
    return status


def test_the_happy_path_through_every_state() -> None:
    s = fold(submitted())
    assert (s.state, s.tenant, s.max_retries) == (TaskState.QUEUED, "vision", 2)
    s = fold(audit(), start=s)
    assert (s.state, s.node, s.hardware, s.attempt) == (TaskState.ASSIGNED, "n1", "gpu-v100", 1)
    assert (s.decision_id, s.decision_reason, s.predicted_runtime_s) == ("d-1", "why 1", 100.0)
    s = fold(att(TaskStarted), att(TaskProgress, progress=0.5), start=s)
    assert (s.state, s.progress) == (TaskState.RUNNING, 0.5)
    s = fold(att(TaskCompleted, runtime_s=120.0), start=s)
    assert (s.state, s.actual_runtime_s, s.finished_at is not None) == (
        TaskState.SUCCEEDED, 120.0, True,
    )  # fmt: skip


def test_a_submission_with_dependencies_waits_in_submitted() -> None:
    assert fold(submitted(depends_on=("up",))).state == TaskState.SUBMITTED


def test_every_event_applied_twice_changes_nothing() -> None:
    events: list[Event] = [
        submitted(max_retries=1), audit(), att(TaskStarted), att(TaskProgress, progress=0.2),
        att(TaskPreempted, progress=0.3), audit(2, "n2"), att(TaskLost, 2, "n2", reason="gone"),
        audit(3, "n3"), att(TaskFailed, 3, "n3", reason="oom"), audit(4, "n4"),
        att(TaskFailed, 4, "n4", reason="oom again"), att(TaskStarted, 1),
    ]  # fmt: skip
    status: TaskStatus | None = None
    for ev in events:
        status = apply(status, ev)
        assert apply(status, ev) == status
    assert status is not None
    assert status.state == TaskState.FAILED
    assert status.retries == 1


def test_retryable_failures_requeue_until_the_budget_is_spent() -> None:
    s = fold(submitted(max_retries=1), audit(), att(TaskFailed, reason="flaky"))
    assert (s.state, s.retries, s.failure_reason) == (TaskState.QUEUED, 1, "flaky")
    s = fold(audit(2), att(TaskFailed, 2, reason="flaky"), start=s)
    assert (s.state, s.retries) == (TaskState.FAILED, 1)
    s = fold(submitted(), audit(), att(TaskFailed, reason="bad", retryable=False))
    assert s.state == TaskState.FAILED


def test_preemption_and_loss_requeue_and_keep_progress() -> None:
    s = fold(submitted(), audit(), att(TaskStarted), att(TaskPreempted, progress=0.4))
    assert (s.state, s.progress, s.attempt_ended) == (TaskState.QUEUED, 0.4, True)
    s = fold(audit(2, "n2"), att(TaskStarted, 2, "n2"), start=s)
    assert (s.state, s.node, s.attempt, s.started_at is not None) == (
        TaskState.RUNNING, "n2", 2, True,
    )  # fmt: skip
    s = fold(att(TaskLost, 2, "n2", reason="node lost"), start=s)
    assert (s.state, s.failure_reason) == (TaskState.QUEUED, "node lost")


def test_events_of_an_older_attempt_are_recorded_but_change_nothing() -> None:
    s = fold(submitted(), audit(), att(TaskPreempted, progress=0.1), audit(2, "n2"))
    for ev in (att(TaskCompleted, 1, runtime_s=5.0), att(TaskFailed, 1, reason="late")):
        after = fold(ev, start=s)
        assert (after.state, after.attempt, after.node) == (TaskState.ASSIGNED, 2, "n2")
        assert after.stale_count == 1
        assert after.stale_events[0].attempt == 1
        assert "superseded" in after.stale_events[0].why


def test_a_task_completes_at_most_once() -> None:
    s = fold(submitted(), audit(), att(TaskCompleted, runtime_s=5.0))
    for ev in (att(TaskCompleted, runtime_s=9.0), att(TaskFailed, reason="x"), audit(2, "n2"),
               att(TaskStarted, 2, "n2"), att(TaskCancelled, reason="late")):  # fmt: skip
        after = fold(ev, start=s)
        assert (after.state, after.actual_runtime_s, after.attempt) == (
            TaskState.SUCCEEDED, 5.0, 1,
        )  # fmt: skip


def test_out_of_order_arrivals_fill_in_without_moving_back() -> None:
    # The executor's events overtake the audit, which overtakes the submission.
    s = fold(att(TaskStarted), att(TaskCompleted, runtime_s=50.0), audit(predicted=40.0))
    assert (s.state, s.node, s.decision_id, s.predicted_runtime_s) == (
        TaskState.SUCCEEDED, "n1", "d-1", 40.0,
    )  # fmt: skip
    s = fold(submitted(), start=s)
    assert (s.state, s.tenant, s.submitted_at is not None) == (TaskState.SUCCEEDED, "vision", True)


def test_rejection_and_cancellation() -> None:
    reject = TaskRejected(**_env(), task_id="t1", reason="needs 99 GPUs")
    s = fold(submitted(), reject)
    assert (s.state, s.rejection_reason, s.terminal) == (TaskState.REJECTED, "needs 99 GPUs", True)
    assert fold(submitted(), audit(), reject).state == TaskState.ASSIGNED  # a duplicate's refusal
    cancel = CancelTask(**_env(), task_id="t1", reason="not needed", requested_by="vision")
    s = fold(submitted(), cancel)
    assert (s.state, s.cancel_reason) == (TaskState.CANCELLED, "not needed")
    s = fold(submitted(), audit(), att(TaskStarted), cancel)
    assert s.state == TaskState.RUNNING  # ends when the executor reports it
    s = fold(att(TaskCancelled, reason="cancelled by user"), start=s)
    assert (s.state, s.cancel_reason) == (TaskState.CANCELLED, "cancelled by user")


def test_forecast_observation_and_terminal_step_are_seen_once() -> None:
    s = fold(submitted(), audit(predicted=100.0))
    done = fold(att(TaskCompleted, runtime_s=80.0), start=s)
    assert forecast_observation(s, done) == ("gpu-v100", 100.0, 80.0)
    assert forecast_observation(done, done) is None
    assert became_terminal(s, done)
    assert not became_terminal(done, done)
    early = fold(att(TaskCompleted, runtime_s=80.0))
    assert forecast_observation(None, early) is None  # prediction not known yet
    late = fold(audit(predicted=90.0), start=early)
    assert forecast_observation(early, late) == ("gpu-v100", 90.0, 80.0)


def test_summary_and_selection() -> None:
    a = fold(submitted("a"))
    b = fold(submitted(), audit(), att(TaskCompleted, runtime_s=1.0))
    out = summarize([a, b])
    assert out["tasks"] == 2
    assert out["per_state"]["queued"] == 1
    assert out["per_state"]["succeeded"] == 1
    assert out["per_hardware"] == {"none": {"queued": 1}, "gpu-v100": {"succeeded": 1}}
    assert [t.task_id for t in select([a, b])] == ["t1", "a"]  # most recent first
    assert select([a, b], state=TaskState.QUEUED) == [a]
    assert select([a, b], tenant="other") == []
    assert len(select([a, b], limit=1)) == 1


def _hb(seq: int, at: datetime, cpu: int = 100) -> NodeHeartbeat:
    return NodeHeartbeat(
        occurred_at=at, source="exec", node_id="n1", hardware="gpu-v100",
        capacity={"cpu_milli": 1000, "memory_mib": 1024, "gpus": 2},
        usage={"cpu_milli": cpu, "memory_mib": 10}, sequence=seq,
        running=({"task_id": "t1", "attempt": 2},),
    )  # fmt: skip


def test_heartbeats_fold_forward_only() -> None:
    first = apply_heartbeat(None, _hb(1, T0))
    assert (first.running, first.usage["cpu_milli"]) == ((("t1", 2),), 100)
    newer = apply_heartbeat(first, _hb(2, T0 + timedelta(seconds=1), cpu=500))
    assert (newer.usage["cpu_milli"], newer.first_seen) == (500, T0)
    assert apply_heartbeat(newer, _hb(1, T0)) is newer  # reordered
    assert apply_heartbeat(newer, _hb(2, T0 + timedelta(seconds=1), cpu=500)) is newer


def test_ingestions_add_up_once_per_event_id() -> None:
    ev = DataIngested(**_env(), dataset="clicks", rows=10, bytes=100, location="s3://b/k")
    ds, fresh = apply_ingest(None, ev)
    assert fresh
    assert (ds.rows_total, ds.bytes_total, ds.ingestions) == (10, 100, 1)
    again, fresh = apply_ingest(ds, ev)
    assert not fresh
    assert again == ds
    other = DataIngested(**_env(), dataset="clicks", rows=5, bytes=1, location="s3://b/k2")
    ds, fresh = apply_ingest(ds, other)
    assert fresh
    assert (ds.rows_total, ds.last_location) == (15, "s3://b/k2")


def test_events_without_a_task_leave_the_status_alone() -> None:
    assert apply(None, TaskRejected(**_env(), reason="unreadable")) is None
    s = fold(submitted())
    ev = DataIngested(**_env(), dataset="clicks", rows=1, bytes=1, location="s3://b/k")
    assert apply(s, ev) is s


def test_the_scheduler_s_verdict_settles_what_no_executor_reports() -> None:
    """A dependent cancelled before it ran, a task failed after too many lost attempts, a
    cancel that raced a completion: ``task.ended`` is final; a repeat changes nothing."""
    dependent = fold(submitted(depends_on=("up-1",)))
    assert dependent.state == TaskState.SUBMITTED
    verdict = TaskEnded(
        **_env(), task_id="t1", state="cancelled", attempt=0, reason="upstream up-1 failed"
    )
    ended = fold(verdict, start=dependent)
    assert (ended.state, ended.cancel_reason) == (TaskState.CANCELLED, "upstream up-1 failed")
    assert ended.finished_at is not None
    assert fold(verdict, start=ended) == ended
    lost = fold(submitted(), audit(), att(TaskStarted), att(TaskLost, reason="node gone"))
    failed = fold(
        TaskEnded(**_env(), task_id="t1", state="failed", attempt=1, reason="lost 6 attempts"),
        start=lost,
    )
    assert (failed.state, failed.failure_reason) == (TaskState.FAILED, "lost 6 attempts")
    assert failed.attempt_ended


def test_a_completion_that_arrives_after_the_verdict_still_brings_its_runtime() -> None:
    """``task.ended`` (sched.decisions) can overtake the executor's ``task.completed``
    (sched.tasks.events): the verdict stands and the runtime is recorded once."""
    running = fold(submitted(), audit(), att(TaskStarted))
    verdict = TaskEnded(**_env(), task_id="t1", state="succeeded", attempt=1, reason="completed")
    settled = fold(verdict, start=running)
    assert (settled.state, settled.actual_runtime_s) == (TaskState.SUCCEEDED, None)
    done = fold(att(TaskCompleted, runtime_s=42.0), start=settled)
    assert (done.state, done.actual_runtime_s, done.progress) == (TaskState.SUCCEEDED, 42.0, 1.0)
    assert forecast_observation(settled, done) == ("gpu-v100", 100.0, 42.0)
    again = fold(att(TaskCompleted, runtime_s=43.0), start=done)
    assert again.actual_runtime_s == 42.0  # a second completion is stale


def test_a_verdict_on_a_later_attempt_supersedes_an_outcome_the_view_settled_on() -> None:
    """The executor of a lost attempt 1 reports its completion before the view has read
    the decision placing attempt 2: the view settles on attempt 1 until the scheduler's
    verdict names attempt 2; then attempt 1's outcome is recorded as stale."""
    early = fold(submitted(), audit(), att(TaskCompleted, runtime_s=5.0))
    assert (early.state, early.attempt) == (TaskState.SUCCEEDED, 1)
    verdict = TaskEnded(**_env(), task_id="t1", state="succeeded", attempt=2, reason="done")
    settled = fold(audit(2, "n2"), verdict, start=early)
    assert (settled.state, settled.attempt, settled.actual_runtime_s) == (
        TaskState.SUCCEEDED, 2, None,
    )  # fmt: skip
    (stale,) = settled.stale_events
    assert (stale.type, stale.attempt, stale.node_id) == ("task.completed", 1, "n1")
    assert "superseded by attempt 2" in stale.why
    done = fold(att(TaskCompleted, 2, "n2", runtime_s=7.0), start=settled)
    assert (done.actual_runtime_s, done.node, done.stale_count) == (7.0, "n2", 1)
    assert fold(verdict, start=done) == done  # idempotent


def test_only_the_owner_cancels_and_a_cancel_may_come_before_the_submission() -> None:
    by_owner = CancelTask(**_env(), task_id="t1", reason="not needed", requested_by="vision")
    by_other = CancelTask(**_env(), task_id="t1", reason="mine now", requested_by="ads")
    assert fold(submitted(), by_other).state == TaskState.QUEUED  # the scheduler refuses it
    sub = submitted()
    early = fold(by_owner, sub)  # sched.commands read before the submission
    assert (early.state, early.cancel_reason, early.pending_cancel) == (
        TaskState.CANCELLED, "not needed", None,
    )  # fmt: skip
    assert early.finished_at == by_owner.occurred_at
    stranger = fold(by_other, submitted())
    assert (stranger.state, stranger.pending_cancel) == (TaskState.QUEUED, None)
    # the assignment came first too: the attempt ends when its executor reports it
    racing = fold(by_owner, audit(), submitted())
    assert (racing.state, racing.pending_cancel) == (TaskState.ASSIGNED, None)
    assert fold(by_owner, sub, by_owner, sub) == early  # redeliveries change nothing
