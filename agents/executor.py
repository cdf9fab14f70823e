"""The executor agent: one per node. Reads the node's assignments, runs them, reports back.

Wire contract (see :mod:`streamsched.agents.partitioning`):

- Assignments for hardware class ``H`` arrive on ``sched.assignments.<H>``, keyed by node id,
  in partition ``partition_for(node_id, <partitions of that topic>)``. The agent
  ``assign()``\\ s exactly that partition (no consumer-group subscription, so no rebalance),
  and ignores records keyed with another node's id (nodes may share a partition).
- Offsets are committed with ``group.id = executor-<node_id>`` once a record is handled (the
  attempt was started, or the record was skipped), so a restarted executor resumes where it
  stopped. Delivery is at-least-once; :class:`AttemptRunner` ignores a redelivered
  assignment of an attempt it already runs or ran.
- ``command.stop_attempt`` records travel the same partition, after the assignment they
  concern: ``preempt`` stops the attempt and keeps its checkpoint, ``cancel`` stops it.
  A command for an attempt this executor does not run is ignored (the fencing token).
- Before an attempt starts, :class:`~streamsched.agents.runner.ExecutionGuard` re-checks
  it: each governance tag must be a label of this node with the same value, and with an
  allow-list (``streamsched executor --allow-exec``) the resolved ``argv[0]`` must be on
  it. A refused attempt runs nothing: it is reported as a non-retryable ``task.failed``
  naming the reason, logged, and counted in ``streamsched_executor_refusals_total``.
- Records are read in batches (one poll, then whatever else is already fetched). An
  assignment followed in the same batch by a ``cancel`` of the same attempt is not started
  at all (a restarted executor catching up reads an old assignment and its cancellation
  together); the cancel then finds it not running here, and nothing is reported, as for
  any cancel of an attempt this executor does not run.
- A record that is neither is logged (topic, partition, offset and the reason) and
  skipped; it never stops the agent.
- Every lifecycle event the runner reports goes to ``sched.tasks.events``, key = task id,
  header ``type`` = the event type.
  Terminal events (and ``task.lost``) are reported synchronously: :meth:`ExecutorAgent.report`
  returns once the broker acknowledged them, and raises otherwise, so an attempt is
  journaled as ended only when the scheduler can learn its outcome.
- Restart reconciliation: the runner journals attempts in
  ``<log_dir>/executor-<node_id>.journal.jsonl`` (:mod:`streamsched.agents.journal`).
  Before consuming, :meth:`ExecutorAgent.run` reports every attempt a previous run left
  unfinished as ``task.lost`` (their assignments will not be redelivered: the offsets are
  committed). On stop, running attempts end with ``task.lost`` too (the scheduler re-queues
  them; ``task.cancelled`` would be ignored, since it confirms a cancel the core asked for).
- A heartbeat thread publishes :class:`NodeHeartbeat` to ``sched.nodes.heartbeats``
  (key = node id) once the journal is reconciled (this registers the node) and then every
  ``heartbeat_interval_s``. ``running`` lists the runner's attempts; ``usage.gpus`` counts
  the distinct GPUs they use; CPU and memory usage are reported as 0 (assignments do not
  carry them yet).
  ``ended`` lists the attempts whose terminal event the broker acknowledged in the last
  :data:`ENDED_MEMORY_S` seconds (at most ``MAX_LIST_ITEMS``, the most recent), so a
  reader of heartbeats that has not read that event yet does not take the attempt for
  lost; an attempt is in ``ended`` before it leaves ``running``.
  ``assignments_seen`` is the highest ``Assignment.sequence`` consumed from the partition
  (run, duplicate, refused or cancelled in its batch), journaled so that it survives a
  restart; None until one is known. An attempt whose sequence is higher is on its way.
- Metrics (:mod:`streamsched.metrics`, served by ``streamsched executor --metrics-port``):
  assigned-to-started latency, attempt outcomes, running attempts, heartbeats sent, and
  the consumer's lag and records read (``component="executor"``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamsched import metrics
from streamsched.agents.journal import AttemptKey, journal_path
from streamsched.agents.partitioning import ASSIGNMENT_PARTITIONS, partition_for
from streamsched.agents.runner import (
    AttemptRunner,
    ExecAllowList,
    ExecutionGuard,
    LifecycleEvent,
    Refusal,
    replay_runtime_s,
)
from streamsched.broker import ensure_topics
from streamsched.scheduler.model import NodeSpec
from streamsched.schemas import codec
from streamsched.schemas.commands import StopAttempt
from streamsched.schemas.decisions import Assignment
from streamsched.schemas.errors import InvalidEvent
from streamsched.schemas.hardware import assignment_topic
from streamsched.schemas.nodes import NodeHeartbeat
from streamsched.schemas.topics import NODE_HEARTBEATS, TASK_EVENTS
from streamsched.schemas.types import CONTEXT_KNOWN_HARDWARE, MAX_LIST_ITEMS

logger = logging.getLogger(__name__)

#: Partitions of ``sched.tasks.events`` and ``sched.nodes.heartbeats`` when the agent
#: creates them (they are keyed, so any count works).
EVENT_TOPIC_PARTITIONS = 4
#: Consumer poll timeout: how quickly the loop notices a stop.
POLL_TIMEOUT_S = 0.2
#: How long the final flush may take on stop.
FLUSH_TIMEOUT_S = 10.0
#: How long a terminal event may take to be acknowledged before report() gives up.
DELIVERY_TIMEOUT_S = 30.0
#: Seconds between two consumer-lag measurements.
LAG_INTERVAL_S = 5.0
#: The ``component`` label of this agent's metrics.
COMPONENT = "executor"
#: Most records handled per batch (one poll, then what is already fetched).
BATCH_SIZE = 500
#: How long (monotonic seconds) an attempt stays in the heartbeats' ``ended`` list after
#: the broker acknowledged its terminal event: far longer than a heartbeat reader's
#: reconciliation grace, so the reader has read the event before the attempt leaves.
ENDED_MEMORY_S = 120.0
#: Event types that are not the end of an attempt.
_NON_TERMINAL = ("task.started", "task.progress")


class ReportError(RuntimeError):
    """A lifecycle event could not be delivered to ``sched.tasks.events``."""


class EndedAttempts:
    """Attempts whose terminal event was acknowledged in the last ``memory_s`` seconds of
    ``clock`` (monotonic), at most ``limit`` of them (the most recent are kept): the
    heartbeats' ``ended`` list. Thread-safe."""

    def __init__(
        self,
        memory_s: float = ENDED_MEMORY_S,
        limit: int = MAX_LIST_ITEMS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not memory_s > 0 or limit < 1:
            raise ValueError(f"need a positive memory and limit, got {memory_s} and {limit}")
        self.memory_s = memory_s
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._ended: OrderedDict[AttemptKey, float] = OrderedDict()

    def add(self, key: AttemptKey) -> None:
        """Remember that ``key`` ended now (again: its time is renewed)."""
        with self._lock:
            self._ended[key] = self._clock()
            self._ended.move_to_end(key)
            self._forget()

    def recent(self) -> list[AttemptKey]:
        """The attempts remembered, oldest first."""
        with self._lock:
            self._forget()
            return list(self._ended)

    def _forget(self) -> None:
        """Drop what expired or exceeds the limit. Call with the lock held."""
        horizon = self._clock() - self.memory_s
        while self._ended and (
            len(self._ended) > self.limit or next(iter(self._ended.values())) <= horizon
        ):
            self._ended.popitem(last=False)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ExecutorAgent:
    """The executor of node ``node`` against the Kafka cluster of ``config`` (a librdkafka
    client configuration, e.g. from :func:`streamsched.broker.client_config`).

    ``runner`` defaults to an :class:`AttemptRunner` writing attempt logs to ``log_dir``
    and reporting to :meth:`report`; a runner passed in must report to :meth:`report` too
    (e.g. ``AttemptRunner(log_dir, node_id, report=lambda e: agent.report(e))``).
    ``replay_speedup`` switches to replay mode: no process is run, each attempt lasts its
    true runtime on this node's hardware (:func:`~streamsched.agents.runner.replay_runtime_s`)
    divided by ``replay_speedup`` wall seconds. ``progress_poll_s`` and
    ``progress_interval_s`` and ``replay_progress_after_s`` go to the default runner (see
    :class:`AttemptRunner`). ``allow_list`` restricts the executables real-mode attempts
    may run (None: any); ``node.labels`` are checked against each assignment's governance
    tags (see :class:`~streamsched.agents.runner.ExecutionGuard`).

    The default runner journals attempts in :func:`journal_path` ``(log_dir, node id)``,
    opened (and locked) here and closed when :meth:`run` returns or by :meth:`close`.

    Raises ValueError for a node or setting the wire format cannot carry,
    :class:`~streamsched.agents.journal.JournalBusyError` (a ValueError) when another
    executor holds the journal, OSError when the log directory is not writable.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        node: NodeSpec,
        runner: AttemptRunner | None = None,
        log_dir: Path | str = Path("streamsched-logs"),
        heartbeat_interval_s: float = 2.0,
        replay_speedup: float | None = None,
        progress_poll_s: float = 1.0,
        progress_interval_s: float = 5.0,
        replay_progress_after_s: float | None = None,
        allow_list: ExecAllowList | None = None,
    ) -> None:
        if heartbeat_interval_s <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {heartbeat_interval_s}")
        if replay_speedup is not None and not replay_speedup > 0:
            raise ValueError(f"replay speedup must be positive, got {replay_speedup}")
        self.config = dict(config)
        self.node = node
        self.heartbeat_interval_s = heartbeat_interval_s
        self.replay_speedup = replay_speedup
        self.topic = assignment_topic(node.hardware)
        self.source = f"executor:{node.node_id}"
        self.guard = ExecutionGuard(node.node_id, dict(node.labels), allow_list)
        self.partition: int | None = None  # known once run() has read the topic's metadata
        self._key = node.node_id.encode("utf-8")
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._assignments: dict[AttemptKey, Assignment] = {}
        self._sequence = 0
        self.ended = EndedAttempts()
        self._heartbeat(0, [])  # validates node id, hardware, capacity and labels now
        if runner is None:
            runner = AttemptRunner(
                Path(log_dir),
                node.node_id,
                report=self.report,
                progress_poll_s=progress_poll_s,
                progress_interval_s=progress_interval_s,
                replay_progress_after_s=replay_progress_after_s,
            )
            runner.open_journal(journal_path(log_dir, node.node_id))
        self.runner = runner
        self._assignments_seen: int | None = None
        self._load_assignments_seen()
        self._lag_due = 0.0

    def _load_assignments_seen(self) -> None:
        """Take the highest assignment sequence the journal kept from a previous run."""
        journal = self.runner.journal
        seen = None if journal is None else journal.assignments_seen
        if seen is not None:
            with self._lock:
                self._assignments_seen = max(seen, self._assignments_seen or 0)

    @property
    def assignments_seen(self) -> int | None:
        """The highest ``Assignment.sequence`` consumed (across restarts), None if unknown."""
        with self._lock:
            return self._assignments_seen

    def close(self) -> None:
        """Release the journal without running (:meth:`run` does this when it returns)."""
        self.runner.close_journal()

    # ------------------------------------------------------------------ main loop

    def run(self, stop: threading.Event) -> None:
        """Report the attempts a previous run left unfinished as lost, then consume and run
        assignments until ``stop`` is set; then stop running attempts (each reports
        ``task.lost``), flush the reports, close every client and the journal.

        Raises :class:`~streamsched.broker.BrokerError` or ``KafkaException`` when the
        cluster cannot be reached or the topics cannot be created.
        """
        try:
            self._run(stop)
        finally:
            self.runner.close_journal()

    def _run(self, stop: threading.Event) -> None:
        ensure_topics(
            self.config,
            {
                self.topic: ASSIGNMENT_PARTITIONS,
                TASK_EVENTS: EVENT_TOPIC_PARTITIONS,
                NODE_HEARTBEATS: EVENT_TOPIC_PARTITIONS,
            },
        )
        partitions = self._partition_count()
        self.partition = partition_for(self.node.node_id, partitions)
        producer = Producer({**self.config, "acks": "all", "linger.ms": 5})
        with self._lock:
            self._producer = producer
        consumer = Consumer(
            {
                **self.config,
                "group.id": f"executor-{self.node.node_id}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
            }
        )
        beats_stop = threading.Event()
        beats = threading.Thread(
            target=self._heartbeats, args=(beats_stop,), name="heartbeats", daemon=True
        )
        try:
            self._load_assignments_seen()  # a runner passed in may have opened it late
            self._remember_journaled_ends()
            lost = self.runner.recover()
            if lost:
                logger.warning("reported %d attempt(s) of a previous run as lost", len(lost))
            consumer.assign([TopicPartition(self.topic, self.partition)])
            logger.info(
                "executor %s (%s) reading %s partition %d of %d",
                self.node.node_id,
                self.node.hardware,
                self.topic,
                self.partition,
                partitions,
            )
            beats.start()
            while not stop.is_set():
                self._measure_lag(consumer)
                msg = consumer.poll(POLL_TIMEOUT_S)
                if msg is None:
                    continue
                batch = [msg, *consumer.consume(num_messages=BATCH_SIZE - 1, timeout=0)]
                self._handle_batch(consumer, batch)
        finally:
            beats_stop.set()
            if beats.is_alive():
                beats.join()
            self.runner.stop_all()
            left = producer.flush(FLUSH_TIMEOUT_S)
            if left:
                logger.warning("%d report(s) not delivered on stop", left)
            with self._lock:
                self._producer = None
            consumer.close()

    def _partition_count(self) -> int:
        """Partitions of the assignment topic (producer and executor both use this count)."""
        meta = AdminClient(self.config).list_topics(self.topic, timeout=15)
        count = len(meta.topics[self.topic].partitions)
        if count != ASSIGNMENT_PARTITIONS:
            logger.warning(
                "%s has %d partitions (expected %d); using %d",
                self.topic,
                count,
                ASSIGNMENT_PARTITIONS,
                count,
            )
        return count or ASSIGNMENT_PARTITIONS

    def _measure_lag(self, consumer: Consumer) -> None:
        """Set the consumer-lag gauge, at most every :data:`LAG_INTERVAL_S` (it asks the
        broker for the high watermark)."""
        now = time.monotonic()
        if now < self._lag_due or self.partition is None:
            return
        self._lag_due = now + LAG_INTERVAL_S
        partition = TopicPartition(self.topic, self.partition)
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=1.0, cached=False)
            (position,) = consumer.position([partition])
        except KafkaException as exc:
            logger.debug("cannot measure consumer lag: %s", exc)
            return
        offset = position.offset if position.offset >= 0 else low
        metrics.set_consumer_lag(COMPONENT, [(self.topic, high - offset)])

    def _handle_batch(self, consumer: Consumer, batch: list[Message]) -> None:
        """Handle each record of a batch in order, committing its offset after it."""
        records: list[tuple[Message, object]] = []
        for msg in batch:
            if msg.error() is not None:
                self._consumer_error(msg)
                continue
            metrics.EVENTS_CONSUMED.labels(COMPONENT, self.topic).inc()
            records.append((msg, self._decode(msg)))
        # Per attempt, the index of the last cancel of it in this batch: an assignment
        # before that index is cancelled later in the same batch.
        last_cancel: dict[AttemptKey, int] = {
            (record.task_id, record.attempt): index
            for index, (_, record) in enumerate(records)
            if isinstance(record, StopAttempt) and record.mode == "cancel"
        }
        for index, (msg, record) in enumerate(records):
            if record is not None:
                key = (getattr(record, "task_id", ""), getattr(record, "attempt", 0))
                later = last_cancel.get(key, -1) > index
                self._handle(record, _where(msg), frozenset({key}) if later else frozenset())
            self._commit(consumer, msg)

    def _decode(self, msg: Message) -> object:
        """The record of a message for this node, or None (another node's, or invalid:
        logged)."""
        if msg.key() != self._key:
            return None  # another node's assignment in the shared partition
        try:
            return codec.decode(msg.value() or b"", known_hardware=(self.node.hardware,))
        except InvalidEvent as exc:
            logger.error("skipping invalid record at %s: %s", _where(msg), exc)
            return None

    def _handle(
        self, record: object, where: str, cancelled: frozenset[AttemptKey] = frozenset()
    ) -> None:
        """Start the attempt of one decoded record (unless it is in ``cancelled``), stop
        one, or log why the record is skipped."""
        if isinstance(record, StopAttempt):
            self._stop(record, where)
            return
        if not isinstance(record, Assignment):
            kind = getattr(record, "type", type(record).__name__)
            logger.error("skipping %s at %s: not an assignment or a stop command", kind, where)
            return
        assignment = record
        if assignment.node_id != self.node.node_id:
            logger.error(
                "skipping assignment at %s: keyed %s but for node %r",
                where,
                self.node.node_id,
                assignment.node_id,
            )
            return
        try:
            self._start(assignment, where, cancelled)
        finally:
            # Only now, with the attempt running (or its end acknowledged and in `ended`),
            # does its sequence count as seen: a heartbeat never reports a sequence whose
            # attempt is in neither list unless the attempt really is gone.
            self._saw_assignment(assignment.sequence)

    def _start(self, assignment: Assignment, where: str, cancelled: frozenset[AttemptKey]) -> None:
        key = (assignment.task_id, assignment.attempt)
        if key in cancelled:
            logger.info(
                "not starting %s attempt %d at %s: cancelled later in the same batch", *key, where
            )
            return
        with self._lock:
            self._assignments.setdefault(key, assignment)
        try:
            verdict = self.guard.check(assignment, runs_command=self.replay_speedup is None)
            if verdict.refusal is not None:
                self._refuse(assignment, verdict.refusal, where)
                return
            if self.replay_speedup is None:
                self.runner.start(assignment, executable=verdict.executable)
                return
            try:
                runtime_s = replay_runtime_s(assignment, self.node.hardware)
            except ValueError as exc:
                self.runner.fail_unstarted(assignment, str(exc))
                return
            self.runner.start(assignment, replay_runtime_s=runtime_s, speedup=self.replay_speedup)
        except Exception:
            logger.exception("could not start %s attempt %d (%s)", *key, where)

    def _saw_assignment(self, sequence: int | None) -> None:
        """Raise ``assignments_seen`` to ``sequence`` (journaled first, so that a restarted
        executor never reports less)."""
        if sequence is None:
            return
        with self._lock:
            if self._assignments_seen is not None and sequence <= self._assignments_seen:
                return
        journal = self.runner.journal
        if journal is not None:
            journal.saw_assignment(sequence)
        with self._lock:
            self._assignments_seen = max(sequence, self._assignments_seen or 0)

    def _refuse(self, assignment: Assignment, refusal: Refusal, where: str) -> None:
        """Report a refused attempt as a non-retryable failure; log and count it once
        (a redelivered assignment of an attempt already ended is ignored)."""
        if not self.runner.fail_unstarted(assignment, refusal.reason):
            return
        metrics.EXECUTOR_REFUSALS.labels(refusal.kind).inc()
        logger.error(
            "refused %s attempt %d at %s: %s",
            assignment.task_id,
            assignment.attempt,
            where,
            refusal.reason,
        )

    def _stop(self, command: StopAttempt, where: str) -> None:
        """Preempt or cancel a running attempt; unknown attempts are ignored (fencing)."""
        if command.node_id != self.node.node_id:
            logger.error("skipping stop at %s: for node %r", where, command.node_id)
            return
        stop = self.runner.preempt if command.mode == "preempt" else self.runner.cancel
        if not stop(command.task_id, command.attempt):
            logger.info(
                "ignoring %s of %s attempt %d at %s: not running here",
                command.mode,
                command.task_id,
                command.attempt,
                where,
            )

    def _commit(self, consumer: Consumer, msg: Message) -> None:
        try:
            consumer.commit(message=msg, asynchronous=False)
        except KafkaException as exc:
            logger.warning("offset commit failed at offset %d: %s", msg.offset(), exc)

    def _consumer_error(self, msg: Message) -> None:
        error = msg.error()
        if error is not None and error.fatal():
            raise KafkaException(error)
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            logger.warning("consumer error on %s: %s", self.topic, error)

    # ------------------------------------------------------------------ reporting

    def report(self, event: LifecycleEvent) -> None:
        """Publish a lifecycle event to ``sched.tasks.events`` (thread-safe; the runner's
        report callback) and record its metrics.

        An attempt's terminal event is sent synchronously: this returns once the broker
        acknowledged it and raises :class:`ReportError` if it was not delivered within
        :data:`DELIVERY_TIMEOUT_S` (or the agent is not running). Other events are sent
        asynchronously (a failure is logged).
        """
        terminal = event.type not in _NON_TERMINAL
        self._record_metrics(event, terminal)
        delivered = self._produce(
            TASK_EVENTS, event.task_id, codec.encode(event), event.type, wait=terminal
        )
        if terminal and not delivered:
            raise ReportError(
                f"{event.type} of {event.task_id} attempt {event.attempt} was not delivered "
                f"to {TASK_EVENTS}"
            )
        if terminal:
            # Acknowledged: the attempt is `ended` from now on. The runner removes it from
            # its running set only after this returns (AttemptRunner._run_attempt), and
            # heartbeat() reads `running` before `ended`, so no heartbeat shows an attempt
            # in neither list while its terminal event may still be unread.
            self.ended.add((event.task_id, event.attempt))

    def _record_metrics(self, event: LifecycleEvent, terminal: bool) -> None:
        hardware = self.node.hardware
        key = (event.task_id, event.attempt)
        with self._lock:
            assignment = (
                self._assignments.pop(key, None) if terminal else self._assignments.get(key)
            )
        if event.type == "task.started" and assignment is not None:
            waited = (event.occurred_at - assignment.occurred_at).total_seconds()
            metrics.ASSIGNED_TO_STARTED.labels(hardware).observe(max(0.0, waited))
        if terminal:
            metrics.ATTEMPTS.labels(event.type.removeprefix("task."), hardware).inc()
        # An ending attempt stays in the runner's running set until this report returns.
        running = [k for k in self.runner.running() if not (terminal and k == key)]
        metrics.EXECUTOR_RUNNING.labels(hardware).set(len(running))

    def _produce(
        self, topic: str, key: str, value: bytes, event_type: str, wait: bool = False
    ) -> bool:
        """Queue a record; with ``wait``, serve deliveries until the broker acknowledged it.
        Returns False when it was dropped or (with ``wait``) not acknowledged in time."""
        with self._lock:
            producer = self._producer
        if producer is None:
            logger.warning("dropping %s for %s: the agent is not running", event_type, key)
            return False
        outcome = _Delivery()
        for _ in range(3):
            try:
                producer.produce(
                    topic,
                    value,
                    key=key.encode("utf-8"),
                    headers={"type": event_type},
                    on_delivery=outcome,
                )
                break
            except BufferError:  # local queue full: serve deliveries, retry
                producer.poll(0.5)
        else:
            logger.error("dropping %s for %s: producer queue full", event_type, key)
            return False
        producer.poll(0)
        if not wait:
            return True
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while not outcome.done.is_set() and time.monotonic() < deadline:
            producer.poll(0.05)
        return outcome.done.is_set() and outcome.error is None

    # ------------------------------------------------------------------ heartbeats

    def _remember_journaled_ends(self) -> None:
        """A restarted executor lists the attempts its journal says ended (the most recent
        first, up to the heartbeat's bound) as ended for :data:`ENDED_MEMORY_S` more: their
        terminal events may still be unread by the scheduler, which would otherwise take
        them for lost and run them again."""
        journal = getattr(self.runner, "journal", None)
        if journal is None:
            return
        for key in journal.ended_keys()[-self.ended.limit :]:
            self.ended.add(key)

    def heartbeat(self) -> NodeHeartbeat:
        """The next heartbeat of this node (sequence number advanced)."""
        with self._lock:
            sequence = self._sequence
            self._sequence += 1
            seen = self._assignments_seen
        # `running` first, `ended` second: an attempt enters `ended` before it leaves
        # `running`, so one missing from this `running` is in the later `ended` read.
        running = self.runner.running()
        still_running = set(running)
        ended = [key for key in self.ended.recent() if key not in still_running]
        return self._heartbeat(sequence, running, ended[-MAX_LIST_ITEMS:], seen)

    def _heartbeat(
        self,
        sequence: int,
        running: list[AttemptKey],
        ended: list[AttemptKey] | None = None,
        assignments_seen: int | None = None,
    ) -> NodeHeartbeat:
        with self._lock:
            gpus = {
                index
                for key in running
                if (assignment := self._assignments.get(key)) is not None
                for index in assignment.gpu_indices
            }
        node = self.node
        return NodeHeartbeat.model_validate(
            {
                "occurred_at": _utc_now(),
                "source": self.source,
                "node_id": node.node_id,
                "hardware": node.hardware,
                "capacity": {
                    "cpu_milli": node.cpu_milli,
                    "memory_mib": node.memory_mib,
                    "gpus": node.gpus,
                },
                "usage": {"cpu_milli": 0, "memory_mib": 0, "gpus": len(gpus)},
                "running": [{"task_id": t, "attempt": a} for t, a in running],
                "labels": dict(node.labels),
                "sequence": sequence,
                "ended": [{"task_id": t, "attempt": a} for t, a in ended or ()],
                "assignments_seen": assignments_seen,
            },
            context={CONTEXT_KNOWN_HARDWARE: frozenset({node.hardware})},
        )

    def _heartbeats(self, stop: threading.Event) -> None:
        """Publish a heartbeat now and every interval until ``stop`` is set."""
        while True:
            try:
                beat = self.heartbeat()
                self._produce(NODE_HEARTBEATS, self.node.node_id, codec.encode(beat), beat.type)
                metrics.HEARTBEATS.labels(self.node.hardware).inc()
                metrics.EXECUTOR_RUNNING.labels(self.node.hardware).set(len(beat.running))
            except Exception:
                logger.exception("heartbeat failed")
            if stop.wait(self.heartbeat_interval_s):
                return


def _where(msg: Message) -> str:
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"


class _Delivery:
    """A delivery callback that logs a failure and records the outcome of one record."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: KafkaError | None = None

    def __call__(self, error: KafkaError | None, msg: Message) -> None:
        if error is not None:
            logger.error("delivery to %s failed: %s", msg.topic(), error)
        self.error = error
        self.done.set()


__all__ = [
    "ENDED_MEMORY_S",
    "EVENT_TOPIC_PARTITIONS",
    "EndedAttempts",
    "ExecutorAgent",
    "ReportError",
]
