"""The executor agent against a real broker (the ``kafka_bootstrap`` fixture), and the
``streamsched executor`` command as a real subprocess."""

from __future__ import annotations

import json
import logging
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from streamsched.agents.executor import EVENT_TOPIC_PARTITIONS, ExecutorAgent
from streamsched.agents.journal import AttemptJournal, journal_path
from streamsched.agents.partitioning import ASSIGNMENT_PARTITIONS, partition_for
from streamsched.agents.runner import (
    REPLAY_RUNTIMES_ENV,
    RESTART_REASON,
    SHUTDOWN_REASON,
    process_start_ticks,
)
from streamsched.broker import client_config, ensure_topics
from streamsched.scheduler.model import NodeSpec
from streamsched.schemas import codec, topics
from streamsched.schemas.commands import StopAttempt
from streamsched.schemas.decisions import Assignment
from streamsched.schemas.envelope import EventEnvelope
from streamsched.schemas.lifecycle import (
    AttemptEvent,
    TaskCompleted,
    TaskFailed,
    TaskLost,
    TaskPreempted,
    TaskProgress,
    TaskStarted,
)
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


def _assignment(
    node_id: str,
    task_id: str,
    code: str = "print('hello')",
    *,
    resume_progress: float = 0.0,
    env: dict[str, str] | None = None,
) -> Assignment:
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
        resume_progress=resume_progress,
        command=(sys.executable, "-c", code),
        env=env or {},
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
def running_agent(
    config: dict[str, Any], node_id: str, log_dir: Path, **settings: Any
) -> Iterator[ExecutorAgent]:
    agent = ExecutorAgent(
        config, _node(node_id), log_dir=log_dir, heartbeat_interval_s=0.5, **settings
    )
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


_A = TypeVar("_A", bound=AttemptEvent)


def _of(events: list[EventEnvelope], kind: type[_A], task_id: str) -> list[_A]:
    return [e for e in events if isinstance(e, kind) and e.task_id == task_id]


def _seen(kind: type[AttemptEvent], task_id: str) -> Callable[[list[EventEnvelope]], bool]:
    return lambda events: bool(_of(events, kind, task_id))


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


def _stop(node_id: str, task_id: str, attempt: int, mode: Literal["preempt", "cancel"]) -> bytes:
    command = StopAttempt(
        occurred_at=datetime.now(UTC),
        source="test",
        task_id=task_id,
        attempt=attempt,
        node_id=node_id,
        mode=mode,
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


# ---------------------------------------------------------------------- progress
# Writes its own fraction (atomically) into the progress file, then works until stopped.
PROGRESS_WRITER = (
    "import os, time\n"
    "path = os.environ['STREAMSCHED_PROGRESS_FILE']\n"
    "open(path + '.tmp', 'w').write('0.5')\n"
    "os.replace(path + '.tmp', path)\n"
    "time.sleep(60)\n"
)


def test_progress_file_is_reported_and_used_on_preemption(
    config: dict[str, Any], task_events: TopicReader, tmp_path: Path
) -> None:
    node_id, task_id = _uid("node"), _uid("task")
    job = _assignment(node_id, task_id, PROGRESS_WRITER, resume_progress=0.2)
    with running_agent(config, node_id, tmp_path, progress_poll_s=0.05, progress_interval_s=0.05):
        _produce(config, node_id, codec.encode(job))
        task_events.wait_events(_seen(TaskProgress, task_id))
        _produce(config, node_id, _stop(node_id, task_id, attempt=1, mode="preempt"))
        events = task_events.wait_events(_seen(TaskPreempted, task_id))
    (progress,) = _of(events, TaskProgress, task_id)
    assert progress.progress == pytest.approx(0.6)  # 0.2 earlier + 0.8 * 0.5 of this attempt
    (preempted,) = _of(events, TaskPreempted, task_id)
    assert preempted.progress == pytest.approx(0.6)


# ---------------------------------------------------------------------- replay
def test_replay_lasts_the_true_runtime_of_this_hardware(
    config: dict[str, Any], task_events: TopicReader, tmp_path: Path
) -> None:
    node_id = _uid("node")
    own, wildcard, predicted, broken = (_uid(name) for name in ("own", "any", "pred", "bad"))

    def replay_env(runtimes: dict[str, float]) -> dict[str, str]:
        return {REPLAY_RUNTIMES_ENV: json.dumps(runtimes)}

    # This node is a gpu-v100.
    jobs = [
        _assignment(node_id, own, resume_progress=0.5, env=replay_env({HARDWARE: 200.0, "*": 5e3})),
        _assignment(node_id, wildcard, env=replay_env({"gpu-k80": 1.0, "*": 30.0})),
        _assignment(node_id, predicted, env=replay_env({"gpu-k80": 900.0})),
        _assignment(node_id, broken, env={REPLAY_RUNTIMES_ENV: '{"gpu-v100": "fast"}'}),
    ]
    with running_agent(config, node_id, tmp_path, replay_speedup=100.0, progress_interval_s=0.2):
        for job in jobs:
            _produce(config, node_id, codec.encode(job))
        events = task_events.wait_events(
            lambda evs: (
                all(_of(evs, TaskCompleted, t) for t in (own, wildcard, predicted))
                and bool(_of(evs, TaskFailed, broken))
            )
        )
    runtime = {t: _of(events, TaskCompleted, t)[0].runtime_s for t in (own, wildcard, predicted)}
    # Trace seconds (wall seconds x 100), with room for a loaded machine's scheduling delays.
    assert 100.0 <= runtime[own] < 1000.0  # (1 - 0.5) x 200 s; not the "*" 5000 s
    assert 30.0 <= runtime[wildcard] < 1000.0
    assert 1.0 <= runtime[predicted] < 30.0  # no entry for gpu-v100: the prediction, 1 s
    (failed,) = _of(events, TaskFailed, broken)
    assert failed.retryable is False
    assert "STREAMSCHED_REPLAY_RUNTIMES['gpu-v100'] = 'fast'" in failed.reason
    assert not _of(events, TaskStarted, broken)
    progress = [e.progress for e in _of(events, TaskProgress, own)]
    assert progress, "a 1 s replay attempt reports progress every 0.2 s"
    assert all(0.5 < p < 1.0 for p in progress)
    assert progress == sorted(progress)


# ---------------------------------------------------------------------- shutdown and restart
def test_stopping_the_agent_reports_its_running_attempts_lost(
    config: dict[str, Any], task_events: TopicReader, tmp_path: Path
) -> None:
    node_id, task_id = _uid("node"), _uid("task")
    beats = TopicReader(config, topics.NODE_HEARTBEATS, timeout_s=WAIT_S)
    try:
        with running_agent(config, node_id, tmp_path):
            _produce(config, node_id, codec.encode(_assignment(node_id, task_id, PROGRESS_WRITER)))
            task_events.wait_events(_seen(TaskStarted, task_id))
            beats.wait_events(
                lambda evs: any(
                    isinstance(e, NodeHeartbeat)
                    and e.node_id == node_id
                    and [(r.task_id, r.attempt) for r in e.running] == [(task_id, 1)]
                    for e in evs
                )
            )
        events = task_events.wait_events(_seen(TaskLost, task_id))
    finally:
        beats.close()
    (lost,) = _of(events, TaskLost, task_id)
    assert lost.reason == SHUTDOWN_REASON
    assert [e.progress for e in _of(events, TaskProgress, task_id)][-1:] == [0.5]
    assert events.index(_of(events, TaskProgress, task_id)[-1]) < events.index(lost)
    # The journal shows it ended: a restart does not report it again.
    with running_agent(config, node_id, tmp_path):
        task_events.drain(1.0)
    assert len(_of(task_events.events(), TaskLost, task_id)) == 1


def test_a_corrupt_journal_is_reported_and_its_good_lines_reconciled(
    config: dict[str, Any],
    task_events: TopicReader,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    node_id, task_id = _uid("node"), _uid("task")
    path = journal_path(tmp_path, node_id)
    started = {"v": 1, "event": "started", "task_id": task_id, "attempt": 3, "hardware": HARDWARE}
    path.write_text("{garbage\n" + json.dumps(started) + "\n")
    with caplog.at_level(logging.WARNING), running_agent(config, node_id, tmp_path):
        events = task_events.wait_events(_seen(TaskLost, task_id))
    (lost,) = _of(events, TaskLost, task_id)
    assert (lost.attempt, lost.node_id, lost.reason) == (3, node_id, RESTART_REASON)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{path}:1: skipping corrupt journal line") for m in messages)


def _cli_executor(node_id: str, log_dir: Path, servers: str, *more: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(SCRIPT), "executor", "--node-id", node_id, "--hardware", "v100", "--gpus", "8",
         "--cpus", "64", "--memory", "512GiB", "--log-dir", str(log_dir), "--heartbeat-s", "0.5",
         *more],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": servers},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _stop_cli(proc: subprocess.Popen[str]) -> str:
    """SIGTERM the process; it must exit 0 without a traceback. Returns its stderr."""
    if proc.poll() is None:
        proc.terminate()
    try:
        _, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    return stderr


def _read_line(proc: subprocess.Popen[str], timeout_s: float = WAIT_S) -> str:
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    assert selector.select(timeout_s), "no output from the executor"
    return proc.stdout.readline().strip()


def _samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_cli_serves_metrics_that_count_the_attempts(
    config: dict[str, Any], kafka_bootstrap: str, task_events: TopicReader, tmp_path: Path
) -> None:
    node_id, task_id = _uid("node"), _uid("task")
    proc = _cli_executor(node_id, tmp_path, kafka_bootstrap, "--metrics-port", "0")
    try:
        line = _read_line(proc)
        match = re.fullmatch(r"metrics: (http://127\.0\.0\.1:\d+/metrics)", line)
        assert match, line
        url = match[1]
        _produce(config, node_id, codec.encode(_assignment(node_id, task_id)))
        task_events.wait_events(_finished(task_id))
        samples = _samples(url)
    finally:
        _stop_cli(proc)
    hardware = frozenset({("hardware", HARDWARE)})
    consumed = frozenset({("component", "executor"), ("topic", TOPIC)})
    completed = frozenset({("outcome", "completed"), ("hardware", HARDWARE)})
    assert samples[("streamsched_attempt_outcomes_total", completed)] == 1.0
    assert samples[("streamsched_assigned_to_started_seconds_count", hardware)] == 1.0
    assert samples[("streamsched_heartbeats_sent_total", hardware)] >= 1.0
    assert samples[("streamsched_events_consumed_total", consumed)] >= 1.0
    assert samples[("streamsched_executor_running_attempts", hardware)] == 0.0
    assert samples[("streamsched_consumer_lag_messages", consumed)] >= 0.0


def test_a_killed_executor_reports_its_attempt_lost_when_restarted(
    config: dict[str, Any], kafka_bootstrap: str, task_events: TopicReader, tmp_path: Path
) -> None:
    node_id, task_id = _uid("node"), _uid("task")
    code = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(60)"
    first = _cli_executor(node_id, tmp_path, kafka_bootstrap)
    try:
        _produce(config, node_id, codec.encode(_assignment(node_id, task_id, code)))
        task_events.wait_events(_seen(TaskStarted, task_id))
        log = tmp_path / f"{task_id}.1.log"
        deadline = time.monotonic() + WAIT_S
        while not (found := re.search(r"pid (\d+)", log.read_text())):
            assert time.monotonic() < deadline, "the task never printed its pid"
            time.sleep(0.02)
        pid = int(found[1])
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=20)
    # The task survived its executor (it runs in its own session).
    assert process_start_ticks(pid) is not None
    second = _cli_executor(node_id, tmp_path, kafka_bootstrap)
    try:
        events = task_events.wait_events(_seen(TaskLost, task_id))
        deadline = time.monotonic() + WAIT_S
        while process_start_ticks(pid) is not None:
            assert time.monotonic() < deadline, f"the orphaned task {pid} still runs"
            time.sleep(0.02)
    finally:
        stderr = _stop_cli(second)
    (lost,) = _of(events, TaskLost, task_id)
    assert (lost.attempt, lost.node_id, lost.reason) == (1, node_id, RESTART_REASON)
    assert len(_of(events, TaskStarted, task_id)) == 1  # not redelivered and run again
    assert f"{task_id} attempt 1: reporting it lost" in stderr


def test_cli_refuses_a_second_executor_on_the_same_journal(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    node_id = _uid("node")
    holder = AttemptJournal(journal_path(tmp_path, node_id))
    try:
        proc = _cli_executor(node_id, tmp_path, kafka_bootstrap)
        _, stderr = proc.communicate(timeout=30)
    finally:
        holder.close()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert "another executor process holds this attempt journal" in line


# ---------------------------------------------------------------------- reconciliation aids


def _beats(reader: TopicReader, node_id: str) -> list[NodeHeartbeat]:
    return [e for e in reader.events(NodeHeartbeat) if e.node_id == node_id]


def test_heartbeats_list_the_ended_attempt_and_the_sequence_seen_across_a_restart(
    config: dict[str, Any], task_events: TopicReader, tmp_path: Path
) -> None:
    node_id, task_id = _uid("node"), _uid("task")
    job = _assignment(node_id, task_id).model_copy(update={"sequence": 3})
    beats = TopicReader(config, topics.NODE_HEARTBEATS, timeout_s=WAIT_S)
    try:
        with running_agent(config, node_id, tmp_path):
            _produce(config, node_id, codec.encode(job))
            task_events.wait_events(_finished(task_id))
            beats.wait_events(
                lambda _: any(
                    [(r.task_id, r.attempt) for r in b.ended] == [(task_id, 1)]
                    for b in _beats(beats, node_id)
                )
            )
        with running_agent(config, node_id, tmp_path):  # same log dir: same journal
            beats.wait_events(
                lambda _: len([b for b in _beats(beats, node_id) if b.sequence == 0]) == 2
            )
    finally:
        beats.close()
    first_run = _beats(beats, node_id)
    first, restarted = [b for b in first_run if b.sequence == 0]
    assert first.assignments_seen is None  # nothing consumed yet, no journal before
    ended = next(b for b in first_run if b.ended)
    assert ended.running == ()
    assert ended.assignments_seen == 3
    # Once listed (running or ended), the attempt stays listed in the first run's beats.
    key = [(task_id, 1)]
    listed = [
        [(r.task_id, r.attempt) for r in (*b.running, *b.ended)] == key
        for b in first_run[: first_run.index(restarted)]
    ]
    assert listed[listed.index(True) :] == [True] * (len(listed) - listed.index(True))
    assert restarted.assignments_seen == 3  # from the journal, before anything new
    assert len(_of(task_events.events(), TaskStarted, task_id)) == 1


def test_an_assignment_and_its_cancel_read_together_never_start(
    config: dict[str, Any], tmp_path: Path
) -> None:
    node_id, task_id = _uid("node"), _uid("task")
    job = _assignment(node_id, task_id, "import time; time.sleep(60)")
    producer = Producer({**config, "linger.ms": 200})  # one record batch, read at once
    partition = partition_for(node_id, ASSIGNMENT_PARTITIONS)
    for value in (
        codec.encode(job.model_copy(update={"sequence": 1})),
        _stop(node_id, task_id, attempt=1, mode="cancel"),
    ):
        producer.produce(TOPIC, value, key=node_id.encode(), partition=partition)
    assert producer.flush(10) == 0
    beats = TopicReader(config, topics.NODE_HEARTBEATS, timeout_s=WAIT_S)
    try:
        with running_agent(config, node_id, tmp_path) as agent:
            beats.wait_events(
                lambda _: any(b.assignments_seen == 1 for b in _beats(beats, node_id))
            )
            assert agent.runner.running() == []
    finally:
        beats.close()
    assert not (tmp_path / f"{task_id}.1.log").exists()
