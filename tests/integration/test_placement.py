"""The placement agent against a real broker (the ``kafka_bootstrap`` fixture).

The broker and its topics are shared by the whole session: every test uses fresh ids and
only looks at records of its own tasks.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from streamsched import metrics
from streamsched.agents.executor import ExecutorAgent
from streamsched.agents.placement import HEARTBEAT_TIMEOUT_S, PlacementAgent, StateGauges
from streamsched.broker import client_config
from streamsched.cli import app
from streamsched.scheduler.instructions import Assign, TaskTransition
from streamsched.scheduler.model import NodeSpec, TaskState
from streamsched.schemas import codec, topics
from streamsched.schemas.decisions import DecisionAudit, TaskEnded
from streamsched.schemas.lifecycle import TaskCompleted
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.schemas.tenancy import TENANT_HEADER
from streamsched.testing import (
    TopicReader,
    cancel,
    completed,
    drive,
    failed,
    gpu_cluster,
    new_core,
    running_in_thread,
    submitted,
    task,
    up,
    wire_submission,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

HARDWARE = "gpu-v100"
WAIT_S = 25.0


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _node(node_id: str, labels: dict[str, str] | None = None) -> NodeSpec:
    return NodeSpec(node_id, HARDWARE, 64_000, 512 * 1024, 8, labels or {})


def _submission(task_id: str, governance: dict[str, str] | None = None) -> TaskSubmitted:
    return wire_submission(task_id, governance=governance, hardware=HARDWARE)


@pytest.fixture
def config(kafka_bootstrap: str) -> dict[str, Any]:
    return client_config(kafka_bootstrap)


@contextmanager
def placement(config: dict[str, Any]) -> Iterator[PlacementAgent]:
    agent = PlacementAgent(config, decision_prefix=_uid("d"), tick_s=0.2)
    with running_in_thread(agent.run):
        yield agent


def _produce(
    config: dict[str, Any],
    topic: str,
    key: str,
    value: bytes,
    headers: list[tuple[str, bytes]] | None = None,
) -> tuple[int, int]:
    """Produce one record synchronously; its (partition, offset)."""
    delivered: list[Message] = []
    producer = Producer(config)
    producer.produce(
        topic,
        value,
        key=key.encode(),
        headers=headers or [],
        on_delivery=lambda e, m: delivered.append(m),
    )
    assert producer.flush(10) == 0
    msg = delivered[0]
    assert msg.error() is None, msg.error()
    return msg.partition() or 0, msg.offset() or 0


def _heartbeat(config: dict[str, Any], node_id: str, tmp_path: Path) -> None:
    """Register a node (no executor behind it) with one heartbeat."""
    beat = ExecutorAgent(config, _node(node_id), log_dir=tmp_path).heartbeat()
    _produce(config, topics.NODE_HEARTBEATS, node_id, codec.encode(beat))


def reader(config: dict[str, Any], topic: str) -> TopicReader:
    return TopicReader(config, topic, timeout_s=WAIT_S)


def test_places_and_runs_a_submitted_task_end_to_end(
    config: dict[str, Any], tmp_path: Path
) -> None:
    # A label of this test only (matched by the task's governance tags): nodes that other
    # tests registered on the shared topics cannot take the task.
    tag = {"test_run": uuid.uuid4().hex[:10]}
    task_id, node_id = _uid("task"), _uid("node")
    executor = ExecutorAgent(
        config, _node(node_id, tag), log_dir=tmp_path, heartbeat_interval_s=0.5
    )
    with placement(config) as agent, running_in_thread(executor.run):
        deadline = time.monotonic() + WAIT_S
        while node_id not in agent.node_hardware:  # a heartbeat registered the node
            assert time.monotonic() < deadline, "no heartbeat reached the placement agent"
            time.sleep(0.05)
        submission = _submission(task_id, tag)
        _produce(config, topics.TASKS_SUBMITTED, task_id, codec.encode(submission))
        with reader(config, topics.DECISIONS) as decisions:
            decisions.wait_for(lambda _: bool(decisions.events(DecisionAudit, task_id)))
            (audit,) = decisions.events(DecisionAudit, task_id)
            assert audit.chosen_node_id == executor.node.node_id
        with reader(config, topics.TASK_EVENTS) as task_events:
            task_events.wait_for(lambda _: bool(task_events.events(TaskCompleted, task_id)))
            (done,) = task_events.events(TaskCompleted, task_id)
            assert done.exit_code == 0
        with reader(config, topics.DECISIONS) as decisions:
            decisions.wait_for(lambda _: bool(decisions.events(TaskEnded, task_id)))
            (ended,) = decisions.events(TaskEnded, task_id)
            assert (ended.state, ended.attempt) == ("succeeded", 1)


def test_the_scheduler_announces_every_task_it_settles(
    config: dict[str, Any], tmp_path: Path
) -> None:
    """An upstream task fails for good; its dependent, which never runs, is cancelled by
    the scheduler alone. Both verdicts reach sched.decisions as task.ended."""
    tag = {"test_run": uuid.uuid4().hex[:10]}
    upstream, dependent, node_id = _uid("up"), _uid("down"), _uid("node")
    executor = ExecutorAgent(
        config, _node(node_id, tag), log_dir=tmp_path, heartbeat_interval_s=0.5
    )
    broken = _submission(upstream, tag).model_copy(
        update={"command": ("/nonexistent/streamsched-test-binary",)}
    )
    waiting = _submission(dependent, tag).model_copy(update={"depends_on": (upstream,)})
    with placement(config) as agent, running_in_thread(executor.run):
        deadline = time.monotonic() + WAIT_S
        while node_id not in agent.node_hardware:
            assert time.monotonic() < deadline, "no heartbeat reached the placement agent"
            time.sleep(0.05)
        for sub in (broken, waiting):
            _produce(config, topics.TASKS_SUBMITTED, sub.task_id, codec.encode(sub))
        with reader(config, topics.DECISIONS) as decisions:
            ours = (upstream, dependent)
            decisions.wait_for(
                lambda _: all(decisions.events(TaskEnded, task_id) for task_id in ours)
            )
            ended = {t: decisions.events(TaskEnded, t)[0] for t in ours}
    assert (ended[upstream].state, ended[upstream].attempt) == ("failed", 1)
    assert ended[dependent].state == "cancelled"
    assert ended[dependent].attempt == 0  # it never ran
    assert upstream in ended[dependent].reason


def test_malformed_records_go_to_the_dead_letter_topic_and_never_stall(
    config: dict[str, Any], tmp_path: Path
) -> None:
    task_id, bad_id = _uid("task"), _uid("bad")
    valid = json.loads(codec.encode(_submission(bad_id)))
    other_tenant = [(TENANT_HEADER, b"team-b")]  # the body says team-a
    bad = [
        (b"not json", "(payload)", "JSON", None),
        (json.dumps({**valid, "bogus": 1}).encode(), "bogus", "Extra inputs", None),
        (json.dumps({**valid, "schema_version": 99}).encode(), "schema_version", "99", None),
        (json.dumps(valid).encode(), "tenant", "differs from the streamsched-tenant", other_tenant),
    ]
    with placement(config):
        _heartbeat(config, _uid("node"), tmp_path)
        where = [
            _produce(config, topics.TASKS_SUBMITTED, bad_id, value, headers)
            for value, _, _, headers in bad
        ]
        _produce(config, topics.TASKS_SUBMITTED, task_id, codec.encode(_submission(task_id)))
        with reader(config, topics.DECISIONS) as decisions:
            decisions.wait_for(lambda _: bool(decisions.events(DecisionAudit, task_id)))
        with reader(config, topics.DEAD_LETTER) as dead:

            def mine(records: list[tuple[bytes, dict[str, str]]]) -> list[dict[str, str]]:
                return [
                    h
                    for _, h in records
                    if h.get("source.topic") == topics.TASKS_SUBMITTED
                    and (int(h["source.partition"]), int(h["source.offset"])) in where
                ]

            dead.wait_for(lambda records: len(mine(records)) >= len(bad))
            by_offset = {
                int(h["source.offset"]): (v, h) for v, h in dead.records if h in mine(dead.records)
            }
    assert len(mine(dead.records)) == len(bad)
    for (value, field, words, _), (_, offset) in zip(bad, where, strict=True):
        original, headers = by_offset[offset]
        assert original == value
        assert headers["error.field"] == field
        assert headers["error.reason"]
        assert words in headers["error.reason"]


def test_a_duplicate_submission_is_placed_once(config: dict[str, Any], tmp_path: Path) -> None:
    task_id, marker_id = _uid("task"), _uid("marker")
    submission = codec.encode(_submission(task_id))
    with placement(config):
        _heartbeat(config, _uid("node"), tmp_path)
        _produce(config, topics.TASKS_SUBMITTED, task_id, submission)
        _produce(config, topics.TASKS_SUBMITTED, task_id, submission)
        # a later resubmission under a new event id (same task id) is a duplicate too
        again = _submission(task_id)
        _produce(config, topics.TASKS_SUBMITTED, task_id, codec.encode(again))
        # the marker, submitted last to the same partition, shows the duplicates were read
        _produce(config, topics.TASKS_SUBMITTED, task_id, codec.encode(_submission(marker_id)))
        with reader(config, topics.DECISIONS) as decisions:
            decisions.wait_for(lambda _: bool(decisions.events(DecisionAudit, marker_id)))
            decisions.drain(1.0)
            assert len(decisions.events(DecisionAudit, task_id)) == 1


# ---------------------------------------------------------------------------- metrics


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples served at http://127.0.0.1:port/metrics, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _task(task_id: str, hardware: str, governance: dict[str, str]) -> bytes:
    """A submission of one GPU on ``hardware``."""
    data = json.loads(codec.encode(_submission(task_id, governance)))
    data["resources"] = {"gpus": 1, "gpu_milli": 1000, "allowed_hardware": [hardware]}
    return codec.encode(codec.decode(json.dumps(data).encode()))


def test_metrics_move_and_finished_tasks_are_forgotten(
    config: dict[str, Any], tmp_path: Path
) -> None:
    # A hardware class no other test uses: its labelled series count this test's tasks.
    # A label of this test only keeps other nodes of the class away from its tasks.
    hardware, tag = "gpu-l40s", {"test_run": uuid.uuid4().hex[:10]}
    node_id, first, second = _uid("node"), _uid("task"), _uid("task")
    node = NodeSpec(node_id, hardware, 64_000, 512 * 1024, 1, tag)  # one GPU: one at a time
    port = metrics.serve(0)
    before = {
        "accepted": _sample("streamsched_submissions_total", outcome="accepted"),
        "consumed": _sample(
            "streamsched_events_consumed_total", component="placement", topic="sched.tasks.events"
        ),
        "dead": _sample(
            "streamsched_dead_lettered_total",
            component="placement",
            topic=topics.TASKS_SUBMITTED,
        ),
        "latency": _sample("streamsched_decision_latency_seconds_count"),
    }
    with placement(config) as agent:
        beat = ExecutorAgent(config, node, log_dir=tmp_path).heartbeat()
        _produce(config, topics.NODE_HEARTBEATS, node_id, codec.encode(beat))
        deadline = time.monotonic() + WAIT_S
        while node_id not in agent.node_hardware:
            assert time.monotonic() < deadline, "no heartbeat reached the placement agent"
            time.sleep(0.05)
        _produce(config, topics.TASKS_SUBMITTED, first, _task(first, hardware, tag))
        with reader(config, topics.DECISIONS) as decisions:
            audit = decisions.wait_event(DecisionAudit, first)
        assert audit.chosen_node_id == node_id
        # the second waits for the node's only GPU (submitted after the first was placed)
        _produce(config, topics.TASKS_SUBMITTED, second, _task(second, hardware, tag))
        _produce(config, topics.TASKS_SUBMITTED, first, b"{not json")
        while _scrape(port).get(("streamsched_queue_depth", (("hardware", hardware),))) != 1:
            assert time.monotonic() < deadline, "queue depth never showed the waiting task"
            time.sleep(0.2)
        samples = _scrape(port)
        assert samples[("streamsched_running_tasks", (("hardware", hardware),))] == 1
        assert samples[("streamsched_queued_tasks", ())] >= 1
        assert any(name == "streamsched_consumer_lag_messages" for name, _ in samples)
        assert first in agent.submissions
        assert second in agent.submissions

        # the first task completes: the second takes the GPU, the first is forgotten
        done = TaskCompleted(
            occurred_at=datetime.now(UTC),
            source="test",
            task_id=first,
            attempt=1,
            node_id=node_id,
            runtime_s=1.0,
        )
        _produce(config, topics.TASK_EVENTS, first, codec.encode(done))
        with reader(config, topics.DECISIONS) as decisions:
            decisions.wait_event(DecisionAudit, second)
        while first in agent.submissions:
            assert time.monotonic() < deadline, "the finished task's submission was kept"
            time.sleep(0.05)
        assert second in agent.submissions  # still running: its submission is still needed
        while _scrape(port).get(("streamsched_queue_depth", (("hardware", hardware),))) != 0:
            assert time.monotonic() < deadline, "queue depth never went back to 0"
            time.sleep(0.2)

    after = _scrape(port)
    hw = (("hardware", hardware),)
    assert after[("streamsched_assignments_total", hw)] == 2
    assert after[("streamsched_decisions_total", (("hardware", hardware), ("kind", "assign")))] == 2
    assert ("streamsched_reassignments_total", hw) not in after  # first attempts only
    assert after[("streamsched_submit_to_assigned_seconds_count", hw)] == 2
    assert after[("streamsched_submit_to_assigned_seconds_sum", hw)] > 0
    assert after[("streamsched_running_tasks", hw)] == 1
    assert after[("streamsched_submissions_total", (("outcome", "accepted"),))] >= (
        before["accepted"] + 2
    )
    consumed = (
        "streamsched_events_consumed_total",
        (("component", "placement"), ("topic", "sched.tasks.events")),
    )
    assert after[consumed] >= before["consumed"] + 1
    dead = (
        "streamsched_dead_lettered_total",
        (("component", "placement"), ("topic", topics.TASKS_SUBMITTED)),
    )
    assert after[dead] >= before["dead"] + 1
    assert after[("streamsched_decision_latency_seconds_count", ())] > before["latency"]


# ---------------------------------------------------------------------------- pure parts


def test_state_gauges_match_a_scan_of_the_core() -> None:
    """The counts kept from instructions equal a full scan of the core's tasks, through
    placements, queueing for capacity, completions, failures and cancellations."""
    core = new_core("fifo")
    gauges = StateGauges()

    def feed(events: list[Any], now: float) -> None:
        for ins in drive(core, events, now=now):
            if isinstance(ins, TaskTransition):
                gauges.on_transition(ins, core.tasks[ins.task_id].spec.allowed_hardware)
            elif isinstance(ins, Assign):
                gauges.on_assign(ins.task_id, ins.hardware)
        queued = [r for r in core.tasks.values() if r.state is TaskState.QUEUED]
        running: dict[str, int] = {}
        for rec in core.tasks.values():
            if rec.state in (TaskState.ASSIGNED, TaskState.RUNNING) and rec.hardware:
                running[rec.hardware] = running.get(rec.hardware, 0) + 1
        # a task waiting out a retry backoff is queued, outside the ready queue
        assert gauges.queued == len(queued) == len(core.queue) + len(core.retry_wait)
        for hw in ("gpu-v100", "gpu-a100", "cpu"):
            expected = sum(
                1 for r in queued if not r.spec.allowed_hardware or hw in r.spec.allowed_hardware
            )
            assert gauges.queue_depth([hw])[hw] == expected, hw
            assert gauges.running_count.get(hw, 0) == running.get(hw, 0), hw

    feed([up(n) for n in gpu_cluster(gpus_per_node=8, v100=1, a100=1)], now=0.0)
    tasks = [task(f"t{i}", gpus=8, hardware="gpu-v100" if i % 3 == 0 else ()) for i in range(6)]
    feed([submitted(t) for t in tasks], now=1.0)
    assert gauges.queued == 4  # two nodes, 8 GPUs each: two placed
    running = [t for t, r in core.tasks.items() if r.state is TaskState.ASSIGNED]
    feed([completed(running[0], 1)], now=2.0)
    again = [t for t, r in core.tasks.items() if r.state is TaskState.ASSIGNED]
    feed([failed(again[-1], 1, "boom")], now=3.0)  # retryable: back to the queue
    feed([cancel("t5")], now=4.0)
    feed([cancel(t) for t, r in core.tasks.items() if r.state is TaskState.QUEUED], now=5.0)
    assert gauges.queued == 0


def test_the_placement_model_reports_and_adapts_to_drift(caplog: pytest.LogCaptureFixture) -> None:
    """The live default policy's model sits in the drift wrapper: a 3x slowdown of a class
    is logged, counted and refitted (no broker needed: the agent is not run)."""
    agent = PlacementAgent({})
    model = agent.core.forecaster
    assert model.name == "river-linear+drift"
    labels = {"model": model.name, "key": HARDWARE}
    before = REGISTRY.get_sample_value("streamsched_model_drift_total", labels) or 0.0
    spec = task("drifty", gpus=1)
    for i in range(600):
        model.learn(spec, HARDWARE, (100.0 if i < 300 else 300.0) * (1.0 + 0.05 * (i % 3)))
    with caplog.at_level("WARNING", logger="streamsched.agents.placement"):
        agent._handle_core([])
    after = REGISTRY.get_sample_value("streamsched_model_drift_total", labels) or 0.0
    assert after > before
    assert f"placement model river-linear+drift drifted on {HARDWARE}" in caplog.text
    assert "refitted, now river-linear+drift@g1" in caplog.text
    agent._handle_core([])  # each drift is reported once
    assert REGISTRY.get_sample_value("streamsched_model_drift_total", labels) == after


def test_replay_clock_converts_wall_durations_to_core_seconds() -> None:
    start = time.time() - 10.0
    agent = PlacementAgent({}, replay_start=start, replay_speedup=60.0, heartbeat_timeout_s=15.0)
    assert agent.core.config.heartbeat_timeout_s == 15.0 * 60.0
    assert 599.0 <= agent.clock() <= 700.0  # ten wall seconds in, sixty times faster
    # wire times (heartbeats, deadlines) are trace seconds too
    assert agent.core_time(datetime.fromtimestamp(start + 20.0, UTC)) == pytest.approx(1200.0)
    assert PlacementAgent({}).core.config.heartbeat_timeout_s == HEARTBEAT_TIMEOUT_S  # unscaled
    for bad in (0.0, -2.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="speedup"):
            PlacementAgent({}, replay_start=start, replay_speedup=bad)


def test_placement_cli_refuses_a_bad_replay_speedup() -> None:
    result = CliRunner().invoke(
        app,
        ["placement", "--replay-start", "0", "--replay-speedup", "0"],
        env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
    )
    assert result.exit_code == 2
    assert "--replay-speedup" in result.output
