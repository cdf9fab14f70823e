"""Drift detection (DriftMonitor) and the adapting wrapper (DriftingForecaster)."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from streamsched.scheduler.drift import (
    DriftEvent,
    DriftingForecaster,
    DriftingIntervalForecaster,
    DriftMonitor,
    by_task_type,
    drifting,
    log_error,
)
from streamsched.scheduler.forecasting import (
    DaskLikeForecaster,
    IntervalForecaster,
    RunningMeanForecaster,
    RuntimeForecaster,
)
from streamsched.scheduler.learned import RiverRuntimeForecaster
from streamsched.scheduler.model import TaskSpec
from streamsched.testing import task

SHIFT_AT = 300
SEEDS = (1, 2, 3, 4, 5)


def _errors(seed: int, n: int = 1500, jump: float = 0.5) -> list[float]:
    """|N(0, 0.3)| errors; ``jump`` is added from step SHIFT_AT on (0: stationary)."""
    rng = random.Random(seed)
    return [abs(rng.gauss(0, 0.3)) + (jump if i >= SHIFT_AT else 0.0) for i in range(n)]


def _run(
    monitor: DriftMonitor, errors: list[float], key: str = "k"
) -> list[tuple[int, DriftEvent]]:
    out = []
    for i, error in enumerate(errors):
        event = monitor.update(key, error)
        if event is not None:
            out.append((i, event))
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_shift_is_detected_after_it_happens_not_before(seed: int) -> None:
    events = _run(DriftMonitor(), _errors(seed))
    assert events, "a jump of 0.5 in the mean error went unnoticed"
    first_step, first = events[0]
    assert first_step >= SHIFT_AT
    assert first_step < SHIFT_AT + 100
    assert first.key == "k"
    assert first.observations == first_step + 1
    assert first.error_after > first.error_before
    assert first.worse
    assert 0 < first.window <= first.observations


@pytest.mark.parametrize("seed", SEEDS)
def test_stationary_series_with_the_same_seed_never_drifts(seed: int) -> None:
    assert _run(DriftMonitor(), _errors(seed, jump=0.0)) == []


def test_keys_are_watched_separately() -> None:
    monitor = DriftMonitor()
    shifted, steady = _errors(1), _errors(2, jump=0.0)
    seen = []
    for i, (a, b) in enumerate(zip(shifted, steady, strict=True)):
        for key, error in (("gpu-v100", a), ("cpu", b)):
            event = monitor.update(key, error)
            if event is not None:
                seen.append((i, event.key))
    assert seen
    assert {key for _, key in seen} == {"gpu-v100"}
    assert monitor.observations("cpu") == len(steady)
    assert monitor.error_level("never-seen") is None


def test_improvement_is_reported_as_not_worse() -> None:
    errors = [e + 0.8 if i < SHIFT_AT else e for i, e in enumerate(_errors(3, jump=0.0))]
    events = _run(DriftMonitor(), errors)
    assert events
    assert not events[0][1].worse


def test_same_errors_same_detections_and_pickle_resumes_identically() -> None:
    errors = _errors(4)
    assert _run(DriftMonitor(), errors) == _run(DriftMonitor(), errors)
    monitor = DriftMonitor()
    _run(monitor, errors[:200])
    copy = pickle.loads(pickle.dumps(monitor))
    assert _run(copy, errors[200:]) == _run(monitor, errors[200:])
    assert copy.error_level("k") == monitor.error_level("k")


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_bad_error_is_refused_with_the_key_named(bad: float) -> None:
    with pytest.raises(ValueError, match="'gpu-v100'"):
        DriftMonitor().update("gpu-v100", bad)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="delta"):
        DriftMonitor(delta=0)
    with pytest.raises(ValueError, match="clock"):
        DriftMonitor(clock=0)
    with pytest.raises(ValueError, match="refit_recent"):
        DriftingForecaster(RunningMeanForecaster(), refit_recent=0)


# ---------------------------------------------------------------------------- wrapper
V100_S, P100_S = 100.0, 300.0


def _runtime_stream(
    seed: int, n: int = 900, *, shift: bool = True
) -> list[tuple[TaskSpec, str, float]]:
    """ "train" tasks on v100 (100 s) and p100 (300 s) with 10% noise; from step SHIFT_AT
    on, v100 takes three times longer (a bad driver) unless ``shift`` is False; p100 is
    unchanged."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        hw = rng.choice(["gpu-v100", "gpu-p100"])
        base = V100_S * (3.0 if shift and i >= SHIFT_AT else 1.0) if hw == "gpu-v100" else P100_S
        out.append((task(f"t{i}", "train", gpus=1), hw, base * math.exp(rng.gauss(0, 0.1))))
    return out


def _errors_after_shift(
    model: RuntimeForecaster, stream: list[tuple[TaskSpec, str, float]]
) -> list[float]:
    """The v100 errors the model makes on the 200 observations after the shift."""
    errors = []
    for i, (spec, hw, seconds) in enumerate(stream):
        if SHIFT_AT <= i < SHIFT_AT + 200 and hw == "gpu-v100":
            errors.append(log_error(model.predict(spec, hw), seconds))
        model.learn(spec, hw, seconds)
    return errors


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_wrapper_recovers_from_the_shift_faster_than_the_plain_model(seed: int) -> None:
    stream = _runtime_stream(seed)
    plain = _errors_after_shift(RunningMeanForecaster(), stream)
    wrapped_model = drifting(RunningMeanForecaster())
    wrapped = _errors_after_shift(wrapped_model, stream)
    assert [e.key for e in wrapped_model.drift_events] == ["gpu-v100"]
    assert sum(wrapped) / len(wrapped) < 0.5 * sum(plain) / len(plain)
    # Once adapted, the wrapped model is near the new truth; the plain one is still not.
    assert sum(wrapped[-20:]) / 20 < 0.2 < sum(plain[-20:]) / 20
    # The class that did not drift was relearned from the buffer and is still right.
    assert wrapped_model.predict(task("x", "train", gpus=1), "gpu-p100") == pytest.approx(
        P100_S, rel=0.1
    )


def test_drift_bumps_the_version_and_events_are_taken_once() -> None:
    model = drifting(RunningMeanForecaster())
    versions = set()
    for spec, hw, seconds in _runtime_stream(1):
        model.learn(spec, hw, seconds)
        versions.add(model.version)
    assert model.generation == 1
    assert model.version.startswith("running-mean+drift@g1:running-mean@")
    assert len(versions) == 900  # every learn and the refit changed it: never reused
    taken = model.take_drift_events()
    assert taken == list(model.drift_events)
    assert len(taken) == 1
    assert model.take_drift_events() == []


def test_no_drift_no_refit_and_same_predictions_as_the_inner_model() -> None:
    stream = _runtime_stream(2, shift=False)
    plain, model = RunningMeanForecaster(), drifting(RunningMeanForecaster())
    for spec, hw, seconds in stream:
        plain.learn(spec, hw, seconds)
        model.learn(spec, hw, seconds)
    assert model.generation == 0
    assert model.drift_events == ()
    probe = task("p", "train", gpus=1)
    assert model.predict(probe, "gpu-v100") == plain.predict(probe, "gpu-v100")


def test_protocol_is_kept_and_predict_range_only_when_the_inner_has_it() -> None:
    inner = RiverRuntimeForecaster()
    river = drifting(inner)
    dask = drifting(DaskLikeForecaster())
    assert isinstance(river, DriftingIntervalForecaster)
    assert isinstance(river, IntervalForecaster)
    assert isinstance(river, RuntimeForecaster)
    assert not isinstance(dask, IntervalForecaster)
    assert isinstance(dask, RuntimeForecaster)
    spec = task("a", "train", gpus=1)
    river.learn(spec, "gpu-v100", 50.0)
    assert river.predict_range(spec, "gpu-v100") == inner.predict_range(spec, "gpu-v100")
    assert river.name == "river-linear+drift"


def test_clone_is_unfitted_with_the_same_settings() -> None:
    model = drifting(RunningMeanForecaster(), key_of=by_task_type, buffer_size=50, refit_recent=8)
    for spec, hw, seconds in _runtime_stream(1):
        model.learn(spec, hw, seconds)
    fresh = model.clone()
    assert type(fresh) is type(model)
    assert fresh.generation == 0
    assert fresh.drift_events == ()
    assert (fresh.key_of, fresh.buffer_size, fresh.refit_recent) == (by_task_type, 50, 8)
    assert fresh.monitor.observations("train") == 0
    assert fresh.version == "running-mean+drift@g0:running-mean@0"


def test_bad_observations_are_ignored() -> None:
    model = drifting(RunningMeanForecaster())
    for bad in (0.0, -1.0, math.nan, math.inf):
        model.learn(task("a"), "cpu", bad)
    assert model.monitor.observations("cpu") == 0
    assert model.inner.version == "running-mean@0"


def test_wrapper_pickles_and_resumes_identically() -> None:
    stream = _runtime_stream(3)
    model = drifting(RiverRuntimeForecaster())
    for spec, hw, seconds in stream[:350]:
        model.learn(spec, hw, seconds)
    copy = pickle.loads(pickle.dumps(model))
    for spec, hw, seconds in stream[350:]:
        model.learn(spec, hw, seconds)
        copy.learn(spec, hw, seconds)
    probe = task("p", "train", gpus=1)
    assert copy.version == model.version
    assert copy.drift_events == model.drift_events
    assert copy.predict_range(probe, "gpu-v100") == model.predict_range(probe, "gpu-v100")
