"""The placement agent against a real broker (the ``kafka_bootstrap`` fixture).

The broker and its topics are shared by the whole session: every test uses fresh ids and
only looks at records of its own tasks.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message, Producer

from streamsched.agents.executor import ExecutorAgent
from streamsched.agents.placement import PlacementAgent
from streamsched.broker import client_config
from streamsched.scheduler.model import NodeSpec
from streamsched.schemas import codec, topics
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.lifecycle import TaskCompleted
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.testing import TopicReader, running_in_thread

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

HARDWARE = "gpu-v100"
WAIT_S = 25.0


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _node(node_id: str, labels: dict[str, str] | None = None) -> NodeSpec:
    return NodeSpec(node_id, HARDWARE, 64_000, 512 * 1024, 8, labels or {})


def _submission(task_id: str, governance: dict[str, str] | None = None) -> TaskSubmitted:
    return TaskSubmitted.model_validate(
        {
            "occurred_at": datetime.now(UTC),
            "source": "test",
            "task_id": task_id,
            "idempotency_key": f"key-{task_id}",
            "tenant": "team-a",
            "task_type": "smoke",
            "resources": {"gpus": 1, "allowed_hardware": [HARDWARE]},
            "governance": governance or {},
            "command": [sys.executable, "-c", "print('ok')"],
        }
    )


@pytest.fixture
def config(kafka_bootstrap: str) -> dict[str, Any]:
    return client_config(kafka_bootstrap)


@contextmanager
def placement(config: dict[str, Any]) -> Iterator[PlacementAgent]:
    agent = PlacementAgent(config, decision_prefix=_uid("d"), tick_s=0.2)
    with running_in_thread(agent.run):
        yield agent


def _produce(config: dict[str, Any], topic: str, key: str, value: bytes) -> tuple[int, int]:
    """Produce one record synchronously; its (partition, offset)."""
    delivered: list[Message] = []
    producer = Producer(config)
    producer.produce(topic, value, key=key.encode(), on_delivery=lambda e, m: delivered.append(m))
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


def test_malformed_records_go_to_the_dead_letter_topic_and_never_stall(
    config: dict[str, Any], tmp_path: Path
) -> None:
    task_id, bad_id = _uid("task"), _uid("bad")
    valid = json.loads(codec.encode(_submission(bad_id)))
    bad = [
        (b"not json", "(payload)", "JSON"),
        (json.dumps({**valid, "bogus": 1}).encode(), "bogus", "Extra inputs"),
        (json.dumps({**valid, "schema_version": 99}).encode(), "schema_version", "99"),
    ]
    with placement(config):
        _heartbeat(config, _uid("node"), tmp_path)
        where = [_produce(config, topics.TASKS_SUBMITTED, bad_id, value) for value, _, _ in bad]
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

            dead.wait_for(lambda records: len(mine(records)) >= 3)
            by_offset = {
                int(h["source.offset"]): (v, h) for v, h in dead.records if h in mine(dead.records)
            }
    assert len(mine(dead.records)) == 3
    for (value, field, words), (_, offset) in zip(bad, where, strict=True):
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
