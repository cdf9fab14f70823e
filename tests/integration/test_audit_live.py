"""The audit trail on a real broker: a placement agent and one executor run a task, a
cancel stops another, a cancel of an unknown task is refused, a policy update is applied
and a bad one refused; every outcome is on ``sched.decisions`` with who and why, and
``streamsched audit`` tells each task's story in order.

Uses the session's shared broker (``kafka_bootstrap``): fresh ids, a governance tag of its
own so no other test's node can take its tasks, and a final update back to the agent's
default policy so agents of later tests that read the command topic end in the default
state.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
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
from streamsched.schemas.decisions import CancelOutcome, PolicyChanged, TaskEnded
from streamsched.schemas.envelope import EventEnvelope
from streamsched.schemas.lifecycle import TaskStarted
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.testing import TopicReader, running_in_thread, wire_submission

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(150)]

HARDWARE = "gpu-v100"
WAIT_S = 30.0
DEFAULT_POLICY = "forecast-river"  # the agent's default (restored at the end)


@pytest.fixture
def config(kafka_bootstrap: str) -> dict[str, Any]:
    return client_config(kafka_bootstrap)


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _produce(config: dict[str, Any], topic: str, key: str, event: EventEnvelope) -> None:
    producer = Producer(config)
    producer.produce(topic, codec.encode(event), key=key.encode())
    assert producer.flush(10) == 0


def _submission(task_id: str, tag: dict[str, str], code: str) -> TaskSubmitted:
    command = (sys.executable, "-c", code)
    return wire_submission(task_id, governance=tag, command=command, hardware=HARDWARE)


def _cli(config: dict[str, Any], *args: str) -> str:
    result = CliRunner().invoke(
        app, list(args), env={"KAFKA_BOOTSTRAP_SERVERS": config["bootstrap.servers"]}
    )
    assert result.exit_code == 0, result.output
    return result.output


def _story(config: dict[str, Any], task_id: str) -> dict[str, Any]:
    story: dict[str, Any] = json.loads(_cli(config, "audit", task_id, "--json"))
    return story


def _first(whats: list[str], what: str) -> int:
    assert what in whats, f"{what!r} missing from {whats}"
    return whats.index(what)


def test_every_outcome_is_audited_and_the_cli_tells_the_story(
    config: dict[str, Any], tmp_path: Path
) -> None:
    tag = {"test_run": uuid.uuid4().hex[:10]}
    node = NodeSpec(_uid("node"), HARDWARE, 64_000, 512 * 1024, 8, tag)
    executor = ExecutorAgent(config, node, log_dir=tmp_path, heartbeat_interval_s=0.5)
    agent = PlacementAgent(config, decision_prefix=_uid("d"), tick_s=0.2)
    done, cancelled, unknown = _uid("done"), _uid("cancelled"), _uid("unknown")
    bad_update = PolicyUpdate(
        event_id=_uid("pol-bad"),
        occurred_at=datetime.now(UTC),
        source="ops-mallory",
        policy="no-such-policy",
    )
    with running_in_thread(agent.run), running_in_thread(executor.run):
        deadline = time.monotonic() + WAIT_S
        while node.node_id not in agent.node_hardware:
            assert time.monotonic() < deadline, "no heartbeat reached the placement agent"
            time.sleep(0.05)
        try:
            _cli(config, "policy", "forecast")  # accepted (source "cli")
            _produce(config, topics.COMMANDS, "policy", bad_update)  # refused
            _produce(config, topics.TASKS_SUBMITTED, done, _submission(done, tag, "print('ok')"))
            _produce(
                config,
                topics.TASKS_SUBMITTED,
                cancelled,
                _submission(cancelled, tag, "import time; time.sleep(60)"),
            )
            with TopicReader(config, topics.TASK_EVENTS, timeout_s=WAIT_S) as events:
                events.wait_events(lambda _: bool(events.events(TaskStarted, cancelled)))
            _cli(config, "cancel", cancelled, "--tenant", "team-a", "--reason", "not needed")
            _cli(config, "cancel", unknown, "--tenant", "team-b", "--reason", "typo")
            with TopicReader(config, topics.DECISIONS, timeout_s=WAIT_S) as decisions:
                decisions.wait_events(
                    lambda _: bool(
                        decisions.events(TaskEnded, done)
                        and decisions.events(TaskEnded, cancelled)
                        and decisions.events(CancelOutcome, unknown)
                        and any(
                            c.request_event_id == bad_update.event_id
                            for c in decisions.events(PolicyChanged)
                        )
                    )
                )
                outcomes = {c.task_id: c for c in decisions.events(CancelOutcome)}
                policy = list(decisions.events(PolicyChanged))
        finally:
            _produce(
                config,
                topics.COMMANDS,
                "policy",
                PolicyUpdate(
                    event_id=_uid("pol-reset"),
                    occurred_at=datetime.now(UTC),
                    source="test",
                    policy=DEFAULT_POLICY,
                ),
            )
            deadline = time.monotonic() + WAIT_S
            while agent.core.policy.name != DEFAULT_POLICY and time.monotonic() < deadline:
                time.sleep(0.05)

    # The cancel outcomes name who asked, why, and what the scheduler did.
    accepted, refused = outcomes[cancelled], outcomes[unknown]
    assert (accepted.accepted, accepted.requested_by, accepted.reason) == (
        True,
        "team-a",
        "not needed",
    )
    assert "stopped" in accepted.outcome
    assert (refused.accepted, refused.requested_by) == (False, "team-b")
    assert "no record" in refused.outcome
    # The policy outcomes name the update's source and say why.
    (bad,) = [c for c in policy if c.request_event_id == bad_update.event_id]
    assert (bad.accepted, bad.requested_by, bad.policy) == (False, "ops-mallory", "no-such-policy")
    assert "no-such-policy" in bad.reason
    good = [c for c in policy if c.accepted and c.requested_by == "cli" and c.policy == "forecast"]
    assert good, policy
    assert good[-1].reason

    # `streamsched audit` tells each task's story, in order.
    story = _story(config, done)
    whats = [e["what"] for e in story["entries"]]
    assert story["verdict"] == "succeeded"
    assert (
        _first(whats, "submitted")
        < _first(whats, "decision")
        < _first(whats, "started")
        < _first(whats, "completed")
    )
    assert _first(whats, "decision") < _first(whats, "ended")
    decision = story["entries"][_first(whats, "decision")]
    assert decision["decision_id"].startswith(agent.core.config.decision_prefix)
    assert "predicted runtime" in decision["why"]

    story = _story(config, cancelled)
    whats = [e["what"] for e in story["entries"]]
    assert story["verdict"] == "cancelled"
    assert (
        _first(whats, "submitted")
        < _first(whats, "decision")
        < _first(whats, "started")
        < _first(whats, "cancel requested")
        < _first(whats, "cancel accepted")
        <= _first(whats, "ended")
    )
    asked = story["entries"][_first(whats, "cancel requested")]
    assert (asked["who"], asked["why"]) == ("team-a", "not needed")

    # A task nobody submitted: one error line naming the topic, exit code 2.
    result = CliRunner().invoke(
        app, ["audit", unknown], env={"KAFKA_BOOTSTRAP_SERVERS": config["bootstrap.servers"]}
    )
    assert result.exit_code == 2
    assert f"no record of task {unknown!r} on sched.tasks.submitted" in result.output

    listed = json.loads(_cli(config, "audit", "--policy", "--json"))
    assert any(
        c["request_event_id"] == bad_update.event_id and c["accepted"] is False for c in listed
    )
    table = _cli(config, "audit", "--policy")
    assert "ops-mallory" in table
