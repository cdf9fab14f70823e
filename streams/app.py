"""The stream processor: a faust-streaming app that keeps the live status view.

Consumes (consumer group = the app id, default ``streamsched-processor``):

- ``sched.tasks.submitted``, ``sched.decisions``, ``sched.tasks.events`` and
  ``sched.commands`` -> table ``tasks`` (task id -> :class:`~.state.TaskStatus`);
- ``sched.nodes.heartbeats`` -> table ``nodes`` (node id -> :class:`~.state.NodeStatus`);
- ``sched.data.ingested`` -> tables ``datasets`` (:class:`~.state.DatasetStatus`) and
  ``triggers`` (rule name -> :class:`~.triggers.TriggerState`); a rule that is due publishes
  a ``task.submitted`` to ``sched.tasks.submitted``. The internal topic
  ``<app id>-ticks`` wakes the trigger agent when a held-back fire becomes due
  (debounce over, previous triggered task finished) without new data.

Records of ``sched.data.ingested`` that do not decode are copied to ``sched.deadletter``
with headers ``error.field``, ``error.reason``, ``source.topic``, ``source.partition``,
``source.offset``; undecodable records of the other topics are skipped and counted (the
placement agent dead-letters those). The status view is served by faust's web server on
127.0.0.1 (see :func:`create_app` for the routes). One processor instance per cluster:
the web view reads every partition of the tables from the local worker.

Learned models (``streams/models.py``): before consuming, the processor restores its
models from the newest valid checkpoints on ``sched.models`` (unless
``restore_models=False``); the task agent feeds every task status change to the
:class:`~.models.ModelHub` (arrivals, completions to learn); checkpoints are published to
``sched.models`` (keyed by model name) every ``checkpoint_every`` completions learned,
every ``checkpoint_interval_s`` while something changed, and on a clean stop; drift events
(``model.drift``) go to the same topic. ``GET /models`` shows them.

Tenants (``schemas/tenancy.py``): a task record whose ``streamsched-tenant`` header
contradicts its body (a submission's tenant, a cancel's requester) is skipped with the
reason, like an undecodable one. A status-view request that names its tenant in the
``X-Streamsched-Tenant`` header sees only that tenant's tasks; reaching for another
tenant's task answers 403 and publishes an ``access.refused`` record to
``sched.decisions``. A request without the header is answered in operator mode (every
task), unless ``require_tenant`` is set: then it answers 401.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from confluent_kafka.admin import AdminClient

from streamsched import metrics
from streamsched.broker import ensure_topics

from ..schemas import codec, topics
from ..schemas.data import DataIngested
from ..schemas.deadletter import bounded_value
from ..schemas.errors import PAYLOAD_FIELD, InvalidEvent
from ..schemas.hardware import hardware_named_in
from ..schemas.nodes import NodeHeartbeat
from ..schemas.tenancy import AccessRefused, body_tenant_of, resolve_tenant, tenant_headers
from . import models as md
from . import state as st
from . import triggers as tr
from .kafka_config import faust_broker_settings
from .views import StatusView, add_views

logger = logging.getLogger(__name__)

APP_ID: Final = "streamsched-processor"
DEFAULT_WEB_PORT: Final = 6066
COMPONENT: Final = "processor"
#: Topics folded into the ``tasks`` table.
TASK_TOPICS: Final = (topics.TASKS_SUBMITTED, topics.DECISIONS, topics.TASK_EVENTS, topics.COMMANDS)
#: How often the trigger timer checks for held-back fires that became due.
TICK_INTERVAL_S: Final = 1.0
#: Per-partition fetch size of the processor's consumer: above any record size a broker
#: is likely to accept (Kafka's default is about 1 MB; the embedded broker took 2 MiB).
CONSUMER_MAX_FETCH_BYTES: Final = 8 * 1024 * 1024
#: How often the consumer-lag gauge is refreshed, seconds.
LAG_INTERVAL_S: Final = 5.0
#: How often the model timer publishes drift events and checks for a timed checkpoint.
MODELS_INTERVAL_S: Final = 1.0
#: "Now" used to decode inputs: the status view records what happened, so a replayed
#: submission whose deadline has passed since must still decode.
_DECODE_NOW: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ProcessorConfig:
    """How to run the processor. ``kafka_config`` is a librdkafka configuration (from
    :func:`streamsched.broker.client_config`)."""

    kafka_config: Mapping[str, Any]
    web_port: int = DEFAULT_WEB_PORT
    web_bind: str = "127.0.0.1"
    rules: tuple[tr.TriggerRule, ...] = ()
    app_id: str = APP_ID
    datadir: Path | None = None
    #: Called with the status URL once the web server accepts connections.
    on_web_ready: Callable[[str], None] | None = None
    extra_app_settings: Mapping[str, Any] = field(default_factory=dict)
    #: Topic of the learned models' checkpoints and events.
    models_topic: str = topics.MODELS
    #: Restore the models from ``models_topic`` at start (False: start cold).
    restore_models: bool = True
    #: Completions learned between checkpoints.
    checkpoint_every: int = 50
    #: Longest time between checkpoints while a model changed, seconds.
    checkpoint_interval_s: float = 60.0
    #: Refuse status-view requests without the tenant header (else: operator mode).
    require_tenant: bool = False
    #: Tenants whose status-view requests are answered like an operator's.
    status_operators: tuple[str, ...] = ()

    @property
    def ticks_topic(self) -> str:
        return f"{self.app_id}-ticks"

    @property
    def status_url(self) -> str:
        return f"http://{self.web_bind}:{self.web_port}"


def _now_dt() -> datetime:
    return datetime.now(UTC)


class Processor:
    """The processor's logic between faust and the pure folds; the tables are faust
    ``Table`` s (or any mutable mapping, for tests) holding JSON dicts."""

    def __init__(
        self,
        rules: tuple[tr.TriggerRule, ...],
        tasks: Any,
        nodes: Any,
        datasets: Any,
        trigger_table: Any,
        clock: Callable[[], float] = time.time,
        hub: md.ModelHub | None = None,
    ) -> None:
        self.rules = rules
        self.tasks = tasks
        self.nodes = nodes
        self.datasets = datasets
        self.trigger_table = trigger_table
        self.clock = clock
        self.hub = hub if hub is not None else md.ModelHub()
        self.known_hardware: set[str] = set()
        #: Undecodable records skipped, by topic (shown on /summary).
        self.skipped: Counter[str] = Counter()
        #: ``access.refused`` audit records read back from ``sched.decisions``.
        self.refusals_seen = 0

    # ------------------------------------------------------------------ decoding

    def decode(self, topic: str, raw: bytes, headers: Any = None) -> codec.Event | AccessRefused:
        """Decode one record and check its tenant header against its body; raises
        InvalidEvent (field, reason) when it cannot be accepted. The status view's own
        ``access.refused`` audit records (on ``sched.decisions``) decode as such."""
        metrics.EVENTS_CONSUMED.labels(COMPONENT, topic).inc()
        if topic == topics.NODE_HEARTBEATS:
            self._learn_hardware(raw)
        try:
            event = codec.decode(raw, now=_DECODE_NOW, known_hardware=self.known_hardware)
        except InvalidEvent:
            raise
        except Exception as exc:  # anything else undecodable is bad input too
            raise InvalidEvent(None, PAYLOAD_FIELD, f"{type(exc).__name__}: {exc}") from None
        if isinstance(event, AccessRefused):
            if topic != topics.DECISIONS:
                raise InvalidEvent(
                    event.type, "type", f"access.refused belongs on {topics.DECISIONS}"
                )
            self.refusals_seen += 1
            return event
        resolve_tenant(body_tenant_of(event), headers)
        return event

    def _learn_hardware(self, raw: bytes) -> None:
        hardware = hardware_named_in(raw)
        if hardware is not None:
            self.known_hardware.add(hardware)

    def skip(self, topic: str, exc: InvalidEvent) -> None:
        self.skipped[topic] += 1
        logger.warning("skipping an undecodable record of %s: %s", topic, exc)

    # ------------------------------------------------------------------ tasks

    def on_task_event(self, event: codec.Event) -> st.TaskStatus | None:
        """Fold a task event into the ``tasks`` table; update the outcome metrics."""
        task_id = st.task_id_of(event)
        if task_id is None:
            return None
        old = st.load_task(self.tasks.get(task_id))
        new = st.apply(old, event)
        if new is None or new is old:
            return old
        self.tasks[task_id] = new.to_json()
        self.hub.observe_task(old, new, event)
        if st.became_terminal(old, new):
            metrics.TASK_OUTCOMES.labels(new.state.value, new.hardware or "").inc()
        observed = st.forecast_observation(old, new)
        if observed is not None:
            hardware, predicted, actual = observed
            metrics.FORECAST_ERROR.labels(hardware).observe(abs(predicted - actual))
            if actual > 0:
                metrics.FORECAST_RELATIVE_ERROR.labels(hardware).observe(
                    abs(predicted - actual) / actual
                )
        return new

    def task(self, task_id: str) -> st.TaskStatus | None:
        return st.load_task(self.tasks.get(task_id))

    def predict(self, task_id: str, hardware: str) -> dict[str, Any] | None:
        """The runtime model's prediction for a known task on ``hardware`` (None if the
        task or its submission is unknown)."""
        status = self.task(task_id)
        spec = None if status is None else md.spec_from_status(status)
        if spec is None:
            return None
        model = self.hub.runtime
        return {
            "task_id": task_id,
            "hardware": hardware,
            "predicted_s": self.hub.predict(spec, hardware),
            "range_s": list(model.predict_range(spec, hardware))
            if hasattr(model, "predict_range")
            else None,
            "model_version": model.version,
        }

    def all_tasks(self, tenant: str | None = None) -> list[st.TaskStatus]:
        """Every task, or only ``tenant``'s."""
        values = list(self.tasks.values())
        if tenant is not None:  # filter the stored records before validating them
            values = [v for v in values if v.get("tenant") == tenant]
        return [st.TaskStatus.model_validate(v) for v in values]

    # ------------------------------------------------------------------ nodes

    def on_heartbeat(self, hb: NodeHeartbeat) -> None:
        data = self.nodes.get(hb.node_id)
        old = None if data is None else st.NodeStatus.model_validate(data)
        new = st.apply_heartbeat(old, hb)
        if new is not old:
            self.nodes[hb.node_id] = new.to_json()
            self.hub.observe_heartbeat(hb.node_id, hb.occurred_at.timestamp())

    # ------------------------------------------------------------------ data, triggers

    def on_ingest(self, ev: DataIngested) -> list[Any]:
        """Fold ``ev`` into the dataset and every rule watching it; the submissions of
        the rules that fire (the caller publishes them)."""
        data = self.datasets.get(ev.dataset)
        old = None if data is None else st.DatasetStatus.model_validate(data)
        new, fresh = st.apply_ingest(old, ev)
        if not fresh:
            return []
        self.datasets[ev.dataset] = new.to_json()
        metrics.DATA_INGESTED_BYTES.inc(ev.bytes)
        fired = []
        for rule in tr.rules_for(self.rules, ev.dataset):
            state = tr.observe(self._trigger_state(rule), rule, ev)
            state, submission = tr.step(state, rule, self.clock(), self._previous_done(state))
            self.trigger_table[rule.name] = state.to_json()
            if submission is not None:
                fired.append(self._fired(rule, submission))
        return fired

    def due_rules(self) -> list[tr.TriggerRule]:
        """Rules whose held-back fire is due now (read-only; used by the timer)."""
        now = self.clock()
        return [
            rule
            for rule in self.rules
            if tr.due(state := self._trigger_state(rule), rule, now, self._previous_done(state))
        ]

    def on_tick(self) -> list[Any]:
        """Fire every rule that is due; the submissions to publish."""
        fired = []
        for rule in self.rules:
            state = self._trigger_state(rule)
            state, submission = tr.step(state, rule, self.clock(), self._previous_done(state))
            if submission is not None:
                self.trigger_table[rule.name] = state.to_json()
                fired.append(self._fired(rule, submission))
        return fired

    def _fired(self, rule: tr.TriggerRule, submission: Any) -> Any:
        metrics.TRIGGERS_FIRED.labels(rule.name).inc()
        logger.info("trigger %s fired: submitting %s", rule.name, submission.task_id)
        return submission

    def _trigger_state(self, rule: tr.TriggerRule) -> tr.TriggerState:
        data = self.trigger_table.get(rule.name)
        if data is None:
            return tr.TriggerState(rule=rule.name)
        return tr.TriggerState.model_validate(data)

    def _previous_done(self, state: tr.TriggerState) -> bool:
        if state.last_task_id is None:
            return True
        task = self.task(state.last_task_id)
        return task is not None and task.terminal

    # ------------------------------------------------------------------ views

    def summary(self, tenant: str | None = None) -> dict[str, Any]:
        """Counts of every task (or only ``tenant``'s), nodes, datasets, triggers."""
        out = st.summarize(self.all_tasks(tenant))
        now = _now_dt()
        nodes = [st.NodeStatus.model_validate(v) for v in list(self.nodes.values())]
        out["nodes"] = {
            "count": len(nodes),
            "per_hardware": dict(Counter(n.hardware for n in nodes)),
            "max_seconds_since_seen": max(
                (st.seconds_since_seen(n, now) for n in nodes), default=None
            ),
        }
        out["datasets"] = len(list(self.datasets.keys()))
        out["triggers"] = {r.name: self._trigger_state(r).fired for r in self.rules}
        out["skipped_records"] = dict(self.skipped)
        if tenant is not None:
            out["tenant"] = tenant
        return out


def topic_partitions(config: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, int]:
    """Partition counts of ``names`` (0 for a topic that does not exist)."""
    meta = AdminClient(dict(config)).list_topics(timeout=15).topics
    return {name: len(meta[name].partitions) if name in meta else 0 for name in names}


def _one_count(counts: Mapping[str, int], table: str) -> int:
    distinct = set(counts.values())
    if len(distinct) != 1 or 0 in distinct:
        listed = ", ".join(f"{t}={n}" for t, n in sorted(counts.items()))
        raise ValueError(
            f"table {table!r} is built from topics with different partition counts ({listed}); "
            "faust needs them equal (co-partitioning)"
        )
    return distinct.pop()


def prepare_topics(cfg: ProcessorConfig) -> dict[str, int]:
    """Create missing topics (core topics as the placement agent does, the ticks topic
    with as many partitions as ``sched.data.ingested``); the partition count of each
    table, checked for co-partitioning."""
    ensure_topics(
        cfg.kafka_config,
        topics.CORE_TOPIC_PARTITIONS,
    )
    data_n = topic_partitions(cfg.kafka_config, (topics.DATA_INGESTED,))[topics.DATA_INGESTED]
    ensure_topics(cfg.kafka_config, {cfg.ticks_topic: data_n, cfg.models_topic: 1})
    counts = topic_partitions(
        cfg.kafka_config,
        (*TASK_TOPICS, topics.NODE_HEARTBEATS, topics.DATA_INGESTED, cfg.ticks_topic),
    )
    return {
        "tasks": _one_count({t: counts[t] for t in TASK_TOPICS}, "tasks"),
        "nodes": counts[topics.NODE_HEARTBEATS],
        "data": _one_count(
            {t: counts[t] for t in (topics.DATA_INGESTED, cfg.ticks_topic)}, "datasets"
        ),
    }


def create_app(cfg: ProcessorConfig, partitions: Mapping[str, int]) -> tuple[Any, Processor]:
    """The faust app and its :class:`Processor`. Routes of the web view:

    - ``GET /tasks/{task_id}``: the task's status (404 with ``{"error": ...}`` if unknown);
    - ``GET /tasks?state=&tenant=&limit=``: most recently updated tasks first (limit
      default 50, at most 1000);
    - ``GET /summary``: task counts per state and per hardware class, nodes, triggers;
    - ``GET /nodes``, ``GET /datasets``, ``GET /triggers``: the other tables;
    - ``GET /models?ring=N``: the learned models (versions, checkpoints, restored-from,
      drift, prequential errors and the newest N of the error ring, default all);
    - ``GET /models/predict?task_id=&hardware=``: the runtime model's prediction for a
      known task.

    Builds the :class:`~.models.ModelHub` first, restoring it from ``cfg.models_topic``
    (reads Kafka) unless ``cfg.restore_models`` is False.
    """
    import faust
    from faust.web import View

    broker = faust_broker_settings(cfg.kafka_config)
    if broker.ignored:
        logger.info("Kafka settings not used by the processor: %s", ", ".join(broker.ignored))
    datadir = cfg.datadir or Path(tempfile.mkdtemp(prefix="streamsched-processor-"))
    app = faust.App(
        cfg.app_id,
        **broker.app_kwargs(),
        store="memory://",
        autodiscover=False,
        datadir=str(datadir),
        web_enabled=True,
        web_bind=cfg.web_bind,
        web_host=cfg.web_bind,
        web_port=cfg.web_port,
        producer_max_batch_size=1,
        # At least the largest record a broker may hold: a hostile record over the default
        # 1 MiB would otherwise stall its partition for good (aiokafka cannot fetch it).
        consumer_max_fetch_size=CONSUMER_MAX_FETCH_BYTES,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        topic_partitions=partitions["tasks"],
        **dict(cfg.extra_app_settings),
    )

    def table(name: str, n: int) -> Any:
        schema: Any = faust.Schema(key_serializer="json", value_serializer="json")
        return app.Table(name, default=None, partitions=n, schema=schema)

    proc = Processor(
        cfg.rules,
        table("tasks", partitions["tasks"]),
        table("nodes", partitions["nodes"]),
        table("datasets", partitions["data"]),
        table("triggers", partitions["data"]),
        hub=start_models(cfg),
    )
    saver = ModelSaver(cfg, proc.hub)

    def raw_topic(*names: str) -> Any:
        return app.topic(*names, key_serializer="raw", value_serializer="raw")

    submitted_out = raw_topic(topics.TASKS_SUBMITTED)
    decisions_out = raw_topic(topics.DECISIONS)
    deadletter = raw_topic(topics.DEAD_LETTER)
    ticks = raw_topic(cfg.ticks_topic)

    async def publish(submissions: list[Any]) -> None:
        for ev in submissions:
            await submitted_out.send(
                key=ev.task_id.encode(),
                value=codec.encode(ev),
                headers=[("type", ev.type.encode()), *tenant_headers(ev.tenant)],
            )

    @app.agent(raw_topic(*TASK_TOPICS))
    async def task_agent(stream: Any) -> None:
        async for event in stream.events():
            topic = event.message.topic
            try:
                decoded = proc.decode(topic, event.value or b"", event.headers)
            except InvalidEvent as exc:
                proc.skip(topic, exc)
                continue
            if isinstance(decoded, AccessRefused):
                continue
            proc.on_task_event(decoded)
            if proc.hub.checkpoint_due(proc.clock()):
                await saver.save()

    @app.agent(raw_topic(topics.NODE_HEARTBEATS))
    async def node_agent(stream: Any) -> None:
        async for event in stream.events():
            try:
                decoded = proc.decode(topics.NODE_HEARTBEATS, event.value or b"")
            except InvalidEvent as exc:
                proc.skip(topics.NODE_HEARTBEATS, exc)
                continue
            if isinstance(decoded, NodeHeartbeat):  # (type checked: the topic carries more)
                proc.on_heartbeat(decoded)

    @app.agent(raw_topic(topics.DATA_INGESTED, cfg.ticks_topic))
    async def data_agent(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            if msg.topic == cfg.ticks_topic:
                await publish(proc.on_tick())
                continue
            raw = event.value or b""
            try:
                decoded = proc.decode(msg.topic, raw, event.headers)
                if not isinstance(decoded, DataIngested):
                    raise InvalidEvent(
                        decoded.type, "type", f"expected 'data.ingested' on {msg.topic}"
                    )
            except InvalidEvent as exc:
                await _dead_letter(deadletter, msg, raw, exc)
                continue
            await publish(proc.on_ingest(decoded))

    async def wake_triggers() -> None:
        if proc.due_rules():
            await ticks.send(value=b"tick", partition=0)

    app.timer(interval=TICK_INTERVAL_S)(wake_triggers)

    async def report_lag() -> None:
        """Consumer lag per input topic: high watermark - (last offset read + 1), over the
        partitions this worker reads and has read from."""
        try:
            read = dict(app.monitor.tp_read_offsets)
            lags = []
            for tp in app.consumer.assignment():
                last = read.get(tp)
                end = app.consumer.highwater(tp)
                if last is not None and end is not None:
                    lags.append((tp.topic, end - (last + 1)))
            metrics.set_consumer_lag(COMPONENT, lags)
        except Exception as exc:  # a metric must never stop the processor
            logger.debug("consumer lag not refreshed: %s", exc)

    app.timer(interval=LAG_INTERVAL_S)(report_lag)

    async def save_models() -> None:
        """Publish pending drift events, and checkpoints when due (time-based)."""
        await saver.save(checkpoint=proc.hub.checkpoint_due(proc.clock()))

    app.timer(interval=MODELS_INTERVAL_S)(save_models)

    async def save_models_on_stop(app: Any, **kwargs: Any) -> None:
        """After the consumer stopped: checkpoint whatever changed."""
        saver.save_sync(checkpoint=True)
        saver.close()

    app.on_before_shutdown.connect(save_models_on_stop)  # type: ignore[arg-type]

    async def announce() -> None:
        await _wait_for_port(cfg.web_bind, cfg.web_port)
        url = cfg.status_url
        logger.info("status view on %s", url)
        if cfg.on_web_ready is not None:
            cfg.on_web_ready(url)

    app.task(announce)

    async def audit(record: AccessRefused) -> None:
        key = record.task_id or record.requested_by
        await decisions_out.send(
            key=key.encode(),
            value=codec.encode(record),
            headers=[("type", record.type.encode()), *tenant_headers(record.requested_by)],
        )

    add_views(app, StatusView(proc, cfg.require_tenant, cfg.status_operators), View, audit)
    return app, proc


def start_models(cfg: ProcessorConfig) -> md.ModelHub:
    """A :class:`~.models.ModelHub` for ``cfg``, restored from ``cfg.models_topic`` unless
    ``cfg.restore_models`` is False. Runs before the app consumes anything."""
    hub = md.ModelHub(
        checkpoint_every=cfg.checkpoint_every,
        checkpoint_interval_s=cfg.checkpoint_interval_s,
        source=f"processor/{cfg.app_id}",
    )
    if not cfg.restore_models:
        hub.restore_mode = "off"
        logger.info("models start cold: restore disabled")
        return hub
    hub.restore(md.read_model_records(cfg.kafka_config, cfg.models_topic))
    return hub


class ModelSaver:
    """Publishes the hub's drift events and checkpoints to ``cfg.models_topic`` with a
    confluent-kafka producer (each record flushed: a checkpoint counts only once the
    broker has it). Encoding happens on the event loop (the models are not touched
    concurrently); producing and flushing in a thread."""

    def __init__(self, cfg: ProcessorConfig, hub: md.ModelHub) -> None:
        self.cfg = cfg
        self.hub = hub
        self._producer: Any = None

    async def save(self, *, checkpoint: bool = True) -> None:
        records = self._collect(checkpoint)
        if records[0] or records[1]:
            await asyncio.to_thread(self._publish, *records)

    def save_sync(self, *, checkpoint: bool = True) -> None:
        self._publish(*self._collect(checkpoint))

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None

    def _collect(self, checkpoint: bool) -> tuple[list[Any], list[md.CheckpointRecord]]:
        now = self.hub_now()
        drifts = self.hub.take_drift_events(datetime.fromtimestamp(now, UTC))
        return drifts, self.hub.checkpoint(now) if checkpoint else []

    def hub_now(self) -> float:
        return time.time()

    def _publish(self, drifts: list[Any], checkpoints: list[md.CheckpointRecord]) -> None:
        from confluent_kafka import Producer

        if not drifts and not checkpoints:
            return
        if self._producer is None:
            self._producer = Producer({**dict(self.cfg.kafka_config), "linger.ms": 0})
        failed: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(str(err))

        topic = self.cfg.models_topic
        for ev in drifts:
            self._producer.produce(
                topic,
                key=ev.model.encode(),
                value=codec.encode(ev),
                headers=[("type", ev.type.encode())],
                on_delivery=delivered,
            )
        for record in checkpoints:
            self._producer.produce(
                topic,
                key=record.model.encode(),
                value=record.data,
                headers=record.headers(),
                on_delivery=delivered,
            )
            self._producer.flush(30)
        left = self._producer.flush(30)
        if failed or left:
            self.hub.checkpoint_failed(checkpoints)
            logger.error(
                "model records not published to %s: %s",
                topic,
                "; ".join(failed) or f"{left} still queued",
            )
            return
        for record in checkpoints:
            metrics.MODEL_CHECKPOINTS.labels(record.model).inc()
            logger.info(
                "checkpoint of model %s version %d (%s, %d bytes) published to %s",
                record.model,
                record.version,
                record.model_version,
                len(record.data),
                topic,
            )


async def _dead_letter(topic: Any, msg: Any, raw: bytes, exc: InvalidEvent) -> None:
    where = (msg.topic, msg.partition, msg.offset)
    logger.error("dead-lettering %s[%d]@%d: %s: %s", *where, exc.field, exc.reason)
    metrics.DEAD_LETTERED.labels(COMPONENT, msg.topic).inc()
    headers = [
        ("error.field", exc.field.encode()),
        ("error.reason", exc.reason.encode()),
        ("source.topic", str(msg.topic).encode()),
        ("source.partition", str(msg.partition).encode()),
        ("source.offset", str(msg.offset).encode()),
    ]
    value, extra = bounded_value(raw)
    headers += [(name, text.encode()) for name, text in extra]
    await topic.send(key=msg.key, value=value, headers=headers)


async def _wait_for_port(host: str, port: int) -> None:
    while True:
        try:
            _reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        writer.close()
        return


def run(cfg: ProcessorConfig, loglevel: str = "info") -> None:
    """Create topics, build the app and run a faust worker in the foreground until
    SIGINT/SIGTERM (the worker exits the process with status 0 then)."""
    import faust

    partitions = prepare_topics(cfg)
    datadir = cfg.datadir or Path(tempfile.mkdtemp(prefix="streamsched-processor-"))
    app, _proc = create_app(ProcessorConfig(**{**cfg.__dict__, "datadir": datadir}), partitions)
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False, stdout=sys.stdout)
    try:
        worker.execute_from_commandline()
    finally:
        if cfg.datadir is None:
            shutil.rmtree(datadir, ignore_errors=True)
