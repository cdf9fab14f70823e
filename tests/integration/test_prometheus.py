"""Monitoring against a real Prometheus server (Debian package ``prometheus``, installed by
.ci/run): it scrapes a live placement agent and executor, evaluates the project's rules, and
every query of the packaged Grafana dashboard runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from streamsched.broker import free_port
from streamsched.schemas import codec, topics
from streamsched.schemas.lifecycle import TaskCompleted
from streamsched.schemas.tasks import TaskResources, TaskSubmitted
from streamsched.testing import TopicReader

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

CLI = Path(sys.executable).parent / "streamsched"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = shutil.which("prometheus")


@contextmanager
def _process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _wait_for(what: str, check: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # Prometheus still starting
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _value(base: str, query: str) -> float:
    result = _api(base, "query", query=query)["data"]["result"]
    return sum(float(r["value"][1]) for r in result)


@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus server is not installed")
def test_the_packaged_prometheus_configuration_is_valid() -> None:
    promtool = Path(str(PROMETHEUS)).with_name("promtool")
    done = subprocess.run(
        [str(promtool), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus server is not installed")
def test_prometheus_scrapes_the_live_components(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    ports = {"placement": free_port(), "executor": free_port()}
    node_id, task_id = f"prom-{uuid.uuid4().hex[:6]}", f"prom-task-{uuid.uuid4().hex[:6]}"
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "streamsched.json").write_text(
        json.dumps(
            [
                {"targets": [f"127.0.0.1:{port}"], "labels": {"component": name}}
                for name, port in ports.items()
            ]
        )
    )
    # deploy/prometheus/prometheus.yml, with 1 s intervals and absolute paths (JSON is YAML).
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "rules.yml")],
        "scrape_configs": [
            {
                "job_name": "streamsched",
                "file_sd_configs": [{"files": [str(targets / "*.json")], "refresh_interval": "1s"}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    web = free_port()
    base = f"http://127.0.0.1:{web}"
    placement = [str(CLI), "placement", "--metrics-port", str(ports["placement"])]
    executor = [str(CLI), "executor", "--node-id", node_id, "--hardware", "v100", "--gpus", "1",
                "--cpus", "8", "--memory", "16GiB", "--log-dir", str(tmp_path / "attempts"),
                "--heartbeat-s", "0.5", "--metrics-port", str(ports["executor"])]  # fmt: skip
    prometheus = [
        str(PROMETHEUS),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{web}",
    ]
    with (
        _process(placement, env, tmp_path / "placement.log"),
        _process(executor, env, tmp_path / "executor.log"),
        _process(prometheus, env, tmp_path / "prometheus.log"),
    ):
        _wait_for(
            "both targets up",
            lambda: _value(base, 'sum(up{job="streamsched"})') == 2,
        )
        task = TaskSubmitted(
            occurred_at=datetime.now(UTC),
            source="test",
            task_id=task_id,
            idempotency_key=task_id,
            tenant="vision",
            task_type="train",
            resources=TaskResources(gpus=1),
            command=(sys.executable, "-c", "print('monitored')"),
        )
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(topics.TASKS_SUBMITTED, codec.encode(task), key=task_id.encode())
        assert producer.flush(10) == 0
        with TopicReader({"bootstrap.servers": kafka_bootstrap}, topics.TASK_EVENTS, 60) as r:
            r.wait_event(TaskCompleted, task_id)
        # What Prometheus scraped from the two processes:
        _wait_for(
            "the assignment counted",
            lambda: _value(base, 'sum(streamsched_assignments_total{hardware="gpu-v100"})') >= 1,
        )
        _wait_for(
            "the completed attempt counted",
            lambda: (
                _value(base, 'sum(streamsched_attempt_outcomes_total{outcome="completed"})') >= 1
            ),
        )
        assert _value(base, "sum(streamsched_submit_to_assigned_seconds_count)") >= 1
        assert _value(base, "sum(streamsched_decision_latency_seconds_count)") >= 1
        # The project's rules loaded and evaluate without errors.
        groups = _api(base, "rules")["data"]["groups"]
        assert {g["name"] for g in groups} == {"streamsched.recording", "streamsched.alerts"}
        for group in groups:
            for rule in group["rules"]:
                assert rule["health"] != "err", rule
        # Every query of the Grafana dashboard is valid PromQL on this server.
        dashboard = json.loads((DEPLOY / "grafana" / "streamsched-dashboard.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                assert _api(base, "query", query=target["expr"])["status"] == "success", target
