"""The live replay's fold of decisions and lifecycle events, and its report."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from streamsched.scheduler.trace import TraceJob
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.lifecycle import TaskCompleted, TaskFailed, TaskPreempted, TaskStarted
from streamsched.schemas.nodes import NodeHeartbeat, NodeResources
from streamsched.schemas.tasks import TaskRejected
from streamsched.testing import task
from streamsched.up.replay import ReplayClock
from streamsched.up.tracker import LiveTracker

T = datetime(2026, 1, 1, tzinfo=UTC)
CLOCK = ReplayClock(start=1000.0, speedup=100.0)  # wall 1001 = trace 100 s


def _env(**kw: Any) -> dict[str, Any]:
    return {"source": "test", "occurred_at": T, **kw}


def audit(task_id: str, attempt: int, node: str, hw: str, at_s: float, predicted: float = 50.0):
    return DecisionAudit(
        **_env(),
        decision_id=f"d-{task_id}-{attempt}",
        stimulus_id="s",
        task_id=task_id,
        attempt=attempt,
        policy="forecast",
        policy_version="1",
        model_version="1",
        decided_at_s=at_s,
        chosen_node_id=node,
        chosen_hardware=hw,
        predicted_runtime_s=predicted,
        reason="best",
    )


def tracker(*ids: str, gpus: int = 1, retries: int = 2) -> LiveTracker:
    jobs = tuple(
        TraceJob(task(t, gpus=gpus, max_retries=retries), float(i * 10), {"gpu-v100": 100.0})
        for i, t in enumerate(ids)
    )
    live = LiveTracker(jobs, CLOCK)
    for t in ids:
        live.submitted(t)
    return live


def test_a_task_lives_and_the_report_is_computed_in_trace_seconds() -> None:
    live = tracker("a")
    live.apply(audit("a", 1, "n0", "gpu-v100", at_s=20.0, predicted=80.0), 1000.2)
    live.apply(TaskStarted(**_env(), task_id="a", attempt=1, node_id="n0"), 1000.2)
    snap = live.snapshot(1000.5)
    assert (snap.running, snap.queued, snap.done) == ({"gpu-v100": 1}, 0, 0)
    done = TaskCompleted(**_env(), task_id="a", attempt=1, node_id="n0", runtime_s=100.0)
    live.apply(done, 1001.2)  # trace 120 s
    live.apply(done, 1001.2)  # a redelivery changes nothing
    assert live.all_terminal
    assert live.duplicate_completions == 0
    report = live.report("forecast", "t", total_gpus=2, wall_s=3.0)
    assert report.jobs == 1
    assert report.avg_jct_s == pytest.approx(120.0)  # arrival 0, done at 120
    assert report.avg_queue_s == pytest.approx(20.0)  # decided at 20
    assert report.runtime_mae_s == pytest.approx(20.0)
    assert report.gpu_utilization == pytest.approx(100.0 / (2 * 120.0))  # 1 GPU, 20..120
    assert live.forecast_mape() == pytest.approx(0.2)
    assert live.placements() == {"a": ("n0", "gpu-v100")}


def test_a_second_completion_of_another_attempt_is_counted_as_a_duplicate() -> None:
    live = tracker("a")
    live.apply(audit("a", 1, "n0", "gpu-v100", 0.0), 1000.0)
    live.apply(audit("a", 2, "n1", "gpu-v100", 5.0), 1000.1)
    for attempt in (1, 2):
        live.apply(
            TaskCompleted(**_env(), task_id="a", attempt=attempt, node_id="n", runtime_s=1.0),
            1000.5,
        )
    assert live.duplicate_completions == 1
    assert live.placements() == {"a": ("n0", "gpu-v100")}  # the first placement


def test_failures_end_a_task_only_when_its_retries_are_spent() -> None:
    live = tracker("a", retries=1)
    for attempt in (1, 2):
        live.apply(audit("a", attempt, "n0", "gpu-v100", float(attempt)), 1000.0)
        live.apply(
            TaskFailed(**_env(), task_id="a", attempt=attempt, node_id="n0", reason="exit 1"),
            1000.0 + attempt,
        )
        assert live.all_terminal == (attempt == 2)
    assert live.tasks["a"].state == "failed"


def test_rejections_preemptions_and_foreign_tasks() -> None:
    live = tracker("a", "b")
    live.apply(TaskRejected(**_env(), task_id="a", reason="unplaceable (no node)"), 1000.0)
    live.apply(audit("b", 1, "n0", "gpu-v100", 0.0), 1000.0)
    live.apply(TaskPreempted(**_env(), task_id="b", attempt=1, node_id="n0", progress=0.5), 1000.1)
    live.apply(audit("zzz", 1, "n0", "gpu-v100", 0.0), 1000.0)  # not replayed by us: ignored
    assert live.tasks["a"].state == "rejected"
    assert live.rejections == {"unplaceable": 1}
    assert live.preemptions == 1
    snap = live.snapshot(1000.2)
    assert (snap.queued, snap.failed, snap.done) == (1, 1, 0)  # b waits for a new attempt
    assert not live.all_terminal


def test_heartbeats_register_nodes() -> None:
    live = tracker("a")
    hb = NodeHeartbeat(
        **_env(),
        node_id="n0",
        hardware="gpu-v100",
        capacity=NodeResources(cpu_milli=1000, memory_mib=1024, gpus=4),
        usage=NodeResources(cpu_milli=0, memory_mib=0),
        sequence=0,
    )
    live.apply(hb, 1000.0)
    assert live.snapshot(1000.0).nodes == 1
