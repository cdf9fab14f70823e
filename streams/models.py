"""The stream processor's learned models: learning, drift, load, checkpoints, restore.

:class:`ModelHub` is plain Python (no faust, no Kafka, no clock: time comes in as
arguments) and owns two models, each checkpointed under its ``name``:

- the **runtime model** ``river-linear+drift``:
  ``drifting(RiverRuntimeForecaster())`` (``scheduler/learned.py``, ``scheduler/drift.py``).
  It learns from each completed task whose observed runtime is the whole task's: the task
  succeeded on its **first attempt** (attempt 1 always starts from progress 0; a later
  attempt may have resumed from a checkpoint or a failed attempt's progress, and the view
  cannot tell how much work it did, so those completions are not learned). Features are
  the core ``TaskSpec`` rebuilt from the submission fields kept in ``TaskStatus.spec``;
  the hardware class is the one of the attempt's decision audit. Before learning, the
  completion is predicted (delayed progressive validation): the error is kept in a
  bounded ring and in metrics. A drift (ADWIN on ``|log error|`` per hardware class)
  refits the model (the wrapper does it) and is published as a ``model.drift`` event.
- the **load model** ``load-arrivals``: :class:`ArrivalLoad`, task arrivals per fixed
  bucket of event time (the submission's ``occurred_at``) per hardware class named by the
  submission (each of its ``allowed_hardware``; ``any`` if none), learned by
  ``LoadForecasters`` (``scheduler/load.py``) when a bucket closes.

Checkpoints: :meth:`ModelHub.checkpoint` encodes every model that changed since its last
checkpoint with ``scheduler/checkpoint.encode``, under a monotonic ``checkpoint version``
per model name (carried in the record headers; the format version is in the checkpoint's
own header). :meth:`ModelHub.restore` takes every record of the models topic, and per model
name restores the newest *valid* checkpoint (``checkpoint.newest_valid``), reporting every
record that fails a check (WARNING log, metric ``streamsched_model_checkpoints_skipped_total``)
and never loading it; with none valid the model starts cold.

:func:`read_model_records` and :func:`newest_checkpoint` do the Kafka reading (the only
I/O here), for the processor and for other processes (the placement agent can warm-start
its forecaster from the processor's checkpoints).

Security: restoring unpickles; ``sched.models`` must be writable only by the scheduler's
own principal (see ``scheduler/checkpoint.py``).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from streamsched import metrics

from ..scheduler.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointHeader,
    encode,
    newest_valid,
    read_header,
)
from ..scheduler.drift import DriftEvent, DriftingForecaster, drifting, log_error
from ..scheduler.failure import NodeRiskModel
from ..scheduler.learned import RiverRuntimeForecaster
from ..scheduler.load import LoadForecasters, LoadParams
from ..scheduler.model import TaskSpec
from ..schemas import topics
from ..schemas.codec import Event
from ..schemas.lifecycle import TaskCompleted, TaskFailed, TaskLost
from ..schemas.models import ModelDrift
from . import state as st

logger = logging.getLogger(__name__)

__all__ = [
    "LOAD_MODEL",
    "RISK_MODEL",
    "RUNTIME_MODEL",
    "ArrivalLoad",
    "CheckpointRecord",
    "ModelHub",
    "ModelRecord",
    "NodeRisk",
    "Prequential",
    "learning_observation",
    "newest_checkpoint",
    "read_model_records",
    "skip_reason",
    "spec_from_status",
]

#: Name of the runtime model (and key of its checkpoints on ``sched.models``).
RUNTIME_MODEL: Final = "river-linear+drift"
#: Name of the load model.
LOAD_MODEL: Final = "load-arrivals"
#: Name of the node failure-risk model.
RISK_MODEL: Final = "node-risk"
#: Riskiest nodes listed on ``/models`` (node ids are unbounded: never metric labels).
RISKY_NODES_SHOWN: Final = 50
#: Record header carrying the checkpoint version (monotonic per model name).
VERSION_HEADER: Final = "checkpoint.version"
#: Series of submissions that name no hardware class.
ANY_HARDWARE: Final = "any"
#: Most buckets an arrival gap is filled with zeros (a longer gap keeps only its end).
MAX_GAP_BUCKETS: Final = 7 * 144
#: Skipped checkpoints and drift events kept for ``/models``.
KEPT_REPORTS: Final = 200


# ---------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Prequential:
    """One completion predicted before it was learned (delayed progressive validation)."""

    seq: int
    task_id: str
    hardware: str
    predicted_s: float
    actual_s: float
    model_version: str

    @property
    def abs_error_s(self) -> float:
        return abs(self.predicted_s - self.actual_s)

    @property
    def log_error(self) -> float:
        return log_error(self.predicted_s, self.actual_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "task_id": self.task_id,
            "hardware": self.hardware,
            "predicted_s": self.predicted_s,
            "actual_s": self.actual_s,
            "abs_error_s": self.abs_error_s,
            "log_error": self.log_error,
            "model_version": self.model_version,
        }


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """One record of the models topic, as read from Kafka."""

    key: str | None
    value: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    offset: int = -1
    partition: int = 0


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A checkpoint to publish: key ``model``, value ``data``, headers :meth:`headers`."""

    model: str
    version: int
    model_version: str
    created_at_s: float
    data: bytes

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("type", b"model.checkpoint"),
            (VERSION_HEADER, str(self.version).encode()),
            ("checkpoint.format_version", str(FORMAT_VERSION).encode()),
            ("model.version", self.model_version.encode()),
        ]


@dataclass(frozen=True, slots=True)
class Skipped:
    """A checkpoint record that was not restored, and why."""

    model: str
    reason: str
    message: str
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "reason": self.reason,
            "message": self.message,
            "offset": self.offset,
        }


@dataclass(frozen=True, slots=True)
class Restored:
    """Where a model's state came from at start."""

    version: int
    model_version: str
    created_at_s: float
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint_version": self.version,
            "model_version": self.model_version,
            "created_at_s": self.created_at_s,
            "offset": self.offset,
        }


def skip_reason(exc: CheckpointError) -> str:
    """A bounded label for what ``exc`` says is wrong (for the skipped-checkpoints metric)."""
    text = str(exc)
    for needle, reason in (
        ("format version", "format-version"),
        ("checkpoint format is", "format"),
        ("checksum mismatch", "checksum"),
        ("truncated", "truncated"),
        ("bad magic", "not-a-checkpoint"),
        ("does not unpickle", "unpickle"),
        ("payload is a", "wrong-type"),
        ("expected '", "wrong-model"),
        ("payload's name", "wrong-model"),
    ):
        if needle in text:
            return reason
    return "corrupt"


# ---------------------------------------------------------------------- features


def spec_from_status(status: st.TaskStatus) -> TaskSpec | None:
    """The core :class:`TaskSpec` of a task from its status's ``spec`` (None before the
    submission was seen). The fields the forecasters use are those the placement agent
    builds from the same submission (``scheduler/convert.task_spec_from_event``)."""
    spec = status.spec
    if not spec or not isinstance(spec.get("task_type"), str):
        return None
    res = spec.get("resources") or {}
    work = spec.get("declared_work") or {}
    amount = next(
        (float(work[k]) for k in ("steps", "epochs", "input_bytes") if work.get(k) is not None),
        0.0,
    )
    runtime = work.get("runtime_s")
    return TaskSpec(
        task_id=status.task_id,
        task_type=spec["task_type"],
        tenant=str(spec.get("tenant") or "default"),
        cpu_milli=int(res.get("cpu_milli", 1000)),
        memory_mib=int(res.get("memory_mib", 1024)),
        gpus=int(res.get("gpus", 0)),
        gpu_milli=int(res.get("gpu_milli", 0)),
        allowed_hardware=frozenset(res.get("allowed_hardware") or ()),
        declared_work=amount,
        declared_runtime_s=float(runtime) if runtime is not None else None,
        dataset_bytes=int(work.get("input_bytes") or 0),
    )


def _learnable(status: st.TaskStatus | None) -> tuple[TaskSpec, str, float] | None:
    if status is None or status.state != st.TaskState.SUCCEEDED or status.attempt != 1:
        return None
    actual = status.actual_runtime_s
    if status.hardware is None or actual is None or not (actual > 0 and math.isfinite(actual)):
        return None
    spec = spec_from_status(status)
    return None if spec is None else (spec, status.hardware, actual)


def learning_observation(
    old: st.TaskStatus | None, new: st.TaskStatus
) -> tuple[TaskSpec, str, float] | None:
    """``(spec, hardware, whole-task runtime)`` when ``new`` is the first record of a task
    that succeeded on its first attempt and knows its submission, its hardware class and
    its runtime (whichever of the three records arrived last), else None: each such task
    is learned once, however often its events are redelivered."""
    found = _learnable(new)
    if found is None or _learnable(old) is not None:
        return None
    return found


def _arrival_classes(status: st.TaskStatus) -> list[str]:
    res = (status.spec or {}).get("resources") or {}
    named = sorted(set(res.get("allowed_hardware") or ()))
    return named or [ANY_HARDWARE]


# ---------------------------------------------------------------------- load


class ArrivalLoad:
    """Task arrivals per bucket of event time, per hardware class, forecast one bucket
    ahead by :class:`~streamsched.scheduler.load.LoadForecasters`.

    Bucket ``k`` covers ``[k * interval_s, (k + 1) * interval_s)`` of arrival time. Events
    arrive out of order across partitions, so a bucket is closed (its counts learned, 0
    for a class with no arrival in it) only once an arrival ``lateness_buckets`` buckets
    later was seen; an arrival in a closed bucket is counted in ``late`` and not learned.
    A gap longer than :data:`MAX_GAP_BUCKETS` is learned as its last buckets only.
    Pure and picklable; ``version`` changes whenever a bucket closes.
    """

    name = LOAD_MODEL

    def __init__(
        self,
        interval_s: float = 600.0,
        params: LoadParams | None = None,
        lateness_buckets: int = 1,
    ) -> None:
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise ValueError(f"ArrivalLoad interval_s must be > 0, got {interval_s}")
        if lateness_buckets < 0:
            raise ValueError(f"ArrivalLoad lateness_buckets must be >= 0, got {lateness_buckets}")
        self.interval_s = interval_s
        self.lateness_buckets = lateness_buckets
        self.forecasters = LoadForecasters(params)
        self.classes: set[str] = set()
        self.late = 0
        self.closed = 0
        self._next: int | None = None
        self._open: dict[int, Counter[str]] = {}

    @property
    def version(self) -> str:
        return f"{self.name}@{self.closed}"

    def observe(self, classes: Iterable[str], at_s: float) -> bool:
        """Count one arrival at ``at_s`` in each of ``classes``; True if a bucket closed."""
        bucket = math.floor(at_s / self.interval_s)
        if self._next is None:
            self._next = bucket
        if bucket < self._next:
            self.late += 1
            return False
        counts = self._open.setdefault(bucket, Counter())
        for name in classes:
            counts[name] += 1
            self.classes.add(name)
        return self._close_until(bucket - self.lateness_buckets)

    def forecast(self) -> dict[str, float]:
        """Predicted arrivals in the next bucket to close, per class seen."""
        return {c: self.forecasters.forecast(c)[0] for c in sorted(self.classes)}

    def _close_until(self, last: int) -> bool:
        start = self._next
        if start is None or last < start:
            return False
        if last - start >= MAX_GAP_BUCKETS:
            for bucket in [b for b in self._open if b <= last - MAX_GAP_BUCKETS]:
                del self._open[bucket]
            start = last - MAX_GAP_BUCKETS + 1
        for bucket in range(start, last + 1):
            counts = self._open.pop(bucket, Counter())
            self.forecasters.update_all((c, float(counts[c])) for c in sorted(self.classes))
            self.closed += 1
        self._next = last + 1
        return True


# ---------------------------------------------------------------------- node risk


class NodeRisk:
    """:class:`~streamsched.scheduler.failure.NodeRiskModel` with the ``version`` a
    checkpoint needs (``node-risk@<observations>``) and the latest event time seen (the
    "now" its answers are given at: the hub has no clock). Picklable."""

    name = RISK_MODEL

    def __init__(self, model: NodeRiskModel | None = None) -> None:
        self.model = model if model is not None else NodeRiskModel()
        self.observations = 0
        self.latest_s = 0.0

    @property
    def version(self) -> str:
        return f"{self.name}@{self.observations}"

    def heartbeat(self, node_id: str, at_s: float) -> None:
        self.model.observe_heartbeat(node_id, at_s)
        self._seen(at_s)

    def attempt_end(self, node_id: str, outcome: str, at_s: float) -> None:
        self.model.observe_attempt_end(node_id, outcome, at_s)
        self._seen(at_s)

    def view(self, limit: int = RISKY_NODES_SHOWN) -> dict[str, Any]:
        """Fleet risk and the ``limit`` nodes with the most excess risk over it."""
        now = self.latest_s
        risky = self.model.risky_nodes(now)
        top = sorted(risky.items(), key=lambda item: (-item[1], item[0]))[:limit]
        return {
            "at_s": now,
            "fleet_risk": self.model.fleet_risk(now),
            "risky_nodes": {nid: self.model.risk(nid, now) for nid, _ in top},
            "risky_node_count": len(risky),
        }

    def _seen(self, at_s: float) -> None:
        self.observations += 1
        self.latest_s = max(self.latest_s, at_s)


def attempt_outcome(
    old: st.TaskStatus | None, new: st.TaskStatus, event: Event
) -> tuple[str, str, float] | None:
    """``(node, outcome, at_s)`` when ``event`` ended ``new``'s current attempt in this
    step (not a stale or repeated report): ``succeeded`` (a completion), ``failed`` (a
    retryable failure: the only kind plausibly the node's fault), ``lost``."""
    if not isinstance(event, TaskCompleted | TaskFailed | TaskLost):
        return None
    if not new.attempt_ended or event.attempt != new.attempt or new.node is None:
        return None
    if old is not None and old.attempt == new.attempt and old.attempt_ended:
        return None
    at_s = event.occurred_at.timestamp()
    if isinstance(event, TaskCompleted):
        return new.node, "succeeded", at_s
    if isinstance(event, TaskLost):
        return new.node, "lost", at_s
    return (new.node, "failed", at_s) if event.retryable else None


# ---------------------------------------------------------------------- the hub


class ModelHub:
    """The processor's models and their bookkeeping (see the module docstring).

    - ``checkpoint_every``: completions learned between checkpoints;
    - ``checkpoint_interval_s``: at most this long between checkpoints while something
      changed (the caller's timer asks :meth:`checkpoint_due`);
    - ``ring_size``: prequential errors kept for ``/models``.
    """

    def __init__(
        self,
        runtime: DriftingForecaster | None = None,
        load: ArrivalLoad | None = None,
        risk: NodeRisk | None = None,
        *,
        checkpoint_every: int = 50,
        checkpoint_interval_s: float = 60.0,
        ring_size: int = 2000,
        source: str = "processor",
    ) -> None:
        if checkpoint_every < 1 or not checkpoint_interval_s > 0 or ring_size < 1:
            raise ValueError(
                "ModelHub needs checkpoint_every >= 1, checkpoint_interval_s > 0, ring_size "
                f">= 1; got {checkpoint_every}, {checkpoint_interval_s}, {ring_size}"
            )
        self.models: dict[str, Any] = {
            RUNTIME_MODEL: runtime if runtime is not None else drifting(RiverRuntimeForecaster()),
            LOAD_MODEL: load if load is not None else ArrivalLoad(),
            RISK_MODEL: risk if risk is not None else NodeRisk(),
        }
        self._types: dict[str, type] = {
            RUNTIME_MODEL: DriftingForecaster,
            LOAD_MODEL: ArrivalLoad,
            RISK_MODEL: NodeRisk,
        }
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self.source = source
        self.ring: deque[Prequential] = deque(maxlen=ring_size)
        self.learned = 0
        self.arrivals = 0
        self._error_count = 0
        self._error_abs_sum = 0.0
        self._error_log_sum = 0.0
        self._dirty: set[str] = set()
        self._learned_since_checkpoint = 0
        self._interval_origin: float | None = None
        self._versions: dict[str, int] = dict.fromkeys(self.models, 0)
        self.last_checkpoint: dict[str, tuple[int, float]] = {}
        self.restored: dict[str, Restored | None] = {}
        self.restore_mode = "not attempted"
        self.skipped: deque[Skipped] = deque(maxlen=KEPT_REPORTS)
        self.drifts: deque[ModelDrift] = deque(maxlen=KEPT_REPORTS)
        self.drift_total = 0
        self._pending_drifts: list[tuple[DriftEvent, str]] = []

    # ------------------------------------------------------------------ models
    @property
    def runtime(self) -> DriftingForecaster:
        model: DriftingForecaster = self.models[RUNTIME_MODEL]
        return model

    @property
    def load(self) -> ArrivalLoad:
        model: ArrivalLoad = self.models[LOAD_MODEL]
        return model

    @property
    def risk(self) -> NodeRisk:
        model: NodeRisk = self.models[RISK_MODEL]
        return model

    def observe_heartbeat(self, node_id: str, at_s: float) -> None:
        """A new heartbeat of ``node_id`` (the caller drops repeated ones)."""
        self.risk.heartbeat(node_id, at_s)
        self._dirty.add(RISK_MODEL)

    def predict(self, spec: TaskSpec, hardware: str) -> float:
        """The runtime model's prediction (seconds) for ``spec`` on ``hardware``."""
        return float(self.runtime.predict(spec, hardware))

    # ------------------------------------------------------------------ learning
    def observe_task(
        self, old: st.TaskStatus | None, new: st.TaskStatus, event: Event | None = None
    ) -> Prequential | None:
        """Learn what the step ``old -> new`` of a task's status (made by ``event``)
        reveals: an arrival (the submission seen for the first time), the end of an
        attempt on a node (:func:`attempt_outcome`, for the risk model) and a completion
        to learn (see :func:`learning_observation`). Returns the completion's prequential
        record."""
        ended = None if event is None else attempt_outcome(old, new, event)
        if ended is not None:
            self.risk.attempt_end(*ended)
            self._dirty.add(RISK_MODEL)
        if new.submitted_at is not None and (old is None or old.submitted_at is None):
            self.arrivals += 1
            if self.load.observe(_arrival_classes(new), new.submitted_at.timestamp()):
                self._dirty.add(LOAD_MODEL)
                for hardware, value in self.load.forecast().items():
                    metrics.LOAD_FORECAST.labels(hardware).set(value)
        observed = learning_observation(old, new)
        if observed is None:
            return None
        spec, hardware, actual = observed
        return self.learn(new.task_id, spec, hardware, actual)

    def learn(self, task_id: str, spec: TaskSpec, hardware: str, actual_s: float) -> Prequential:
        """Predict, record the error, then learn one whole-task runtime."""
        model = self.runtime
        entry = Prequential(
            seq=self.learned + 1,
            task_id=task_id,
            hardware=hardware,
            predicted_s=float(model.predict(spec, hardware)),
            actual_s=actual_s,
            model_version=model.version,
        )
        self.ring.append(entry)
        self._error_count += 1
        self._error_abs_sum += entry.abs_error_s
        self._error_log_sum += entry.log_error
        metrics.MODEL_PREQUENTIAL_ERROR.labels(hardware).observe(entry.abs_error_s)
        metrics.MODEL_PREQUENTIAL_LOG_ERROR.labels(hardware).observe(entry.log_error)
        model.learn(spec, hardware, actual_s)
        self.learned += 1
        self._learned_since_checkpoint += 1
        self._dirty.add(RUNTIME_MODEL)
        for event in model.take_drift_events():
            self._pending_drifts.append((event, model.version))
            self.drift_total += 1
            metrics.MODEL_DRIFT.labels(RUNTIME_MODEL, event.key).inc()
            logger.warning(
                "model %s drifted on %s: mean |log error| %.3f -> %.3f after %d observations "
                "(window %d); %s",
                RUNTIME_MODEL,
                event.key,
                event.error_before,
                event.error_after,
                event.observations,
                event.window,
                f"refitted, now {model.version}" if event.worse else "not refitted (better)",
            )
        return entry

    def take_drift_events(self, occurred_at: datetime) -> list[ModelDrift]:
        """The ``model.drift`` events of the drifts since the last call, for publishing.
        Event ids are deterministic (model, key, position in the key's error stream)."""
        out = []
        for event, version in self._pending_drifts:
            wire = ModelDrift(
                event_id=f"drift-{RUNTIME_MODEL}-{event.key}-{event.observations}",
                occurred_at=occurred_at,
                source=self.source,
                model=RUNTIME_MODEL,
                key=event.key,
                model_version=version,
                error_before=float(event.error_before),
                error_after=float(event.error_after),
                observations=event.observations,
                window=event.window,
                adapted=event.worse,
            )
            self.drifts.append(wire)
            out.append(wire)
        self._pending_drifts = []
        return out

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_due(self, now_s: float) -> bool:
        """True when something changed and either ``checkpoint_every`` completions were
        learned or ``checkpoint_interval_s`` passed since the last checkpoint (or since
        the first call)."""
        if self._interval_origin is None:
            self._interval_origin = now_s
        if not self._dirty:
            return False
        if self._learned_since_checkpoint >= self.checkpoint_every:
            return True
        return now_s - self._interval_origin >= self.checkpoint_interval_s

    def checkpoint(self, now_s: float) -> list[CheckpointRecord]:
        """Checkpoints of every model changed since its last one, each under the next
        version of its name; the models are then clean. A model that cannot be encoded is
        logged and left dirty. Call :meth:`checkpoint_failed` if publishing fails."""
        out = []
        for name in sorted(self._dirty):
            model = self.models[name]
            try:
                data = encode(model, created_at_s=now_s)
            except CheckpointError as exc:
                logger.error("cannot checkpoint model %s: %s", name, exc)
                continue
            version = self._versions[name] + 1
            self._versions[name] = version
            self.last_checkpoint[name] = (version, now_s)
            self._dirty.discard(name)
            out.append(CheckpointRecord(name, version, model.version, now_s, data))
        self._learned_since_checkpoint = 0
        self._interval_origin = now_s
        return out

    def checkpoint_failed(self, records: Iterable[CheckpointRecord]) -> None:
        """Mark the models of ``records`` dirty again (their checkpoint was not published);
        the next checkpoint takes a new version."""
        for record in records:
            self._dirty.add(record.model)

    def restore(self, records: Iterable[ModelRecord]) -> dict[str, Restored | None]:
        """Restore each model from the newest valid checkpoint among ``records`` (the whole
        models topic, in log order); report and skip every record that fails a check; a
        model with none valid stays as it is (cold). Records that are events (JSON, or a
        ``type`` header other than a checkpoint's) and checkpoints of other model names
        are ignored. Returns, per model, where it came from (None: cold)."""
        by_name: dict[str, list[ModelRecord]] = {name: [] for name in self.models}
        for record in records:
            if _is_event(record):
                continue
            name = record.key
            if name is None:
                try:
                    name = read_header(record.value).model_name
                except CheckpointError as unreadable:
                    self._skip("unknown", unreadable, record.offset)
                    continue
            if name in by_name:
                by_name[name].append(record)
        self.restore_mode = "restore"
        for name, candidates in by_name.items():
            self._versions[name] = max(
                [self._versions[name], *(_header_version(r) for r in candidates)]
            )
            found, skipped = newest_valid(
                [r.value for r in candidates], expect_name=name, expect_type=self._types[name]
            )
            for index, exc in skipped:
                self._skip(name, exc, candidates[index].offset)
            if found is None:
                self.restored[name] = None
                logger.info(
                    "model %s: no valid checkpoint among %d record(s): starting cold",
                    name,
                    len(candidates),
                )
                continue
            record = _record_of(candidates, found.header)
            self.models[name] = found.model
            self.restored[name] = Restored(
                version=_header_version(record),
                model_version=found.header.model_version,
                created_at_s=found.header.created_at_s,
                offset=record.offset,
            )
            logger.info(
                "model %s restored from checkpoint version %d (%s, offset %d)",
                name,
                self.restored[name].version,  # type: ignore[union-attr]
                found.header.model_version,
                record.offset,
            )
        return dict(self.restored)

    def _skip(self, model: str, exc: CheckpointError, offset: int) -> None:
        reason = skip_reason(exc)
        self.skipped.append(Skipped(model, reason, str(exc), offset))
        metrics.MODEL_CHECKPOINTS_SKIPPED.labels(model, reason).inc()
        logger.warning(
            "skipping checkpoint of model %s at offset %d (%s): %s", model, offset, reason, exc
        )

    # ------------------------------------------------------------------ view
    def errors_summary(self) -> dict[str, Any]:
        """Prequential errors: over every completion learned by this process, and over
        the ring."""
        ring = list(self.ring)
        n = len(ring)
        return {
            "count": self._error_count,
            "mae_s": self._error_abs_sum / self._error_count if self._error_count else None,
            "mean_log_error": (
                self._error_log_sum / self._error_count if self._error_count else None
            ),
            "ring": {
                "size": n,
                "first_seq": ring[0].seq if ring else None,
                "last_seq": ring[-1].seq if ring else None,
                "mae_s": sum(e.abs_error_s for e in ring) / n if n else None,
                "mean_log_error": sum(e.log_error for e in ring) / n if n else None,
            },
        }

    def view(self, ring_limit: int | None = None) -> dict[str, Any]:
        """What ``GET /models`` shows. ``ring_limit`` keeps the newest entries of the
        ring (None: all of it)."""
        ring = list(self.ring)
        if ring_limit is not None:
            ring = ring[-ring_limit:] if ring_limit > 0 else []
        models: dict[str, Any] = {}
        for name, model in self.models.items():
            last = self.last_checkpoint.get(name)
            restored = self.restored.get(name)
            models[name] = {
                "model_version": model.version,
                "checkpoint_version": self._versions[name],
                "checkpoint_format_version": FORMAT_VERSION,
                "last_checkpoint": (
                    None if last is None else {"version": last[0], "created_at_s": last[1]}
                ),
                "restored_from": (
                    restored.to_json()
                    if restored is not None
                    else ("cold" if self.restore_mode == "restore" else "cold (restore off)")
                ),
                "dirty": name in self._dirty,
            }
        return {
            "models": models,
            "learned": self.learned,
            "arrivals": self.arrivals,
            "load_forecast": self.load.forecast(),
            "load_late_arrivals": self.load.late,
            "node_risk": self.risk.view(),
            "drift": {
                "total": self.drift_total,
                "events": [d.model_dump(mode="json") for d in self.drifts],
            },
            "skipped_checkpoints": [s.to_json() for s in self.skipped],
            "errors": self.errors_summary(),
            "ring": [e.to_json() for e in ring],
        }


def _is_event(record: ModelRecord) -> bool:
    kind = record.headers.get("type")
    if kind is not None and kind != "model.checkpoint":
        return True
    return record.value[:1] == b"{"


def _header_version(record: ModelRecord) -> int:
    raw = record.headers.get(VERSION_HEADER, "")
    return int(raw) if raw.isdigit() else 0


def _record_of(candidates: list[ModelRecord], header: CheckpointHeader) -> ModelRecord:
    for record in reversed(candidates):
        try:
            if read_header(record.value) == header:
                return record
        except CheckpointError:
            continue
    raise AssertionError("newest_valid returned a checkpoint that is not among the records")


# ---------------------------------------------------------------------- Kafka reading


def read_model_records(
    kafka_config: Mapping[str, Any],
    topic: str = topics.MODELS,
    *,
    timeout_s: float = 30.0,
    idle_s: float = 0.5,
) -> list[ModelRecord]:
    """Every record of ``topic`` (all partitions, from the beginning), in log order per
    partition; [] if the topic does not exist.

    Reads up to the high watermarks, then on until nothing arrives for ``idle_s`` (the
    embedded broker understates the watermark of batched writes). Raises TimeoutError
    naming the topic if that takes more than ``timeout_s``."""
    import time

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            **dict(kafka_config),
            "group.id": f"streamsched-models-reader-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=min(timeout_s, 10.0)).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return []
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]
        high = {
            tp.partition: consumer.get_watermark_offsets(tp, timeout=min(timeout_s, 10.0))[1]
            for tp in parts
        }
        consumer.assign(parts)
        records: list[ModelRecord] = []
        position = dict.fromkeys(high, -1)
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while True:
            now = time.monotonic()
            caught_up = all(position[p] >= high[p] - 1 for p in high)
            if caught_up and now - quiet_since >= idle_s:
                return records
            if now > deadline:
                raise TimeoutError(
                    f"reading {topic}: {len(records)} records after {timeout_s:g} s, still "
                    "behind the high watermark"
                )
            msg = consumer.poll(0.1)
            if msg is None or msg.error() is not None:
                continue
            quiet_since = time.monotonic()
            records.append(_model_record(msg))
            position[records[-1].partition] = records[-1].offset
    finally:
        consumer.close()


def _model_record(msg: Any) -> ModelRecord:
    """A :class:`ModelRecord` from a confluent-kafka message."""
    key = msg.key()
    headers = {str(k): _text(v) for k, v in list(msg.headers() or [])}
    return ModelRecord(
        key=_text(key) if key is not None else None,
        value=bytes(msg.value() or b""),
        headers=headers,
        offset=int(msg.offset()),
        partition=int(msg.partition()),
    )


def _text(raw: str | bytes | None) -> str:
    if raw is None:
        return ""
    return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")


def newest_checkpoint(
    kafka_config: Mapping[str, Any],
    model_name: str,
    *,
    topic: str = topics.MODELS,
    expect_type: type | None = None,
    timeout_s: float = 30.0,
) -> tuple[Any, CheckpointHeader] | None:
    """The newest valid checkpoint of ``model_name`` on ``topic`` as (model, header), or
    None if there is none. Records that fail a check are logged (WARNING) and skipped,
    never loaded. For any process that warm-starts from the processor's models, e.g.
    ``newest_checkpoint(cfg, "river-linear+drift")`` for the runtime model."""
    records = [
        r
        for r in read_model_records(kafka_config, topic, timeout_s=timeout_s)
        if r.key == model_name and not _is_event(r)
    ]
    found, skipped = newest_valid(
        [r.value for r in records], expect_name=model_name, expect_type=expect_type
    )
    for index, exc in skipped:
        logger.warning(
            "skipping checkpoint of model %s at %s offset %d (%s): %s",
            model_name,
            topic,
            records[index].offset,
            skip_reason(exc),
            exc,
        )
    return None if found is None else (found.model, found.header)
