"""A live cluster run by hand through the CLI, as real processes: ``streamsched broker``,
``streamsched placement`` and ``streamsched executor``; a task submitted over Kafka runs
to completion."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streamsched.schemas import codec, topics
from streamsched.schemas.lifecycle import TaskCompleted
from streamsched.schemas.tasks import TaskResources, TaskSubmitted
from streamsched.testing import TopicReader

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

CLI = Path(sys.executable).parent / "streamsched"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    return {**env, **extra}


@contextmanager
def process(*args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """A CLI process, stopped with SIGTERM at the end; it must exit 0 within 20 s."""
    proc = subprocess.Popen(
        [str(CLI), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert code == 0, f"{args[0]} exited {code}: {proc.stderr.read() if proc.stderr else ''}"


def _first_line(proc: subprocess.Popen[str], timeout_s: float = 20.0) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    assert sel.select(timeout_s), "no output from the process"
    return proc.stdout.readline().strip()


def test_a_cluster_run_by_hand_completes_a_task(tmp_path: Path) -> None:
    with process("broker", env=_env()) as broker:
        line = _first_line(broker)
        assert line.startswith("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:")
        servers = line.split("=", 1)[1]
        config = {"bootstrap.servers": servers}
        assert topics.TASKS_SUBMITTED in AdminClient(config).list_topics(timeout=10).topics
        env = _env(KAFKA_BOOTSTRAP_SERVERS=servers)
        node_id, task_id = f"hand-{uuid.uuid4().hex[:6]}", f"task-{uuid.uuid4().hex[:6]}"
        with (
            process("placement", env=env),
            process(
                "executor",
                "--node-id",
                node_id,
                "--hardware",
                "v100",
                "--gpus",
                "2",
                "--cpus",
                "16",
                "--memory",
                "64GiB",
                "--log-dir",
                str(tmp_path),
                "--heartbeat-s",
                "0.5",
                env=env,
            ),  # fmt: skip
        ):
            time.sleep(2.0)  # the executor registers with its first heartbeat
            task = TaskSubmitted(
                occurred_at=datetime.now(UTC),
                source="test",
                task_id=task_id,
                idempotency_key=task_id,
                tenant="vision",
                task_type="train",
                resources=TaskResources(gpus=1),
                command=(sys.executable, "-c", "print('done by hand')"),
            )
            producer = Producer(config)
            producer.produce(topics.TASKS_SUBMITTED, codec.encode(task), key=task_id.encode())
            assert producer.flush(10) == 0
            assert _completed(config, task_id).exit_code == 0
    assert "done by hand" in (tmp_path / f"{task_id}.1.log").read_text()


def _completed(config: dict[str, str], task_id: str) -> TaskCompleted:
    with TopicReader(config, topics.TASK_EVENTS, timeout_s=40) as reader:
        event: TaskCompleted = reader.wait_event(TaskCompleted, task_id)
        return event


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["placement"], "the placement agent joins an existing broker"),
        (["placement", "--policy", "oracle"], "--policy 'oracle': not a live policy"),
        (["broker", "--port", "0"], "--port"),
    ],
)
def test_live_commands_explain_bad_input(args: list[str], message: str) -> None:
    done = subprocess.run(
        [str(CLI), *args], env=_env(), capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
