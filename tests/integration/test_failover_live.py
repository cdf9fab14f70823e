"""A lost node and a stale attempt on the real broker, with real executor processes.

An executor is frozen (SIGSTOP: its process stops, its heartbeats stop, the task it
started keeps running in its own process): after the heartbeat timeout the placement
agent declares the node lost and places attempt 2 on the other node. The frozen executor
is then thawed: it reports attempt 1's end (completed, or cancelled by the stop the agent
sent the lost node), which is now stale. The attempt number fences it: the stream
processor records it as stale, and the task's outcome is attempt 2's.
"""

from __future__ import annotations

import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from streamsched.agents.placement import PlacementAgent
from streamsched.broker import client_config, free_port
from streamsched.client import Client, TaskNotFoundError
from streamsched.schemas import codec, topics
from streamsched.schemas.commands import StopAttempt
from streamsched.schemas.decisions import DecisionAudit, TaskEnded, TaskRequeued
from streamsched.schemas.lifecycle import TaskCancelled, TaskCompleted, TaskStarted
from streamsched.testing import (
    TopicReader,
    cli_executor,
    running_in_thread,
    spawn_cli,
    stop_process,
    wait_until,
    wire_submission,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

#: The placement agent's heartbeat timeout here (the default is 10 s; shorter keeps the
#: test quick, the mechanism is the same).
TIMEOUT_S = 4.0
#: How long each attempt runs: attempt 1 must end while its executor is frozen.
TASK_S = 3.0


def _wait(what: str, probe: Any, timeout_s: float = 90.0) -> Any:
    def value() -> Any:
        return probe() or None  # falsy: not yet

    return wait_until(what, value, timeout_s, retry_on=(TaskNotFoundError, OSError))


def test_a_lost_node_requeues_its_attempt_and_the_stale_result_is_fenced(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    config = client_config(kafka_bootstrap)
    label = uuid.uuid4().hex[:10]
    task_id = f"failover-{label}"
    ids = [f"node-{label}-{n}" for n in range(2)]
    nodes = {node_id: cli_executor(node_id, label, kafka_bootstrap, tmp_path) for node_id in ids}
    port = free_port()
    processor = spawn_cli(
        ["processor", "--web-port", str(port), "--metrics-port", "0", "--app-id",
         f"failover-{label}", "--loglevel", "warning"],
        kafka_bootstrap,
        tmp_path / "processor.log",
    )  # fmt: skip
    agent = PlacementAgent(
        config, decision_prefix=f"f{label[:6]}", tick_s=0.2, heartbeat_timeout_s=TIMEOUT_S
    )
    try:
        with (
            running_in_thread(agent.run),
            TopicReader(config, topics.TASK_EVENTS, timeout_s=90) as events,
            TopicReader(config, topics.DECISIONS, timeout_s=90) as decisions,
            TopicReader(config, "sched.assignments.gpu-v100", timeout_s=90) as stops,
        ):
            _wait("both nodes", lambda: set(nodes) <= set(agent.node_hardware))
            command = [sys.executable, "-c", f"import time; time.sleep({TASK_S})"]
            event = wire_submission(task_id, governance={"test_run": label}, command=command)
            producer = Producer(config)
            producer.produce(topics.TASKS_SUBMITTED, codec.encode(event), key=task_id.encode())
            assert producer.flush(10) == 0
            started = events.wait_event(TaskStarted, task_id)
            first_node = started.node_id
            frozen = nodes[first_node]
            frozen.send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            audits = decisions.wait_events(
                lambda _: any(a.attempt == 2 for a in decisions.events(DecisionAudit, task_id))
            )
            requeued_after = time.monotonic() - stopped_at
            second = next(a for a in audits if isinstance(a, DecisionAudit) and a.attempt == 2)
            assert second.task_id == task_id
            assert second.chosen_node_id != first_node
            requeue = decisions.wait_event(TaskRequeued, task_id)  # why attempt 2 exists
            assert (requeue.attempt, requeue.reason.split(": ")[-1]) == (1, f"node {first_node}")
            # The agent also told the lost node to stop attempt 1; the thawed executor
            # reports attempt 1's end, completed or cancelled, whichever it sees first.
            (stop,) = [
                s for s in stops.wait_events(lambda _: bool(stops.events(StopAttempt, task_id)))
                if isinstance(s, StopAttempt) and s.task_id == task_id
            ]  # fmt: skip
            assert (stop.attempt, stop.node_id, stop.mode) == (1, first_node, "cancel")
            frozen.send_signal(signal.SIGCONT)
            stale = (TaskCompleted, TaskCancelled)

            def attempt_ends() -> dict[int, Any]:
                return {e.attempt: e for e in events.events() if isinstance(e, stale)
                        and e.task_id == task_id}  # fmt: skip

            events.wait_events(lambda _: set(attempt_ends()) == {1, 2})
            ends = attempt_ends()
            assert ends[1].node_id == first_node  # the stale report
            assert isinstance(ends[2], TaskCompleted)
            assert ends[2].node_id == second.chosen_node_id
            ended = decisions.wait_event(TaskEnded, task_id)
            assert (ended.state, ended.attempt) == ("succeeded", 2), ended
        with Client(kafka_bootstrap, f"http://127.0.0.1:{port}", tenant="team-a") as client:
            status = _wait(
                "the processor to record the stale completion",
                lambda: (
                    (s := client.query(task_id)).stale_count >= 1
                    and s.state.value == "succeeded"
                    and s.attempt == 2  # the view may settle on attempt 1 until task.ended
                    and s
                ),
            )
        assert any(s.attempt == 1 and s.type == ends[1].type for s in status.stale_events)
        print(f"node frozen -> attempt 2 assigned: {requeued_after:.1f} s "
              f"(heartbeat timeout {TIMEOUT_S:g} s)")  # fmt: skip
    finally:
        for proc in [*nodes.values(), processor]:
            stop_process(proc)
