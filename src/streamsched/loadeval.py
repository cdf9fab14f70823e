"""Load-forecaster evaluation: derive arrival series from traces, score one-step forecasts.

:func:`derive_series` turns any trace the simulator reads into regular series of arrivals
per interval: ``all`` (every job), and one per hardware class named by the jobs'
``allowed_hardware`` (a job allowed on several classes counts in each of them: it is
demand any of them may have to serve). Jobs with no ``allowed_hardware`` (openb pods
without a GPU type) may run anywhere; they count in a series named ``any``. Interval ``k``
covers trace time ``[k * interval_s, (k + 1) * interval_s)`` and is labelled with its
start; the series run from interval 0 to the interval of the last arrival, empty intervals
included as 0. Jobs a loader skipped (e.g. openb pods never scheduled) are not in the
trace, so they are not counted.

:func:`evaluate_series` replays a series in time order: at each step every model first
forecasts the next value, then learns it (progressive validation: no model sees a value
before forecasting it). The first ``warmup`` steps are learned but not scored, for every
model alike (by default one season, which the seasonal-naive baseline needs).

Time-keeping (``learn_us_p50`` / ``predict_us_p50``) uses ``time.perf_counter_ns`` around
each call, so this module is outside the pure core.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from streamsched.scheduler.load import LoadForecaster, LoadParams
from streamsched.scheduler.trace import Trace

__all__ = [
    "ALL",
    "ANY",
    "MAPE_NOTE",
    "ModelScore",
    "Series",
    "derive_series",
    "evaluate_series",
    "read_series_csv",
    "write_series_csv",
]

#: Series of every job.
ALL = "all"
#: Series of jobs that name no hardware class.
ANY = "any"
MAPE_NOTE = "mape skips steps whose actual value is 0 (undefined there); see mape_skipped_zeros"
#: Name of the evaluated River model.
RIVER_MODEL = "river-load"


@dataclass(frozen=True, slots=True)
class Series:
    """Regular series sharing one time axis (seconds): ``columns[name][k]`` at ``times[k]``."""

    times: list[float]
    columns: dict[str, list[float]]


def derive_series(trace: Trace, interval_s: float = 600.0) -> Series:
    """Arrivals per ``interval_s`` of ``trace``: ``all``, one per hardware class, ``any``.

    Raises ValueError for a non-positive interval or a trace without jobs.
    """
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ValueError(f"--interval-s must be a positive number of seconds, got {interval_s}")
    if not trace.jobs:
        raise ValueError(f"trace {trace.name}: no jobs, so no arrival series")
    counts: dict[str, Counter[int]] = {ALL: Counter()}
    for job in trace.jobs:
        k = int(max(job.arrival_s, 0.0) // interval_s)
        counts[ALL][k] += 1
        for hardware in sorted(job.spec.allowed_hardware) or [ANY]:
            counts.setdefault(hardware, Counter())[k] += 1
    n = max(counts[ALL]) + 1
    names = [ALL, *sorted(name for name in counts if name != ALL)]
    return Series(
        times=[k * interval_s for k in range(n)],
        columns={name: [float(counts[name].get(k, 0)) for k in range(n)] for name in names},
    )


def write_series_csv(series: Series, path: Path, time_col: str = "time_s") -> None:
    """Write ``series`` as CSV: ``time_col`` then one column per series."""
    names = list(series.columns)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([time_col, *names])
        for k, t in enumerate(series.times):
            writer.writerow([_fmt(t), *(_fmt(series.columns[name][k]) for name in names)])


def _fmt(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def read_series_csv(path: Path, time_col: str, value_col: str) -> tuple[list[float], float]:
    """The values of ``value_col`` in time order and the interval in seconds.

    Times are numbers (seconds) or ISO 8601 timestamps, strictly increasing by one
    constant step; values are finite numbers >= 0. Every error names ``file:line`` and the
    column (ValueError); a missing file raises OSError.
    """
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for col in (time_col, value_col):
            if col not in header:
                raise ValueError(
                    f"{path}:1: no column {col!r} (columns: {', '.join(header) or 'none'})"
                )
        times: list[float] = []
        values: list[float] = []
        for row in reader:
            line = reader.line_num
            times.append(_parse_time(row[time_col], path, line, time_col))
            values.append(_parse_value(row[value_col], path, line, value_col))
            _check_step(times, path, line, time_col)
    if len(values) < 2:
        raise ValueError(f"{path}: column {value_col!r} has {len(values)} values; need >= 2")
    return values, times[1] - times[0]


def _parse_time(raw: str | None, path: Path, line: int, col: str) -> float:
    text = (raw or "").strip()
    try:
        value = float(text)
    except ValueError:
        try:
            value = datetime.fromisoformat(text).timestamp()
        except ValueError:
            raise ValueError(
                f"{path}:{line}: column {col!r}: not a number of seconds or an ISO 8601 "
                f"time: {text!r}"
            ) from None
    if not math.isfinite(value):
        raise ValueError(f"{path}:{line}: column {col!r}: not a finite time: {text!r}")
    return value


def _parse_value(raw: str | None, path: Path, line: int, col: str) -> float:
    text = (raw or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}:{line}: column {col!r}: not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{path}:{line}: column {col!r}: expected a finite value >= 0: {text!r}")
    return value


def _check_step(times: list[float], path: Path, line: int, col: str) -> None:
    if len(times) < 2:
        return
    step = times[-1] - times[-2]
    if step <= 0:
        raise ValueError(
            f"{path}:{line}: column {col!r}: timestamps must increase "
            f"({times[-2]:g} then {times[-1]:g})"
        )
    first = times[1] - times[0]
    if not math.isclose(step, first, rel_tol=1e-9, abs_tol=1e-6):
        raise ValueError(
            f"{path}:{line}: column {col!r}: irregular timestamps: step {step:g}s "
            f"after steps of {first:g}s"
        )


@dataclass(frozen=True, slots=True)
class ModelScore:
    """Accuracy and cost of one model over the scored steps of one series.

    ``mape`` skips steps whose actual is 0 (None if every actual is 0);
    ``interval_coverage`` is the share of actuals inside the model's interval, or None
    for a model that gives none.
    """

    mae: float
    mape: float | None
    interval_coverage: float | None
    learn_us_p50: float
    predict_us_p50: float
    scored: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "mae": self.mae,
            "mape": self.mape,
            "interval_coverage": self.interval_coverage,
            "learn_us_p50": self.learn_us_p50,
            "predict_us_p50": self.predict_us_p50,
            "scored": self.scored,
        }


class _Model(Protocol):
    def predict(self) -> tuple[float, tuple[float, float] | None]: ...
    def learn(self, value: float) -> None: ...


class _Naive:
    def __init__(self) -> None:
        self.last = 0.0

    def predict(self) -> tuple[float, tuple[float, float] | None]:
        return self.last, None

    def learn(self, value: float) -> None:
        self.last = value


class _SeasonalNaive:
    """The value one season ago (the last value until a season has been seen)."""

    def __init__(self, season: int) -> None:
        self.season = season
        self.history: list[float] = []

    def predict(self) -> tuple[float, tuple[float, float] | None]:
        if len(self.history) >= self.season:
            return self.history[-self.season], None
        return (self.history[-1] if self.history else 0.0), None

    def learn(self, value: float) -> None:
        self.history.append(value)
        if len(self.history) > self.season:
            del self.history[0]


class _River:
    def __init__(self, params: LoadParams) -> None:
        self.model = LoadForecaster(params)

    def predict(self) -> tuple[float, tuple[float, float] | None]:
        return self.model.forecast(1)[0], self.model.forecast_interval()

    def learn(self, value: float) -> None:
        self.model.update(value)


def _models(season: int) -> dict[str, _Model]:
    return {
        RIVER_MODEL: _River(LoadParams(season=season)),
        "naive": _Naive(),
        "seasonal-naive": _SeasonalNaive(season),
    }


def evaluate_series(
    values: Sequence[float], *, season: int, warmup: int | None = None
) -> tuple[dict[str, ModelScore], dict[str, object]]:
    """Score one-step forecasts of ``values`` for the River model and the baselines.

    Returns ``({model: score}, meta)``; ``meta`` describes the scored steps (count, mean,
    share of zeros, the MAE of always forecasting 0, how many zeros mape skipped).
    ``warmup`` defaults to ``season``. Raises ValueError if no step is left to score.
    """
    if season < 1:
        raise ValueError(f"--season must be >= 1 interval, got {season}")
    warmup = season if warmup is None else warmup
    if warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {warmup}")
    if len(values) <= warmup:
        raise ValueError(
            f"series has {len(values)} values, not more than the warmup of {warmup}; "
            "use a longer series or a smaller --warmup / --season"
        )
    scored = values[warmup:]
    scores = {name: _score(model, values, warmup) for name, model in _models(season).items()}
    zeros = sum(1 for v in scored if v == 0)
    meta: dict[str, object] = {
        "values": len(values),
        "scored": len(scored),
        "warmup": warmup,
        "season": season,
        "mean": statistics.fmean(scored),
        "zero_share": zeros / len(scored),
        "mae_of_zero_forecast": statistics.fmean(scored),
        "mape_skipped_zeros": zeros,
        "mape_note": MAPE_NOTE,
        "protocol": "one-step-ahead progressive validation: forecast, then learn the value",
    }
    return scores, meta


def _score(model: _Model, values: Sequence[float], warmup: int) -> ModelScore:
    abs_err: list[float] = []
    ape: list[float] = []
    covered = 0
    with_interval = 0
    learn_ns: list[int] = []
    predict_ns: list[int] = []
    for k, actual in enumerate(values):
        t0 = time.perf_counter_ns()
        point, interval = model.predict()
        t1 = time.perf_counter_ns()
        model.learn(actual)
        t2 = time.perf_counter_ns()
        predict_ns.append(t1 - t0)
        learn_ns.append(t2 - t1)
        if k < warmup:
            continue
        abs_err.append(abs(point - actual))
        if actual != 0:
            ape.append(abs(point - actual) / actual)
        if interval is not None:
            with_interval += 1
            covered += interval[0] <= actual <= interval[1]
    return ModelScore(
        mae=statistics.fmean(abs_err),
        mape=statistics.fmean(ape) if ape else None,
        interval_coverage=covered / with_interval if with_interval else None,
        learn_us_p50=statistics.median(learn_ns) / 1000,
        predict_us_p50=statistics.median(predict_ns) / 1000,
        scored=len(abs_err),
    )
