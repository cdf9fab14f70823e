"""What an executor's heartbeats tell a reconciling reader besides ``running``: the attempts
that ended recently (``ended``) and the highest assignment sequence consumed
(``assignments_seen``, kept in the attempt journal across restarts).

The agent here has no broker: its producer is :class:`AckingProducer`, which acknowledges
every record when served, as the broker does, so ``ExecutorAgent.report`` runs as it does
live. Attempts are real (a subprocess, or a replayed one)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streamsched.agents.executor import ENDED_MEMORY_S, EndedAttempts, ExecutorAgent
from streamsched.agents.journal import AttemptJournal, JournalEntry, journal_path
from streamsched.agents.runner import AttemptRunner, LifecycleEvent
from streamsched.scheduler.model import NodeSpec
from streamsched.schemas import codec
from streamsched.schemas.commands import StopAttempt
from streamsched.schemas.decisions import Assignment
from streamsched.schemas.nodes import NodeHeartbeat
from streamsched.schemas.types import MAX_LIST_ITEMS

pytestmark = pytest.mark.timeout(20)

NODE = "v100-5"
HARDWARE = "gpu-v100"
WAIT_S = 5.0


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------- EndedAttempts


def test_an_ended_attempt_is_remembered_for_ended_memory_s_then_forgotten() -> None:
    clock = Clock()
    ended = EndedAttempts(clock=clock)
    ended.add(("a", 1))
    clock.now += 60.0
    ended.add(("b", 2))
    clock.now += ENDED_MEMORY_S - 60.0 - 0.001
    assert ended.recent() == [("a", 1), ("b", 2)]
    clock.now += 0.001
    assert ended.recent() == [("b", 2)]  # "a" ended exactly ENDED_MEMORY_S ago
    clock.now += 60.0
    assert ended.recent() == []


def test_ended_keeps_the_most_recent_within_its_bound() -> None:
    ended = EndedAttempts(limit=3, clock=Clock())
    for attempt in range(1, 6):
        ended.add(("t", attempt))
    assert ended.recent() == [("t", 3), ("t", 4), ("t", 5)]
    ended.add(("t", 3))  # ended again (a redelivered end): now the newest
    ended.add(("t", 6))
    assert ended.recent() == [("t", 5), ("t", 3), ("t", 6)]


def test_the_default_bound_is_what_a_heartbeat_can_carry() -> None:
    ended = EndedAttempts(clock=Clock())
    for attempt in range(1, MAX_LIST_ITEMS + 11):
        ended.add(("t", attempt))
    recent = ended.recent()
    assert len(recent) == MAX_LIST_ITEMS
    assert recent[-1] == ("t", MAX_LIST_ITEMS + 10)
    assert recent[0] == ("t", 11)


# ---------------------------------------------------------------------- the agent


class AckingProducer:
    """Stands in for the broker connection: every record produced is acknowledged the next
    time the producer is served (``poll``), and kept in ``records``."""

    def __init__(self, on_produce: Callable[[str, bytes], None] | None = None) -> None:
        self.records: list[tuple[str, bytes]] = []
        self._pending: list[Callable[[Any, Any], None]] = []
        self._on_produce = on_produce
        self._lock = threading.Lock()

    def produce(self, topic: str, value: bytes, **options: Any) -> None:
        if self._on_produce is not None:
            self._on_produce(topic, value)
        with self._lock:
            self.records.append((topic, value))
            self._pending.append(options["on_delivery"])

    def poll(self, timeout: float = 0.0) -> int:
        with self._lock:
            pending, self._pending = self._pending, []
        for callback in pending:
            callback(None, None)
        return len(pending)

    def flush(self, timeout: float = 0.0) -> int:
        self.poll()
        return 0


def node() -> NodeSpec:
    return NodeSpec(NODE, HARDWARE, 64_000, 512 * 1024, 8, {"data_region": "eu"})


def assignment(
    task_id: str,
    sequence: int | None,
    *,
    attempt: int = 1,
    command: tuple[str, ...] = (sys.executable, "-c", "pass"),
    governance: dict[str, str] | None = None,
) -> Assignment:
    return Assignment(
        occurred_at=datetime.now(UTC),
        source="placement",
        decision_id=f"d-{task_id}-{attempt}",
        task_id=task_id,
        attempt=attempt,
        node_id=NODE,
        hardware=HARDWARE,
        predicted_runtime_s=1.0,
        command=command,
        tenant="acme",
        task_type="train",
        governance=governance or {},
        sequence=sequence,
    )


def keys(items: tuple[Any, ...]) -> list[tuple[str, int]]:
    return [(item.task_id, item.attempt) for item in items]


def consume(agent: ExecutorAgent, record: Assignment | StopAttempt) -> None:
    """Hand the agent one record as its consumer loop does (the record as decoded)."""
    agent._handle(codec.decode(codec.encode(record), known_hardware=(HARDWARE,)), "test")


def wait_until(condition: Callable[[], bool]) -> None:
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition never held")


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., ExecutorAgent]]:
    made: list[ExecutorAgent] = []

    def make(runner: AttemptRunner | None = None, **producer: Any) -> ExecutorAgent:
        agent = ExecutorAgent({}, node(), runner=runner, log_dir=tmp_path)
        agent._producer = AckingProducer(**producer)  # type: ignore[assignment]
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.runner.stop_all()
        agent.close()


def test_a_finished_attempt_is_never_in_neither_list_while_its_end_is_sent(
    tmp_path: Path, agents: Callable[..., ExecutorAgent]
) -> None:
    beats: dict[str, NodeHeartbeat] = {}
    holder: list[ExecutorAgent] = []

    def on_produce(topic: str, value: bytes) -> None:
        if b'"task.completed"' in value:
            beats["while sending"] = holder[0].heartbeat()

    def report(event: LifecycleEvent) -> None:
        holder[0].report(event)
        if event.type == "task.completed":
            beats["acknowledged"] = holder[0].heartbeat()

    runner = AttemptRunner(tmp_path, NODE, report)
    runner.open_journal(journal_path(tmp_path, NODE))
    agent = agents(runner, on_produce=on_produce)
    holder.append(agent)
    consume(agent, assignment("t1", 1))
    wait_until(lambda: not agent.runner.running())
    after = agent.heartbeat()

    sending, acknowledged = beats["while sending"], beats["acknowledged"]
    assert (keys(sending.running), keys(sending.ended)) == ([("t1", 1)], [])
    assert ("t1", 1) in keys(acknowledged.running) + keys(acknowledged.ended)
    assert (keys(after.running), keys(after.ended)) == ([], [("t1", 1)])
    assert after.assignments_seen == 1


def test_refused_and_recovered_attempts_are_listed_as_ended(
    tmp_path: Path, agents: Callable[..., ExecutorAgent]
) -> None:
    previous = AttemptJournal(journal_path(tmp_path, NODE))
    previous.started(JournalEntry(task_id="crashed", attempt=2, hardware=HARDWARE))
    previous.close()
    agent = agents()
    assert agent.runner.recover() == [("crashed", 2)]
    consume(agent, assignment("us-only", 4, governance={"data_region": "us"}))
    beat = agent.heartbeat()
    assert keys(beat.ended) == [("crashed", 2), ("us-only", 1)]
    assert beat.running == ()
    assert beat.assignments_seen == 4
    sent = [json.loads(value)["type"] for topic, value in agent._producer.records]  # type: ignore[union-attr]
    assert sent == ["task.lost", "task.failed"]


def test_an_attempt_whose_end_was_not_acknowledged_is_not_listed_as_ended(
    tmp_path: Path, agents: Callable[..., ExecutorAgent]
) -> None:
    agent = agents()
    agent._producer = None  # the broker is gone: report() raises for terminal events
    consume(agent, assignment("t1", 1))
    wait_until(lambda: not agent.runner.running())
    assert agent.heartbeat().ended == ()


def test_assignments_seen_is_the_highest_sequence_consumed_and_survives_a_restart(
    tmp_path: Path, agents: Callable[..., ExecutorAgent]
) -> None:
    first = agents()
    assert first.heartbeat().assignments_seen is None  # fresh: nothing known
    consume(first, assignment("no-sequence", None))
    assert first.heartbeat().assignments_seen is None
    consume(first, assignment("t1", 3))
    consume(first, assignment("t1", 2))  # a redelivered, older assignment: a duplicate
    consume(first, assignment("refused", 5, governance={"data_region": "us"}))
    consume(first, assignment("no-sequence-2", None))
    assert first.heartbeat().assignments_seen == 5
    wait_until(lambda: not first.runner.running())
    first.runner.stop_all()
    first.close()

    second = agents()
    assert second.heartbeat().assignments_seen == 5  # before consuming anything
    consume(second, assignment("t2", 6))
    assert second.heartbeat().assignments_seen == 6


def test_an_assignment_cancelled_later_in_its_batch_is_not_started(
    tmp_path: Path, agents: Callable[..., ExecutorAgent]
) -> None:
    agent = agents()
    job = assignment("t1", 7, command=(sys.executable, "-c", "import time; time.sleep(60)"))
    agent._handle(job, "test", frozenset({("t1", 1)}))
    assert agent.runner.running() == []
    assert not (tmp_path / "t1.1.log").exists()
    assert agent._producer.records == []  # type: ignore[union-attr]
    assert agent.heartbeat().assignments_seen == 7  # consumed all the same
