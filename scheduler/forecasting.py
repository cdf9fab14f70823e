"""Runtime forecasters: how long will this task take on that hardware class?

Every forecaster follows one protocol (``predict`` / ``learn``), in River's spirit:
hyper-parameters only in ``__init__`` so ``clone()`` gives a fresh model, no hidden
randomness, plain-dict state so models pickle. The River models of the learning work plug in
behind the same protocol.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from .model import TaskSpec

#: A task nobody knows anything about is assumed to take this long.
DEFAULT_RUNTIME_S = 600.0


@runtime_checkable
class RuntimeForecaster(Protocol):
    """Predicts a task's whole runtime on a hardware class and learns from observations."""

    name: str

    @property
    def version(self) -> str:
        """Changes whenever what the model would predict may have changed."""
        ...

    def predict(self, task: TaskSpec, hardware: str) -> float:
        """Seconds the whole task would take on ``hardware``; always finite and > 0."""
        ...

    def learn(self, task: TaskSpec, hardware: str, observed_s: float) -> None:
        """Record that the whole task took ``observed_s`` seconds on ``hardware``."""
        ...


@runtime_checkable
class IntervalForecaster(RuntimeForecaster, Protocol):
    """A forecaster that also says how sure it is."""

    def predict_range(self, task: TaskSpec, hardware: str) -> tuple[float, float, float]:
        """(low, estimate, high) for the whole runtime; the range is roughly one typical
        error wide, and the estimate equals ``predict``.

        The scheduler orders the queue by the low end (optimism under uncertainty: a task
        of a kind never seen gets a chance to run, and so to be learned, instead of
        waiting behind everything because of one pessimistic guess)."""
        ...


def _work_units(task: TaskSpec) -> float:
    return task.declared_work if task.declared_work > 0 else 1.0


class _Mean:
    __slots__ = ("count", "mean")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0

    def add(self, x: float) -> None:
        self.count += 1
        self.mean += (x - self.mean) / self.count


Kind = tuple[str, int, int]

#: Error spread assumed for an estimation rule before it has been measured.
_PRIOR_SPREAD = {
    "seen": 1.25,
    "other-hardware": 1.5,
    "other-width": 2.0,
    "declared": 2.0,
    "cold": 4.0,
    "default": 10.0,
}


def task_kind(task: TaskSpec) -> Kind:
    """What makes two tasks comparable: their type and width (GPUs, GPU share)."""
    return (task.task_type, task.gpus, task.gpu_milli)


class RunningMeanForecaster:
    """A running mean of seconds per unit of declared work, per (task kind, hardware), where
    the kind is the task type and its width (:func:`task_kind`).

    Before a (kind, hardware) pair has been seen it still answers sensibly, trying in turn:

    1. the same kind on other hardware classes, scaled by how each compares with the target
       class on the kinds seen on both (geometric mean of per-kind speed ratios);
    2. the same type at another width on this hardware, assuming linear scaling;
    3. the user's declared runtime estimate;
    4. for a type never seen: either the geometric mean rate on that hardware times the
       declared work, or the geometric mean runtime on that hardware, whichever has been
       more accurate so far on first sightings of a kind (scored online in log space:
       rates of different types differ by orders of magnitude, and declared work is not
       always comparable across types);
    5. :data:`DEFAULT_RUNTIME_S`.
    """

    name = "running-mean"

    def __init__(self, default_runtime_s: float = DEFAULT_RUNTIME_S) -> None:
        self.default_runtime_s = default_runtime_s
        self._rate: dict[tuple[Kind, str], _Mean] = {}
        self._by_kind: dict[Kind, dict[str, _Mean]] = {}
        self._widths: dict[tuple[str, str], dict[int, _Mean]] = {}
        self._hw_rate: dict[str, _Mean] = {}
        self._hw_log_runtime: dict[str, _Mean] = {}
        #: Mean |log error| of the two cold-start fallbacks on first sightings.
        self._cold_error = {"rate": _Mean(), "runtime": _Mean()}
        self._types_seen: set[str] = set()
        #: Mean |log error| of each estimation rule, measured as observations arrive.
        self._source_error: dict[str, _Mean] = {}
        self._learned = 0
        self._ratio_cache: dict[tuple[str, str], float] = {}

    @property
    def version(self) -> str:
        return f"{self.name}@{self._learned}"

    def clone(self) -> RunningMeanForecaster:
        return RunningMeanForecaster(self.default_runtime_s)

    def learn(self, task: TaskSpec, hardware: str, observed_s: float) -> None:
        if not (observed_s > 0 and math.isfinite(observed_s)):
            return
        rate = observed_s / _work_units(task)
        kind = task_kind(task)
        estimate, source = self._estimate(task, hardware)
        self._source_error.setdefault(source, _Mean()).add(abs(math.log(estimate / observed_s)))
        if task.task_type not in self._types_seen:
            for name, guess in self._cold_guesses(task, hardware).items():
                self._cold_error[name].add(abs(math.log(guess / observed_s)))
            self._types_seen.add(task.task_type)
        stat = self._rate.get((kind, hardware))
        if stat is None:
            stat = self._rate[(kind, hardware)] = _Mean()
            self._by_kind.setdefault(kind, {})[hardware] = stat
            self._widths.setdefault((task.task_type, hardware), {})[max(task.gpus, 1)] = stat
        stat.add(rate)
        self._hw_rate.setdefault(hardware, _Mean()).add(math.log(rate))
        self._hw_log_runtime.setdefault(hardware, _Mean()).add(math.log(observed_s))
        self._learned += 1
        self._ratio_cache.clear()

    def predict(self, task: TaskSpec, hardware: str) -> float:
        return self._estimate(task, hardware)[0]

    def predict_range(self, task: TaskSpec, hardware: str) -> tuple[float, float, float]:
        estimate, source = self._estimate(task, hardware)
        err = self._source_error.get(source)
        spread = math.exp(err.mean) if err is not None and err.count else _PRIOR_SPREAD[source]
        return estimate / spread, estimate, estimate * spread

    def _estimate(self, task: TaskSpec, hardware: str) -> tuple[float, str]:
        """The estimate and which rule of the class docstring produced it."""
        work = _work_units(task)
        kind = task_kind(task)
        stat = self._rate.get((kind, hardware))
        if stat is not None:
            return max(stat.mean * work, 1e-3), "seen"
        seen = self._by_kind.get(kind)
        if seen:
            estimates = [
                s.mean * self._speed_ratio(hardware, other) for other, s in sorted(seen.items())
            ]
            mean_log = sum(map(math.log, estimates)) / len(estimates)
            return max(math.exp(mean_log) * work, 1e-3), "other-hardware"
        widths = self._widths.get((task.task_type, hardware))
        if widths:
            # Nearest measured width, scaled linearly (twice the GPUs, half the time).
            width = max(task.gpus, 1)
            nearest = min(widths, key=lambda w: (abs(w - width), w))
            return max(widths[nearest].mean * nearest / width * work, 1e-3), "other-width"
        if task.declared_runtime_s:
            return task.declared_runtime_s, "declared"
        guesses = self._cold_guesses(task, hardware)
        if not guesses:
            return self.default_runtime_s, "default"
        err = self._cold_error
        use_runtime = "rate" not in guesses or (
            err["runtime"].count > 0 and err["runtime"].mean < err["rate"].mean
        )
        return (guesses["runtime"], "cold") if use_runtime else (guesses["rate"], "cold")

    def _cold_guesses(self, task: TaskSpec, hardware: str) -> dict[str, float]:
        """The two estimates for a type never seen (see the class docstring), taken on the
        best-known hardware class and scaled to ``hardware`` by the learned speed ratio, so
        that even a cold guess prefers the faster class."""
        if not self._hw_log_runtime:
            return {}
        ref = max(self._hw_log_runtime, key=lambda h: (self._hw_log_runtime[h].count, h))
        scale = self._speed_ratio(hardware, ref) if hardware != ref else 1.0
        out = {"runtime": max(math.exp(self._hw_log_runtime[ref].mean) * scale, 1e-3)}
        if task.declared_work > 0:
            out["rate"] = max(math.exp(self._hw_rate[ref].mean) * task.declared_work * scale, 1e-3)
        return out

    def _speed_ratio(self, target: str, source: str) -> float:
        """How many times longer a type takes on ``target`` than on ``source`` (1.0 if no
        type has been seen on both)."""
        key = (target, source)
        cached = self._ratio_cache.get(key)
        if cached is not None:
            return cached
        logs = [
            math.log(by_hw[target].mean / by_hw[source].mean)
            for by_hw in self._by_kind.values()
            if target in by_hw and source in by_hw and by_hw[source].mean > 0
        ]
        ratio = math.exp(sum(logs) / len(logs)) if logs else 1.0
        self._ratio_cache[key] = ratio
        return ratio


class DaskLikeForecaster:
    """Dask distributed's duration estimate: per task type (its "prefix"), ignoring hardware
    and declared work, updated as ``0.5 * new + 0.5 * old``; 0.5 s before the first
    observation (Dask's ``distributed.scheduler.unknown-task-duration``)."""

    name = "dask-like"

    def __init__(self, unknown_duration_s: float = 0.5) -> None:
        self.unknown_duration_s = unknown_duration_s
        self._avg: dict[str, float] = {}
        self._learned = 0

    @property
    def version(self) -> str:
        return f"{self.name}@{self._learned}"

    def clone(self) -> DaskLikeForecaster:
        return DaskLikeForecaster(self.unknown_duration_s)

    def learn(self, task: TaskSpec, hardware: str, observed_s: float) -> None:
        if not (observed_s > 0 and math.isfinite(observed_s)):
            return
        old = self._avg.get(task.task_type)
        self._avg[task.task_type] = observed_s if old is None else 0.5 * observed_s + 0.5 * old
        self._learned += 1

    def predict(self, task: TaskSpec, hardware: str) -> float:
        return self._avg.get(task.task_type, self.unknown_duration_s)


class DeclaredForecaster:
    """The user's own estimate (``declared_runtime_s``), or a constant; never learns."""

    name = "declared"
    version = "declared@0"

    def __init__(self, default_runtime_s: float = DEFAULT_RUNTIME_S) -> None:
        self.default_runtime_s = default_runtime_s

    def clone(self) -> DeclaredForecaster:
        return DeclaredForecaster(self.default_runtime_s)

    def learn(self, task: TaskSpec, hardware: str, observed_s: float) -> None:
        return None

    def predict(self, task: TaskSpec, hardware: str) -> float:
        return task.declared_runtime_s or self.default_runtime_s


class OracleForecaster:
    """Knows every true runtime: the limit a forecaster can reach. Simulation only.

    ``truth`` maps task id to {hardware class: seconds}; the key ``"*"`` stands for any
    class.
    """

    name = "oracle"
    version = "oracle@0"

    def __init__(self, truth: Mapping[str, Mapping[str, float]]) -> None:
        self._truth = truth

    def clone(self) -> OracleForecaster:
        return OracleForecaster(self._truth)

    def learn(self, task: TaskSpec, hardware: str, observed_s: float) -> None:
        return None

    def predict(self, task: TaskSpec, hardware: str) -> float:
        by_hw = self._truth.get(task.task_id, {})
        value = by_hw.get(hardware, by_hw.get("*"))
        if value is None or not math.isfinite(value):
            return DEFAULT_RUNTIME_S
        return value
