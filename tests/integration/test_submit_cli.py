"""``streamsched submit`` and ``streamsched cancel`` as real processes, against a placement
agent and an executor agent on a real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamsched.agents.executor import ExecutorAgent
from streamsched.agents.placement import PlacementAgent
from streamsched.broker import client_config
from streamsched.scheduler.model import NodeSpec
from streamsched.schemas import topics
from streamsched.schemas.lifecycle import TaskCancelled, TaskStarted
from streamsched.testing import TopicReader, running_in_thread

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

CLI = Path(sys.executable).parent / "streamsched"


@pytest.fixture
def cluster(kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """A placement agent and one executor (a node label only it has, so tasks that require
    the label go to it although the broker is shared with other tests)."""
    config = client_config(kafka_bootstrap)
    node_id = f"cli-{uuid.uuid4().hex[:8]}"
    placement = PlacementAgent(config, decision_prefix=uuid.uuid4().hex[:6])
    executor = ExecutorAgent(
        config,
        NodeSpec(node_id, "gpu-v100", 16_000, 65_536, 2, {"pool": node_id}),
        log_dir=tmp_path,
        heartbeat_interval_s=0.5,
    )
    with running_in_thread(placement.run), running_in_thread(executor.run):
        time.sleep(2.0)  # the executor registers with its first heartbeat
        yield config, node_id


def _cli(config: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": config["bootstrap.servers"]}
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_submit_waits_for_the_decision_and_cancel_stops_the_attempt(
    cluster: tuple[dict[str, Any], str],
) -> None:
    config, node_id = cluster
    task_id = f"t-{uuid.uuid4().hex[:8]}"
    done = _cli(
        config, "submit", "--task-id", task_id, "--type", "train", "--gpus", "1",
        "--hardware", "gpu-v100", "--tag", f"pool={node_id}", "--wait",
        "--", sys.executable, "-c", "import time; time.sleep(60)",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"submitted {task_id}" in done.stdout
    assert f"assigned to {node_id} (gpu-v100)" in done.stdout
    _wait_for(config, TaskStarted, task_id)
    stopped = _cli(config, "cancel", task_id, "--reason", "not needed any more")
    assert stopped.returncode == 0, stopped.stderr
    event = _wait_for(config, TaskCancelled, task_id)
    assert event.attempt == 1


def _wait_for(config: dict[str, Any], kind: type, task_id: str) -> Any:
    with TopicReader(config, topics.TASK_EVENTS, timeout_s=30) as reader:
        return reader.wait_event(kind, task_id)


def test_submit_refuses_bad_input_before_kafka(tmp_path: Path) -> None:
    bad = tmp_path / "task.json"
    bad.write_text(
        '{"task_id": "t-1", "idempotency_key": "k-1", "tenant": "vision", '
        '"task_type": "train", "resources": {"gpus": 2, "gpu_milli": 500}}'
    )
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    for args, message in [
        (["--gpus", "-1"], "field 'resources.gpus'"),
        (["--file", str(bad)], "field 'resources.gpu_milli'"),
        (["--file", str(tmp_path / "missing.json")], "No such file"),
        (["--tag", "no-equals"], "--tag 'no-equals': expected KEY=VALUE"),
    ]:
        done = subprocess.run(
            [str(CLI), "submit", *args], env=env, capture_output=True, text=True, timeout=30,
            check=False,
        )  # fmt: skip
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr
        assert "Traceback" not in done.stderr
