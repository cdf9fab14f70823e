"""The stream processor survives SIGKILL: ``streamsched processor`` builds the status of
a set of tasks, is killed without warning once its consumer group has committed past
every record, misses events while it is down, and is started again with the same app id.
The new process must know every task with the right state - from the tables' changelogs,
since the committed offsets are past the old records - fold what it missed, and count
nothing twice (redelivered events with the same event ids change nothing). Twice over:
the second process is killed the same way and a third one must know the result too.

The broker is shared with the other tests of the session: the tasks belong to a tenant of
this test only, and the counts are read through that tenant's view.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from streamsched.broker import client_config, free_port
from streamsched.client import AccessDenied, Client, ClientError, submission_event
from streamsched.schemas import codec, topics
from streamsched.schemas.commands import CancelTask
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.envelope import EventEnvelope
from streamsched.schemas.lifecycle import TaskCompleted, TaskFailed, TaskStarted
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.streams.app import TASK_TOPICS
from streamsched.testing import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

CLI = Path(sys.executable).parent / "streamsched"
UID = uuid.uuid4().hex[:8]
APP_ID = f"restart-test-{UID}"
TENANT = f"restart-{UID}"
TASKS = 24
T = TypeVar("T")


def _wait(
    what: str, probe: Callable[[], T | None], timeout_s: float = 90.0, seen: Callable[[], Any] = str
) -> T:
    return wait_until(what, probe, timeout_s, retry_on=(ClientError,), seen=seen)


class ProcessorRun:
    """``streamsched processor`` as a subprocess, logging to files."""

    def __init__(self, servers: str, *extra: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self._out: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in kill/stop)
        self._err: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(CLI), "processor", "--web-port", self.url.rsplit(":", 1)[1],
             "--app-id", APP_ID, "--no-restore", "--loglevel", "warning", *extra],
            env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": servers},
            stdout=self._out, stderr=self._err, text=True,
        )  # fmt: skip
        self.client = Client(servers, self.url, timeout_s=5, tenant=TENANT)
        _wait("the status view", self.client.summary)

    def kill(self) -> str:
        """SIGKILL; its stderr so far."""
        self.client.close()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL
        self._err.seek(0)
        err = self._err.read()
        self._close()
        return err

    def stop(self) -> str:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.seek(0)
        err = self._err.read()
        self._close()
        assert self.proc.returncode == 0, err[-3000:]
        return err

    def _close(self) -> None:
        self._out.close()
        self._err.close()


class Feeder:
    """Publishes events one record per request (and remembers what it sent)."""

    def __init__(self, servers: str) -> None:
        self.producer = Producer({**client_config(servers), "acks": "all", "linger.ms": 0})
        self.last_offsets: dict[tuple[str, int], int] = {}
        self.sent: list[tuple[str, str, EventEnvelope]] = []

    def send(self, topic: str, key: str, event: EventEnvelope) -> None:
        def delivered(error: KafkaError | None, msg: Message) -> None:
            assert error is None, error
            where = (msg.topic() or "", msg.partition() or 0)
            self.last_offsets[where] = max(self.last_offsets.get(where, -1), msg.offset() or 0)

        self.producer.produce(
            topic, codec.encode(event), key=key.encode(), headers=[("type", event.type)],
            on_delivery=delivered,
        )  # fmt: skip
        assert self.producer.flush(10) == 0
        self.sent.append((topic, key, event))

    def resend_all(self) -> None:
        """Redeliver everything sent so far (same event ids), as a broker would."""
        for topic, key, event in list(self.sent):
            self.send(topic, key, event)


def _env() -> dict[str, Any]:
    return {"occurred_at": datetime.now(UTC), "source": "test"}


def _task_id(i: int) -> str:
    return f"r-{UID}-{i:02d}"


def _attempt(i: int) -> dict[str, Any]:
    return {"task_id": _task_id(i), "attempt": 1, "node_id": f"v100-{i % 3}"}


def _audit(i: int) -> DecisionAudit:
    return DecisionAudit(
        **_env(), decision_id=f"d-{_task_id(i)}", stimulus_id="s", task_id=_task_id(i),
        attempt=1, policy="forecast", policy_version="1", model_version="m",
        decided_at_s=1.0, chosen_node_id=f"v100-{i % 3}", chosen_hardware="gpu-v100",
        predicted_runtime_s=10.0, reason="restart test",
    )  # fmt: skip


def _before_kill(feed: Feeder, i: int) -> str:
    """Events of task i before the kill; the state they lead to."""
    tid = _task_id(i)
    feed.send(topics.TASKS_SUBMITTED, tid, _submission(i))
    kind = i % 4
    if kind == 0:
        return "queued"
    if kind == 3:
        cancel = CancelTask(**_env(), task_id=tid, reason="no longer needed", requested_by=TENANT)
        feed.send(topics.COMMANDS, tid, cancel)
        return "cancelled"
    feed.send(topics.DECISIONS, tid, _audit(i))
    feed.send(topics.TASK_EVENTS, tid, TaskStarted(**_env(), **_attempt(i)))
    if kind == 1:
        return "running"
    feed.send(topics.TASK_EVENTS, tid, TaskCompleted(**_env(), **_attempt(i), runtime_s=3.0))
    return "succeeded"


def _submission(i: int) -> TaskSubmitted:
    return submission_event(
        task_id=_task_id(i), tenant=TENANT, task_type="train",
        resources={"gpus": 1}, governance={"pool": f"nowhere-{UID}"},  # no agent runs it
    )  # fmt: skip


def _while_down(feed: Feeder, i: int, state: str) -> str:
    """Events of task i while the processor is down; the state they lead to."""
    if state != "running":
        return state
    if i % 8 == 1:
        failed = TaskFailed(**_env(), **_attempt(i), reason="out of memory", retryable=False)
        feed.send(topics.TASK_EVENTS, _task_id(i), failed)
        return "failed"
    done = TaskCompleted(**_env(), **_attempt(i), runtime_s=7.0)
    feed.send(topics.TASK_EVENTS, _task_id(i), done)
    return "succeeded"


def _states(client: Client) -> dict[str, str]:
    """Task -> state; a task that ran counts as placed only once its decision is folded
    in (the executors' events may overtake the decision audit: another topic)."""
    return {
        t.task_id: t.state.value
        if t.decision_id is not None or t.state.value not in ("running", "succeeded", "failed")
        else "placed, decision not read yet"
        for t in client.tasks(tenant=TENANT, limit=1000)
    }


def _committed_past(servers: str, wanted: dict[tuple[str, int], int]) -> bool:
    """True when the processor's group committed past every offset in ``wanted``."""
    admin = AdminClient(client_config(servers))
    request = ConsumerGroupTopicPartitions(APP_ID)
    result = admin.list_consumer_group_offsets([request])[APP_ID].result(timeout=10)
    committed = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}
    return all(committed.get(tp, -1) > offset for tp, offset in wanted.items())


def _cancel_queued(feed: Feeder, i: int, state: str) -> str:
    """While the second processor is down: the owner cancels the tasks still queued."""
    if state != "queued":
        return state
    cancel = CancelTask(
        **_env(), task_id=_task_id(i), reason="second thoughts", requested_by=TENANT
    )
    feed.send(topics.COMMANDS, _task_id(i), cancel)
    return "cancelled"


def _verify(run: ProcessorRun, expected: dict[str, str], what: str) -> None:
    """``run`` shows exactly ``expected`` (task -> state) for the tenant, counts each task
    once in its summary, and recorded no redelivered event as a stale report."""
    _wait(
        f"{what} to show every task in its state",
        lambda: _states(run.client) == expected or None,
        seen=lambda: (expected, _states(run.client)),
    )
    summary = run.client.summary()
    assert summary["tasks"] == TASKS
    counts = {k: v for k, v in summary["per_state"].items() if v}
    assert counts == dict(Counter(expected.values()))
    for status in run.client.tasks(tenant=TENANT, limit=1000):
        assert status.stale_count == 0, status  # redeliveries (same ids) were recognised
        if status.state.value in ("running", "succeeded", "failed"):
            assert (status.attempt, status.decision_id) == (1, f"d-{status.task_id}")
        if int(status.task_id[-2:]) % 4 == 2:  # completed before the first kill
            assert status.actual_runtime_s == 3.0


def _kill_after_commit(run: ProcessorRun, feed: Feeder, servers: str) -> str:
    """SIGKILL ``run`` once its group committed past every input record this test wrote:
    after that, only the tables' changelogs can carry the state into the next process."""
    inputs = {tp: off for tp, off in feed.last_offsets.items() if tp[0] in TASK_TOPICS}
    try:
        _wait(
            "the processor to commit its input offsets",
            lambda: _committed_past(servers, inputs) or None,
        )
    finally:
        err = run.kill()
    return err


def _assert_clean(err: str) -> None:
    """No crash, and none of the changelog-recovery errors faust shows on a broker whose
    high watermark is off (see BROKER-NOTES)."""
    for sign in ("Traceback", "ConsistencyError", "higher than the last offset"):
        assert sign not in err, err[-3000:]


def test_processor_killed_and_restarted_knows_every_task_once(kafka_bootstrap: str) -> None:
    servers = kafka_bootstrap
    feed = Feeder(servers)
    expected = {_task_id(i): _before_kill(feed, i) for i in range(TASKS)}
    first = ProcessorRun(servers)
    try:
        _verify(first, expected, "the first processor")
    finally:
        logs = [_kill_after_commit(first, feed, servers)]

    expected = {tid: _while_down(feed, int(tid[-2:]), s) for tid, s in expected.items()}
    feed.resend_all()  # every event once more, as after a producer retry or a replay
    second = ProcessorRun(servers)
    try:
        _verify(second, expected, "the restarted processor")
    finally:
        logs.append(_kill_after_commit(second, feed, servers))

    expected = {tid: _cancel_queued(feed, int(tid[-2:]), s) for tid, s in expected.items()}
    feed.resend_all()
    third = ProcessorRun(servers, "--require-tenant")
    try:
        _verify(third, expected, "the processor restarted twice")
        with Client(servers, third.url, timeout_s=5) as operator:  # names no tenant
            assert operator.tenant is None
            with pytest.raises(AccessDenied, match="requires the X-Streamsched-Tenant header"):
                operator.summary()
    finally:
        logs.append(third.stop())
    for err in logs:
        _assert_clean(err)
