"""Tests of the load (arrival) forecaster: determinism, pickling, learning known patterns."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from streamsched.scheduler.load import CANDIDATES, LoadForecaster, LoadForecasters, LoadParams


def _poisson(rng: random.Random, lam: float) -> float:
    """A Poisson draw (Knuth), so the test series look like arrival counts."""
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return float(k)
        k += 1


def _noisy_daily(n: int, season: int = 24, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [_poisson(rng, 3.0 + 2.5 * math.sin(2 * math.pi * t / season)) for t in range(n)]


def _mae(model: LoadForecaster, values: list[float], skip: int) -> tuple[float, float]:
    """(model MAE, naive MAE) of one-step forecasts after ``skip`` steps."""
    err = naive = 0.0
    last = 0.0
    for t, y in enumerate(values):
        if t >= skip:
            err += abs(model.forecast(1)[0] - y)
            naive += abs(last - y)
        model.update(y)
        last = y
    return err / (len(values) - skip), naive / (len(values) - skip)


def test_naive_until_min_samples_then_a_candidate() -> None:
    model = LoadForecaster(LoadParams(min_samples=3))
    assert model.forecast(2) == [0.0, 0.0]
    assert model.forecast_interval() is None
    model.update(4.0)
    model.update(2.0)
    assert model.forecast(1) == [2.0]
    assert model.chosen == "naive"
    model.update(6.0)
    assert model.chosen in CANDIDATES
    low, high = model.forecast_interval() or (math.nan, math.nan)
    assert 0.0 <= low <= model.forecast(1)[0] <= high


def test_same_values_give_same_forecasts() -> None:
    values = _noisy_daily(600)
    a, b = LoadForecaster(LoadParams(season=24)), LoadForecaster(LoadParams(season=24))
    got_a, got_b = [], []
    for y in values:
        got_a.append((a.forecast(3), a.forecast_interval(), a.chosen))
        got_b.append((b.forecast(3), b.forecast_interval(), b.chosen))
        a.update(y)
        b.update(y)
    assert got_a == got_b


def test_pickle_round_trip_continues_identically() -> None:
    values = _noisy_daily(400)
    model = LoadForecaster(LoadParams(season=24))
    for y in values[:300]:
        model.update(y)
    copy = pickle.loads(pickle.dumps(model))
    for y in values[300:]:
        assert copy.forecast(2) == model.forecast(2)
        assert copy.forecast_interval() == model.forecast_interval()
        model.update(y)
        copy.update(y)
    assert copy.n_seen == model.n_seen == 400


def test_beats_naive_on_noisy_seasonal_counts() -> None:
    """Poisson counts around a daily sine: the last value carries the noise, the model
    averages it out; at least 15% lower MAE than naive after the first season."""
    values = _noisy_daily(24 * 60)
    mae, naive = _mae(LoadForecaster(LoadParams(season=24)), values, skip=24)
    assert mae < 0.85 * naive


def test_learns_a_repeating_spiky_pattern() -> None:
    """A deterministic period-12 pattern of spikes: naive is wrong twice per spike."""
    pattern = [0.0, 0.0, 8.0, 0.0, 1.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 5.0]
    values = pattern * 300
    mae, naive = _mae(LoadForecaster(LoadParams(season=12)), values, skip=12 * 200)
    assert mae < 0.7 * naive


def test_forecasts_are_never_negative() -> None:
    model = LoadForecaster(LoadParams(season=4))
    for y in [50.0, 0.0, 0.0, 0.0, 0.0, 0.0, 40.0, 0.0, 0.0, 0.0] * 30:
        model.update(y)
        assert all(v >= 0 for v in model.forecast(6))


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_rejects_bad_values(bad: float) -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        LoadForecaster().update(bad)


def test_rejects_bad_params() -> None:
    with pytest.raises(ValueError, match="season"):
        LoadForecaster(LoadParams(season=0))
    with pytest.raises(ValueError, match="horizon"):
        LoadForecaster().forecast(0)


def test_per_class_container() -> None:
    models = LoadForecasters(LoadParams(season=24))
    assert models.forecast("gpu-v100", 2) == [0.0, 0.0]
    for y in _noisy_daily(100):
        models.update_all([("gpu-v100", y), ("cpu", 2 * y)])
    assert models.classes() == ["cpu", "gpu-v100"]
    assert models["cpu"].n_seen == 100
    assert models.forecast("cpu")[0] != models.forecast("gpu-v100")[0]
    copy = pickle.loads(pickle.dumps(models))
    assert copy.forecast("cpu", 3) == models.forecast("cpu", 3)
