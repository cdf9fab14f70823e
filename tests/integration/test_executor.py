"""The executor agent against a real broker (the ``kafka_bootstrap`` fixture), and the
``streamsched executor`` command as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from streamsched.agents.executor import EVENT_TOPIC_PARTITIONS, ExecutorAgent
from streamsched.agents.partitioning import ASSIGNMENT_PARTITIONS, partition_for
from streamsched.broker import client_config, ensure_topics
from streamsched.scheduler.model import NodeSpec
from streamsched.schemas import codec, topics
from streamsched.schemas.commands import StopAttempt
from streamsched.schemas.decisions import Assignment
from streamsched.schemas.envelope import EventEnvelope
from streamsched.schemas.lifecycle import TaskCompleted, TaskFailed, TaskPreempted, TaskStarted
from streamsched.schemas.nodes import NodeHeartbeat
from streamsched.testing import TopicReader, running_in_thread

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(60)]

HARDWARE = "gpu-v100"
TOPIC = topics.assignment_topic(HARDWARE)
WAIT_S = 20.0
SCRIPT = Path(sys.executable).parent / "streamsched"


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _node(node_id: str) -> NodeSpec:
    return NodeSpec(node_id, HARDWARE, 64_000, 512 * 1024, 8, {"data_region": "eu"})


def _assignment(node_id: str, task_id: str, code: str = "print('hello')") -> Assignment:
    return Assignment(
        occurred_at=datetime.now(UTC),
        source="test",
        decision_id=_uid("d"),
        task_id=task_id,
        attempt=1,
        node_id=node_id,
        hardware=HARDWARE,
        gpu_indices=(0, 1),
        gpu_milli=1000,
        predicted_runtime_s=1.0,
        command=(sys.executable, "-c", code),
        tenant="team-a",
        task_type="train",
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
def running_agent(config: dict[str, Any], node_id: str, log_dir: Path) -> Iterator[ExecutorAgent]:
    agent = ExecutorAgent(config, _node(node_id), log_dir=log_dir, heartbeat_interval_s=0.5)
    with running_in_thread(agent.run):
        yield agent


def _produce(config: dict[str, Any], node_id: str, value: bytes, key: str | None = None) -> None:
    producer = Producer(config)
    producer.produce(
        TOPIC,
        value,
        key=(key or node_id).encode(),
        partition=partition_for(node_id, ASSIGNMENT_PARTITIONS),
    )
    assert producer.flush(10) == 0


@pytest.fixture
def task_events(config: dict[str, Any]) -> Iterator[TopicReader]:
    reader = TopicReader(config, topics.TASK_EVENTS, timeout_s=WAIT_S)
    yield reader
    reader.close()


def _of(
    events: list[EventEnvelope], kind: type[EventEnvelope], task_id: str
) -> list[EventEnvelope]:
    return [e for e in events if isinstance(e, kind) and getattr(e, "task_id", None) == task_id]


def _finished(task_id: str) -> Callable[[list[EventEnvelope]], bool]:
    return lambda events: bool(_of(events, TaskCompleted, task_id))


def test_runs_an_assignment_and_reports_its_lifecycle(
    config: dict[str, Any], task_events: TopicReader, tmp_path: Path
) -> None:
    node_id, task_id = _uid("node"), _uid("task")
    with running_agent(config, node_id, tmp_path) as agent:
        _produce(config, node_id, codec.encode(_assignment(node_id, task_id)))
        events = task_events.wait_events(_finished(task_id))
        assert agent.partition == partition_for(node_id, ASSIGNMENT_PARTITIONS)
    (started,) = _of(events, TaskStarted, task_id)
    (completed,) = _of(events, TaskCompleted, task_id)
    assert isinstance(completed, TaskCompleted)
    assert completed.exit_code == 0
    assert (completed.attempt, completed.node_id) == (1, node_id)
    assert events.index(started) < events.index(completed)
    assert "hello" in (tmp_path / f"{task_id}.1.log").read_text()


def _stop(node_id: str, task_id: str, attempt: int, mode: str) -> bytes:
    command = StopAttempt(
        occurred_at=datetime.now(UTC),
        source="test",
        task_id=task_id,
        attempt=attempt,
        node_id=node_id,
        mode=mode,  # type: ignore[arg-type]
        reason="make room for a short task",
    )
    return codec.encode(command)


def test_a_stop_command_preempts_the_running_attempt_and_a_stale_one_is_ignored(
    config: dict[str, Any], task_events: TopicReader, tmp_path: Path
) -> None:
    node_id, task_id = _uid("node"), _uid("task")
    long_running = "import time; print('working', flush=True); time.sleep(60)"
    with running_agent(config, node_id, tmp_path):
        _produce(config, node_id, codec.encode(_assignment(node_id, task_id, long_running)))
        task_events.wait_events(lambda events: bool(_of(events, TaskStarted, task_id)))
        _produce(config, node_id, _stop(node_id, task_id, attempt=7, mode="cancel"))  # stale
        _produce(config, node_id, _stop(node_id, task_id, attempt=1, mode="preempt"))
        events = task_events.wait_events(lambda evs: bool(_of(evs, TaskPreempted, task_id)))
    (preempted,) = _of(events, TaskPreempted, task_id)
    assert preempted.attempt == 1
    assert not _of(events, TaskCompleted, task_id)
    assert not _of(events, TaskFailed, task_id)


def test_heartbeat_registers_the_node_at_once(config: dict[str, Any], tmp_path: Path) -> None:
    node_id = _uid("node")
    reader = TopicReader(config, topics.NODE_HEARTBEATS, timeout_s=WAIT_S)
    try:
        with running_agent(config, node_id, tmp_path):
            events = reader.wait_events(
                lambda evs: len([e for e in evs if getattr(e, "node_id", None) == node_id]) >= 2
            )
    finally:
        reader.close()
    beats = [e for e in events if isinstance(e, NodeHeartbeat) and e.node_id == node_id]
    assert [b.sequence for b in beats[:2]] == [0, 1]
    first = beats[0]
    assert first.hardware == HARDWARE
    assert (first.capacity.cpu_milli, first.capacity.memory_mib, first.capacity.gpus) == (
        64_000,
        512 * 1024,
        8,
    )
    assert first.labels == {"data_region": "eu"}
    assert first.source == f"executor:{node_id}"


def test_skips_bad_records_and_other_nodes_assignments(
    config: dict[str, Any],
    task_events: TopicReader,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    node_id = _uid("node")
    partition = partition_for(node_id, ASSIGNMENT_PARTITIONS)
    other = next(
        n
        for n in (_uid("other") for _ in range(1000))
        if partition_for(n, ASSIGNMENT_PARTITIONS) == partition
    )
    other_task, task_id = _uid("task"), _uid("task")
    _produce(config, node_id, b"not json")
    _produce(config, node_id, codec.encode(_assignment(other, other_task)), key=other)
    _produce(config, node_id, codec.encode(_assignment(node_id, task_id)))
    with running_agent(config, node_id, tmp_path):
        events = task_events.wait_events(_finished(task_id))
    assert not [e for e in events if getattr(e, "task_id", None) == other_task]
    assert not (tmp_path / f"{other_task}.1.log").exists()
    (skipped,) = [r.getMessage() for r in caplog.records if "skipping invalid" in r.getMessage()]
    assert f"{TOPIC}[{partition}]@" in skipped
    assert "not valid JSON" in skipped


def test_a_restarted_executor_resumes_after_the_committed_offset(
    config: dict[str, Any], task_events: TopicReader, tmp_path: Path
) -> None:
    node_id, first, second = _uid("node"), _uid("task"), _uid("task")
    with running_agent(config, node_id, tmp_path):
        _produce(config, node_id, codec.encode(_assignment(node_id, first)))
        task_events.wait_events(_finished(first))
    with running_agent(config, node_id, tmp_path):
        _produce(config, node_id, codec.encode(_assignment(node_id, second)))
        events = task_events.wait_events(_finished(second))
    assert len(_of(events, TaskStarted, first)) == 1  # not run again after the restart


# ---------------------------------------------------------------------- command line
def test_cli_executor_joins_the_broker_and_stops_on_sigterm(
    config: dict[str, Any], kafka_bootstrap: str, tmp_path: Path
) -> None:
    node_id = _uid("node")
    reader = TopicReader(config, topics.NODE_HEARTBEATS, timeout_s=WAIT_S)
    proc = subprocess.Popen(
        [str(SCRIPT), "executor", "--node-id", node_id, "--hardware", "v100", "--gpus", "8",
         "--cpus", "64", "--memory", "512GiB", "--log-dir", str(tmp_path), "--heartbeat-s", "0.5"],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        reader.wait_events(lambda evs: any(getattr(e, "node_id", None) == node_id for e in evs))
        proc.terminate()
        _, stderr = proc.communicate(timeout=15)
    finally:
        reader.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr


def _executor_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    return subprocess.run(
        [str(SCRIPT), "executor", "--node-id", "n1", "--hardware", "v100", "--gpus", "8",
         "--cpus", "64", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def test_cli_without_a_broker_explains_and_exits_2() -> None:
    proc = _executor_cli("--memory", "512GiB")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: KAFKA_BOOTSTRAP_SERVERS is not set" in proc.stderr
    assert "joins an existing broker" in proc.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS=host:port" in proc.stderr


def test_cli_rejects_a_bad_memory_size() -> None:
    proc = _executor_cli("--memory", "lots")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "--memory 'lots'" in line
