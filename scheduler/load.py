"""Load (arrival) forecasting: one-step-ahead forecasts of a regular count series.

A load series is a value per fixed interval (e.g. job arrivals per 10 minutes, or GPUs
asked for per interval), one series per hardware class. :class:`LoadForecaster` learns
one series online: ``update(value)`` once per interval, in time order, then
``forecast(horizon)`` gives the next ``horizon`` values. :class:`LoadForecasters` keeps
one forecaster per hardware class.

The forecaster runs several candidate models side by side and answers with the one whose
recent absolute error is lowest (an exponentially weighted mean with a half-life of
``error_halflife`` intervals; ties go to the earlier candidate in :data:`CANDIDATES`):

- ``naive``: the last value;
- ``level``: River's :class:`~river.time_series.HoltWinters` with level only (simple
  exponential smoothing, ``alpha``);
- ``median``: River's :class:`~river.stats.RollingQuantile` median of the last
  ``median_window`` values (the constant that minimises absolute error, so it wins on
  sparse, mostly-zero series);
- ``profile``: a daily (seasonal) profile: one River :class:`~river.stats.EWMean`
  (``profile_alpha``) per phase of the season, answering for the next interval's phase
  (the level candidate's answer until a whole season has been seen);
- ``snarimax``: River's :class:`~river.time_series.SNARIMAX` with ``p`` lags and one
  seasonal lag of ``season`` intervals, fitted by SGD with a small, clipped step (the
  default step diverges on bursty arrival counts).

River's seasonal Holt-Winters is not a candidate: its additive season is initialised by
division by the level, which fails on a series that starts with zeros.

Contracts: values must be finite and >= 0 (counts or demands; a negative or non-finite
value raises ValueError); forecasts are >= 0. Before ``min_samples`` values the
forecast is the naive one (the last value, 0.0 before any). The object is pure (no I/O,
no clock, no randomness: SGD starts from zero weights), so the same values give the same
forecasts, and everything it holds pickles.

Intervals: :meth:`LoadForecaster.forecast_interval` is the one-step forecast plus or
minus the ``coverage`` quantile of the absolute errors of the last ``residual_window``
forecasts it gave (River ``RollingQuantile``), clipped at 0; ``None`` before
``min_samples`` values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from river import linear_model, optim, stats, time_series

__all__ = ["CANDIDATES", "BucketedDemand", "LoadForecaster", "LoadForecasters", "LoadParams"]

#: Candidate model names, in tie-break order.
CANDIDATES: tuple[str, ...] = ("naive", "level", "median", "profile", "snarimax")


@dataclass(frozen=True, slots=True)
class LoadParams:
    """Settings of a :class:`LoadForecaster` (defaults suit 10-minute intervals)."""

    #: Intervals per season (one day of 10-minute intervals).
    season: int = 144
    #: Values seen before the forecaster answers with a model instead of the last value.
    min_samples: int = 3
    #: Half-life, in intervals, of the weights of past errors when choosing a candidate.
    error_halflife: float = 36.0
    #: Smoothing factor of the ``level`` candidate.
    alpha: float = 0.1
    #: Window of the ``median`` candidate, in intervals.
    median_window: int = 36
    #: Smoothing factor of each phase of the ``profile`` candidate.
    profile_alpha: float = 0.1
    #: Non-seasonal lags of the ``snarimax`` candidate.
    p: int = 6
    #: SGD step of the ``snarimax`` candidate.
    snarimax_lr: float = 0.001
    #: Gradient clip of the ``snarimax`` candidate.
    snarimax_clip: float = 10.0
    #: Target coverage of :meth:`LoadForecaster.forecast_interval`.
    coverage: float = 0.9
    #: Absolute errors kept for the interval, in intervals.
    residual_window: int = 1008

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if self.season < 1:
            raise ValueError(f"load forecaster: season must be >= 1, got {self.season}")
        if self.min_samples < 1:
            raise ValueError(f"load forecaster: min_samples must be >= 1, got {self.min_samples}")
        if not self.error_halflife > 0:
            raise ValueError(
                f"load forecaster: error_halflife must be > 0, got {self.error_halflife}"
            )
        if not 0 < self.alpha <= 1:
            raise ValueError(f"load forecaster: alpha must be in (0, 1], got {self.alpha}")
        if not 0 < self.profile_alpha <= 1:
            raise ValueError(
                f"load forecaster: profile_alpha must be in (0, 1], got {self.profile_alpha}"
            )
        if self.median_window < 1 or self.p < 1 or self.residual_window < 1:
            raise ValueError("load forecaster: median_window, p, residual_window must be >= 1")
        if not 0 < self.coverage < 1:
            raise ValueError(f"load forecaster: coverage must be in (0, 1), got {self.coverage}")


class _Candidate(Protocol):
    def learn(self, value: float) -> None: ...
    def forecast(self, horizon: int) -> list[float]: ...


class _Naive:
    def __init__(self) -> None:
        self.last = 0.0

    def learn(self, value: float) -> None:
        self.last = value

    def forecast(self, horizon: int) -> list[float]:
        return [self.last] * horizon


class _Level:
    """Simple exponential smoothing (River Holt-Winters, level only)."""

    def __init__(self, alpha: float) -> None:
        self.model = time_series.HoltWinters(alpha=alpha)  # type: ignore[no-untyped-call]
        self.last = 0.0

    def learn(self, value: float) -> None:
        self.model.learn_one(value)  # type: ignore[no-untyped-call]
        self.last = value

    def forecast(self, horizon: int) -> list[float]:
        if not self.model._initialized:  # needs two values before it has a level
            return [self.last] * horizon
        return [float(v) for v in self.model.forecast(horizon)]  # type: ignore[no-untyped-call]


class _Median:
    def __init__(self, window: int) -> None:
        self.median = stats.RollingQuantile(q=0.5, window_size=window)

    def learn(self, value: float) -> None:
        self.median.update(value)

    def forecast(self, horizon: int) -> list[float]:
        return [float(self.median.get() or 0.0)] * horizon


class _Profile:
    """One exponentially weighted mean per phase of the season."""

    def __init__(self, season: int, alpha: float, fallback: _Level) -> None:
        self.phases = [stats.EWMean(fading_factor=alpha) for _ in range(season)]
        self.fallback = fallback
        self.seen = 0

    def learn(self, value: float) -> None:
        self.phases[self.seen % len(self.phases)].update(value)
        self.seen += 1

    def forecast(self, horizon: int) -> list[float]:
        if self.seen < len(self.phases):
            return self.fallback.forecast(horizon)
        n = len(self.phases)
        return [float(self.phases[(self.seen + h) % n].get()) for h in range(horizon)]


class _Snarimax:
    def __init__(self, p: int, season: int, lr: float, clip: float) -> None:
        seasonal = season > 1
        regressor = linear_model.LinearRegression(
            optimizer=optim.SGD(lr), intercept_lr=0.01, clip_gradient=clip
        )
        self.model = time_series.SNARIMAX(
            p=p, d=0, q=0, m=season if seasonal else 1, sp=1 if seasonal else 0,
            regressor=regressor,
        )  # fmt: skip

    def learn(self, value: float) -> None:
        self.model.learn_one(value)  # type: ignore[no-untyped-call]

    def forecast(self, horizon: int) -> list[float]:
        return [float(v) for v in self.model.forecast(horizon)]  # type: ignore[no-untyped-call]


def _build(params: LoadParams) -> dict[str, _Candidate]:
    level = _Level(params.alpha)
    return {
        "naive": _Naive(),
        "level": level,
        "median": _Median(params.median_window),
        "profile": _Profile(params.season, params.profile_alpha, level),
        "snarimax": _Snarimax(params.p, params.season, params.snarimax_lr, params.snarimax_clip),
    }


def _clean(value: float) -> float:
    return max(0.0, value) if math.isfinite(value) else 0.0


class LoadForecaster:
    """One-step-ahead (and multi-step) forecasts of one regular series; see the module doc."""

    def __init__(self, params: LoadParams | None = None) -> None:
        self.params = params or LoadParams()
        self.params.check()
        self._candidates = _build(self.params)
        self._decay = 0.5 ** (1.0 / self.params.error_halflife)
        self._error = dict.fromkeys(self._candidates, 0.0)
        self._pending: dict[str, float] | None = None
        self._abs_residuals = stats.RollingQuantile(
            q=self.params.coverage, window_size=self.params.residual_window
        )
        self._last = 0.0
        self.n_seen = 0

    @property
    def chosen(self) -> str:
        """The candidate that currently answers (``naive`` before ``min_samples``)."""
        if self.n_seen < self.params.min_samples:
            return "naive"
        return min(self._candidates, key=lambda name: self._error[name])

    def update(self, value: float) -> None:
        """Learn the next value of the series. Raises ValueError unless finite and >= 0."""
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"load forecaster: value must be finite and >= 0, got {value!r}")
        if self._pending is None:
            self._pending = self._one_step()
        answered = self._pending[self.chosen]
        if self.n_seen >= self.params.min_samples:
            self._abs_residuals.update(abs(value - answered))
        for name, predicted in self._pending.items():
            self._error[name] = self._decay * self._error[name] + abs(value - predicted)
        for model in self._candidates.values():
            model.learn(value)
        self._last = value
        self.n_seen += 1
        self._pending = None

    def forecast(self, horizon: int = 1) -> list[float]:
        """The next ``horizon`` values (each >= 0)."""
        if horizon < 1:
            raise ValueError(f"load forecaster: horizon must be >= 1, got {horizon}")
        if self.n_seen < self.params.min_samples:
            return [self._last] * horizon
        if horizon == 1:
            if self._pending is None:
                self._pending = self._one_step()
            return [self._pending[self.chosen]]
        return [_clean(v) for v in self._candidates[self.chosen].forecast(horizon)]

    def forecast_interval(self) -> tuple[float, float] | None:
        """[low, high] around the one-step forecast, or None before ``min_samples``."""
        if self.n_seen < self.params.min_samples:
            return None
        point = self.forecast(1)[0]
        spread = float(self._abs_residuals.get() or 0.0)
        return max(0.0, point - spread), point + spread

    def _one_step(self) -> dict[str, float]:
        return {name: _clean(m.forecast(1)[0]) for name, m in self._candidates.items()}


class LoadForecasters:
    """One :class:`LoadForecaster` per hardware class, created on first update."""

    def __init__(self, params: LoadParams | None = None) -> None:
        self.params = params or LoadParams()
        self.params.check()
        self._by_class: dict[str, LoadForecaster] = {}

    def update(self, hardware: str, value: float) -> None:
        """Learn the next value of ``hardware``'s series."""
        if hardware not in self._by_class:
            self._by_class[hardware] = LoadForecaster(self.params)
        self._by_class[hardware].update(value)

    def update_all(self, values: Iterable[tuple[str, float]]) -> None:
        """Learn one interval's values, as ``(hardware, value)`` pairs."""
        for hardware, value in values:
            self.update(hardware, value)

    def forecast(self, hardware: str, horizon: int = 1) -> list[float]:
        """``hardware``'s next ``horizon`` values; zeros for a class never updated."""
        model = self._by_class.get(hardware)
        if model is None:
            if horizon < 1:
                raise ValueError(f"load forecaster: horizon must be >= 1, got {horizon}")
            return [0.0] * horizon
        return model.forecast(horizon)

    def classes(self) -> list[str]:
        """The hardware classes seen, sorted."""
        return sorted(self._by_class)

    def __getitem__(self, hardware: str) -> LoadForecaster:
        return self._by_class[hardware]


class BucketedDemand:
    """GPU demand per hardware class per bucket of ``bucket_s`` core seconds, with a
    :class:`LoadForecasters` fed lazily (the scheduler core's load view).

    ``record(weights, now)`` adds demand to the bucket of ``now``; ``forecast(hardware,
    now)`` first feeds every closed bucket before ``now``'s to the forecasters, in order,
    then answers the one-step forecast: the demand predicted for the bucket in progress.
    A run of empty buckets is learned as at most ``season`` zeros (a long idle spell
    teaches "idle" once, in bounded work). Feeding depends only on the recorded buckets,
    never on when forecasts are asked for, so the answers are deterministic. A class is
    fed from the first bucket it had demand in. Times earlier than the bucket already
    fed are counted in the bucket in progress (they cannot change the past).
    """

    def __init__(self, bucket_s: float, params: LoadParams | None = None) -> None:
        if not (math.isfinite(bucket_s) and bucket_s > 0):
            raise ValueError(f"load buckets: bucket_s must be a finite number > 0, got {bucket_s}")
        self.bucket_s = bucket_s
        self.forecasters = LoadForecasters(params)
        self._pending: dict[int, dict[str, float]] = {}
        self._fed_upto = 0  # every bucket < this was fed
        self._zero_run = 0
        self._classes: list[str] = []

    def bucket(self, now: float) -> int:
        """The index of the bucket holding core time ``now``."""
        return max(self._fed_upto, math.floor(now / self.bucket_s))

    def record(self, weights: Iterable[tuple[str, float]], now: float) -> None:
        """Add ``(hardware, GPUs)`` demand to the bucket of ``now`` (values >= 0)."""
        into = self._pending.setdefault(self.bucket(now), {})
        for hardware, value in weights:
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"load buckets: demand must be finite and >= 0, got {value!r}")
            into[hardware] = into.get(hardware, 0.0) + value

    def forecast(self, hardware: str, now: float) -> float:
        """Predicted demand of ``hardware`` in the bucket holding ``now`` (0.0 for a
        class never seen)."""
        self._catch_up(self.bucket(now))
        return self.forecasters.forecast(hardware, 1)[0]

    def classes(self, now: float) -> list[str]:
        """Classes fed so far (sorted), after catching up to ``now``."""
        self._catch_up(self.bucket(now))
        return sorted(self._classes)

    def _catch_up(self, current: int) -> None:
        season = self.forecasters.params.season
        while self._fed_upto < current:
            b = self._fed_upto
            values = self._pending.pop(b, None)
            if values is None:
                nxt = min((k for k in self._pending if k < current), default=current)
                empty = nxt - b
                zeros = max(0, min(empty, season - self._zero_run))
                for _ in range(zeros):
                    self.forecasters.update_all((h, 0.0) for h in self._classes)
                self._zero_run += empty
                self._fed_upto = nxt
                continue
            for hardware in sorted(values):
                if hardware not in self._classes:
                    self._classes.append(hardware)
            self.forecasters.update_all((h, values.get(h, 0.0)) for h in sorted(self._classes))
            self._zero_run = 0
            self._fed_upto = b + 1
