"""The processor's model hub: learning from task statuses, prequential errors, drift
events, load buckets, checkpoints and their restore (valid, corrupt, incompatible)."""

from __future__ import annotations

import json
import math
import random
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from streamsched.scheduler.checkpoint import MAGIC, encode
from streamsched.scheduler.model import TaskSpec
from streamsched.schemas import codec
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.lifecycle import TaskCompleted, TaskLost, TaskPreempted
from streamsched.schemas.models import ModelDrift
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.streams import state as st
from streamsched.streams.app import Processor
from streamsched.streams.models import (
    LOAD_MODEL,
    RISK_MODEL,
    RUNTIME_MODEL,
    ArrivalLoad,
    CheckpointRecord,
    ModelHub,
    ModelRecord,
    spec_from_status,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
HW = "gpu-v100"


def submitted(task_id: str, *, task_type: str = "train", steps: int = 100, gpus: int = 1,
              at: datetime = T0, allowed: tuple[str, ...] = ()) -> TaskSubmitted:  # fmt: skip
    return TaskSubmitted(
        occurred_at=at, source="test", task_id=task_id, idempotency_key=f"k-{task_id}",
        tenant="vision", task_type=task_type, declared_work={"steps": steps},
        resources={"gpus": gpus, "allowed_hardware": allowed},
    )  # fmt: skip


def audit(task_id: str, attempt: int = 1, hardware: str = HW, node: str = "n1") -> DecisionAudit:
    return DecisionAudit(
        occurred_at=T0, source="test", decision_id=f"d-{task_id}-{attempt}", stimulus_id="s",
        task_id=task_id, attempt=attempt, policy="forecast", policy_version="1",
        model_version="m", decided_at_s=0.0, chosen_node_id=node, chosen_hardware=hardware,
        predicted_runtime_s=50.0, reason="test",
    )  # fmt: skip


def completed(task_id: str, runtime_s: float, attempt: int = 1) -> TaskCompleted:
    return TaskCompleted(
        occurred_at=T0, source="test", task_id=task_id, attempt=attempt, node_id="n1",
        runtime_s=runtime_s,
    )  # fmt: skip


class Tables:
    """A processor over plain dicts (the same code path the faust agent runs)."""

    def __init__(self, hub: ModelHub) -> None:
        self.proc = Processor((), {}, {}, {}, {}, hub=hub)

    def feed(self, *events: Any) -> None:
        for ev in events:
            self.proc.on_task_event(ev)

    def run(self, task_id: str, runtime_s: float, **spec: Any) -> None:
        self.feed(submitted(task_id, **spec), audit(task_id), completed(task_id, runtime_s))


def fed_hub(n: int = 40, seed: int = 1) -> ModelHub:
    hub = ModelHub()
    tables = Tables(hub)
    rng = random.Random(seed)
    for i in range(n):
        steps = rng.choice((100, 200, 400))
        tables.run(f"t{i}", steps * 0.5 * rng.uniform(0.9, 1.1), steps=steps)
    return hub


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------------- learning


def test_a_completion_is_predicted_then_learned_once_whatever_the_event_order() -> None:
    hub = ModelHub()
    tables = Tables(hub)
    # completion first, then the audit, then the submission: learned when all are known
    tables.feed(completed("a", 80.0), audit("a"))
    assert hub.learned == 0
    tables.feed(submitted("a", steps=100))
    assert hub.learned == 1
    (entry,) = hub.ring
    assert (entry.task_id, entry.hardware, entry.actual_s, entry.seq) == ("a", HW, 80.0, 1)
    assert entry.predicted_s == pytest.approx(hub.runtime.clone().predict(_spec("a"), HW))
    assert entry.abs_error_s == pytest.approx(abs(entry.predicted_s - 80.0))
    assert entry.log_error == pytest.approx(abs(math.log(entry.predicted_s / 80.0)))
    # redeliveries change nothing
    tables.feed(submitted("a", steps=100), audit("a"), completed("a", 80.0))
    assert hub.learned == 1
    # a second task of the same kind is now predicted from what was learned
    tables.run("b", 81.0, steps=100)
    assert hub.ring[-1].predicted_s == pytest.approx(80.0)


def _spec(task_id: str, steps: int = 100) -> TaskSpec:
    status = st.apply(None, submitted(task_id, steps=steps))
    assert status is not None
    spec = spec_from_status(status)
    assert spec is not None
    return spec


def test_only_first_attempt_completions_are_learned() -> None:
    hub = ModelHub()
    tables = Tables(hub)
    preempted = TaskPreempted(
        occurred_at=T0, source="test", task_id="r", attempt=1, node_id="n1", progress=0.5
    )
    tables.feed(submitted("r"), audit("r"), preempted, audit("r", 2), completed("r", 40.0, 2))
    assert tables.proc.task("r").state == st.TaskState.SUCCEEDED  # type: ignore[union-attr]
    assert hub.learned == 0
    assert not hub.ring


def test_prequential_errors_are_bounded_and_summarised() -> None:
    hub = ModelHub(ring_size=5)
    tables = Tables(hub)
    before = sample("streamsched_model_prequential_error_seconds_count", {"hardware": HW})
    for i in range(8):
        tables.run(f"p{i}", 100.0)
    assert hub.learned == 8
    assert [e.seq for e in hub.ring] == [4, 5, 6, 7, 8]
    summary = hub.errors_summary()
    assert summary["count"] == 8
    assert summary["ring"]["size"] == 5
    assert summary["ring"]["mae_s"] == pytest.approx(0.0)  # same task kind, same runtime
    assert summary["mae_s"] > 0  # the first, unlearned, prediction was off
    after = sample("streamsched_model_prequential_error_seconds_count", {"hardware": HW})
    assert after - before == 8
    view = hub.view(ring_limit=2)
    assert [e["seq"] for e in view["ring"]] == [7, 8]
    assert view["models"][RUNTIME_MODEL]["restored_from"] == "cold (restore off)"


# ---------------------------------------------------------------------- drift


def test_a_runtime_shift_emits_a_drift_event_metric_and_refit() -> None:
    hub = ModelHub()
    rng = random.Random(7)
    before = sample("streamsched_model_drift_total", {"model": RUNTIME_MODEL, "key": HW})
    spec = _spec("x")
    for i in range(600):
        base = 100.0 if i < 300 else 300.0  # the class got 3x slower at step 300
        hub.learn(f"x{i}", spec, HW, base * math.exp(rng.gauss(0, 0.1)))
        if i == 299:
            assert hub.take_drift_events(T0) == []
    events = hub.take_drift_events(T0)
    assert events, "no drift detected after a 3x shift"
    first = events[0]
    assert (first.model, first.key, first.adapted) == (RUNTIME_MODEL, HW, True)
    assert first.error_after > first.error_before
    assert 300 < first.observations < 400
    assert codec.decode(codec.encode(first)) == first
    assert hub.runtime.generation >= 1
    after = sample("streamsched_model_drift_total", {"model": RUNTIME_MODEL, "key": HW})
    assert after - before == len(events)
    assert hub.take_drift_events(T0) == []  # taken once
    assert len(hub.view()["drift"]["events"]) == len(events)


# ---------------------------------------------------------------------- load


def test_arrivals_are_counted_per_bucket_and_class() -> None:
    load = ArrivalLoad(interval_s=60.0)
    for minute, count in enumerate([3, 3, 3, 3, 3]):
        for _ in range(count):
            load.observe(["gpu-v100"], 60.0 * minute + 1)
    load.observe(["gpu-v100", "gpu-k80"], 60.0 * 5 + 1)
    assert load.closed == 5  # buckets 0..4 closed once bucket 5 was seen (lateness 1)
    assert load.forecast()["gpu-v100"] == pytest.approx(3.0)
    assert load.forecast()["gpu-k80"] == pytest.approx(0.0)
    assert not load.observe(["gpu-v100"], 1.0)  # a late arrival for a closed bucket
    assert load.late == 1
    hub = ModelHub(load=ArrivalLoad(interval_s=60.0))
    tables = Tables(hub)
    for i in range(3):
        tables.feed(submitted(f"l{i}", at=T0 + timedelta(minutes=2 * i), allowed=("gpu-k80",)))
    assert hub.arrivals == 3
    assert hub.load.closed >= 2
    assert set(hub.view()["load_forecast"]) == {"gpu-k80"}


# ---------------------------------------------------------------------- checkpoints


def runtime_of(checkpoints: list[CheckpointRecord]) -> CheckpointRecord:
    (found,) = [c for c in checkpoints if c.model == RUNTIME_MODEL]
    return found


def records_of(checkpoints: list[CheckpointRecord], start: int = 0) -> list[ModelRecord]:
    return [
        ModelRecord(
            key=c.model,
            value=c.data,
            headers={k: v.decode() for k, v in c.headers()},
            offset=start + i,
        )
        for i, c in enumerate(checkpoints)
    ]


def test_checkpoint_round_trip_restores_equal_predictions_and_versions() -> None:
    hub = fed_hub()
    saved = hub.checkpoint(1000.0)
    # arrivals all in one open bucket: no load checkpoint; attempt ends feed node risk
    assert {c.model for c in saved} == {RUNTIME_MODEL, RISK_MODEL}
    assert runtime_of(saved).version == 1
    assert hub.checkpoint(1001.0) == []  # nothing changed since
    fresh = ModelHub()
    restored = fresh.restore(records_of(saved))
    assert restored[RUNTIME_MODEL] is not None
    assert restored[RUNTIME_MODEL].version == 1
    assert restored[LOAD_MODEL] is None  # no checkpoint: cold
    assert restored[RISK_MODEL] is not None
    for steps in (100, 200, 400, 800):
        spec = _spec("q", steps)
        assert fresh.predict(spec, HW) == hub.predict(spec, HW)
    assert fresh.runtime.version == hub.runtime.version
    # the next checkpoint continues the version sequence
    Tables(fresh).run("more", 55.0)
    again = runtime_of(fresh.checkpoint(2000.0))
    assert again.version == 2
    view = fresh.view()
    assert view["models"][RUNTIME_MODEL]["restored_from"]["checkpoint_version"] == 1
    assert view["models"][LOAD_MODEL]["restored_from"] == "cold"


def test_checkpoint_due_after_n_completions_or_interval() -> None:
    hub = ModelHub(checkpoint_every=3, checkpoint_interval_s=60.0)
    assert not hub.checkpoint_due(0.0)
    tables = Tables(hub)
    tables.run("c1", 10.0)
    assert not hub.checkpoint_due(10.0)
    assert hub.checkpoint_due(60.0)  # interval passed with a change
    tables.run("c2", 10.0)
    tables.run("c3", 10.0)
    assert hub.checkpoint_due(1.0)  # three completions
    hub.checkpoint(61.0)
    assert not hub.checkpoint_due(500.0)  # nothing changed


def _corrupt(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    return bytes(flipped)


def _reversion(data: bytes, **changes: Any) -> bytes:
    """``data`` with header fields changed (a checkpoint from another format version)."""
    (length,) = struct.unpack_from(">I", data, len(MAGIC))
    start = len(MAGIC) + 4
    header = {**json.loads(data[start : start + length]), **changes}
    head = json.dumps(header).encode()
    return MAGIC + struct.pack(">I", len(head)) + head + data[start + length :]


def test_a_corrupt_newest_checkpoint_is_skipped_and_the_previous_one_restored() -> None:
    hub = fed_hub(20)
    first = [runtime_of(hub.checkpoint(100.0))]
    Tables(hub).run("late", 999.0, steps=100)
    second = runtime_of(hub.checkpoint(200.0))
    bad = CheckpointRecord(second.model, 2, second.model_version, 200.0, _corrupt(second.data))
    before = sample(
        "streamsched_model_checkpoints_skipped_total",
        {"model": RUNTIME_MODEL, "reason": "checksum"},
    )
    fresh = ModelHub()
    restored = fresh.restore(records_of([*first, bad]))
    assert restored[RUNTIME_MODEL] is not None
    assert restored[RUNTIME_MODEL].version == 1
    (skipped,) = fresh.skipped
    assert (skipped.model, skipped.reason, skipped.offset) == (RUNTIME_MODEL, "checksum", 1)
    after = sample(
        "streamsched_model_checkpoints_skipped_total",
        {"model": RUNTIME_MODEL, "reason": "checksum"},
    )
    assert after - before == 1
    # the version sequence stays monotonic past the skipped record
    Tables(fresh).run("next", 5.0)
    assert runtime_of(fresh.checkpoint(300.0)).version == 3


class NotAForecaster:
    name = RUNTIME_MODEL
    version = "x@1"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (lambda good: _reversion(good, format_version=2), "format-version"),
        (lambda good: encode(NotAForecaster(), created_at_s=500.0), "wrong-type"),
        (lambda good: good[: len(good) // 2], "truncated"),
        (lambda good: b"garbage" * 3, "not-a-checkpoint"),
    ],
    ids=["other-format-version", "other-model-type", "truncated", "garbage"],
)
def test_incompatible_checkpoints_are_never_loaded(value: Any, reason: str) -> None:
    hub = fed_hub(10)
    good = [runtime_of(hub.checkpoint(100.0))]
    newer = ModelRecord(RUNTIME_MODEL, value(good[0].data), {"checkpoint.version": "2"}, 1)
    fresh = ModelHub()
    restored = fresh.restore([*records_of(good), newer])
    assert restored[RUNTIME_MODEL] is not None
    assert restored[RUNTIME_MODEL].version == 1
    assert [(s.model, s.reason) for s in fresh.skipped] == [(RUNTIME_MODEL, reason)]
    # alone, it leaves the model cold
    alone = ModelHub()
    assert alone.restore([newer])[RUNTIME_MODEL] is None
    assert alone.learned == 0
    assert alone.runtime.inner.version == "river-linear@0"


def test_restore_ignores_events_and_other_models() -> None:
    hub = fed_hub(10)
    saved = [runtime_of(hub.checkpoint(100.0))]
    drift = ModelDrift(
        occurred_at=T0, source="test", model=RUNTIME_MODEL, key=HW, model_version="v",
        error_before=0.1, error_after=0.5, observations=40, window=20, adapted=True,
    )  # fmt: skip
    other = encode(ArrivalLoad(), created_at_s=1.0)
    records = [
        ModelRecord(RUNTIME_MODEL, codec.encode(drift), {"type": "model.drift"}, 0),
        ModelRecord("someone-else", other, {}, 1),
        *records_of(saved, start=2),
    ]
    fresh = ModelHub()
    restored = fresh.restore(records)
    assert restored[RUNTIME_MODEL] is not None
    assert restored[RUNTIME_MODEL].offset == 2
    assert not fresh.skipped


def test_attempt_ends_feed_node_risk_which_survives_a_checkpoint() -> None:
    hub = ModelHub()
    tables = Tables(hub)
    for i in range(6):
        tables.run(f"ok{i}", 10.0)  # node n1, succeeded
    for i in range(3):
        task_id = f"bad{i}"
        lost = TaskLost(
            occurred_at=T0, source="test", task_id=task_id, attempt=1, node_id="n9",
            reason="node vanished",
        )  # fmt: skip
        tables.feed(submitted(task_id), audit(task_id, node="n9"), lost, lost)  # a redelivery
    view = hub.view()["node_risk"]
    assert hub.risk.observations == 9  # the repeated loss is not counted twice
    assert list(view["risky_nodes"]) == ["n9"]
    assert view["risky_nodes"]["n9"] > view["fleet_risk"]
    fresh = ModelHub()
    fresh.restore(records_of(hub.checkpoint(50.0)))
    assert fresh.view()["node_risk"] == view
