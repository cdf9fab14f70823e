"""The placement agent: one per cluster (the single writer of decisions).

Wire contract:

- Inputs: every partition of ``sched.tasks.submitted``, ``sched.nodes.heartbeats``,
  ``sched.tasks.events`` and ``sched.commands``, ``assign()``\\ ed directly (no consumer-group
  subscription, so no rebalance is ever waited for). Offsets are committed per partition
  under ``group.id = streamsched-placement`` after each batch has been handled and its
  outputs flushed; a restarted agent resumes from the committed offsets (else from the
  beginning). Delivery is at-least-once; the core ignores duplicate stimuli.
- Each batch is decoded (hardware classes named by heartbeats are accepted from then on),
  mapped to core events and applied in **one** :meth:`SchedulerCore.handle` call; every
  ``tick_s`` without input a bare tick lets time-based decisions happen.
- A record that does not decode is copied, bytes unchanged, to ``sched.deadletter`` with
  headers ``error.field``, ``error.reason``, ``source.topic``, ``source.partition`` and
  ``source.offset``; the agent never stops on bad input.
- Outputs: an assignment goes to ``sched.assignments.<hardware>`` (created on first use),
  key = node id, partition :func:`~streamsched.agents.partitioning.partition_for`; its
  decision audit and any ``task.rejected`` go to ``sched.decisions`` keyed by task id; a
  ``command.stop_attempt`` goes to the assignment topic of the node's hardware (known from
  its heartbeats), same key and partition rule. Every record carries header ``type``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from streamsched.agents.partitioning import ASSIGNMENT_PARTITIONS, partition_for
from streamsched.broker import ensure_topics
from streamsched.scheduler import events as core_events
from streamsched.scheduler.convert import core_event_from_wire, wire_from_instruction
from streamsched.scheduler.core import CoreConfig, SchedulerCore
from streamsched.scheduler.forecasting import RunningMeanForecaster
from streamsched.scheduler.policies import get_policy
from streamsched.schemas import codec
from streamsched.schemas.commands import StopAttempt
from streamsched.schemas.decisions import Assignment, DecisionAudit
from streamsched.schemas.errors import PAYLOAD_FIELD, InvalidEvent
from streamsched.schemas.hardware import assignment_topic, is_valid_hardware_name
from streamsched.schemas.nodes import NodeHeartbeat
from streamsched.schemas.tasks import TaskRejected, TaskSubmitted
from streamsched.schemas.topics import (
    COMMANDS,
    CORE_TOPICS,
    DEAD_LETTER,
    DECISIONS,
    NODE_HEARTBEATS,
    TASK_EVENTS,
    TASKS_SUBMITTED,
)

logger = logging.getLogger(__name__)

#: Consumer group under which the agent commits its input offsets.
GROUP_ID = "streamsched-placement"
#: Topics the agent reads, every partition.
INPUT_TOPICS: tuple[str, ...] = (TASKS_SUBMITTED, NODE_HEARTBEATS, TASK_EVENTS, COMMANDS)
#: Partitions of the core topics when the agent creates them (the dead letter topic: 1).
CORE_TOPIC_PARTITIONS = 4
#: Records per consumed batch, and how long a batch may wait for them.
BATCH_SIZE = 500
BATCH_TIMEOUT_S = 0.2
#: How long a flush may take (after a batch, and on stop).
FLUSH_TIMEOUT_S = 10.0


class PlacementAgent:
    """The placement agent against the Kafka cluster of ``config`` (a librdkafka client
    configuration, e.g. from :func:`streamsched.broker.client_config`).

    ``policy`` names a scheduling policy (:func:`~streamsched.scheduler.policies.get_policy`;
    ValueError if unknown); ``decision_prefix`` prefixes decision ids and must differ
    between agent instances that do not replay each other's inputs; ``clock`` gives core
    time (Unix epoch seconds).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        policy: str = "forecast",
        decision_prefix: str = "d",
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        heartbeat_timeout_s: float | None = 15.0,
    ) -> None:
        if not tick_s > 0:
            raise ValueError(f"tick must be positive, got {tick_s}")
        self.config = dict(config)
        self.tick_s = tick_s
        self.clock = clock
        self.source = f"placement:{decision_prefix}"
        self.core = SchedulerCore(
            get_policy(policy),
            RunningMeanForecaster(),
            CoreConfig(decision_prefix=decision_prefix, heartbeat_timeout_s=heartbeat_timeout_s),
        )
        #: Wire submissions by task id (the first one seen; assignments need its command).
        self.submissions: dict[str, TaskSubmitted] = {}
        #: Node id -> hardware class, from heartbeats (routes stop commands).
        self.node_hardware: dict[str, str] = {}
        #: Hardware classes named by heartbeats so far (accepted when decoding).
        self.known_hardware: set[str] = set()
        self._assignment_partitions: dict[str, int] = {}  # topic -> partitions (ensured)
        self._producer: Producer | None = None

    # ------------------------------------------------------------------ main loop

    def run(self, stop: threading.Event) -> None:
        """Place tasks until ``stop`` is set; then flush and close every client.

        Raises :class:`~streamsched.broker.BrokerError` or ``KafkaException`` when the
        cluster cannot be reached or the topics cannot be created.
        """
        ensure_topics(
            self.config,
            {t: (1 if t == DEAD_LETTER else CORE_TOPIC_PARTITIONS) for t in CORE_TOPICS},
        )
        meta = AdminClient(self.config).list_topics(timeout=15).topics
        producer = Producer({**self.config, "acks": "all", "linger.ms": 5})
        self._producer = producer
        consumer = Consumer(
            {
                **self.config,
                "group.id": GROUP_ID,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
            }
        )
        try:
            wanted = [
                TopicPartition(topic, p) for topic in INPUT_TOPICS for p in meta[topic].partitions
            ]
            committed = consumer.committed(wanted, timeout=15)
            consumer.assign(
                [
                    TopicPartition(tp.topic, tp.partition, tp.offset)
                    if tp.offset >= 0
                    else TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING)
                    for tp in committed
                ]
            )
            logger.info("placement %s reading %d partitions", self.source, len(wanted))
            last_cycle = time.monotonic()
            while not stop.is_set():
                batch = consumer.consume(num_messages=BATCH_SIZE, timeout=BATCH_TIMEOUT_S)
                records = [m for m in batch if self._ok(m)]
                if records:
                    self.handle_batch(records)
                    last_cycle = time.monotonic()
                    self._commit(consumer, records)
                elif time.monotonic() - last_cycle >= self.tick_s:
                    self._emit(self._handle_core(()))
                    last_cycle = time.monotonic()
        finally:
            left = producer.flush(FLUSH_TIMEOUT_S)
            if left:
                logger.warning("%d record(s) not delivered on stop", left)
            self._producer = None
            consumer.close()

    def handle_batch(self, records: list[Message]) -> None:
        """Decode ``records``, apply them to the core in one call, publish the outcome and
        flush (dead letters included)."""
        stimuli: list[core_events.Event] = []
        for msg in records:
            event = self._decode(msg)
            if event is None:
                continue
            if isinstance(event, TaskSubmitted):
                self.submissions.setdefault(event.task_id, event)
            elif isinstance(event, NodeHeartbeat):
                self.node_hardware[event.node_id] = event.hardware
            stimulus = core_event_from_wire(event, now_s=self.clock())
            if stimulus is not None:
                stimuli.append(stimulus)
        self._emit(self._handle_core(stimuli))

    def _handle_core(self, stimuli: list[core_events.Event] | tuple[()]) -> list[Any]:
        try:
            return self.core.handle(*stimuli, now=self.clock())
        except Exception:  # a core bug must not stop placement for everyone else
            logger.exception("the core failed on a batch of %d event(s)", len(stimuli))
            return []

    # ------------------------------------------------------------------ input

    def _ok(self, msg: Message) -> bool:
        error = msg.error()
        if error is None:
            return True
        if error.fatal():
            raise KafkaException(error)
        if error.code() != KafkaError._PARTITION_EOF:
            logger.warning("consumer error on %s: %s", msg.topic(), error)
        return False

    def _decode(self, msg: Message) -> codec.Event | None:
        """The event of ``msg``, or ``None`` after dead-lettering it."""
        raw = msg.value() or b""
        if msg.topic() == NODE_HEARTBEATS:
            self._learn_hardware(raw)
        try:
            return codec.decode(raw, known_hardware=self.known_hardware)
        except InvalidEvent as exc:
            self._dead_letter(msg, exc.field, exc.reason)
        except Exception as exc:  # anything else undecodable is bad input too
            self._dead_letter(msg, PAYLOAD_FIELD, f"{type(exc).__name__}: {exc}")
        return None

    def _learn_hardware(self, raw: bytes) -> None:
        """A heartbeat introduces its node's hardware class (it may be a new one)."""
        try:
            data = json.loads(raw)
        except ValueError:
            return
        hardware = data.get("hardware") if isinstance(data, dict) else None
        if isinstance(hardware, str) and is_valid_hardware_name(hardware):
            self.known_hardware.add(hardware)

    def _dead_letter(self, msg: Message, field: str, reason: str) -> None:
        where = (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
        logger.error("dead-lettering %s[%d]@%d: %s: %s", *where, field, reason)
        headers: list[tuple[str, str | bytes | None]] = [
            ("error.field", field),
            ("error.reason", reason),
            ("source.topic", where[0]),
            ("source.partition", str(where[1])),
            ("source.offset", str(where[2])),
        ]
        self._produce(DEAD_LETTER, msg.key(), msg.value() or b"", headers)

    def _commit(self, consumer: Consumer, records: list[Message]) -> None:
        nxt: dict[tuple[str, int], int] = {}
        for msg in records:
            key = (msg.topic() or "", msg.partition() or 0)
            nxt[key] = max(nxt.get(key, 0), (msg.offset() or 0) + 1)
        offsets = [TopicPartition(t, p, o) for (t, p), o in nxt.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            logger.warning("offset commit failed: %s", exc)

    # ------------------------------------------------------------------ output

    def _emit(self, instructions: list[Any]) -> None:
        """Publish the wire records of ``instructions``, then flush."""
        for ins in instructions:
            try:
                out = wire_from_instruction(
                    ins,
                    submissions=self.submissions,
                    occurred_at=datetime.now(UTC),
                    source=self.source,
                )
            except Exception:
                logger.exception("cannot publish %r", ins)
                continue
            if isinstance(out, tuple):
                assignment, audit = out
                self._to_node(assignment, assignment.node_id, assignment.hardware)
                self._event(DECISIONS, assignment.task_id, audit)
            elif isinstance(out, TaskRejected):
                self._event(DECISIONS, out.task_id, out)
            elif isinstance(out, StopAttempt):
                hardware = self.node_hardware.get(out.node_id)
                if hardware is None:
                    logger.error("dropping %s: hardware of node %r unknown", out.type, out.node_id)
                    continue
                self._to_node(out, out.node_id, hardware)
        if self._producer is not None and len(self._producer):
            left = self._producer.flush(FLUSH_TIMEOUT_S)
            if left:
                logger.error("%d record(s) not delivered after a batch", left)

    def _to_node(self, event: Assignment | StopAttempt, node_id: str, hardware: str) -> None:
        topic = assignment_topic(hardware)
        partitions = self._assignment_partitions.get(topic)
        if partitions is None:
            ensure_topics(self.config, {topic: ASSIGNMENT_PARTITIONS})
            meta = AdminClient(self.config).list_topics(topic, timeout=15)
            partitions = len(meta.topics[topic].partitions) or ASSIGNMENT_PARTITIONS
            self._assignment_partitions[topic] = partitions
        self._produce(
            topic,
            node_id.encode("utf-8"),
            codec.encode(event),
            [("type", event.type)],
            partition=partition_for(node_id, partitions),
        )

    def _event(self, topic: str, key: str | None, event: DecisionAudit | TaskRejected) -> None:
        raw_key = key.encode("utf-8") if key is not None else None
        self._produce(topic, raw_key, codec.encode(event), [("type", event.type)])

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]],
        partition: int | None = None,
    ) -> None:
        producer = self._producer
        if producer is None:
            logger.warning("dropping a record for %s: the agent is not running", topic)
            return
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        for _ in range(3):
            try:
                producer.produce(
                    topic, value, key=key, headers=headers, on_delivery=_log_delivery, **extra
                )
                break
            except BufferError:  # local queue full: serve deliveries, retry
                producer.poll(0.5)
        else:
            logger.error("dropping a record for %s: producer queue full", topic)
        producer.poll(0)


def _log_delivery(error: KafkaError | None, msg: Message) -> None:
    if error is not None:
        logger.error("delivery to %s failed: %s", msg.topic(), error)


__all__ = ["GROUP_ID", "INPUT_TOPICS", "PlacementAgent"]
