"""Interoperability with a real third-party Kafka client: kcat (Debian package ``kcat``,
installed by ``.ci/run``) produces a node heartbeat and a JSON task, streamsched schedules
the task, and kcat reads the assignment back from the hardware topic.

Debian's kcat 1.7.1 links Debian's librdkafka 2.0.2, which misreads the tagged fields at
the end of the embedded Tansu broker's ApiVersions v3 response ("Protocol read buffer
underflow for ApiVersion v3"); newer librdkafka reads it, and Apache Kafka does not send
those fields. So kcat runs here on the newer librdkafka that the confluent-kafka wheel
bundles (librdkafka keeps a stable C ABI): kcat itself, its command line, producer and
consumer, is unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streamsched.agents.partitioning import ASSIGNMENT_PARTITIONS, partition_for
from streamsched.agents.placement import PlacementAgent
from streamsched.broker import client_config
from streamsched.schemas import topics
from streamsched.testing import running_in_thread

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

KCAT = shutil.which("kcat")


@pytest.fixture(scope="module")
def kcat() -> str:
    if KCAT is None:
        if os.environ.get("CI"):
            pytest.fail("kcat is not installed; .ci/run installs the Debian package kcat")
        pytest.skip("kcat is not installed (apt-get install kcat)")
    return KCAT


@pytest.fixture(scope="module")
def kcat_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment kcat runs in: with the bundled librdkafka first on the library
    path (see the module docstring), if the wheel bundles one."""
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    bundled = sorted(libs.glob("librdkafka*.so*")) if libs.is_dir() else []
    if not bundled:
        return dict(os.environ)
    lib_dir = tmp_path_factory.mktemp("librdkafka")
    (lib_dir / "librdkafka.so.1").symlink_to(bundled[0])
    old = os.environ.get("LD_LIBRARY_PATH")
    path = f"{lib_dir}:{old}" if old else str(lib_dir)
    return {**os.environ, "LD_LIBRARY_PATH": path}


@pytest.fixture
def placement(kafka_bootstrap: str) -> Iterator[PlacementAgent]:
    agent = PlacementAgent(client_config(kafka_bootstrap), decision_prefix=uuid.uuid4().hex[:6])
    with running_in_thread(agent.run):
        yield agent


def _produce(
    kcat: str, env: dict[str, str], bootstrap: str, topic: str, key: str, event: dict[str, object]
) -> None:
    done = subprocess.run(
        [kcat, "-P", "-b", bootstrap, "-t", topic, "-k", key],
        input=json.dumps(event).encode(),
        capture_output=True,
        timeout=20,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-1000:]


def _envelope(kind: str) -> dict[str, object]:
    return {
        "type": kind,
        "schema_version": 1,
        "event_id": uuid.uuid4().hex,
        "occurred_at": datetime.now(UTC).isoformat(),
        "source": "kcat",
    }


def test_kcat_submits_a_task_and_reads_its_assignment(
    kcat: str, kcat_env: dict[str, str], kafka_bootstrap: str, placement: PlacementAgent
) -> None:
    node_id, task_id = f"kcat-node-{uuid.uuid4().hex[:8]}", f"kcat-task-{uuid.uuid4().hex[:8]}"
    capacity = {"cpu_milli": 64000, "memory_mib": 524288, "gpus": 8}
    heartbeat = {
        **_envelope("node.heartbeat"),
        "node_id": node_id,
        "hardware": "gpu-v100",
        "capacity": capacity,
        "usage": {"cpu_milli": 0, "memory_mib": 0, "gpus": 0},
        "running": [],
        # The broker and its topics are shared with other tests' nodes: a label only this
        # node has, required by the task, makes the placement deterministic.
        "labels": {"pool": node_id},
        "sequence": 0,
    }
    task = {
        **_envelope("task.submitted"),
        "task_id": task_id,
        "idempotency_key": task_id,
        "tenant": "vision",
        "task_type": "train-resnet50",
        "resources": {"gpus": 1, "allowed_hardware": ["gpu-v100"]},
        "governance": {"pool": node_id},
        "command": ["python3", "-c", "print('trained')"],
    }
    _produce(kcat, kcat_env, kafka_bootstrap, topics.NODE_HEARTBEATS, node_id, heartbeat)
    time.sleep(1.0)  # let the node register before the task arrives
    _produce(kcat, kcat_env, kafka_bootstrap, topics.TASKS_SUBMITTED, task_id, task)

    topic = topics.assignment_topic("gpu-v100")
    partition = partition_for(node_id, ASSIGNMENT_PARTITIONS)
    deadline = time.monotonic() + 30
    found = None
    while found is None and time.monotonic() < deadline:
        out = subprocess.run(
            [
                kcat,
                "-C",
                "-b",
                kafka_bootstrap,
                "-t",
                topic,
                "-p",
                str(partition),
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%k\t%s\n",
            ],
            capture_output=True,
            timeout=20,
            env=kcat_env,
            check=False,
        )
        for line in out.stdout.decode().splitlines():
            key, _, value = line.partition("\t")
            if key == node_id and json.loads(value).get("task_id") == task_id:
                found = json.loads(value)
        if found is None:
            time.sleep(0.5)
    assert found is not None, "kcat never saw the assignment on its node's partition"
    assert found["type"] == "task.assigned"
    assert (found["node_id"], found["hardware"], found["attempt"]) == (node_id, "gpu-v100", 1)
    assert found["command"] == ["python3", "-c", "print('trained')"]
    assert len(found["gpu_indices"]) == 1
