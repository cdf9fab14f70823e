"""A placement agent SIGKILLed mid-run restarts from its journal: no task is forgotten and
no attempt is assigned twice. Everything is real: the broker fixture, the placement agent
and the executors run as ``streamsched`` subprocesses, and the two placement processes
run under different hash seeds (a replay must not depend on set iteration order)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from streamsched.agents.placement_journal import journal_topic, read_journal
from streamsched.broker import client_config
from streamsched.schemas import codec, topics
from streamsched.schemas.decisions import Assignment
from streamsched.schemas.lifecycle import TaskCompleted
from streamsched.testing import (
    TopicReader,
    cli_executor,
    spawn_cli,
    stop_process,
    wire_submission,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

SCRIPT = Path(sys.executable).with_name("streamsched")
TASKS = 24
#: Each task sleeps this long: with 2 nodes x 2 GPUs, tasks queue and some run when the
#: agent is killed.
TASK_S = 0.8


def _placement(prefix: str, servers: str, log: Path, hash_seed: str) -> subprocess.Popen[str]:
    args = ["placement", "--decision-prefix", prefix, "--policy", "fifo", "--no-warm-start"]
    return spawn_cli(args, servers, log, PYTHONHASHSEED=hash_seed)


def test_a_killed_placement_agent_restarts_from_its_journal(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    config = client_config(kafka_bootstrap)
    label = uuid.uuid4().hex[:10]
    prefix = f"r{label[:6]}"
    task_ids = [f"restart-{label}-{i:02d}" for i in range(TASKS)]
    command = [sys.executable, "-c", f"import time; time.sleep({TASK_S})"]
    procs = [
        cli_executor(f"node-{label}-{n}", label, kafka_bootstrap, tmp_path, gpus=2)
        for n in range(2)
    ]
    first = _placement(prefix, kafka_bootstrap, tmp_path / "placement-1.log", "1")
    procs.append(first)
    second: subprocess.Popen[str] | None = None
    try:
        producer = Producer(config)
        for task_id in task_ids:
            event = wire_submission(task_id, governance={"test_run": label}, command=command)
            producer.produce(topics.TASKS_SUBMITTED, codec.encode(event), key=task_id.encode())
        assert producer.flush(10) == 0
        with TopicReader(config, topics.TASK_EVENTS, timeout_s=120) as events:
            # Kill the agent once some tasks completed (the rest queued or running).
            events.wait_events(
                lambda _: (
                    len({e.task_id for e in events.events(TaskCompleted)} & set(task_ids)) >= 6
                )
            )
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            done_before = {e.task_id for e in events.events(TaskCompleted)} & set(task_ids)
            assert len(done_before) < TASKS, "every task finished before the kill"
            second = _placement(prefix, kafka_bootstrap, tmp_path / "placement-2.log", "2")
            procs.append(second)
            events.wait_events(
                lambda _: {e.task_id for e in events.events(TaskCompleted)} >= set(task_ids)
            )
            events.drain(2.0)  # a duplicate completion would arrive by now
            completions = Counter(
                e.task_id for e in events.events(TaskCompleted) if e.task_id in set(task_ids)
            )
        log = (tmp_path / "placement-2.log").read_text()
        assert "restored from" in log, log[-3000:]
        assert "diverged" not in log.replace("0 diverged", ""), log[-3000:]
        assert set(completions) == set(task_ids)
        assert max(completions.values()) == 1, completions
        # No attempt was given to two nodes, and no task needed a second attempt: the
        # restarted agent knew what was running where.
        assignment_topic = "sched.assignments.gpu-v100"
        with TopicReader(config, assignment_topic) as reader:
            reader.drain(2.0)
            placed: dict[tuple[str, int], set[str]] = {}
            for a in reader.events(Assignment):
                if a.task_id in set(task_ids):
                    placed.setdefault((a.task_id, a.attempt), set()).add(a.node_id)
        assert all(len(nodes) == 1 for nodes in placed.values()), placed
        assert {attempt for _, attempt in placed} == {1}, sorted(placed)
        journal = read_journal(config, journal_topic(prefix))
        assert journal.header is not None
        assert journal.header.decision_prefix == prefix
        assert sum(e.resume for e in journal.entries) == 1
    finally:
        for proc in procs:
            stop_process(proc)


def test_a_restart_under_another_policy_is_refused_with_the_difference(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"p{uuid.uuid4().hex[:6]}"
    first = _placement(prefix, kafka_bootstrap, tmp_path / "first.log", "0")
    try:
        config: dict[str, Any] = client_config(kafka_bootstrap)
        deadline = time.monotonic() + 60
        while read_journal(config, journal_topic(prefix)).header is None:
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-2000:]
            time.sleep(0.2)
    finally:
        stop_process(first)
    again = subprocess.run(
        [str(SCRIPT), "placement", "--decision-prefix", prefix, "--policy", "best-fit",
         "--no-warm-start"],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode != 0
    assert "Traceback" not in again.stderr
    assert "policy: journal 'fifo', this agent 'best-fit'" in again.stderr, again.stderr


def test_a_restart_loads_the_newest_snapshot_and_replays_only_what_followed(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamsched.agents import placement as placement_module
    from streamsched.agents.executor import ExecutorAgent
    from streamsched.agents.placement import PlacementAgent
    from streamsched.scheduler.model import NodeSpec
    from streamsched.testing import running_in_thread

    monkeypatch.setattr(placement_module, "SNAPSHOT_AFTER_WORK_S", 0.0)  # after every batch
    config = client_config(kafka_bootstrap)
    label = uuid.uuid4().hex[:10]
    prefix = f"s{label[:6]}"
    node = NodeSpec(f"node-{label}", "gpu-v100", 64_000, 512 * 1024, 8, {"test_run": label})
    beat = ExecutorAgent(config, node, log_dir=tmp_path).heartbeat()
    producer = Producer(config)
    producer.produce(topics.NODE_HEARTBEATS, codec.encode(beat), key=node.node_id.encode())
    task_ids = [f"snap-{label}-{i:02d}" for i in range(10)]
    for task_id in task_ids:
        event = wire_submission(task_id, governance={"test_run": label})
        producer.produce(topics.TASKS_SUBMITTED, codec.encode(event), key=task_id.encode())
    assert producer.flush(10) == 0

    def view(agent: PlacementAgent) -> dict[str, tuple[str, int, str | None]]:
        tasks = agent.core.tasks
        return {
            t: (str(tasks[t].state), tasks[t].attempt, tasks[t].node_id)
            for t in task_ids
            if t in tasks
        }

    first = PlacementAgent(config, decision_prefix=prefix, tick_s=0.2)
    with running_in_thread(first.run):
        deadline = time.monotonic() + 60
        while (
            len(view(first)) < len(task_ids) or sum(a == 1 for _, a, _ in view(first).values()) < 8
        ):  # eight one-GPU tasks fit the node, two wait
            assert time.monotonic() < deadline, view(first)
            time.sleep(0.1)
        time.sleep(1.0)  # a few idle ticks, snapshotted too
    before = view(first)
    journal = read_journal(config, journal_topic(prefix))
    assert journal.snapshot is not None
    assert journal.skipped > 0  # entries before the snapshot are not replayed
    second = PlacementAgent(config, decision_prefix=prefix, tick_s=0.2)
    with running_in_thread(second.run):
        deadline = time.monotonic() + 60
        while second.restore.tasks == 0:
            assert time.monotonic() < deadline, "the second agent did not restore"
            time.sleep(0.1)
    assert second.restore.snapshot_seq == journal.snapshot.seq
    assert second.restore.entries < journal.skipped + len(journal.entries)
    assert second.restore.divergences == 0
    assert view(second) == before
    assert second.submissions.keys() >= {t for t, (state, _, _) in before.items()
                                          if state != "succeeded"}  # fmt: skip
