"""End to end: ``streamsched up`` on a small slice of the packaged trace. Every task ends in
exactly one terminal state, checked from the broker's own records after the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamsched.broker import EmbeddedBroker
from streamsched.schemas import codec, topics
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.lifecycle import (
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
)
from streamsched.schemas.tasks import TaskRejected, TaskSubmitted

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

CLI = Path(sys.executable).parent / "streamsched"
JOBS = 10


def _read_all(servers: str, topic: str) -> list[object]:
    """Every decodable record of ``topic``, from the beginning."""
    config = {"bootstrap.servers": servers}
    partitions = AdminClient(config).list_topics(topic, timeout=10).topics[topic].partitions
    consumer = Consumer({**config, "group.id": "test-up-audit", "enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        left, events = set(partitions), []
        while left:
            msg = consumer.poll(10)
            assert msg is not None, f"timed out reading {topic}"
            if msg.error() is not None:
                left.discard(msg.partition())
                continue
            events.append(codec.decode(msg.value()))
        return events
    finally:
        consumer.close()


def test_up_replays_a_small_trace_and_every_task_ends_once(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCHED_KAFKA_")}
    # Its own broker: `up` must not meet other tests' nodes and tasks.
    with EmbeddedBroker() as broker:
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
        argv = [str(CLI), "up", "--jobs", str(JOBS), "--duration-s", "15", "--warmup-s", "6"]
        argv += ["--report", str(report), "--run-dir", str(tmp_path / "run")]
        done = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=200,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        submitted = _read_all(broker.bootstrap_servers, topics.TASKS_SUBMITTED)
        lifecycle = _read_all(broker.bootstrap_servers, topics.TASK_EVENTS)
        decisions = _read_all(broker.bootstrap_servers, topics.DECISIONS)
    tasks = {e.task_id for e in submitted if isinstance(e, TaskSubmitted)}
    assert len(tasks) == JOBS
    terminal: dict[str, Counter[str]] = defaultdict(Counter)
    for event in lifecycle:
        final_failure = isinstance(event, TaskFailed) and not event.retryable
        if isinstance(event, TaskCompleted | TaskCancelled) or final_failure:
            terminal[event.task_id][event.type] += 1
    for event in decisions:
        if isinstance(event, TaskRejected) and event.task_id:
            terminal[event.task_id][event.type] += 1
    for task_id in tasks:
        assert sum(terminal[task_id].values()) == 1, (task_id, terminal[task_id])
    # Each started attempt was decided first, by an audit naming it.
    audited = {(e.task_id, e.attempt) for e in decisions if isinstance(e, DecisionAudit)}
    started = {(e.task_id, e.attempt) for e in lifecycle if isinstance(e, TaskStarted)}
    assert started <= audited
    # The report: the format of `simulate --json`, live and simulated.
    data = json.loads(report.read_text())
    assert set(data) == {"forecast-river", "forecast-river@simulated"}
    live = data["forecast-river"]
    assert live["meta"]["terminal"] == live["meta"]["tasks"] == JOBS
    assert live["meta"]["duplicate_completions"] == 0
    assert live["jobs"] + live["rejected"] == JOBS
    assert live["avg_jct_s"] > 0
    assert 0 <= live["meta"]["agreement"]["same_hardware"] <= JOBS
    assert "forecast-river (live)" in done.stdout
    assert "forecast-river (simulated)" in done.stdout


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_stops_up_and_every_component_cleanly(tmp_path: Path) -> None:
    """SIGINT (what Ctrl-C sends) mid-replay: `up` stops its components and its broker,
    prints the partial report and exits 1 (not every task ended); nothing is left."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    argv = [str(CLI), "up", "--duration-s", "120", "--warmup-s", "6", "--run-dir", str(tmp_path)]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the replay runs
            if "executors registered" in line:
                break
        time.sleep(3.0)
        family = _descendants(proc.pid)
        assert len(family) >= 10  # broker, processor, placement, 8 executors (and helpers)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "forecast-river (live)" in out
    assert "(interrupted)" in out
    left = [pid for pid in family if _alive(pid)]
    assert left == [], f"processes left behind: {left}"
