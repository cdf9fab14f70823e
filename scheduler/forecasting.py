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


class RunningMeanForecaster:
    """A running mean of seconds per unit of declared work, per (task type, hardware).

    Before a (type, hardware) pair has been seen it still answers sensibly, trying in turn:

    1. the same type on another hardware class, scaled by how the two classes compare on
       the types seen on both (geometric mean of their per-type speed ratios);
    2. the user's declared runtime estimate;
    3. the mean rate of every type on that hardware (then on any hardware) times the
       declared work;
    4. :data:`DEFAULT_RUNTIME_S`.
    """

    name = "running-mean"

    def __init__(self, default_runtime_s: float = DEFAULT_RUNTIME_S) -> None:
        self.default_runtime_s = default_runtime_s
        self._rate: dict[tuple[str, str], _Mean] = {}
        self._by_type: dict[str, dict[str, _Mean]] = {}
        self._hw_rate: dict[str, _Mean] = {}
        self._any_rate = _Mean()
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
        stat = self._rate.get((task.task_type, hardware))
        if stat is None:
            stat = self._rate[(task.task_type, hardware)] = _Mean()
            self._by_type.setdefault(task.task_type, {})[hardware] = stat
        stat.add(rate)
        self._hw_rate.setdefault(hardware, _Mean()).add(rate)
        self._any_rate.add(rate)
        self._learned += 1
        self._ratio_cache.clear()

    def predict(self, task: TaskSpec, hardware: str) -> float:
        work = _work_units(task)
        stat = self._rate.get((task.task_type, hardware))
        if stat is not None:
            return max(stat.mean * work, 1e-3)
        seen = self._by_type.get(task.task_type)
        if seen:
            estimates = [
                s.mean * self._speed_ratio(hardware, other) for other, s in sorted(seen.items())
            ]
            return max(math.exp(sum(map(math.log, estimates)) / len(estimates)) * work, 1e-3)
        if task.declared_runtime_s:
            return task.declared_runtime_s
        hw = self._hw_rate.get(hardware)
        if hw is not None and task.declared_work > 0:
            return max(hw.mean * work, 1e-3)
        if self._any_rate.count and task.declared_work > 0:
            return max(self._any_rate.mean * work, 1e-3)
        return self.default_runtime_s

    def _speed_ratio(self, target: str, source: str) -> float:
        """How many times longer a type takes on ``target`` than on ``source`` (1.0 if no
        type has been seen on both)."""
        key = (target, source)
        cached = self._ratio_cache.get(key)
        if cached is not None:
            return cached
        logs = [
            math.log(by_hw[target].mean / by_hw[source].mean)
            for by_hw in self._by_type.values()
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
