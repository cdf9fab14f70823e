"""Drift detection on forecast errors, and a forecaster wrapper that adapts when it drifts.

:class:`DriftMonitor` runs one River :class:`~river.drift.ADWIN` per key (a hardware class,
a task type, a load series...) on a stream of non-negative forecast errors: the caller
decides what an error is, e.g. ``|log(predicted / actual)|`` for runtimes
(:func:`log_error`) or the absolute error for a load forecast. ADWIN keeps a window of
recent errors and drops its older part as soon as the means of the two parts differ by
more than chance allows (confidence ``delta``); each such drop is reported as a
:class:`DriftEvent`.

:class:`DriftingForecaster` wraps any runtime forecaster of :mod:`.forecasting`: each
``learn`` first scores the inner model's prediction, feeds the error to a monitor keyed by
``key_of(task, hardware)`` (the hardware class by default), then passes the observation
on. When a key drifts for the worse it replaces the inner model with a fresh ``clone()``
refitted on a bounded buffer of recent observations, keeping for the drifted key only its
last ``refit_recent`` observations (those most likely to come after the change: ADWIN
detects a change some observations after it happened), and bumps its generation (so its
``version`` changes). The events are kept so a caller can publish an event, a metric and a log line.

Everything here is pure (no I/O, no clock, no randomness: ADWIN is deterministic) and
pickles, so the same observations give the same detections and the same predictions.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, overload

from river import drift

from .forecasting import IntervalForecaster, RuntimeForecaster
from .model import TaskSpec

__all__ = [
    "DriftEvent",
    "DriftMonitor",
    "DriftingForecaster",
    "DriftingIntervalForecaster",
    "by_hardware",
    "by_task_type",
    "drifting",
    "log_error",
]


@dataclass(frozen=True, slots=True)
class DriftEvent:
    """ADWIN found that the errors of ``key`` changed.

    - ``error_before``: mean error over the window just before the detection (old and new
      errors together, i.e. what the monitor believed until now);
    - ``error_after``: mean error over the window kept after the detection (only errors
      since the change): above ``error_before``, the model got worse; below, better;
    - ``observations``: errors seen for ``key`` so far, this one included (a position in
      the key's own stream, usable as a deterministic event id);
    - ``window``: errors ADWIN kept after dropping the older part of its window. ADWIN
      cuts at bucket boundaries, so this usually still holds errors from before the change:
      read it as "the change happened less than this many observations ago", not as the
      change point.
    """

    key: str
    error_before: float
    error_after: float
    observations: int
    window: int

    @property
    def worse(self) -> bool:
        """True if the errors went up (the usual reason to adapt)."""
        return self.error_after > self.error_before


class DriftMonitor:
    """One ADWIN per key over a stream of errors.

    ``delta`` is ADWIN's confidence (smaller: fewer false alarms, later detections);
    ``clock`` is how often, in updates, it checks for a change (1 checks every update: the
    earliest detection, at more cost); ``grace_period`` is how many errors a key needs
    before it can drift at all.
    """

    def __init__(self, delta: float = 0.002, clock: int = 8, grace_period: int = 30) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"DriftMonitor delta must be in (0, 1), got {delta}")
        if clock < 1 or grace_period < 1:
            raise ValueError(
                f"DriftMonitor clock and grace_period must be >= 1, got clock={clock}, "
                f"grace_period={grace_period}"
            )
        self.delta = delta
        self.clock = clock
        self.grace_period = grace_period
        self._adwin: dict[str, drift.ADWIN] = {}
        self._count: dict[str, int] = {}

    def update(self, key: str, error: float) -> DriftEvent | None:
        """Add one error for ``key``; the drift it reveals, if any.

        Raises ValueError for a negative or non-finite error (a bug in the caller's error
        function, not an observation).
        """
        if not (error >= 0 and math.isfinite(error)):
            raise ValueError(f"drift error for key {key!r} must be finite and >= 0, got {error}")
        adwin = self._adwin.get(key)
        if adwin is None:
            adwin = self._adwin[key] = drift.ADWIN(  # type: ignore[no-untyped-call]
                delta=self.delta, clock=self.clock, grace_period=self.grace_period
            )
        before = float(adwin.estimation)
        adwin.update(error)  # type: ignore[no-untyped-call]
        count = self._count[key] = self._count.get(key, 0) + 1
        if not adwin.drift_detected:
            return None
        return DriftEvent(
            key=key,
            error_before=before,
            error_after=float(adwin.estimation),
            observations=count,
            window=int(adwin.width),
        )

    def error_level(self, key: str) -> float | None:
        """Mean error over the key's current window (None for a key never seen)."""
        adwin = self._adwin.get(key)
        return None if adwin is None else float(adwin.estimation)

    def observations(self, key: str) -> int:
        """Errors seen for ``key`` so far."""
        return self._count.get(key, 0)


def log_error(predicted_s: float, observed_s: float) -> float:
    """``|log(predicted / observed)|``: a runtime error that treats 2x too long and 2x too
    short alike and compares tasks of very different lengths. Both must be > 0."""
    return abs(math.log(predicted_s / observed_s))


def by_hardware(task: TaskSpec, hardware: str) -> str:
    """Drift key: the hardware class (a slower driver, a noisy neighbour...)."""
    return hardware


def by_task_type(task: TaskSpec, hardware: str) -> str:
    """Drift key: the task type (a code change that made one kind of job slower)."""
    return task.task_type


KeyFn = Callable[[TaskSpec, str], str]
_Observation = tuple[str, TaskSpec, str, float]


class DriftingForecaster:
    """A runtime forecaster that watches its inner model's errors and refits it on drift.

    - ``inner``: any :class:`~.forecasting.RuntimeForecaster` with ``clone()``;
    - ``key_of``: which stream of errors an observation belongs to (module-level functions
      such as :func:`by_hardware` keep the wrapper picklable; a lambda does not);
    - ``buffer_size``: recent observations kept for refitting (all keys together);
    - ``refit_recent``: observations of the drifted key kept when refitting (at most
      ADWIN's post-drift window); keep it below the detection delay (about 20-30
      observations for the default monitor) so the refit sees little of the old regime;
    - ``adapt_on_improvement``: also refit when errors went *down* (off by default: a
      model that got better needs no rescue);
    - ``monitor``: the :class:`DriftMonitor` (a default one if not given).

    Contracts: ``predict`` is the inner model's; ``learn`` ignores non-finite or
    non-positive observations, as every forecaster does; ``version`` changes whenever the
    inner model's does and on every refit (``<name>@g<generation>:<inner version>``);
    ``clone()`` gives an unfitted wrapper around ``inner.clone()`` with the same settings.
    A refit replaces the *whole* inner model: keys that did not drift are relearned from
    the buffer, so what they knew before the buffer's oldest observation is lost. That is
    the simple honest choice; per-key reweighting needs support from the inner model.
    """

    def __init__(
        self,
        inner: RuntimeForecaster,
        *,
        key_of: KeyFn = by_hardware,
        buffer_size: int = 500,
        refit_recent: int = 16,
        adapt_on_improvement: bool = False,
        monitor: DriftMonitor | None = None,
        max_events: int = 1000,
    ) -> None:
        if buffer_size < 1 or refit_recent < 1:
            raise ValueError(
                "DriftingForecaster buffer_size and refit_recent must be >= 1, got "
                f"buffer_size={buffer_size}, refit_recent={refit_recent}"
            )
        self.inner = inner
        self.key_of = key_of
        self.buffer_size = buffer_size
        self.refit_recent = refit_recent
        self.adapt_on_improvement = adapt_on_improvement
        self.monitor = monitor if monitor is not None else DriftMonitor()
        self.max_events = max_events
        self.name = f"{inner.name}+drift"
        self.generation = 0
        self._buffer: deque[_Observation] = deque(maxlen=buffer_size)
        self._events: deque[DriftEvent] = deque(maxlen=max_events)
        self._untaken = 0

    # ------------------------------------------------------------------ protocol
    @property
    def version(self) -> str:
        return f"{self.name}@g{self.generation}:{self.inner.version}"

    def clone(self) -> DriftingForecaster:
        """An unfitted wrapper (same settings, a fresh monitor) around ``inner.clone()``."""
        m = self.monitor
        return type(self)(
            _clone(self.inner),
            key_of=self.key_of,
            buffer_size=self.buffer_size,
            refit_recent=self.refit_recent,
            adapt_on_improvement=self.adapt_on_improvement,
            monitor=DriftMonitor(delta=m.delta, clock=m.clock, grace_period=m.grace_period),
            max_events=self.max_events,
        )

    def predict(self, task: TaskSpec, hardware: str) -> float:
        return self.inner.predict(task, hardware)

    def learn(self, task: TaskSpec, hardware: str, observed_s: float) -> None:
        if not (observed_s > 0 and math.isfinite(observed_s)):
            return
        key = self.key_of(task, hardware)
        error = log_error(self.inner.predict(task, hardware), observed_s)
        event = self.monitor.update(key, error)
        self.inner.learn(task, hardware, observed_s)
        self._buffer.append((key, _picklable(task), hardware, observed_s))
        if event is None:
            return
        self._events.append(event)
        self._untaken = min(self._untaken + 1, self.max_events)
        if event.worse or self.adapt_on_improvement:
            self._refit(event)

    # ------------------------------------------------------------------ drift events
    @property
    def drift_events(self) -> tuple[DriftEvent, ...]:
        """Every drift seen (the newest ``max_events``), oldest first."""
        return tuple(self._events)

    def take_drift_events(self) -> list[DriftEvent]:
        """The drift events since the last call, oldest first (for a caller that emits an
        event, a metric and a log line per drift)."""
        if self._untaken == 0:
            return []
        new = list(self._events)[-self._untaken :]
        self._untaken = 0
        return new

    # ------------------------------------------------------------------ internals
    def _refit(self, event: DriftEvent) -> None:
        """Replace the inner model with a fresh clone trained on the buffer, keeping only
        the last ``refit_recent`` (at most ``event.window``) observations of the drifted
        key."""
        keep_drifted = min(self.refit_recent, event.window)
        drifted_seen = sum(1 for obs in self._buffer if obs[0] == event.key)
        skip = max(drifted_seen - keep_drifted, 0)
        fresh = _clone(self.inner)
        kept: deque[_Observation] = deque(maxlen=self.buffer_size)
        for obs in self._buffer:
            key, task, hardware, observed_s = obs
            if key == event.key and skip > 0:
                skip -= 1
                continue
            fresh.learn(task, hardware, observed_s)
            kept.append(obs)
        self.inner = fresh
        self._buffer = kept
        self.generation += 1


class DriftingIntervalForecaster(DriftingForecaster):
    """A :class:`DriftingForecaster` around a model that has ``predict_range``."""

    def predict_range(self, task: TaskSpec, hardware: str) -> tuple[float, float, float]:
        low, estimate, high = self.inner.predict_range(task, hardware)  # type: ignore[attr-defined]
        return float(low), float(estimate), float(high)


@overload
def drifting(inner: IntervalForecaster, **settings: Any) -> DriftingIntervalForecaster: ...
@overload
def drifting(inner: RuntimeForecaster, **settings: Any) -> DriftingForecaster: ...
def drifting(inner: RuntimeForecaster, **settings: Any) -> DriftingForecaster:
    """Wrap ``inner`` (settings as for :class:`DriftingForecaster`), keeping
    ``predict_range`` when ``inner`` has it, so the core still orders by its low end."""
    cls = DriftingIntervalForecaster if hasattr(inner, "predict_range") else DriftingForecaster
    return cls(inner, **settings)


def _picklable(task: TaskSpec) -> TaskSpec:
    """``task`` with its governance mapping as a plain dict (the default read-only
    mapping proxy does not pickle), so the buffer, and so the wrapper, pickles."""
    return replace(task, governance=dict(task.governance))


def _clone(model: RuntimeForecaster) -> RuntimeForecaster:
    clone = getattr(model, "clone", None)
    if clone is None:
        raise TypeError(f"forecaster {model.name!r} has no clone(); it cannot be refitted")
    fresh: RuntimeForecaster = clone()
    return fresh
