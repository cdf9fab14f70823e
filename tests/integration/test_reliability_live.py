"""Reliability and tenancy on a real broker: the placement agent's circuit breaker trips
when tasks keep failing on a hardware class and recovers on its own, and a cancel from
another tenant is refused (and audited) while the owner's goes through.

The real placement agent (in a thread, with the live ``CoreConfig`` defaults: breaker
after 5 different failing tasks, 30 s cool-down) and a real executor agent whose attempts
are real subprocesses (a failing one exits with code 3). Uses the session's shared broker
(``kafka_bootstrap``): fresh ids, a consumer group of its own that starts at the end of
the topics (no other test's traffic), and a governance tag of its own so that no other
test's node takes these tasks.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from streamsched.agents.executor import ExecutorAgent
from streamsched.agents.placement import PlacementAgent
from streamsched.broker import client_config
from streamsched.scheduler.breaker import BreakerState
from streamsched.scheduler.model import NodeSpec
from streamsched.schemas import codec, topics
from streamsched.schemas.commands import CancelTask
from streamsched.schemas.decisions import BreakerChanged, CancelOutcome, DecisionAudit, TaskEnded
from streamsched.schemas.envelope import EventEnvelope
from streamsched.schemas.lifecycle import TaskCancelled, TaskCompleted, TaskFailed, TaskStarted
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.testing import TopicReader, running_in_thread, wire_submission

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

HARDWARE = "gpu-v100"
#: Waits for one step.
WAIT_S = 30.0
#: Waits for a step that includes the breaker's cool-down (30 s by default).
COOLDOWN_WAIT_S = WAIT_S + 45.0
#: Different failing tasks that trip the breaker with the live defaults.
FAILING_TASKS = 5
PROBE_NOTE = f"probe attempt of the half-open circuit breaker of {HARDWARE}"


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _produce(config: dict[str, Any], topic: str, key: str, event: EventEnvelope) -> None:
    producer = Producer(config)
    producer.produce(topic, codec.encode(event), key=key.encode())
    assert producer.flush(10) == 0


def _submit(config: dict[str, Any], task_id: str, tag: dict[str, str], code: str) -> None:
    sub: TaskSubmitted = wire_submission(
        task_id, governance=tag, command=(sys.executable, "-c", code), hardware=HARDWARE
    ).model_copy(update={"max_retries": 0})
    _produce(config, topics.TASKS_SUBMITTED, task_id, sub)


def _wait_until(what: str, condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


@contextmanager
def _live_system(config: dict[str, Any], log_dir: Path) -> Iterator[tuple[PlacementAgent, str]]:
    """A placement agent (own consumer group, starting at the topics' end) and one
    executor (8 GPUs, a fresh governance tag); yields the agent and the tag's value once
    the agent has registered the node."""
    tag = {"test_run": uuid.uuid4().hex[:10]}
    node = NodeSpec(_uid("node"), HARDWARE, 64_000, 512 * 1024, 8, tag)
    executor = ExecutorAgent(config, node, log_dir=log_dir, heartbeat_interval_s=0.5)
    agent = PlacementAgent(
        config,
        decision_prefix=_uid("d"),
        tick_s=0.2,
        group_id=_uid("placement"),
        start_at_end=True,
    )
    with running_in_thread(agent.run), running_in_thread(executor.run):
        _wait_until(
            "the node's heartbeat at the placement agent",
            lambda: node.node_id in agent.node_hardware,
            WAIT_S,
        )
        yield agent, tag["test_run"]


def _audits(decisions: TopicReader, task_id: str) -> list[DecisionAudit]:
    return [a for a in decisions.events(DecisionAudit, task_id) if a.kind == "assign"]


# ====================================================================== circuit breaker
@dataclass
class BreakerRun:
    source: str
    failing: list[str]
    probe: str
    after: str
    decisions: TopicReader
    events: TopicReader
    states: list[BreakerState]
    cooldown_s: float


@pytest.fixture(scope="module")
def breaker_run(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BreakerRun]:
    """Fail 5 different tasks on the class, then submit a good one while the breaker is
    open, and another once it closed again; keep what the topics and the core said."""
    config = client_config(kafka_bootstrap)
    failing = [_uid("fails") for _ in range(FAILING_TASKS)]
    probe, after = _uid("probe"), _uid("after")
    states: list[BreakerState] = []
    events = TopicReader(config, topics.TASK_EVENTS, timeout_s=COOLDOWN_WAIT_S)
    decisions = TopicReader(config, topics.DECISIONS, timeout_s=COOLDOWN_WAIT_S)
    with _live_system(config, tmp_path_factory.mktemp("breaker")) as (agent, run_tag):
        tag = {"test_run": run_tag}

        def state() -> BreakerState:
            return agent.core.breaker_state(HARDWARE)

        for task_id in failing:
            _submit(config, task_id, tag, "import sys; sys.exit(3)")
        events.wait_events(lambda _: all(events.events(TaskFailed, t) for t in failing))
        _wait_until("the breaker to open", lambda: state() is BreakerState.OPEN, WAIT_S)
        states.append(state())
        _submit(config, probe, tag, "print('ok')")
        # Held while open; placed as the probe after the cool-down; closes on success.
        events.wait_events(lambda _: bool(events.events(TaskCompleted, probe)))
        _wait_until("the breaker to close", lambda: state() is BreakerState.CLOSED, WAIT_S)
        states.append(state())
        _submit(config, after, tag, "print('ok')")
        events.wait_events(lambda _: bool(events.events(TaskCompleted, after)))
        decisions.wait_events(
            lambda _: all(decisions.events(TaskEnded, t) for t in (*failing, probe, after))
        )
        source, cooldown_s = agent.source, agent.core.config.breaker_cooldown_s
    try:
        yield BreakerRun(source, failing, probe, after, decisions, events, states, cooldown_s)
    finally:
        events.close()
        decisions.close()


def test_circuit_breaker_trips_and_recovers(breaker_run: BreakerRun) -> None:
    run = breaker_run
    assert run.states == [BreakerState.OPEN, BreakerState.CLOSED]
    # The failing tasks ran (real processes, exit code 3) and failed for good.
    for task_id in run.failing:
        (failed,) = run.events.events(TaskFailed, task_id)
        assert (failed.exit_code, failed.retryable) == (3, True)
        (ended,) = run.decisions.events(TaskEnded, task_id)
        assert ended.state == "failed"
    # The task submitted while the breaker was open was not placed then: its one and
    # only placement is the half-open probe, after the cool-down.
    (probe_decision,) = _audits(run.decisions, run.probe)
    assert PROBE_NOTE in probe_decision.reason
    assert probe_decision.attempt == 1
    assert [e.state for e in run.decisions.events(TaskEnded, run.probe)] == ["succeeded"]
    # A lower bound by causality, not a timing race: the cool-down starts when the core
    # handles the last failure, which the executor stamped before publishing it.
    last_failure = max(
        e.occurred_at.timestamp() for t in run.failing for e in run.events.events(TaskFailed, t)
    )
    assert probe_decision.decided_at_s >= last_failure + run.cooldown_s
    # The probe succeeded: placement resumed as usual.
    (after_decision,) = _audits(run.decisions, run.after)
    assert PROBE_NOTE not in after_decision.reason
    assert [e.state for e in run.decisions.events(TaskEnded, run.after)] == ["succeeded"]


def test_breaker_transitions_are_audited_on_sched_decisions(breaker_run: BreakerRun) -> None:
    run = breaker_run
    run.decisions.drain(2.0)
    changes = [c for c in run.decisions.events(BreakerChanged) if c.source == run.source]
    assert [(c.previous_state, c.state) for c in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    opened = changes[0]
    assert (opened.hardware, opened.failed_tasks, opened.cooldown_s) == (HARDWARE, 5, 30.0)
    assert len({c.decision_id for c in changes}) == 3


# ====================================================================== tenancy
def test_cross_tenant_cancel_refused(kafka_bootstrap: str, tmp_path: Path) -> None:
    """team-b's cancel of team-a's running task is refused with the reason on
    ``sched.decisions`` and changes nothing; team-a's own cancel then stops it."""
    config = client_config(kafka_bootstrap)
    task_id = _uid("long")
    steal, own = _uid("cancel-steal"), _uid("cancel-own")

    def cancel(event_id: str, requested_by: str, reason: str) -> CancelTask:
        return CancelTask(
            event_id=event_id,
            occurred_at=datetime.now(UTC),
            source=f"cli/{requested_by}",
            task_id=task_id,
            reason=reason,
            requested_by=requested_by,
        )

    with (
        TopicReader(config, topics.TASK_EVENTS, timeout_s=WAIT_S) as events,
        TopicReader(config, topics.DECISIONS, timeout_s=WAIT_S) as decisions,
        _live_system(config, tmp_path) as (_agent, run_tag),
    ):
        _submit(config, task_id, {"test_run": run_tag}, "import time; time.sleep(60)")
        events.wait_event(TaskStarted, task_id)
        _produce(config, topics.COMMANDS, task_id, cancel(steal, "team-b", "mine now"))
        decisions.wait_events(
            lambda _: any(c.request_event_id == steal for c in decisions.events(CancelOutcome))
        )
        assert decisions.events(TaskEnded, task_id) == []  # still running
        _produce(config, topics.COMMANDS, task_id, cancel(own, "team-a", "not needed"))
        decisions.wait_events(lambda _: bool(decisions.events(TaskEnded, task_id)))
        events.wait_events(lambda _: bool(events.events(TaskCancelled, task_id)))
    outcomes = {c.request_event_id: c for c in decisions.events(CancelOutcome, task_id)}
    refused, accepted = outcomes[steal], outcomes[own]
    assert (refused.accepted, refused.requested_by, refused.reason, refused.attempt) == (
        False,
        "team-b",
        "mine now",
        1,
    )
    assert refused.outcome.startswith("refused: 'team-b' does not own this task")
    assert (accepted.accepted, accepted.requested_by) == (True, "team-a")
    assert "stopped" in accepted.outcome
    (ended,) = decisions.events(TaskEnded, task_id)
    assert (ended.state, ended.reason) == ("cancelled", "not needed")
    assert len(events.events(TaskCancelled, task_id)) == 1  # one stop: the owner's
