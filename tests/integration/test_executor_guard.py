"""The executor's own safety checks against a real broker (the ``kafka_bootstrap``
fixture): a crafted assignment, published straight to the node's partition as a
compromised or buggy placement agent could, is refused when its executable is not on the
allow-list or its governance tags do not match the node's labels: nothing runs, and a
non-retryable ``task.failed`` naming the reason reaches ``sched.tasks.events``. Plus the
placement's own check: a task whose governance no node satisfies is never assigned.

The broker and its topics are shared by the session: every test uses fresh ids.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from streamsched.agents.executor import EVENT_TOPIC_PARTITIONS, ExecutorAgent
from streamsched.agents.partitioning import ASSIGNMENT_PARTITIONS, partition_for
from streamsched.agents.placement import PlacementAgent
from streamsched.agents.runner import ExecAllowList
from streamsched.broker import client_config, ensure_topics
from streamsched.scheduler.model import NodeSpec
from streamsched.schemas import codec, topics
from streamsched.schemas.decisions import Assignment, DecisionAudit
from streamsched.schemas.lifecycle import TaskCompleted, TaskFailed, TaskStarted
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.testing import TopicReader, running_in_thread, wire_submission

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

HARDWARE = "gpu-v100"
TOPIC = topics.assignment_topic(HARDWARE)
WAIT_S = 25.0


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _node(node_id: str, labels: dict[str, str]) -> NodeSpec:
    return NodeSpec(node_id, HARDWARE, 64_000, 512 * 1024, 8, labels)


def _writes(marker: Path) -> tuple[str, ...]:
    """A command that prints and creates ``marker``: evidence that it ran."""
    code = f"print('ran'); open({str(marker)!r}, 'w').close()"
    return (sys.executable, "-c", code)


def _assignment(
    node_id: str, task_id: str, command: tuple[str, ...], governance: dict[str, str]
) -> Assignment:
    return Assignment(
        occurred_at=datetime.now(UTC),
        source="test-crafted",
        decision_id=_uid("d"),
        task_id=task_id,
        attempt=1,
        node_id=node_id,
        hardware=HARDWARE,
        predicted_runtime_s=1.0,
        command=command,
        tenant="team-a",
        task_type="train",
        governance=governance,
    )


@pytest.fixture
def config(kafka_bootstrap: str) -> dict[str, Any]:
    config = client_config(kafka_bootstrap)
    ensure_topics(
        config,
        {
            TOPIC: ASSIGNMENT_PARTITIONS,
            topics.TASK_EVENTS: EVENT_TOPIC_PARTITIONS,
            topics.NODE_HEARTBEATS: EVENT_TOPIC_PARTITIONS,
        },
    )
    return config


@contextmanager
def running_executor(
    config: dict[str, Any], node: NodeSpec, log_dir: Path, allow: ExecAllowList | None
) -> Iterator[ExecutorAgent]:
    agent = ExecutorAgent(config, node, log_dir=log_dir, heartbeat_interval_s=0.5, allow_list=allow)
    with running_in_thread(agent.run):
        yield agent


def _publish(config: dict[str, Any], assignment: Assignment) -> None:
    """Publish ``assignment`` to its node's partition, bypassing the placement agent."""
    producer = Producer(config)
    producer.produce(
        TOPIC,
        codec.encode(assignment),
        key=assignment.node_id.encode(),
        partition=partition_for(assignment.node_id, ASSIGNMENT_PARTITIONS),
        headers={"type": assignment.type},
    )
    assert producer.flush(10) == 0


def _refusals(reason: str) -> float:
    value = REGISTRY.get_sample_value("streamsched_executor_refusals_total", {"reason": reason})
    return value or 0.0


def _assert_refused(
    events: TopicReader, agent: ExecutorAgent, task_id: str, marker: Path
) -> TaskFailed:
    """The refused attempt ran nothing and was reported as one non-retryable failure."""
    failed = events.wait_event(TaskFailed, task_id)
    assert failed.retryable is False
    assert failed.node_id == agent.node.node_id
    assert not marker.exists()
    assert not agent.runner.log_path(task_id, 1).exists()
    assert events.events(TaskStarted, task_id) == []
    assert len(events.events(TaskFailed, task_id)) == 1
    assert isinstance(failed, TaskFailed)
    return failed


def test_an_executable_off_the_allow_list_never_runs(
    config: dict[str, Any], tmp_path: Path
) -> None:
    node = _node(_uid("node"), {"data_region": "eu"})
    refused_id, allowed_id = _uid("refused"), _uid("allowed")
    refused_marker, allowed_marker = tmp_path / "refused.ran", tmp_path / "allowed.ran"
    real_python = os.path.realpath(sys.executable)
    allow = ExecAllowList(["/opt/streamsched-test/bin/*", real_python])
    before = _refusals("executable")
    with running_executor(
        config, node, tmp_path / "logs", ExecAllowList(["/opt/ml/bin/*"])
    ) as agent:
        crafted = _assignment(node.node_id, refused_id, _writes(refused_marker), {})
        _publish(config, crafted)
        _publish(config, crafted)  # redelivered: still one failure, counted once
        with TopicReader(config, topics.TASK_EVENTS, timeout_s=WAIT_S) as events:
            failed = _assert_refused(events, agent, refused_id, refused_marker)
            events.drain(0.5)
            assert len(events.events(TaskFailed, refused_id)) == 1
    shown = repr(sys.executable)
    if real_python != sys.executable:  # a virtualenv's python is a symlink
        shown += f" ({real_python})"
    assert failed.reason == (
        f"executable {shown} is not allowed on node {node.node_id}; allow-list: /opt/ml/bin/*"
    )
    assert _refusals("executable") == before + 1

    # control: the same agent code with the interpreter on the list runs it
    with running_executor(config, node, tmp_path / "logs2", allow):
        _publish(config, _assignment(node.node_id, allowed_id, _writes(allowed_marker), {}))
        with TopicReader(config, topics.TASK_EVENTS, timeout_s=WAIT_S) as events:
            done = events.wait_event(TaskCompleted, allowed_id)
    assert done.exit_code == 0
    assert allowed_marker.exists()


def test_a_governance_mismatch_is_refused_by_the_executor(
    config: dict[str, Any], tmp_path: Path
) -> None:
    node = _node(_uid("node"), {"data_region": "us"})
    refused_id, allowed_id = _uid("refused"), _uid("allowed")
    refused_marker, allowed_marker = tmp_path / "refused.ran", tmp_path / "allowed.ran"
    before = _refusals("governance")
    with running_executor(config, node, tmp_path / "logs", None) as agent:
        eu = _assignment(node.node_id, refused_id, _writes(refused_marker), {"data_region": "eu"})
        us = _assignment(node.node_id, allowed_id, _writes(allowed_marker), {"data_region": "us"})
        _publish(config, eu)
        _publish(config, us)
        with TopicReader(config, topics.TASK_EVENTS, timeout_s=WAIT_S) as events:
            failed = _assert_refused(events, agent, refused_id, refused_marker)
            done = events.wait_event(TaskCompleted, allowed_id)
    assert failed.reason == (
        f"governance: task requires data_region=eu, node {node.node_id} has data_region=us"
    )
    assert _refusals("governance") == before + 1
    assert done.exit_code == 0
    assert allowed_marker.exists()


def _submission(task_id: str, governance: dict[str, str], marker: Path) -> TaskSubmitted:
    command = _writes(marker)
    return wire_submission(task_id, governance=governance, command=command, hardware=HARDWARE)


def test_the_placement_never_assigns_a_task_no_node_may_run(
    config: dict[str, Any], tmp_path: Path
) -> None:
    """The first check: the placement agent does not assign a task whose governance no
    node satisfies; the assignment it does make carries the tags for the executor."""
    run = uuid.uuid4().hex[:10]  # keeps nodes of other tests away from these tasks
    node = _node(_uid("node"), {"test_run": run, "data_region": "us"})
    eu_id, us_id = _uid("eu"), _uid("us")
    eu_marker, us_marker = tmp_path / "eu.ran", tmp_path / "us.ran"
    placement = PlacementAgent(config, decision_prefix=_uid("d"), tick_s=0.2)
    executor = ExecutorAgent(config, node, log_dir=tmp_path / "logs", heartbeat_interval_s=0.5)
    with running_in_thread(placement.run), running_in_thread(executor.run):
        deadline = time.monotonic() + WAIT_S
        while node.node_id not in placement.node_hardware:
            assert time.monotonic() < deadline, "no heartbeat reached the placement agent"
            time.sleep(0.05)
        producer = Producer(config)
        for task_id, region, marker in ((eu_id, "eu", eu_marker), (us_id, "us", us_marker)):
            sub = _submission(task_id, {"test_run": run, "data_region": region}, marker)
            producer.produce(topics.TASKS_SUBMITTED, codec.encode(sub), key=task_id.encode())
        assert producer.flush(10) == 0
        with TopicReader(config, topics.TASK_EVENTS, timeout_s=WAIT_S) as events:
            events.wait_event(TaskCompleted, us_id)
        while eu_id not in placement.submissions:  # the placement read it
            assert time.monotonic() < deadline, "the placement agent never read the task"
            time.sleep(0.05)
        with TopicReader(config, topics.DECISIONS, timeout_s=WAIT_S) as decisions:
            decisions.wait_event(DecisionAudit, us_id)
            decisions.drain(1.0)
            assert decisions.events(DecisionAudit, eu_id) == []
        with TopicReader(config, TOPIC, timeout_s=WAIT_S) as assignments:
            assignments.wait_event(Assignment, us_id)
            assignments.drain(0.5)
            assert assignments.events(Assignment, eu_id) == []
            (placed,) = assignments.events(Assignment, us_id)
    assert dict(placed.governance) == {"test_run": run, "data_region": "us"}
    assert us_marker.exists()
    assert not eu_marker.exists()
