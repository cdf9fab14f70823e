"""The shadow report: how a shadow policy's would-be placements compare with the live ones.

:func:`compare` is pure: it takes decoded records (``decision.audit`` of kinds ``assign``
and ``shadow`` from ``sched.decisions``, ``task.completed`` from ``sched.tasks.events``)
and returns one :class:`PolicyComparison` per shadow policy. :func:`read_records` reads
those topics from a Kafka cluster, from the beginning to their current end.

Pairing: each shadow decision is about one task attempt (``task_id``, ``attempt``); the
live decision of the same attempt is the ``kind="assign"`` audit with the same task and
attempt (placed in the same cycle, or later when the live policy kept the task waiting).
Only the first shadow decision per attempt counts (the core emits one per attempt anyway).

Predicted completion is measured from the shadow decision's time: the shadow places at
once, so its predicted completion is its predicted runtime; the live policy's is its wait
until its own decision (``live.decided_at_s - shadow.decided_at_s``, 0 in the same cycle)
plus its predicted runtime. The actual runtime is the ``task.completed`` runtime of the
live attempt, where it finished (the shadow's placement never ran, so it has none).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from streamsched.schemas import codec
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.errors import InvalidEvent
from streamsched.schemas.lifecycle import TaskCompleted
from streamsched.schemas.topics import DECISIONS, TASK_EVENTS

__all__ = ["NoShadowDecisionsError", "PolicyComparison", "compare", "read_records"]


class NoShadowDecisionsError(ValueError):
    """The records hold no shadow decision (shadow mode was never on, or not in range)."""


@dataclass(slots=True)
class PolicyComparison:
    """One shadow policy against the live decisions of the same task attempts. Means are
    ``None`` when nothing was there to average."""

    shadow_policy: str
    shadow_versions: list[str] = field(default_factory=list)
    live_policies: list[str] = field(default_factory=list)
    #: Shadow decisions (first per task attempt).
    decisions: int = 0
    #: Of those, with a live decision of the same attempt on record.
    paired: int = 0
    same_node: int = 0
    same_hardware: int = 0
    #: Live decision not on record (yet): the task still waits, or ended unplaced.
    live_pending: int = 0
    mean_shadow_runtime_s: float | None = None
    mean_live_runtime_s: float | None = None
    #: From the shadow decision: shadow = runtime; live = wait until it placed + runtime.
    mean_shadow_completion_s: float | None = None
    mean_live_completion_s: float | None = None
    mean_live_wait_s: float | None = None
    #: Paired attempts the live placement finished, and their actual mean runtime.
    finished: int = 0
    mean_actual_runtime_s: float | None = None
    #: Mean live predicted runtime over the same finished attempts (to read against it).
    mean_live_runtime_finished_s: float | None = None

    @property
    def agreement_node(self) -> float | None:
        return self.same_node / self.paired if self.paired else None

    @property
    def agreement_hardware(self) -> float | None:
        return self.same_hardware / self.paired if self.paired else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["agreement_node"] = self.agreement_node
        out["agreement_hardware"] = self.agreement_hardware
        return out


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def compare(records: Iterable[object], *, since: datetime | None = None) -> list[PolicyComparison]:
    """Compare every shadow policy in ``records`` with the live decisions, sorted by
    shadow policy name. ``since`` keeps only shadow decisions that occurred at or after
    it. Raises :class:`NoShadowDecisionsError` (a ``ValueError``) when there is none."""
    live: dict[tuple[str, int], DecisionAudit] = {}
    shadows: dict[tuple[str, int], DecisionAudit] = {}
    actual: dict[tuple[str, int], float] = {}
    for rec in records:
        if isinstance(rec, DecisionAudit):
            key = (rec.task_id, rec.attempt)
            if rec.kind == "assign":
                live.setdefault(key, rec)
            elif rec.kind == "shadow" and (since is None or rec.occurred_at >= since):
                shadows.setdefault(key, rec)
        elif isinstance(rec, TaskCompleted):
            actual.setdefault((rec.task_id, rec.attempt), rec.runtime_s)
    if not shadows:
        window = f" since {since.isoformat()}" if since is not None else ""
        raise NoShadowDecisionsError(
            f"no shadow decisions on {DECISIONS}{window}: turn shadow mode on with a "
            "command.update_policy naming a shadow_policy (docs/policies.md)"
        )
    by_policy: dict[str, list[tuple[DecisionAudit, DecisionAudit | None, float | None]]] = {}
    for key, shadow in shadows.items():
        by_policy.setdefault(shadow.policy, []).append((shadow, live.get(key), actual.get(key)))
    return [_summarise(name, rows) for name, rows in sorted(by_policy.items())]


def _summarise(
    name: str, rows: list[tuple[DecisionAudit, DecisionAudit | None, float | None]]
) -> PolicyComparison:
    out = PolicyComparison(shadow_policy=name, decisions=len(rows))
    out.shadow_versions = sorted({s.policy_version for s, _, _ in rows})
    out.live_policies = sorted({lv.policy_version for _, lv, _ in rows if lv is not None})
    shadow_rt, live_rt, shadow_done, live_done, waits = [], [], [], [], []
    actual_rt, live_rt_finished = [], []
    for shadow, lv, ran in rows:
        if lv is None:
            out.live_pending += 1
            continue
        out.paired += 1
        out.same_node += lv.chosen_node_id == shadow.chosen_node_id
        out.same_hardware += lv.chosen_hardware == shadow.chosen_hardware
        wait = max(0.0, lv.decided_at_s - shadow.decided_at_s)
        shadow_rt.append(shadow.predicted_runtime_s)
        live_rt.append(lv.predicted_runtime_s)
        shadow_done.append(shadow.predicted_runtime_s)
        live_done.append(wait + lv.predicted_runtime_s)
        waits.append(wait)
        if ran is not None:
            out.finished += 1
            actual_rt.append(ran)
            live_rt_finished.append(lv.predicted_runtime_s)
    out.mean_shadow_runtime_s = _mean(shadow_rt)
    out.mean_live_runtime_s = _mean(live_rt)
    out.mean_shadow_completion_s = _mean(shadow_done)
    out.mean_live_completion_s = _mean(live_done)
    out.mean_live_wait_s = _mean(waits)
    out.mean_actual_runtime_s = _mean(actual_rt)
    out.mean_live_runtime_finished_s = _mean(live_rt_finished)
    return out


# ---------------------------------------------------------------------- reading Kafka
def read_records(
    config: Mapping[str, Any],
    topics: tuple[str, ...] = (DECISIONS, TASK_EVENTS),
    *,
    timeout_s: float = 30.0,
    idle_s: float = 1.0,
) -> list[object]:
    """Every record of ``topics`` (all partitions, from the beginning) that decodes, in
    read order, read until each partition reached the end it had when reading began and
    nothing more arrived for ``idle_s`` (an embedded Tansu broker may report ends short of
    the last record of a batch; the idle wait covers it). Records that do not decode are
    skipped (the dead-letter topic is the place for them). Raises ``OSError`` naming the
    broker when it cannot be reached within ``timeout_s``."""
    from confluent_kafka import (
        OFFSET_BEGINNING,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )
    from confluent_kafka.admin import AdminClient

    servers = config.get("bootstrap.servers", "?")
    try:
        # log_level 0: the connection failures are reported once, below, not per retry.
        probe = AdminClient({**config, "log_level": 0})
        meta = probe.list_topics(timeout=min(timeout_s, 10.0))
    except KafkaException as exc:
        reason = exc.args[0].str() if exc.args else "no answer"
        raise OSError(f"cannot reach the Kafka broker at {servers}: {reason}") from None
    consumer = Consumer(
        {
            **config,
            "group.id": f"shadow-report-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        parts = [
            TopicPartition(t, p, OFFSET_BEGINNING)
            for t in topics
            if t in meta.topics
            for p in sorted(meta.topics[t].partitions)
        ]
        if not parts:
            return []
        consumer.assign(parts)
        pending = {(tp.topic, tp.partition) for tp in parts}
        out: list[object] = []
        deadline = time.monotonic() + timeout_s
        last_data = time.monotonic()
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                if not pending and time.monotonic() - last_data >= idle_s:
                    break
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard((msg.topic() or "", msg.partition() or 0))
                continue
            last_data = time.monotonic()
            try:
                out.append(codec.decode(msg.value() or b""))
            except InvalidEvent:
                continue
        return out
    finally:
        consumer.close()
