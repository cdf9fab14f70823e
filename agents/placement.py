"""The placement agent: one per cluster (the single writer of decisions).

Wire contract:

- Inputs: every partition of ``sched.tasks.submitted``, ``sched.nodes.heartbeats``,
  ``sched.tasks.events`` and ``sched.commands``, ``assign()``\\ ed directly (no consumer-group
  subscription, so no rebalance is ever waited for). Offsets are committed per partition
  under ``group.id = streamsched-placement`` after each batch has been handled and its
  outputs flushed (outputs are durable before the inputs that caused them are committed);
  a restarted agent resumes from the committed offsets (else from the beginning).
  Delivery is at-least-once; the core ignores duplicate stimuli.
- Batching: the loop blocks for the first record only, then takes what the consumer has
  already fetched (up to :data:`BATCH_SIZE`, without waiting). A lone record is handled
  at once (low latency at low load); under load, batches grow by themselves and the per
  batch costs (one core call, one flush, one commit) are shared (throughput at high load).
- Each batch is decoded (hardware classes named by heartbeats are accepted from then on),
  mapped to core events and applied in **one** :meth:`SchedulerCore.handle` call; every
  ``tick_s`` without input a bare tick lets time-based decisions happen.
- A record that does not decode is copied, bytes unchanged, to ``sched.deadletter`` with
  headers ``error.field``, ``error.reason``, ``source.topic``, ``source.partition`` and
  ``source.offset``; the agent never stops on bad input.
- Journal (wall-clock mode): every core call is journaled to
  ``sched.placement.journal.<decision prefix>`` before its outputs are produced, and a
  restarted agent rebuilds its state from it (:mod:`.placement_journal`).
- Outputs: an assignment goes to ``sched.assignments.<hardware>`` (created on first use),
  key = node id, partition :func:`~streamsched.agents.partitioning.partition_for`; its
  decision audit (assignments, preemptions, and a shadow policy's would-be placements,
  ``kind="shadow"``, which never go to an assignment topic), any ``task.rejected``, and a
  ``task.ended``
  for every task the core settles go to ``sched.decisions`` keyed by task id, as does
  the ``task.cancel_outcome`` answering each cancel command (accepted or refused, with
  who asked and why), and a ``task.requeued`` for every attempt the core takes back; the
  ``policy.changed`` outcome of each policy update (accepted or refused, with its source
  as ``requested_by``) goes there keyed ``"policy"``, each ``breaker.changed`` keyed
  ``"breaker"``; a
  ``command.stop_attempt`` goes to the assignment topic of the node's hardware (known from
  its heartbeats), same key and partition rule. Every record carries header ``type``.
- Metrics (:mod:`streamsched.metrics`, see docs/metrics.md): submissions by outcome,
  decisions, assignments, re-assignments, queue depth per hardware class, queued and
  running tasks, core latency per batch, submit-to-assigned latency, consumer lag
  (``component="placement"``), records consumed and dead-lettered.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from streamsched import metrics
from streamsched.agents.partitioning import ASSIGNMENT_PARTITIONS, partition_for
from streamsched.agents.placement_journal import (
    InputFetcher,
    JournalError,
    JournalHeader,
    JournalWriter,
    Run,
    digest,
    dump_state,
    journal_topic,
    load_state,
    read_journal,
    runs_of,
)
from streamsched.broker import ensure_topics
from streamsched.scheduler import events as core_events
from streamsched.scheduler.convert import (
    cancel_outcome_to_wire,
    core_event_from_wire,
    core_time_from_datetime,
    wire_records_from_instruction,
)
from streamsched.scheduler.core import CoreConfig, SchedulerCore
from streamsched.scheduler.forecasting import RuntimeForecaster
from streamsched.scheduler.instructions import (
    Assign,
    CancelRefused,
    DeadlineInfeasible,
    Instruction,
    Learned,
    PolicyRejected,
    PolicyUpdated,
    Preempt,
    Reject,
    ShadowAssign,
    StaleEvent,
    TaskTransition,
)
from streamsched.scheduler.instructions import BreakerChanged as CoreBreakerChanged
from streamsched.scheduler.instructions import StopAttempt as CoreStopAttempt
from streamsched.scheduler.model import TaskState
from streamsched.scheduler.policies import get_policy
from streamsched.scheduler.simulator import forecaster_for
from streamsched.scheduler.trace import ReplayClock
from streamsched.schemas import codec
from streamsched.schemas.commands import CancelTask, PolicyUpdate, StopAttempt
from streamsched.schemas.deadletter import bounded_value
from streamsched.schemas.decisions import (
    Assignment,
    BreakerChanged,
    CancelOutcome,
    DecisionAudit,
    PolicyChanged,
    TaskEnded,
    TaskRequeued,
)
from streamsched.schemas.errors import PAYLOAD_FIELD, InvalidEvent
from streamsched.schemas.hardware import assignment_topic, hardware_named_in
from streamsched.schemas.nodes import NodeHeartbeat
from streamsched.schemas.tasks import TaskRejected, TaskSubmitted
from streamsched.schemas.tenancy import body_tenant_of, resolve_tenant
from streamsched.schemas.topics import (
    COMMANDS,
    CORE_TOPIC_PARTITIONS,
    DEAD_LETTER,
    DECISIONS,
    NODE_HEARTBEATS,
    TASK_EVENTS,
    TASKS_SUBMITTED,
)

logger = logging.getLogger(__name__)

#: Consumer group under which the agent commits its input offsets.
GROUP_ID = "streamsched-placement"
#: How long a submission waits for an upstream task it names but the agent has not seen:
#: submissions are keyed by task id, so a dependent can overtake its upstream when they
#: land on different partitions.
UNKNOWN_UPSTREAM_GRACE_S = 60.0
#: Topics the agent reads, every partition.
INPUT_TOPICS: tuple[str, ...] = (TASKS_SUBMITTED, NODE_HEARTBEATS, TASK_EVENTS, COMMANDS)
#: Most records per batch (one core call, one flush, one commit).
BATCH_SIZE = 500
#: Longest the loop blocks waiting for a first record (then checks ``stop`` and ticks).
POLL_TIMEOUT_S = 0.2
#: Event-time mode (replay): how far behind the replay clock the watermark runs (wall
#: seconds; events delayed more than this are applied late), and how often it is checked.
REPLAY_LATENESS_S = 0.25
EVENT_TIME_POLL_S = 0.01
#: Wall seconds a node may be silent before the core declares it lost and re-queues its
#: attempts (``CoreConfig.heartbeat_timeout_s``): five missed heartbeats at the executor's
#: default interval (2 s). Detection to re-queue takes at most this plus one second
#: (expiry is checked once per second) plus one tick: within 15 s. Kubernetes evicts the
#: pods of an unreachable node after 300 s by default.
HEARTBEAT_TIMEOUT_S = 10.0
#: Wall seconds an attempt may be missing from its node's heartbeats before the core
#: declares it lost (``CoreConfig.reconcile_grace_s``): e.g. an executor that restarted
#: without its journal, or an assignment lost on the way.
RECONCILE_GRACE_S = 10.0
#: Queued tasks a tenant may have before its further submissions are refused
#: (``CoreConfig.max_queued_per_tenant``; the rejection names the bound). Bounds the
#: agent's memory under a burst: a queued task costs about 8 KB (7.7 KB measured with
#: tracemalloc for a one-GPU submission with a short command, its wire submission
#: included), so about 80 MB per tenant at the bound. Slurm's default job limit
#: (``MaxJobCount``) is the same number, for the whole cluster.
MAX_QUEUED_PER_TENANT = 10_000
#: Seconds of decoding and core work after which the agent snapshots its state to the
#: journal (a restart then replays only what came after; see :meth:`_maybe_snapshot`).
SNAPSHOT_AFTER_WORK_S = 10.0
#: How long a flush may take (after a batch, and on stop).
FLUSH_TIMEOUT_S = 10.0
#: Unread records on a heartbeat or attempt-event partition beyond which the agent
#: counts itself behind (one heartbeat per node every 2 s; a few records of slack absorb
#: fetch timing).
BEHIND_RECORDS = 8
#: How often the heartbeat and attempt-event backlog is checked, and how long the
#: broker may take to answer.
BEHIND_CHECK_S = 1.0
WATERMARK_TIMEOUT_S = 2.0
#: ``streamsched_breaker_state`` values.
BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}
#: Gauges (queue depth, running, consumer lag) are refreshed at most this often.
GAUGE_INTERVAL_S = 1.0
#: Value of the ``component`` label of the agent's metrics.
COMPONENT = "placement"

#: librdkafka settings of the agent's consumer, for latency. A broker answers a fetch as
#: soon as ``fetch.min.bytes`` are there or after ``fetch.wait.max.ms``. Apache Kafka
#: answers early, so there the wait only bounds how often an idle consumer asks. The
#: embedded Tansu broker answers an empty fetch only after the full wait: with the default
#: (500 ms) an idle hop takes about 250 ms (round trip measured: 52 ms at 100 ms, 12 ms at
#: 20 ms, 4 ms at 5 ms), while each fetch costs it CPU (two idle consumers: 3% of a core
#: at 100 ms, 25% at 5 ms, 72% at 1 ms). 10 ms bounds an idle hop at 10 ms for a few
#: percent of a core. Under load fetches find data and return at once; the throughput of
#: ``streamsched bench pipeline`` differed less between 5, 10 and 20 ms than between runs.
#: Settings from the environment (``STREAMSCHED_KAFKA_FETCH_WAIT_MAX_MS``, see
#: :mod:`streamsched.settings`) win.
CONSUMER_TUNING: dict[str, Any] = {"fetch.wait.max.ms": 10, "fetch.min.bytes": 1}
#: librdkafka settings of the agent's producer (the environment takes precedence). Batches
#: are not flushed one by one (see :class:`InFlight`), so the linger bounds how long an
#: output waits to be sent; a few milliseconds still group a batch's records into few
#: requests (with ``linger.ms=0`` the embedded broker spent a whole core on one request
#: per record at 1000 submissions/s). ``acks=all`` is not a tuning knob and is always set.
PRODUCER_TUNING: dict[str, Any] = {"linger.ms": 5}
#: Batches whose outputs may be in flight at once before the agent waits for them.
MAX_IN_FLIGHT_BATCHES = 64
#: Commands remembered until the core answers them (cancel and policy outcomes name who
#: asked); beyond this many unanswered ones, the oldest are forgotten.
MAX_PENDING_REQUESTS = 10_000

_S = TaskState
_HOLDS = frozenset({_S.ASSIGNED, _S.RUNNING})


@dataclass(slots=True)
class LoopTimings:
    """Where the agent's time goes, accumulated since start (seconds, counts). Cheap:
    a few clock reads per batch, none per record."""

    batches: int = 0
    records: int = 0
    ticks: int = 0
    #: Decoding records and mapping them to core events.
    decode_s: float = 0.0
    #: :meth:`SchedulerCore.handle` (batches and ticks).
    core_s: float = 0.0
    #: Turning instructions into wire records, encoding and handing them to the producer.
    publish_s: float = 0.0
    #: Waiting for the broker to acknowledge a batch's outputs.
    flush_s: float = 0.0
    #: Committing input offsets (asynchronous: the time to send the request).
    commit_s: float = 0.0
    #: Metrics bookkeeping and gauge refreshes.
    metrics_s: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class StateGauges:
    """Queue depth per hardware class, queued and running counts, kept up to date from the
    core's instructions (O(instructions), never a scan of the core's tasks).

    ``queued_any`` counts queued tasks allowed on any class; ``queued_on[h]`` those that
    name ``h`` among their allowed classes; ``running_on[task_id]`` is the class of each
    task that holds a node. Queue depth of class ``h`` is ``queued_any + queued_on[h]``.
    """

    def __init__(self) -> None:
        self.queued_any = 0
        self.queued_on: dict[str, int] = {}
        self.queued = 0
        self.running_on: dict[str, str] = {}
        self.running_count: dict[str, int] = {}

    def on_transition(self, ins: TaskTransition, allowed: Iterable[str]) -> None:
        """Account for one transition; ``allowed`` is the task's allowed hardware classes."""
        if ins.old is _S.QUEUED:
            self._queue_add(allowed, -1)
        if ins.new is _S.QUEUED:
            self._queue_add(allowed, +1)
        if ins.old in _HOLDS and ins.new not in _HOLDS:
            hardware = self.running_on.pop(ins.task_id, None)
            if hardware is not None:
                self.running_count[hardware] -= 1

    def on_assign(self, task_id: str, hardware: str) -> None:
        previous = self.running_on.get(task_id)
        if previous is not None:  # cannot happen (assign follows a release); stay exact
            self.running_count[previous] -= 1
        self.running_on[task_id] = hardware
        self.running_count[hardware] = self.running_count.get(hardware, 0) + 1

    def queue_depth(self, classes: Iterable[str]) -> dict[str, int]:
        """Queued tasks that may run on each of ``classes`` (and on any class they name)."""
        names = set(classes) | set(self.queued_on)
        return {h: self.queued_any + self.queued_on.get(h, 0) for h in sorted(names)}

    def _queue_add(self, allowed: Iterable[str], delta: int) -> None:
        self.queued += delta
        named = False
        for hardware in allowed:
            named = True
            self.queued_on[hardware] = self.queued_on.get(hardware, 0) + delta
        if not named:
            self.queued_any += delta


def replay_clock(
    start_epoch_s: float, speedup: float
) -> tuple[Callable[[], float], Callable[[datetime], float]]:
    """The core clock of a trace replay, ``(time.time() - start_epoch_s) * speedup`` (trace
    seconds since the replay began), and the same mapping for wire times (heartbeat
    ``occurred_at``, deadlines). ValueError unless ``speedup`` is a finite number > 0 and
    ``start_epoch_s`` is finite."""
    replay = ReplayClock(start_epoch_s, speedup)

    def clock() -> float:
        return replay.trace(time.time())

    def core_time(moment: datetime) -> float:
        return replay.trace(core_time_from_datetime(moment))

    return clock, core_time


class PlacementAgent:
    """The placement agent against the Kafka cluster of ``config`` (a librdkafka client
    configuration, e.g. from :func:`streamsched.broker.client_config`).

    ``policy`` names a scheduling policy (:func:`~streamsched.scheduler.policies.get_policy`;
    ValueError if unknown); ``decision_prefix`` prefixes decision ids and must differ
    between agent instances that do not replay each other's inputs; ``clock`` gives core
    time (Unix epoch seconds by default). ``tick_s`` and ``heartbeat_timeout_s`` are wall
    seconds.

    Replay: with ``replay_start`` (epoch seconds) the core clock is
    ``(time.time() - replay_start) * replay_speedup``, trace seconds since the replay
    began, and ``clock`` is ignored; wire times (heartbeat ``occurred_at``, deadlines) map
    to core time the same way (:attr:`core_time`). Durations given in wall seconds are
    converted to core seconds by multiplying by the speedup: the heartbeat timeout given
    to the core is
    ``heartbeat_timeout_s * replay_speedup`` (a node silent for ``heartbeat_timeout_s`` wall
    seconds is lost), and a bare tick every ``tick_s`` wall seconds advances core time by
    ``tick_s * replay_speedup``. ValueError unless ``replay_speedup`` > 0 (finite).
    ``SUBMIT_TO_ASSIGNED`` stays in wall seconds (it compares envelope times). The
    heartbeat reconciliation grace ``reconcile_grace_s`` is scaled the same way.

    A replay also runs on **event time**: each event is applied at the core time of its own
    ``occurred_at`` (the moment the producer observed it). Events are held until a
    watermark, the replay clock minus ``replay_lateness_s`` wall seconds, passes them, then
    applied in time order, groups of equal time in one call, as the simulator applies
    them; an event later than that is applied at the latest time already reached (time
    never goes back). The records a decision produces carry the wall time of its core time,
    so a replaying executor's attempt ends at decision + runtime on the trace's clock. A
    compressed replay turns milliseconds of delivery and batching into minutes of trace
    time; on event time the core sees arrivals and completions when they happened, so the
    live decisions can be compared with the simulated ones. Input offsets are committed
    only past records already applied. Idle ticks run at the watermark.

    ``group_id`` is the consumer group of the input offsets; ``start_at_end`` makes
    partitions without a committed offset start at their end instead of their beginning
    (for benchmarks on a cluster with history).

    ``forecaster`` replaces the policy's fresh forecaster, e.g. with one restored from
    the stream processor's newest checkpoint (a warm start; see ``streamsched
    placement --warm-start``).

    ``journal`` (wall-clock mode only) journals every core call and restores the core
    from the journal on start (:mod:`.placement_journal`); ``forecaster_identity`` names
    the runtime model the core starts from, for the journal's header (a restart must
    start from the same one). ``max_queued_per_tenant`` bounds each tenant's queue
    (admission control); ``core_options`` sets any other
    :class:`~streamsched.scheduler.core.CoreConfig` field (retry backoff, breaker, cancel
    operators).

    ``submissions`` holds the wire submission of each task the core still needs it for
    (assignments copy its command and env); an entry is dropped as soon as the core has
    the task in a terminal state or refused it, so memory follows the live tasks only.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        policy: str = "forecast-river",
        decision_prefix: str = "d",
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        heartbeat_timeout_s: float | None = HEARTBEAT_TIMEOUT_S,
        reconcile_grace_s: float | None = RECONCILE_GRACE_S,
        replay_start: float | None = None,
        replay_speedup: float = 1.0,
        replay_lateness_s: float = REPLAY_LATENESS_S,
        group_id: str = GROUP_ID,
        start_at_end: bool = False,
        forecaster: RuntimeForecaster | None = None,
        journal: bool = True,
        forecaster_identity: Mapping[str, Any] | None = None,
        max_queued_per_tenant: int | None = MAX_QUEUED_PER_TENANT,
        core_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not tick_s > 0:
            raise ValueError(f"tick must be positive, got {tick_s}")
        #: The replay's wall <-> core mapping (validates the speed-up, replay or not).
        self._replay = ReplayClock(replay_start or 0.0, replay_speedup)
        #: Wire time (an aware datetime) -> core time.
        self.core_time: Callable[[datetime], float] = core_time_from_datetime
        #: Replay: core time follows the events' own times (see the class docstring).
        self.event_time = replay_start is not None
        if replay_start is not None:
            clock, self.core_time = replay_clock(replay_start, replay_speedup)
            if heartbeat_timeout_s is not None:
                heartbeat_timeout_s *= replay_speedup
            if reconcile_grace_s is not None:
                reconcile_grace_s *= replay_speedup
        #: Event-time mode: the latest core time applied; events held until the watermark
        #: (replay clock - lateness) passes them.
        self._now = -math.inf
        self._lateness = replay_lateness_s * replay_speedup
        self._held = HeldEvents()
        self.config = dict(config)
        self.tick_s = tick_s
        self.clock = clock
        self.group_id = group_id
        self.start_at_end = start_at_end
        self.source = f"placement:{decision_prefix}"
        live_policy = get_policy(policy)
        self.core = SchedulerCore(
            live_policy,
            forecaster if forecaster is not None else forecaster_for(live_policy),
            CoreConfig(
                **{
                    "decision_prefix": decision_prefix,
                    "heartbeat_timeout_s": heartbeat_timeout_s,
                    "reconcile_grace_s": reconcile_grace_s,
                    "unknown_upstream_grace_s": UNKNOWN_UPSTREAM_GRACE_S,
                    "max_queued_per_tenant": max_queued_per_tenant,
                    **dict(core_options or {}),
                }
            ),
        )
        #: Wire submissions by task id, while the core may still need them (see above).
        self.submissions: dict[str, TaskSubmitted] = {}
        #: Commands (cancel, policy update) by event id until the core answers them: their
        #: outcomes on ``sched.decisions`` name who asked.
        self._requests: dict[str, CancelTask | PolicyUpdate] = {}
        #: Node id -> hardware class, from heartbeats (routes stop commands).
        self.node_hardware: dict[str, str] = {}
        #: Hardware classes named by heartbeats so far (accepted when decoding).
        self.known_hardware: set[str] = set()
        #: Where the loop's time went (read by ``streamsched bench pipeline``).
        self.timings = LoopTimings()
        self.gauges = StateGauges()
        self._assignment_partitions: dict[str, int] = {}  # topic -> partitions (ensured)
        self._in_flight = InFlight()
        self._producer: Producer | None = None
        self._next_gauges = 0.0
        #: The journal (wall-clock mode; see :mod:`.placement_journal`): its topic, the
        #: header a restart must match, its writer while running.
        self.journal_topic = (
            journal_topic(decision_prefix) if journal and not self.event_time else None
        )
        if forecaster_identity is None:
            forecaster_identity = (
                {"kind": "cold"}
                if forecaster is None
                else {
                    "kind": "given",
                    "name": getattr(forecaster, "name", type(forecaster).__name__),
                }
            )
        self.journal_header = JournalHeader(
            policy=policy,
            decision_prefix=decision_prefix,
            core_config=_jsonable(asdict(self.core.config)),
            forecaster=dict(forecaster_identity),
        )
        self._journal: JournalWriter | None = None
        #: While restoring: outputs are not produced (they were delivered before), and
        #: entries are not journaled again.
        self._replaying = False
        self._suppress = False
        self._last_digest = ""
        #: What the last restore did (read by tests and ``streamsched chaos``).
        self.restore = RestoreReport()
        #: Per input partition, the last offset journaled (restored from snapshots too).
        self._journaled_through: dict[tuple[str, int], int] = {}
        self._work_at_snapshot = 0.0
        self._snapshot_cost_s = 0.0
        #: Behind on heartbeats or attempt events (see :meth:`_inputs_behind`).
        self._consumer: Consumer | None = None
        self._watched_partitions: list[TopicPartition] = []
        self._assigned_at: dict[tuple[str, int], int] = {}
        self._behind = False
        self._behind_checked = -math.inf
        self._replay_behind = False

    # ------------------------------------------------------------------ main loop

    def run(self, stop: threading.Event) -> None:
        """Place tasks until ``stop`` is set; then flush and close every client.

        Raises :class:`~streamsched.broker.BrokerError` or ``KafkaException`` when the
        cluster cannot be reached or the topics cannot be created.
        """
        ensure_topics(
            self.config,
            CORE_TOPIC_PARTITIONS,
        )
        meta = AdminClient(self.config).list_topics(timeout=15).topics
        producer = Producer({**PRODUCER_TUNING, **self.config, "acks": "all"})
        self._producer = producer
        consumer = Consumer(
            {
                **CONSUMER_TUNING,
                **self.config,
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "on_commit": _log_commit,
            }
        )
        try:
            wanted = [
                TopicPartition(topic, p) for topic in INPUT_TOPICS for p in meta[topic].partitions
            ]
            start = OFFSET_END if self.start_at_end else OFFSET_BEGINNING
            committed = {
                (tp.topic, tp.partition): tp.offset
                for tp in consumer.committed(wanted, timeout=15)
                if tp.offset >= 0
            }
            positions = dict(committed)
            if self.journal_topic is not None:
                self._journal = JournalWriter(self.config, self.journal_topic)
                for tp, last in self._restore(committed).items():
                    positions[tp] = max(positions.get(tp, 0), last + 1)
            consumer.assign(
                [
                    TopicPartition(
                        tp.topic, tp.partition, positions.get((tp.topic, tp.partition), start)
                    )
                    for tp in wanted
                ]
            )
            logger.info("placement %s reading %d partitions", self.source, len(wanted))
            self._consumer = consumer
            self._assigned_at = {
                (tp.topic, tp.partition): positions.get((tp.topic, tp.partition), start)
                for tp in wanted
            }
            self._watched_partitions = [
                tp for tp in wanted if tp.topic in (NODE_HEARTBEATS, TASK_EVENTS)
            ]
            self._loop(consumer, wanted, stop)
        finally:
            left = producer.flush(FLUSH_TIMEOUT_S)
            if left:
                logger.warning("%d record(s) not delivered on stop", left)
            try:
                self._commit_delivered(consumer)
            finally:
                self._producer = None
                self._consumer = None
                consumer.close()
                if self._journal is not None:
                    self._journal.close()
                    self._journal = None

    # ------------------------------------------------------------------ journal

    def _restore(self, committed: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Rebuild the core from the journal (see :mod:`.placement_journal`): replay every
        entry on its journaled inputs at its journaled time, producing again the outputs
        of the entries not known delivered; then journal the resume. The last journaled
        offset per input partition (consume after it). JournalError if the journal was
        written by a differently configured agent."""
        writer = self._journal
        assert writer is not None
        assert self.journal_topic is not None
        t0 = time.monotonic()
        journal = read_journal(self.config, self.journal_topic)
        report = self.restore
        if journal.header is None:
            writer.write_header(self.journal_header)
            return {}
        diffs = self.journal_header.differences(journal.header)
        if diffs:
            raise JournalError(
                f"the journal {self.journal_topic} was written by a differently configured "
                "placement agent: " + "; ".join(diffs) + ". Restart it as it was configured, "
                "or start a fresh instance with another --decision-prefix"
            )
        if journal.snapshot is not None:
            try:
                self._load_state(load_state(journal.snapshot.data))
                report.snapshot_seq = journal.snapshot.seq
            except Exception:  # another code version's pickle: replay everything instead
                logger.exception(
                    "snapshot %d of %s cannot be loaded; replaying the whole journal",
                    journal.snapshot.seq,
                    self.journal_topic,
                )
                journal = read_journal(self.config, self.journal_topic, snapshots=False)
        delivered = journal.delivered_through(committed)
        fetcher = InputFetcher(self.config, journal.first_offsets(), timeout_s=30.0)
        self._replaying = True
        try:
            for index, entry in enumerate(journal.entries):
                self._suppress = index <= delivered
                if not self._suppress:
                    report.reemitted += 1
                if entry.resume:
                    self.core.forgive_silence(entry.now)
                    continue
                self._replay_behind = entry.forgive
                records = list(fetcher.records(entry.runs))
                if records:
                    self.handle_batch(records, now=entry.now)
                else:
                    self._tick(entry.now)
                if self._last_digest != entry.digest:
                    report.divergences += 1
                    metrics.PLACEMENT_REPLAY_DIVERGENCES.inc()
                    logger.error(
                        "journal replay diverged at entry %d (%s): decisions %s, journaled %s",
                        entry.seq,
                        self.journal_topic,
                        self._last_digest,
                        entry.digest,
                    )
        finally:
            self._replaying = False
            self._suppress = False
            fetcher.close()
        self._flush()
        report.entries = len(journal.entries)
        report.tasks = len(self.core.tasks) + len(self.core.tombstones)
        writer.seq = max(writer.seq, journal.entries[-1].seq if journal.entries else 0)
        now = self.clock()
        self.core.forgive_silence(now)
        writer.append(now, (), "", resume=True, sync=True)
        report.replay_s = time.monotonic() - t0
        metrics.PLACEMENT_RESTORE_SECONDS.set(report.replay_s)
        self._work_at_snapshot = self._work_s()
        logger.warning(
            "placement %s restored from %s: snapshot after entry %d, %d entries replayed "
            "(%d re-emitted, %d diverged), %d tasks known, in %.2f s",
            self.source,
            self.journal_topic,
            report.snapshot_seq,
            report.entries,
            report.reemitted,
            report.divergences,
            report.tasks,
            report.replay_s,
        )
        return dict(self._journaled_through)

    # State that a snapshot carries: the core's (minus its handler table, rebuilt by its
    # constructor) and the agent's own bookkeeping of the core's tasks and commands.
    _SNAPSHOT_FIELDS = (
        "submissions",
        "_requests",
        "node_hardware",
        "known_hardware",
        "gauges",
        "_journaled_through",
    )

    def _state(self) -> dict[str, Any]:
        core = {k: v for k, v in vars(self.core).items() if k != "_handlers"}
        return {"core": core, **{name: getattr(self, name) for name in self._SNAPSHOT_FIELDS}}

    def _load_state(self, state: dict[str, Any]) -> None:
        """Put a snapshot's state in place; ValueError, with nothing changed (everything is
        checked before anything is set), if another code version wrote it (other fields or
        configuration: a dataclass pickled by an older version may load with shifted or
        missing values)."""
        if not isinstance(state, dict) or set(state) != {"core", *self._SNAPSHOT_FIELDS}:
            raise ValueError("a snapshot of another code version (other agent fields)")
        core_state = state["core"]
        config = core_state.get("config")
        if set(core_state) != set(vars(self.core)) - {"_handlers"} or not isinstance(
            config, CoreConfig
        ):
            raise ValueError("a snapshot of another code version (other core fields)")
        try:
            same = asdict(config) == asdict(self.core.config)
        except (AttributeError, TypeError):
            same = False
        if not same:
            raise ValueError("a snapshot of another code version (other core configuration)")
        for name, value in core_state.items():
            setattr(self.core, name, value)
        for name in self._SNAPSHOT_FIELDS:
            setattr(self, name, state[name])

    def _note_journaled(self, runs: tuple[Run, ...]) -> None:
        through = self._journaled_through
        for topic, partition, _, last in runs:
            key = (topic, partition)
            if last > through.get(key, -1):
                through[key] = last

    def _work_s(self) -> float:
        """Seconds the agent spent decoding and in the core: what a replay repeats."""
        return self.timings.decode_s + self.timings.core_s

    def _maybe_snapshot(self, consumer: Consumer) -> None:
        """Snapshot the state once the work since the last snapshot (what a restart would
        replay) exceeds :data:`SNAPSHOT_AFTER_WORK_S` and four times the last snapshot's
        cost (so snapshots take at most a fifth of the agent's time). Everything produced
        before is flushed first: a snapshot never covers an undelivered output."""
        journal = self._journal
        if journal is None or self._replaying:
            return
        since = self._work_s() - self._work_at_snapshot
        if since < max(SNAPSHOT_AFTER_WORK_S, 4.0 * self._snapshot_cost_s):
            return
        t0 = time.monotonic()
        if self._producer is not None and self._producer.flush(FLUSH_TIMEOUT_S):
            return  # not all delivered: try again later
        self._commit_delivered(consumer)
        data = dump_state(self._state())
        journal.write_snapshot(journal.seq, data)
        self._snapshot_cost_s = time.monotonic() - t0
        self._work_at_snapshot = self._work_s()
        metrics.PLACEMENT_SNAPSHOT_BYTES.set(len(data))
        logger.info(
            "snapshot after journal entry %d: %d bytes in %.2f s (%.1f s of work since the last)",
            journal.seq,
            len(data),
            self._snapshot_cost_s,
            since,
        )

    def _loop(
        self, consumer: Consumer, partitions: list[TopicPartition], stop: threading.Event
    ) -> None:
        """Block for a first record, drain what is already fetched, handle it as one
        batch, commit; tick when idle for ``tick_s``."""
        last_cycle = time.monotonic()
        while not stop.is_set():
            idle = time.monotonic() - last_cycle
            wait = min(POLL_TIMEOUT_S, self.tick_s - idle)
            if self.event_time:
                wait = min(wait, EVENT_TIME_POLL_S)
            first = consumer.poll(max(0.0, wait))
            batch = [first] if first is not None else []
            if first is not None and BATCH_SIZE > 1:
                batch += consumer.consume(num_messages=BATCH_SIZE - 1, timeout=0)
            records = [m for m in batch if self._ok(m)]
            if self.event_time:
                if records:
                    self.handle_batch(records)
                if self._release(consumer, tick=time.monotonic() - last_cycle >= self.tick_s):
                    last_cycle = time.monotonic()
            elif records:
                with self._in_flight.batch(_next_offsets(records)):
                    self.handle_batch(records)
                last_cycle = time.monotonic()
            elif time.monotonic() - last_cycle >= self.tick_s:
                with self._in_flight.batch({}):
                    self._tick(self.clock())
                last_cycle = time.monotonic()
            if not self.event_time:
                self._commit_delivered(consumer)
                self._maybe_snapshot(consumer)
            if time.monotonic() >= self._next_gauges:
                self._refresh_gauges(consumer, partitions)

    def handle_batch(self, records: list[Message], now: float | None = None) -> None:
        """Decode ``records``, apply them to the core in one call at ``now`` (default: the
        clock), journal the call, publish the outcome and flush (dead letters included)."""
        t0 = time.perf_counter()
        stimuli: list[core_events.Event] = []
        per_topic: dict[str, int] = {}
        now_s = self.clock() if now is None else now
        # Behind on the heartbeat or attempt-event topics: unread heartbeats are not
        # silence, and an attempt a heartbeat omits may have ended in an unread event.
        behind = not self.event_time and self._behind_now()
        # Wall-clock mode: "deadline in the past" is judged at the call's time, so that a
        # replay of the journal decodes every record as it was decoded the first time.
        decode_now = None if self.event_time else datetime.fromtimestamp(now_s, tz=UTC)
        for msg in records:
            topic = msg.topic() or ""
            per_topic[topic] = per_topic.get(topic, 0) + 1
            event = self._decode(msg, decode_now)
            if event is None:
                if self.event_time:
                    self._held.add(_source(msg), None, -math.inf)  # offset may be committed
                continue
            if isinstance(event, TaskSubmitted):
                self.submissions.setdefault(event.task_id, event)
            elif isinstance(event, NodeHeartbeat):
                self.node_hardware[event.node_id] = event.hardware
            elif isinstance(event, CancelTask | PolicyUpdate):
                self._remember_request(event)
            stimulus = core_event_from_wire(event, now_s=now_s, core_time=self.core_time)
            if behind and isinstance(stimulus, core_events.NodeUp):
                stimulus = replace(stimulus, reconcile_losses=False)
            if self.event_time:
                self._held.add(_source(msg), stimulus, self.core_time(event.occurred_at))
            elif stimulus is not None:
                stimuli.append(stimulus)
        t1 = time.perf_counter()
        for topic, count in per_topic.items():
            metrics.EVENTS_CONSUMED.labels(COMPONENT, topic).inc(count)
        timings = self.timings
        timings.batches += 1
        timings.records += len(records)
        timings.decode_s += t1 - t0
        if not self.event_time:
            self._apply(stimuli, now_s, runs_of(records), behind)

    def _tick(self, now: float) -> None:
        """A bare core call at ``now`` (time-based decisions), journaled."""
        self.timings.ticks += 1
        self._apply([], now, (), self._behind_now())

    def _apply(
        self, stimuli: list[core_events.Event], now: float, runs: tuple[Run, ...], behind: bool
    ) -> None:
        """Wall-clock mode: one core call, journaled before its outputs are published.
        ``behind``: the agent has unread heartbeats or attempt events (see
        :meth:`_inputs_behind`); then nodes' silence is counted from ``now`` first (a
        heartbeat not read yet is not a silent node) and the call's heartbeats declare no
        attempt lost (an attempt a heartbeat omits may have ended in an unread event).
        Under a burst the agent falls behind by more than the heartbeat timeout: without
        this it declared live nodes lost and ran their finished attempts again."""
        if behind:
            self.core.forgive_silence(now)
        out = self._handle_core(stimuli, now=now)
        self._last_digest = digest(out)
        journal = self._journal
        if journal is not None and not self._replaying:
            journal.append(
                now,
                runs,
                self._last_digest,
                forgive=behind,
                on_delivery=self._in_flight.track(),
                sync=bool(out),
            )
        self._note_journaled(runs)
        self._emit(out, flush=not self._in_flight.open)

    def _behind_now(self) -> bool:
        """Behind on the inputs for this call: as journaled when replaying, else measured."""
        return self._replay_behind if self._replaying else self._inputs_behind()

    def _inputs_behind(self) -> bool:
        """True if the heartbeat or attempt-event partitions hold records the agent has
        not read (the consumer's positions against the broker's high watermarks; checked
        at most every :data:`BEHIND_CHECK_S`, one round trip per partition)."""
        consumer = self._consumer
        if consumer is None:
            return False
        now = time.monotonic()
        if now < self._behind_checked + BEHIND_CHECK_S:
            return self._behind
        self._behind_checked = now
        behind = False
        try:
            for tp in consumer.position(self._watched_partitions):
                # Asked of the broker: the cached watermarks stop moving while the
                # consumer's local queue is full (a burst of submissions ahead of them).
                low, high = consumer.get_watermark_offsets(tp, timeout=WATERMARK_TIMEOUT_S)
                if high is None or high < 0:
                    behind = True  # no fetch answered for it yet (just started)
                    break
                # Before its first record the position is unknown: the assigned offset.
                position = (
                    tp.offset
                    if tp.offset >= 0
                    else self._assigned_at.get((tp.topic, tp.partition), -1)
                )
                if position < 0:
                    position = low  # assigned at the beginning
                if high - position > BEHIND_RECORDS:
                    behind = True
                    break
        except KafkaException as exc:
            logger.debug("heartbeat lag not checked: %s", exc)
            behind = True  # cannot tell: assume the worst
        if behind != self._behind:
            log = logger.warning if behind else logger.info
            log("placement %s %s on %s and %s", self.source,
                "behind (node silence and missing attempts not counted)" if behind
                else "caught up", NODE_HEARTBEATS, TASK_EVENTS)  # fmt: skip
        self._behind = behind
        return behind

    def _commit_delivered(self, consumer: Consumer) -> None:
        """Serve delivery reports, then commit the input offsets of every batch whose
        outputs, and those of every earlier batch, are acknowledged (in batch order).
        Raises KafkaException if an output could not be delivered: its inputs are then
        never committed, and a restart handles them again."""
        producer = self._producer
        if producer is None:
            return
        t0 = time.perf_counter()
        producer.poll(0)
        if self._in_flight.pending > MAX_IN_FLIGHT_BATCHES:
            producer.flush(FLUSH_TIMEOUT_S)  # bound what a slow broker leaves in memory
        _commit(consumer, self._in_flight.delivered())
        self.timings.commit_s += time.perf_counter() - t0

    def _release(self, consumer: Consumer, tick: bool) -> bool:
        """Event-time mode: apply the held events the watermark has passed, in time order,
        each group of equal time at ``max(its time, the latest time applied)`` as the
        simulator applies them; publish each group's records stamped with the wall time
        of its core time; flush; commit what is no longer held. With nothing to apply and
        ``tick`` set, tick at the watermark. True if the core ran."""
        watermark = self.clock() - self._lateness
        groups = self._held.release(watermark)
        if not groups and not tick:
            self._commit_released(consumer)
            return False
        if not groups:
            self.timings.ticks += 1
            groups = [(max(self._now, watermark), [])]
        for at, group in groups:
            self._now = max(self._now, at)
            out = self._handle_core(group, now=self._now)
            stamp = datetime.fromtimestamp(self._replay.wall(self._now), tz=UTC)
            self._emit(out, occurred_at=stamp, flush=False)
        self._flush()
        self._commit_released(consumer)
        return True

    def _commit_released(self, consumer: Consumer) -> None:
        _commit(consumer, self._held.committable())

    def _handle_core(
        self, stimuli: list[core_events.Event] | tuple[()], now: float | None = None
    ) -> list[Instruction]:
        """Apply ``stimuli`` to the core in one call at ``now`` (default: the clock)."""
        t0 = time.perf_counter()
        out: list[Instruction] = []
        try:
            out = self.core.handle(*stimuli, now=self.clock() if now is None else now)
        except Exception:  # a core bug must not stop placement for everyone else
            logger.exception("the core failed on a batch of %d event(s)", len(stimuli))
        elapsed = time.perf_counter() - t0
        self.timings.core_s += elapsed
        if stimuli:
            metrics.DECISION_LATENCY.observe(elapsed)
        self._report_drifts()
        return out

    def _report_drifts(self) -> None:
        """Log and count the drifts the core's forecaster detected (and adapted to) since
        the last call; the stream processor publishes its own as ``model.drift`` events."""
        forecaster = self.core.forecaster
        take = getattr(forecaster, "take_drift_events", None)
        if take is None:
            return
        for event in take():
            metrics.MODEL_DRIFT.labels(forecaster.name, event.key).inc()
            logger.warning(
                "placement model %s drifted on %s: mean |log error| %.3f -> %.3f after %d "
                "observations; %s",
                forecaster.name,
                event.key,
                event.error_before,
                event.error_after,
                event.observations,
                f"refitted, now {forecaster.version}" if event.worse else "not refitted",
            )

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

    def _decode(self, msg: Message, now: datetime | None = None) -> codec.Event | None:
        """The event of ``msg`` (deadlines judged at ``now``, default the current time),
        or ``None`` after dead-lettering it."""
        raw = msg.value() or b""
        if msg.topic() == NODE_HEARTBEATS:
            self._learn_hardware(raw)
        try:
            event = codec.decode(raw, now=now, known_hardware=self.known_hardware)
            # A record speaks for the tenant of its header (set by the producer from its
            # authenticated principal); a body naming another tenant is refused.
            resolve_tenant(body_tenant_of(event), msg.headers())
            return event
        except InvalidEvent as exc:
            self._dead_letter(msg, exc.field, exc.reason)
        except Exception as exc:  # anything else undecodable is bad input too
            self._dead_letter(msg, PAYLOAD_FIELD, f"{type(exc).__name__}: {exc}")
        return None

    def _learn_hardware(self, raw: bytes) -> None:
        """A heartbeat introduces its node's hardware class (it may be a new one)."""
        hardware = hardware_named_in(raw)
        if hardware is not None:
            self.known_hardware.add(hardware)

    def _dead_letter(self, msg: Message, field: str, reason: str) -> None:
        where = (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
        logger.error("dead-lettering %s[%d]@%d: %s: %s", *where, field, reason)
        metrics.DEAD_LETTERED.labels(COMPONENT, where[0]).inc()
        headers: list[tuple[str, str | bytes | None]] = [
            ("error.field", field),
            ("error.reason", reason),
            ("source.topic", where[0]),
            ("source.partition", str(where[1])),
            ("source.offset", str(where[2])),
        ]
        value, extra = bounded_value(msg.value() or b"")
        self._produce(DEAD_LETTER, msg.key(), value, [*headers, *extra])

    # ------------------------------------------------------------------ metrics

    def _refresh_risk_and_load_gauges(self, classes: set[str]) -> None:
        """Set the node-risk and load-forecast gauges per hardware class from the core, as
        of its latest ``handle`` time (the load forecast only under a load-aware policy).
        Runs on the loop's thread, between ``handle`` calls."""
        core = self.core
        now = core.last_now
        for hardware, risk in core.failure_risk_by_hardware(now).items():
            metrics.NODE_FAILURE_RISK_MAX.labels(hardware).set(risk)
        for hardware in sorted(classes):
            forecast = core.load_forecast(hardware, now)
            if forecast is not None:
                metrics.PLACEMENT_LOAD_FORECAST_GPUS.labels(hardware).set(forecast)

    def _refresh_gauges(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Set the gauges from the maintained counts and the consumer's positions against
        the cached high watermarks (no broker round trip); at most every
        :data:`GAUGE_INTERVAL_S`."""
        t0 = time.perf_counter()
        self._next_gauges = time.monotonic() + GAUGE_INTERVAL_S
        gauges = self.gauges
        classes = set(self.known_hardware) | set(self.core.cluster.hardware_names)
        for hardware, depth in gauges.queue_depth(classes).items():
            metrics.QUEUE_DEPTH.labels(hardware).set(depth)
        metrics.QUEUED_TASKS.set(gauges.queued)
        metrics.RETRY_BACKOFF_TASKS.set(len(self.core.retry_wait))
        breakers = self.core.breakers
        for hardware, state in (breakers.states() if breakers is not None else {}).items():
            metrics.BREAKER_STATE.labels(hardware).set(BREAKER_STATE_VALUES.get(state, -1))
        for hardware in classes | set(gauges.running_count):
            metrics.RUNNING_TASKS.labels(hardware).set(gauges.running_count.get(hardware, 0))
        self._refresh_risk_and_load_gauges(classes)
        lags: list[tuple[str, int]] = []
        try:
            for tp in consumer.position(partitions):
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high is None or high < 0:
                    continue  # no fetch answered for it yet
                if tp.offset >= 0:
                    lags.append((tp.topic, high - tp.offset))
                elif low == high:  # nothing consumed because there is nothing
                    lags.append((tp.topic, 0))
        except KafkaException as exc:
            logger.debug("consumer lag not refreshed: %s", exc)
        metrics.set_consumer_lag(COMPONENT, lags)
        self.timings.metrics_s += time.perf_counter() - t0

    def _count(self, ins: TaskTransition | StaleEvent) -> None:
        """Metrics and gauge bookkeeping for one instruction that has no wire record."""
        if isinstance(ins, TaskTransition):
            rec = self.core.tasks.get(ins.task_id)
            allowed = rec.spec.allowed_hardware if rec is not None else ()
            self.gauges.on_transition(ins, allowed)
            if ins.old is None:
                metrics.SUBMISSIONS.labels("accepted").inc()
        elif isinstance(ins, StaleEvent) and ins.event == "duplicate submission":
            metrics.SUBMISSIONS.labels("duplicate").inc()

    # ------------------------------------------------------------------ output

    def _emit(
        self,
        instructions: list[Instruction],
        occurred_at: datetime | None = None,
        flush: bool = True,
    ) -> None:
        """Publish the wire records of ``instructions``, flush, keep the metrics, and drop
        the submissions the core no longer needs."""
        t0 = time.perf_counter()
        occurred_at = occurred_at or datetime.now(UTC)
        first_assigned: list[tuple[str, str]] = []  # (hardware, task id) of 1st attempts
        settled: set[str] = set()  # tasks that may have become terminal (or were refused)
        for ins in instructions:
            if isinstance(ins, TaskTransition | StaleEvent):
                self._count(ins)
                if isinstance(ins, StaleEvent) or ins.new.terminal:
                    settled.add(ins.task_id)
                if isinstance(ins, StaleEvent) and ins.event == "cancel":
                    self._publish_cancel_outcome(ins, occurred_at)  # refused
                if isinstance(ins, TaskTransition) and ins.new.terminal:
                    self._publish_cancel_outcome(ins, occurred_at)  # accepted, if a cancel
                    self._publish(ins, occurred_at, first_assigned)  # task.ended
                elif isinstance(ins, TaskTransition) and ins.old in _HOLDS and ins.new is _S.QUEUED:
                    self._publish(ins, occurred_at, first_assigned)  # task.requeued
                continue
            if isinstance(ins, Learned | DeadlineInfeasible):
                continue  # log and forecast material, no wire record
            if isinstance(ins, PolicyUpdated | PolicyRejected):
                _log_policy_change(ins)
                self._publish(ins, occurred_at, first_assigned)  # policy.changed
                self._requests.pop(ins.stimulus_id, None)
                continue
            self._publish(ins, occurred_at, first_assigned)
            if isinstance(ins, Reject):
                settled.add(ins.task_id)
            elif isinstance(ins, CancelRefused):
                self._requests.pop(ins.stimulus_id, None)  # answered
            elif isinstance(ins, CoreBreakerChanged):
                _log_breaker(ins)
        t1 = time.perf_counter()
        if flush:
            self._flush()
        t2 = time.perf_counter()
        self._observe_submit_to_assigned(first_assigned)
        for task_id in settled:
            state = self.core.state_of(task_id)
            if state is None or state.terminal:
                self.submissions.pop(task_id, None)
        timings = self.timings
        timings.publish_s += t1 - t0
        timings.flush_s += t2 - t1
        timings.metrics_s += time.perf_counter() - t2

    def _flush(self) -> None:
        producer = self._producer
        if producer is not None and len(producer):
            left = producer.flush(FLUSH_TIMEOUT_S)
            if left:
                logger.error("%d record(s) not delivered after a batch", left)

    def _publish(
        self, ins: Instruction, occurred_at: datetime, first_assigned: list[tuple[str, str]]
    ) -> None:
        """Produce the wire record(s) of one instruction and count the decision."""
        try:
            records = wire_records_from_instruction(
                ins,
                submissions=self.submissions,
                occurred_at=occurred_at,
                source=self.source,
                requests=self._requests,
                now_s=self.core.last_now,
            )
        except Exception:
            logger.exception("cannot publish %r", ins)
            return
        for record in records:
            if isinstance(record, Assignment):
                self._to_node(record, record.node_id, record.hardware)
            elif isinstance(record, StopAttempt):
                node_hw = self.node_hardware.get(record.node_id)
                if node_hw is None:
                    logger.error(
                        "dropping %s: hardware of node %r unknown", record.type, record.node_id
                    )
                    continue
                self._to_node(record, record.node_id, node_hw)
            elif isinstance(record, PolicyChanged):
                self._event(DECISIONS, "policy", record)
            elif isinstance(record, BreakerChanged):
                self._event(DECISIONS, "breaker", record)
            elif isinstance(
                record, DecisionAudit | TaskRejected | TaskEnded | TaskRequeued | CancelOutcome
            ):
                self._event(DECISIONS, record.task_id, record)
        self._count_decision(ins, first_assigned)

    def _remember_request(self, event: CancelTask | PolicyUpdate) -> None:
        """Keep a command until the core answers it (bounded: the oldest go first)."""
        requests = self._requests
        requests[event.event_id] = event
        while len(requests) > MAX_PENDING_REQUESTS:
            del requests[next(iter(requests))]

    def _publish_cancel_outcome(
        self, ins: TaskTransition | StaleEvent, occurred_at: datetime
    ) -> None:
        """Publish the ``task.cancel_outcome`` answering the cancel command behind ``ins``,
        if there is one: a transition of its own task into ``cancelled`` accepts it (the
        cascade to dependents is their ``task.ended``), a stale ``cancel`` refuses it."""
        request = self._requests.get(ins.stimulus_id)
        if not isinstance(request, CancelTask) or request.task_id != ins.task_id:
            return
        if isinstance(ins, TaskTransition):
            if ins.new is not _S.CANCELLED:
                return
            was = ins.old.value if ins.old is not None else "new"
            outcome = f"cancelled while {was}"
            if ins.old in _HOLDS:
                outcome += f"; attempt {ins.attempt} stopped"
            accepted = True
        else:
            state = self.core.state_of(ins.task_id)
            outcome = (
                "refused: the scheduler has no record of this task"
                if state is None
                else f"refused: the task had already {_ended_verb(state)}"
            )
            accepted = False
        del self._requests[ins.stimulus_id]
        try:
            record = cancel_outcome_to_wire(
                request,
                accepted=accepted,
                outcome=outcome,
                attempt=ins.attempt,
                occurred_at=occurred_at,
                source=self.source,
            )
        except ValueError:
            logger.exception("cannot publish the outcome of cancel %s", ins.stimulus_id)
            return
        self._event(DECISIONS, record.task_id, record)

    def _count_decision(self, ins: Instruction, first_assigned: list[tuple[str, str]]) -> None:
        if isinstance(ins, Assign):
            metrics.DECISIONS.labels("assign", ins.hardware).inc()
            metrics.ASSIGNMENTS.labels(ins.hardware).inc()
            self.gauges.on_assign(ins.task_id, ins.hardware)
            if ins.attempt > 1:
                metrics.REASSIGNMENTS.labels(ins.hardware).inc()
            else:
                first_assigned.append((ins.hardware, ins.task_id))
        elif isinstance(ins, Reject):
            metrics.SUBMISSIONS.labels("rejected").inc()
            metrics.DECISIONS.labels("reject", "").inc()
        elif isinstance(ins, Preempt | CoreStopAttempt):
            kind = "preempt" if isinstance(ins, Preempt) else "stop"
            metrics.DECISIONS.labels(kind, self.node_hardware.get(ins.node_id, "")).inc()
        elif isinstance(ins, CancelRefused):
            metrics.DECISIONS.labels("cancel_refused", "").inc()
        elif isinstance(ins, CoreBreakerChanged):
            metrics.DECISIONS.labels(f"breaker_{ins.state}", ins.hardware).inc()
        elif isinstance(ins, ShadowAssign):  # audit only: never an assignment
            metrics.SHADOW_DECISIONS.labels(ins.decision.policy).inc()
            metrics.SHADOW_AGREEMENT.labels(ins.agreement).inc()

    def _observe_submit_to_assigned(self, first_assigned: list[tuple[str, str]]) -> None:
        """Submission ``occurred_at`` to now (the assignments were just flushed)."""
        if not first_assigned:
            return
        now = time.time()
        for hardware, task_id in first_assigned:
            submission = self.submissions.get(task_id)
            if submission is not None:
                delay = max(0.0, now - submission.occurred_at.timestamp())
                metrics.SUBMIT_TO_ASSIGNED.labels(hardware).observe(delay)

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

    def _event(
        self,
        topic: str,
        key: str | None,
        event: DecisionAudit
        | TaskRejected
        | TaskEnded
        | TaskRequeued
        | PolicyChanged
        | CancelOutcome
        | BreakerChanged,
    ) -> None:
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
        """Hand one record to the producer (delivery is awaited by the batch's flush)."""
        if self._suppress:
            return  # a journal replay of a call whose outputs were delivered before
        producer = self._producer
        if producer is None:
            logger.warning("dropping a record for %s: the agent is not running", topic)
            return
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        for _ in range(3):
            try:
                producer.produce(
                    topic,
                    value,
                    key=key,
                    headers=headers,
                    on_delivery=self._in_flight.track(),
                    **extra,
                )
                return
            except BufferError:  # local queue full: serve deliveries, retry
                producer.poll(0.5)
            except KafkaException as exc:  # e.g. too large: never fatal for the agent
                logger.error(
                    "dropping a record of %d bytes for %s: %s", len(value), topic, exc.args[0]
                )
                return
        logger.error("dropping a record for %s: producer queue full", topic)


@dataclass(slots=True)
class RestoreReport:
    """What the agent's start restored from its journal (zeros: nothing to restore)."""

    entries: int = 0
    #: The journal entry the loaded snapshot was taken after (0: none, replayed in full).
    snapshot_seq: int = 0
    #: Entries whose outputs were produced again (not known delivered before the restart).
    reemitted: int = 0
    #: Entries whose replayed decisions differ from the journaled digest.
    divergences: int = 0
    tasks: int = 0
    replay_s: float = 0.0


def _jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and non-finite floats as strings (a JSON round trip
    gives it back equal)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _commit(consumer: Consumer, offsets: dict[tuple[str, int], int]) -> None:
    """Commit ``offsets`` ((topic, partition) -> next offset) asynchronously; a failure is
    logged (the next commit covers it; a crash replays, which is harmless)."""
    if not offsets:
        return
    try:
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=True
        )
    except KafkaException as exc:
        logger.warning("offset commit failed: %s", exc)


def _next_offsets(records: list[Message]) -> dict[tuple[str, int], int]:
    """Per (topic, partition), the offset after the last of ``records``."""
    nxt: dict[tuple[str, int], int] = {}
    for msg in records:
        key = (msg.topic() or "", msg.partition() or 0)
        nxt[key] = max(nxt.get(key, 0), (msg.offset() or 0) + 1)
    return nxt


class _Batch:
    __slots__ = ("failed", "offsets", "outstanding", "sealed")

    def __init__(self, offsets: dict[tuple[str, int], int]) -> None:
        self.offsets = offsets
        self.outstanding = 0
        self.sealed = False
        self.failed: str | None = None


class InFlight:
    """Input batches whose outputs may still be in flight, in order (the agent does not
    wait for each batch's outputs before handling the next one).

    Every record produced inside ``with in_flight.batch(offsets):`` counts against that
    batch (:meth:`track` gives its delivery callback). :meth:`delivered` returns the input
    offsets that may be committed: those of the leading batches whose outputs are all
    acknowledged, so an input is committed only after everything it caused is durable,
    and never before an earlier batch's. A failed delivery raises KafkaException there.
    Delivery callbacks run in the agent's thread (``producer.poll``/``flush``).
    """

    def __init__(self) -> None:
        self._batches: deque[_Batch] = deque()
        self._current: _Batch | None = None
        self._failed: str | None = None  # once set, nothing is committed any more

    @property
    def open(self) -> bool:
        """True inside :meth:`batch` (outputs are then not flushed one batch at a time)."""
        return self._current is not None

    @property
    def pending(self) -> int:
        return len(self._batches)

    @contextmanager
    def batch(self, offsets: dict[tuple[str, int], int]) -> Iterator[None]:
        current = _Batch(offsets)
        self._batches.append(current)
        self._current = current
        try:
            yield
        finally:
            current.sealed = True
            self._current = None

    def track(self) -> Callable[[KafkaError | None, Message], None]:
        """The delivery callback of one record produced now."""
        current = self._current
        if current is None:
            return _log_delivery
        current.outstanding += 1

        def delivered(error: KafkaError | None, msg: Message) -> None:
            current.outstanding -= 1
            if error is not None:
                _log_delivery(error, msg)
                current.failed = f"delivery to {msg.topic()} failed: {error}"

        return delivered

    def delivered(self) -> dict[tuple[str, int], int]:
        """Offsets to commit now (see the class docstring)."""
        out: dict[tuple[str, int], int] = {}
        batches = self._batches
        if self._failed is not None:
            return out
        while batches and batches[0].sealed and batches[0].outstanding == 0:
            head = batches.popleft()
            if head.failed is not None:
                self._failed = head.failed
                raise KafkaException(
                    KafkaError(KafkaError._FAIL, f"{head.failed}; inputs left uncommitted")
                )
            for tp, offset in head.offsets.items():
                out[tp] = max(out.get(tp, 0), offset)
        return out


def _source(msg: Message) -> tuple[str, int, int]:
    return (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)


class HeldEvents:
    """Events waiting for the watermark (event-time mode), in time order, and the
    offsets that may be committed: a partition's offset advances past a record only once
    every record before it was applied (or needed no applying)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, core_events.Event, tuple[str, int], int]] = []
        self._seq = itertools.count()
        self._held: dict[tuple[str, int], set[int]] = {}  # offsets not applied yet
        self._next: dict[tuple[str, int], int] = {}  # past the last record read
        self._committed: dict[tuple[str, int], int] = {}

    def add(
        self, source: tuple[str, int, int], stimulus: core_events.Event | None, at: float
    ) -> None:
        """Hold ``stimulus`` (to apply at core time ``at``) read at ``source`` = (topic,
        partition, offset); ``None`` only records that the offset was read."""
        topic, partition, offset = source
        tp = (topic, partition)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)
        if stimulus is not None:
            self._held.setdefault(tp, set()).add(offset)
            heapq.heappush(self._heap, (at, next(self._seq), stimulus, tp, offset))

    def release(self, watermark: float) -> list[tuple[float, list[core_events.Event]]]:
        """The held events at or before ``watermark``, grouped by equal time, in order
        (arrival order within a group)."""
        groups: list[tuple[float, list[core_events.Event]]] = []
        while self._heap and self._heap[0][0] <= watermark:
            at, _seq, stimulus, tp, offset = heapq.heappop(self._heap)
            self._held[tp].discard(offset)
            if groups and groups[-1][0] == at:
                groups[-1][1].append(stimulus)
            else:
                groups.append((at, [stimulus]))
        return groups

    def committable(self) -> dict[tuple[str, int], int]:
        """Offsets to commit now (only those that moved since the last call)."""
        out = {}
        for tp, nxt in self._next.items():
            held = self._held.get(tp)
            offset = min(held) if held else nxt
            if offset > self._committed.get(tp, -1):
                self._committed[tp] = offset
                out[tp] = offset
        return out


def _ended_verb(state: TaskState) -> str:
    """``succeeded``, ``failed``, ``been cancelled`` (or the state's name)."""
    return "been cancelled" if state is _S.CANCELLED else state.value


def _log_policy_change(ins: PolicyUpdated | PolicyRejected) -> None:
    """A policy update's outcome: logged, and counted as a decision."""
    if isinstance(ins, PolicyRejected):
        logger.error("policy update %s refused: %s", ins.stimulus_id, ins.reason)
        metrics.DECISIONS.labels("policy_rejected", "").inc()
    elif ins.changed:
        logger.info(
            "policy %s (%s) replaces %s (%s), split %s at %g, shadow %s, by %s",
            ins.policy,
            ins.version,
            ins.previous_policy,
            ins.previous_version,
            ins.split_version or "none",
            ins.split_ratio,
            ins.shadow_version or "none",
            ins.stimulus_id,
        )
        metrics.DECISIONS.labels("policy_update", "").inc()


def _log_breaker(ins: CoreBreakerChanged) -> None:
    log = logger.warning if ins.state == "open" else logger.info
    log("circuit breaker of %s: %s -> %s (%s)", ins.hardware, ins.previous_state, ins.state,
        ins.reason)  # fmt: skip


def _log_delivery(error: KafkaError | None, msg: Message) -> None:
    if error is not None:
        logger.error("delivery to %s failed: %s", msg.topic(), error)


def _log_commit(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
    if error is not None:
        logger.warning("offset commit failed: %s", error)


__all__ = [
    "GROUP_ID",
    "HEARTBEAT_TIMEOUT_S",
    "INPUT_TOPICS",
    "MAX_QUEUED_PER_TENANT",
    "RECONCILE_GRACE_S",
    "HeldEvents",
    "InFlight",
    "LoopTimings",
    "PlacementAgent",
    "StateGauges",
    "replay_clock",
]
