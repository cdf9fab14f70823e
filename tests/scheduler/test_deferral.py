"""Deferral of low-priority work ahead of predicted peaks of GPU demand (forecast family)."""

from __future__ import annotations

import pytest

from streamsched.scheduler.core import SchedulerCore
from streamsched.scheduler.load import BucketedDemand
from streamsched.testing import assigns, completed, drive, new_core, node, submitted, task, tick

BUCKET = 600.0
#: Buckets of history, each with four one-GPU arrivals that finish within the bucket.
HISTORY = 6
NOW = HISTORY * BUCKET + 1.0


def _core(params: dict[str, float] | None = None, history_gpus: int = 4) -> SchedulerCore:
    """8 v100 GPUs (two nodes of 4); ``history_gpus`` one-GPU arrivals per 10-minute
    bucket for ``HISTORY`` buckets, all finished."""
    core = new_core("forecast", nodes=[node("v0", gpus=4), node("v1", gpus=4)], params=params)
    for b in range(HISTORY):
        t = b * BUCKET + 1.0
        placed = []
        for i in range(history_gpus):
            placed += assigns(drive(core, submitted(task(f"h{b}-{i}", gpus=1)), t))
        for a in placed:
            drive(core, completed(a.task_id, a.attempt, 100.0), t + 100.0)
    return core


def _fill(core: SchedulerCore, gpus: int) -> None:
    """Start ``gpus`` long one-GPU normal tasks now (they keep their GPUs)."""
    for i in range(gpus):
        (a,) = assigns(drive(core, submitted(task(f"busy{i}", "long", gpus=1)), NOW))
        assert a.task_id == f"busy{i}"


def test_a_predicted_peak_defers_a_low_priority_task_and_says_why() -> None:
    core = _core()
    _fill(core, 4)  # 4 of 8 GPUs free; about 4 GPUs predicted in the next 10 minutes
    out = drive(core, submitted(task("lo", gpus=1, priority="low")), NOW + 1)
    assert assigns(out) == []
    since, why = core.deferred["lo"]
    assert since == NOW + 1
    assert why.startswith("deferred: predicted peak on gpu-v100 ("), why
    assert why.endswith(" GPUs in the next 10 min)"), why


def test_high_and_normal_priority_are_not_deferred() -> None:
    core = _core()
    _fill(core, 4)
    (hi,) = assigns(drive(core, submitted(task("hi", gpus=1, priority="high")), NOW + 1))
    (no,) = assigns(drive(core, submitted(task("no", gpus=1)), NOW + 2))
    assert (hi.task_id, no.task_id) == ("hi", "no")
    assert core.deferred == {}


def test_deferral_is_bounded_by_defer_max_s() -> None:
    core = _core({"defer_max_s": 900.0})
    _fill(core, 4)
    assert assigns(drive(core, submitted(task("lo", gpus=1, priority="low")), NOW + 1)) == []
    assert "lo" in core.deferred
    (a,) = assigns(drive(core, tick(NOW + 901), NOW + 901))
    assert a.task_id == "lo"
    assert "was deferred: predicted peak on gpu-v100" in a.decision.reason
    assert "for 900s" in a.decision.reason
    assert "lo" not in core.deferred


def test_no_peak_no_deferral() -> None:
    # Plenty free: 8 GPUs free, 4 predicted; starting one leaves 7, above the headroom.
    core = _core()
    (a,) = assigns(drive(core, submitted(task("lo", gpus=1, priority="low")), NOW))
    assert a.task_id == "lo"
    # No demand history: nothing predicted, the last free GPUs go to low priority too.
    quiet = _core(history_gpus=0)
    _fill(quiet, 7)
    (b,) = assigns(drive(quiet, submitted(task("lo", gpus=1, priority="low")), NOW + 1))
    assert b.task_id == "lo"
    assert quiet.deferred == {}


def test_defer_low_priority_zero_switches_it_off() -> None:
    core = _core({"defer_low_priority": 0})
    _fill(core, 4)
    (a,) = assigns(drive(core, submitted(task("lo", gpus=1, priority="low")), NOW + 1))
    assert a.task_id == "lo"


def test_baseline_policies_never_defer() -> None:
    core = new_core("best-fit", nodes=[node("v0", gpus=1)])
    assert core.load is None
    (a,) = assigns(drive(core, submitted(task("lo", gpus=1, priority="low")), 1.0))
    assert a.task_id == "lo"


def test_bucketed_demand_feeds_closed_buckets_only_and_deterministically() -> None:
    one, two = BucketedDemand(600.0), BucketedDemand(600.0)
    for b in range(5):
        one.record([("gpu-v100", 4.0)], b * 600.0 + 1)
        two.record([("gpu-v100", 4.0)], b * 600.0 + 1)
        one.forecast("gpu-v100", b * 600.0 + 2)  # asking early changes nothing
    assert one.forecast("gpu-v100", 3000.0) == two.forecast("gpu-v100", 3000.0)
    assert one.forecast("gpu-v100", 3000.0) == pytest.approx(4.0, abs=0.5)
    assert one.forecast("gpu-k80", 3000.0) == 0.0
    # A long idle spell is learned as at most one season of zeros (bounded work).
    assert one.forecast("gpu-v100", 600.0 * 100_000) < 1.0
    with pytest.raises(ValueError, match="bucket_s must be"):
        BucketedDemand(0.0)
