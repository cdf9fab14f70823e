"""Shadow mode on a real broker: a ``command.update_policy`` naming a shadow policy reaches
the placement agent, whose shadow decisions land on ``sched.decisions`` next to the real
ones and are never executed.

Uses the session's shared broker (``kafka_bootstrap``): fresh ids, a governance tag of its
own so no other test's node can take its tasks, and a final update that turns shadow mode
off again so agents of later tests that read the command topic end in the default state.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from streamsched.agents.executor import ExecutorAgent
from streamsched.agents.placement import PlacementAgent
from streamsched.broker import client_config
from streamsched.cli import app
from streamsched.scheduler.model import NodeSpec
from streamsched.schemas import codec, topics
from streamsched.schemas.commands import PolicyUpdate
from streamsched.schemas.decisions import Assignment, DecisionAudit
from streamsched.schemas.envelope import EventEnvelope
from streamsched.schemas.hardware import assignment_topic
from streamsched.schemas.lifecycle import TaskCompleted, TaskStarted
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.shadowreport import compare
from streamsched.testing import TopicReader, running_in_thread, wire_submission

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

HARDWARE = "gpu-v100"
WAIT_S = 30.0
TASKS = 4


@pytest.fixture
def config(kafka_bootstrap: str) -> dict[str, Any]:
    return client_config(kafka_bootstrap)


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _produce(config: dict[str, Any], topic: str, key: str, event: EventEnvelope) -> None:
    producer = Producer(config)
    producer.produce(topic, codec.encode(event), key=key.encode())
    assert producer.flush(10) == 0


def _update(shadow: str | None) -> PolicyUpdate:
    return PolicyUpdate(
        event_id=_uid("pol"),
        occurred_at=datetime.now(UTC),
        source="test",
        policy="forecast",
        shadow_policy=shadow,
    )


def _submission(task_id: str, tag: dict[str, str]) -> TaskSubmitted:
    return wire_submission(task_id, governance=tag, hardware=HARDWARE)


def test_shadow_decisions_are_audited_and_never_executed(
    config: dict[str, Any], tmp_path: Path
) -> None:
    tag = {"test_run": uuid.uuid4().hex[:10]}
    nodes = [NodeSpec(_uid("node"), HARDWARE, 64_000, 512 * 1024, 8, tag) for _ in range(2)]
    executors = [
        ExecutorAgent(config, n, log_dir=tmp_path / n.node_id, heartbeat_interval_s=0.5)
        for n in nodes
    ]
    task_ids = [_uid("task") for _ in range(TASKS)]
    agent = PlacementAgent(config, decision_prefix=_uid("d"), tick_s=0.2)
    with (
        running_in_thread(agent.run),
        running_in_thread(executors[0].run),
        running_in_thread(executors[1].run),
    ):
        deadline = time.monotonic() + WAIT_S
        while not all(n.node_id in agent.node_hardware for n in nodes):
            assert time.monotonic() < deadline, "no heartbeat reached the placement agent"
            time.sleep(0.05)
        # forecast packs (most-allocated breaks ties); least-loaded spreads.
        # Through the CLI, as a user would (`streamsched policy`).
        result = CliRunner().invoke(
            app,
            ["policy", "forecast", "--shadow", "least-loaded"],
            env={"KAFKA_BOOTSTRAP_SERVERS": config["bootstrap.servers"]},
        )
        assert result.exit_code == 0, result.output
        assert "policy update sent (policy forecast; shadow least-loaded" in result.output
        deadline = time.monotonic() + WAIT_S
        while agent.core.shadow_policy is None:
            assert time.monotonic() < deadline, "the policy update never took effect"
            time.sleep(0.05)
        try:
            for task_id in task_ids:
                _produce(config, topics.TASKS_SUBMITTED, task_id, _submission(task_id, tag))
            with TopicReader(config, topics.TASK_EVENTS, timeout_s=WAIT_S) as events:
                events.wait_events(lambda _: all(events.events(TaskCompleted, t) for t in task_ids))
                started = [e for t in task_ids for e in events.events(TaskStarted, t)]
                completed = [e for t in task_ids for e in events.events(TaskCompleted, t)]
            with TopicReader(config, topics.DECISIONS, timeout_s=WAIT_S) as decisions:
                decisions.wait_events(
                    lambda _: all(
                        {a.kind for a in decisions.events(DecisionAudit, t)} >= {"assign"}
                        for t in task_ids
                    )
                )
                decisions.drain(0.5)
                audits = [a for t in task_ids for a in decisions.events(DecisionAudit, t)]
        finally:
            _produce(config, topics.COMMANDS, "policy", _update(None))
            deadline = time.monotonic() + WAIT_S
            while agent.core.shadow_policy is not None and time.monotonic() < deadline:
                time.sleep(0.05)
        with TopicReader(config, assignment_topic(HARDWARE), timeout_s=WAIT_S) as assigned:
            assigned.wait_events(lambda _: all(assigned.events(Assignment, t) for t in task_ids))
            assigned.drain(0.5)  # anything more (a shadow decision would show up here)
            assignments = [a for t in task_ids for a in assigned.events(Assignment, t)]

    live = {a.task_id: a for a in audits if a.kind == "assign"}
    shadow = [a for a in audits if a.kind == "shadow"]
    assert set(live) == set(task_ids)
    assert shadow, "no shadow audit reached sched.decisions"
    assert {s.policy for s in shadow} == {"least-loaded"}
    assert {s.task_id for s in shadow} <= set(task_ids)
    for s in shadow:  # each next to a live decision of the same attempt
        assert s.attempt == live[s.task_id].attempt == 1
        if s.live_decision_id is not None:
            assert s.live_decision_id == live[s.task_id].decision_id
            assert s.live_node_id == live[s.task_id].chosen_node_id
    # Never executed: no assignment carries a shadow decision id; each task ran once, on
    # the live choice.
    shadow_ids = {s.decision_id for s in shadow}
    assert not shadow_ids & {a.decision_id for a in assignments}
    assert sorted(a.decision_id for a in assignments) == sorted(
        a.decision_id for a in live.values()
    )
    assert Counter(e.task_id for e in started) == Counter(task_ids)
    assert Counter(e.task_id for e in completed) == Counter(task_ids)
    for e in started:
        assert (e.attempt, e.node_id) == (1, live[e.task_id].chosen_node_id)
    # The report pairs every shadow decision with its live one.
    (row,) = compare([*audits, *completed])
    assert (row.shadow_policy, row.decisions, row.paired) == (
        "least-loaded",
        len(shadow),
        len(shadow),
    )
    assert row.finished == len(shadow)
