"""Warm restart of the stream processor's models on a real broker: a processor learns
from completions, checkpoints to ``sched.models``, is stopped; a new processor (same app
id) restores the newest valid checkpoint (a corrupt newer record is skipped with its
reason) and predicts exactly as the old one did.

The broker is shared with the other tests of the session: ids are fresh, and assertions
about ``sched.models`` only concern records this test wrote or the newest checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

from streamsched.broker import client_config, free_port
from streamsched.cli.live import warm_forecaster
from streamsched.client import Client
from streamsched.scheduler.checkpoint import read_header
from streamsched.schemas import topics
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.lifecycle import TaskCompleted, TaskStarted
from streamsched.streams.models import RUNTIME_MODEL, VERSION_HEADER
from streamsched.testing import TopicReader

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

CLI = Path(sys.executable).parent / "streamsched"
UID = uuid.uuid4().hex[:8]
APP_ID = f"models-test-{UID}"
HW = "gpu-v100"
TASKS = 12
T = TypeVar("T")


def _wait(what: str, probe: Callable[[], T | None], timeout_s: float = 60.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.loads(answer.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


class ProcessorRun:
    """``streamsched processor`` as a subprocess."""

    def __init__(self, servers: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": servers}
        # Output to files, not pipes: the processor logs a line per bad record in the
        # shared topics' history and must never block on a full pipe.
        self._out = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by stop)
        self._err = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            [str(CLI), "processor", "--web-port", str(self.port), "--app-id", APP_ID,
             "--checkpoint-every", "5", "--checkpoint-interval", "3600",
             "--loglevel", "warning"],
            env=env, stdout=self._out, stderr=self._err, text=True,
        )  # fmt: skip
        _wait("the status view", lambda: _get(f"{self.url}/models"), timeout_s=90)

    def models(self) -> dict[str, Any]:
        view: dict[str, Any] | None = _get(f"{self.url}/models")
        assert view is not None
        return view

    def predict(self, task_id: str) -> dict[str, Any] | None:
        return _get(f"{self.url}/models/predict?task_id={task_id}&hardware={HW}")  # type: ignore[no-any-return]

    def stop(self) -> tuple[str, str]:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        out, err = (_read(f) for f in (self._out, self._err))
        assert self.proc.returncode == 0, err[-3000:]
        return out, err


def _read(file: IO[str]) -> str:
    file.seek(0)
    text = file.read()
    file.close()
    return text


def _env() -> dict[str, Any]:
    return {"occurred_at": datetime.now(UTC), "source": "test"}


def _feed(client: Client, i: int) -> str:
    task_id = f"m-{UID}-{i}"
    steps = (100, 200, 400)[i % 3]
    client.submit(
        task_id=task_id, tenant="vision", task_type=f"train-{UID}",
        declared_work={"steps": steps}, resources={"gpus": 1},
        governance={"pool": f"nowhere-{UID}"},  # no placement agent may run it
    )  # fmt: skip
    client.send(
        topics.DECISIONS,
        task_id,
        DecisionAudit(
            **_env(), decision_id=f"d-{task_id}", stimulus_id="s", task_id=task_id, attempt=1,
            policy="forecast", policy_version="1", model_version="m", decided_at_s=1.0,
            chosen_node_id="v100-1", chosen_hardware=HW, predicted_runtime_s=10.0,
            reason="test",
        ),
    )  # fmt: skip
    attempt = {"task_id": task_id, "attempt": 1, "node_id": "v100-1"}
    client.send(topics.TASK_EVENTS, task_id, TaskStarted(**_env(), **attempt))
    runtime = steps * 0.5 * (1.0 + 0.05 * (i % 4))
    client.send(topics.TASK_EVENTS, task_id, TaskCompleted(**_env(), **attempt, runtime_s=runtime))
    return task_id


def _newest_runtime_checkpoint(servers: str) -> tuple[int, bytes]:
    """(checkpoint version, bytes) of the newest runtime checkpoint on sched.models."""
    with TopicReader(client_config(servers), topics.MODELS, timeout_s=30) as reader:
        reader.drain(1.0)
        ours = [
            (int(h[VERSION_HEADER]), value)
            for value, h in reader.records
            if h.get("type") == "model.checkpoint"
            and read_header(value).model_name == RUNTIME_MODEL
        ]
    assert ours, "no runtime checkpoint on sched.models"
    return max(ours, key=lambda item: (read_header(item[1]).created_at_s, item[0]))


def test_models_survive_a_processor_restart_and_a_corrupt_checkpoint_is_skipped(
    kafka_bootstrap: str,
) -> None:
    first = ProcessorRun(kafka_bootstrap)
    try:
        with Client(kafka_bootstrap, first.url) as client:
            ids = [_feed(client, i) for i in range(TASKS)]

        def learned_ours() -> dict[str, Any] | None:
            v = first.models()
            seen = {e["task_id"] for e in v["ring"]}
            done = v["models"][RUNTIME_MODEL]["last_checkpoint"] is not None
            return v if set(ids) <= seen and done else None

        view = _wait("the first processor to learn every completion and checkpoint", learned_ours)
        # The broker is shared by the session: earlier tests' completions count too.
        assert view["learned"] >= TASKS
        assert view["errors"]["count"] == view["learned"]
        assert sorted(e["task_id"] for e in view["ring"] if e["task_id"] in ids) == sorted(ids)
        before = {t: first.predict(t) for t in ids[:3]}
        assert all(p is not None for p in before.values())
    finally:
        first.stop()

    version, newest = _newest_runtime_checkpoint(kafka_bootstrap)
    assert version >= 2  # every 5 completions, and on stop
    assert read_header(newest).model_version == view["models"][RUNTIME_MODEL]["model_version"]

    # The placement agent warm-starts its learned runtime model from that checkpoint.
    warm = warm_forecaster(client_config(kafka_bootstrap), "forecast-river")
    assert warm is not None
    assert warm.version == read_header(newest).model_version
    assert warm_forecaster(client_config(kafka_bootstrap), "forecast") is None  # no model

    # A newer record that is corrupt (one payload byte flipped): must be skipped, not loaded.
    corrupt = bytearray(newest)
    corrupt[-20] ^= 0xFF
    with Client(kafka_bootstrap) as client:
        producer = client._get_producer()
        producer.produce(
            topics.MODELS,
            key=RUNTIME_MODEL.encode(),
            value=bytes(corrupt),
            headers=[("type", b"model.checkpoint"), (VERSION_HEADER, str(version + 1).encode())],
        )
        producer.flush(10)

    second = ProcessorRun(kafka_bootstrap)
    try:
        view = second.models()
        runtime = view["models"][RUNTIME_MODEL]
        assert runtime["restored_from"] != "cold"
        assert runtime["restored_from"]["checkpoint_version"] == version
        assert runtime["model_version"] == read_header(newest).model_version
        assert any(
            s["model"] == RUNTIME_MODEL and s["reason"] == "checksum"
            for s in view["skipped_checkpoints"]
        )
        for task_id, old in before.items():
            new = _wait(f"{task_id} in the restored tables", lambda t=task_id: second.predict(t))  # type: ignore[misc]
            assert new == old
        assert second.models()["learned"] == 0  # nothing was learned twice
    finally:
        _out, err = second.stop()
    assert "skipping checkpoint of model river-linear+drift" in err
    assert "checksum" in err
