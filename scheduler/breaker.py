"""Circuit breakers, one per hardware class: pause placement on a class whose attempts
keep failing, probe it after a cool-down, resume on their own.

A breaker is ``closed`` (placement as usual), ``open`` (no placement on the class) or
``half_open`` (one probe attempt may be placed there). Transitions:

- ``closed -> open``: among the attempt outcomes on the class in the last ``window_s``
  seconds (at most ``window`` of them kept), at least ``min_failures`` *different tasks*
  failed (a retryable ``task.failed``) and those tasks make at least ``failure_ratio`` of
  ``failed tasks + successful attempts``. Counting tasks, not attempts, keeps one poison
  task that fails again and again from pausing a whole class (its own retry budget and
  ``max_distinct_failed_nodes`` stop it). Lost attempts are not counted: a node or
  executor that dies is the heartbeat monitor's business, and one crashed machine must
  not pause its class.
- ``open -> half_open``: the cool-down (``cooldown_s``, doubled on each failed probe, at
  most ``max_cooldown_s``) is over.
- ``half_open -> closed``: the probe attempt completed, or ran (started) for a cool-down
  without failing. The cool-down is reset and the window cleared.
- ``half_open -> open``: the probe attempt failed (cool-down doubled).

While a breaker is not closed, only its probe's outcome moves it; a probe that ends
without an outcome (lost, cancelled, preempted) frees the slot for another probe.

Pure and deterministic: time comes in as ``now``, breakers are visited in name order.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    min_failures: int
    failure_ratio: float
    window_s: float
    window: int
    cooldown_s: float
    max_cooldown_s: float

    def __post_init__(self) -> None:
        if self.min_failures < 1:
            raise ValueError(f"breaker_min_failures must be >= 1, got {self.min_failures}")
        if not (math.isfinite(self.failure_ratio) and 0.0 < self.failure_ratio <= 1.0):
            raise ValueError(f"breaker_failure_ratio must be in (0, 1], got {self.failure_ratio}")
        if self.window < self.min_failures:
            raise ValueError(
                f"breaker_window ({self.window}) must be >= breaker_min_failures "
                f"({self.min_failures})"
            )
        for name, value in (
            ("breaker_window_s", self.window_s),
            ("breaker_cooldown_s", self.cooldown_s),
            ("breaker_max_cooldown_s", self.max_cooldown_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if self.max_cooldown_s < self.cooldown_s:
            raise ValueError(
                f"breaker_max_cooldown_s ({self.max_cooldown_s:g}) must be >= "
                f"breaker_cooldown_s ({self.cooldown_s:g})"
            )


@dataclass(frozen=True, slots=True)
class BreakerChange:
    """One transition of one class's breaker, with why."""

    hardware: str
    previous: BreakerState
    state: BreakerState
    reason: str
    #: Different tasks failed / successful attempts in the window when it was evaluated.
    failed_tasks: int
    succeeded: int
    #: The cool-down in force (open: until ``until_s``), None when closed.
    cooldown_s: float | None
    until_s: float | None


@dataclass(slots=True)
class _Breaker:
    cooldown_s: float
    state: BreakerState = BreakerState.CLOSED
    #: Recent outcomes while closed: (at, task id, failed).
    outcomes: deque[tuple[float, str, bool]] = field(default_factory=deque)
    until_s: float = math.inf
    #: The half-open probe attempt (task id, attempt) and when it started running.
    probe: tuple[str, int] | None = None
    probe_started_s: float | None = None


class HardwareBreakers:
    """The breakers of every hardware class seen so far (see the module docstring)."""

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self._by_class: dict[str, _Breaker] = {}
        #: Classes whose breaker is not closed (kept sorted on change, usually empty).
        self._tripped: tuple[str, ...] = ()

    # ------------------------------------------------------------------ queries
    def state(self, hardware: str) -> BreakerState:
        b = self._by_class.get(hardware)
        return BreakerState.CLOSED if b is None else b.state

    def states(self) -> dict[str, BreakerState]:
        """The state of every class that has a breaker, by name."""
        return {hw: self._by_class[hw].state for hw in sorted(self._by_class)}

    def not_closed(self) -> tuple[str, ...]:
        """Classes whose breaker is open or half-open, by name."""
        return self._tripped

    def blocked(self) -> tuple[str, ...]:
        """Classes where nothing may be placed now: open, or half-open with its probe in
        flight; by name."""
        return tuple(
            hw
            for hw in self._tripped
            if self._by_class[hw].state is BreakerState.OPEN or self._by_class[hw].probe is not None
        )

    def probing(self, hardware: str) -> bool:
        """Whether an attempt placed on ``hardware`` now is its breaker's probe."""
        b = self._by_class.get(hardware)
        return b is not None and b.state is BreakerState.HALF_OPEN and b.probe is None

    # ------------------------------------------------------------------ stimuli
    def record(
        self, hardware: str, task_id: str, attempt: int, failed: bool, now: float
    ) -> BreakerChange | None:
        """An attempt on ``hardware`` succeeded (``failed=False``) or failed retryably."""
        b = self._by_class.get(hardware)
        if b is None:
            b = self._by_class[hardware] = _Breaker(self.settings.cooldown_s)
        if b.state is not BreakerState.CLOSED:
            if b.probe != (task_id, attempt):
                return None  # only the probe's outcome moves a tripped breaker
            if failed:
                b.cooldown_s = min(2.0 * b.cooldown_s, self.settings.max_cooldown_s)
                return self._open(
                    hardware, b, now, f"probe attempt {attempt} of {task_id} failed", 1, 0
                )
            return self._close(hardware, b, f"probe attempt {attempt} of {task_id} completed")
        s = self.settings
        b.outcomes.append((now, task_id, failed))
        while b.outcomes and (len(b.outcomes) > s.window or b.outcomes[0][0] < now - s.window_s):
            b.outcomes.popleft()
        if not failed:
            return None
        failed_tasks = len({tid for _, tid, bad in b.outcomes if bad})
        succeeded = sum(1 for _, _, bad in b.outcomes if not bad)
        ratio = failed_tasks / (failed_tasks + succeeded)
        if failed_tasks < s.min_failures or ratio < s.failure_ratio:
            return None
        why = (
            f"{failed_tasks} different tasks failed on {hardware} in the last "
            f"{s.window_s:g} s against {succeeded} successful attempts (failure ratio "
            f"{ratio:.2f} >= {s.failure_ratio:g}, at least {s.min_failures} tasks)"
        )
        return self._open(hardware, b, now, why, failed_tasks, succeeded)

    def started(self, task_id: str, attempt: int, hardware: str | None, now: float) -> None:
        """Attempt ``attempt`` of ``task_id`` started running (on ``hardware``)."""
        b = self._by_class.get(hardware) if hardware is not None else None
        if b is not None and b.probe == (task_id, attempt) and b.probe_started_s is None:
            b.probe_started_s = now

    def placed(self, hardware: str, task_id: str, attempt: int) -> None:
        """An attempt was placed on a half-open ``hardware``: it is the probe."""
        b = self._by_class[hardware]
        assert b.state is BreakerState.HALF_OPEN, (hardware, b.state)
        assert b.probe is None, (hardware, b.probe)
        b.probe, b.probe_started_s = (task_id, attempt), None

    def released(self, hardware: str | None, task_id: str, attempt: int) -> None:
        """An attempt left its node (any way): a probe without an outcome frees the slot."""
        b = self._by_class.get(hardware) if hardware is not None else None
        if b is not None and b.probe == (task_id, attempt):
            b.probe, b.probe_started_s = None, None

    def due(self, now: float) -> bool:
        """Whether :meth:`expire` has something to do at ``now`` (cheap)."""
        return bool(self._tripped)

    def expire(self, now: float) -> list[BreakerChange]:
        """Time-based transitions at ``now``: an open breaker whose cool-down is over
        becomes half-open; a half-open one whose probe has run for a cool-down without
        failing closes."""
        out = []
        for hw in self._tripped:
            b = self._by_class[hw]
            if b.state is BreakerState.OPEN and now >= b.until_s:
                b.state, b.until_s = BreakerState.HALF_OPEN, math.inf
                out.append(
                    BreakerChange(
                        hw,
                        BreakerState.OPEN,
                        BreakerState.HALF_OPEN,
                        f"cool-down of {b.cooldown_s:g} s over: one probe attempt may be "
                        f"placed on {hw}",
                        0,
                        0,
                        b.cooldown_s,
                        None,
                    )
                )
            elif (
                b.state is BreakerState.HALF_OPEN
                and b.probe is not None
                and b.probe_started_s is not None
                and now - b.probe_started_s >= b.cooldown_s
            ):
                task_id, attempt = b.probe
                out.append(
                    self._close(
                        hw,
                        b,
                        f"probe attempt {attempt} of {task_id} ran "
                        f"{now - b.probe_started_s:.0f} s without failing",
                    )
                )
        return out

    # ------------------------------------------------------------------ transitions
    def _open(
        self, hw: str, b: _Breaker, now: float, why: str, failed_tasks: int, succeeded: int
    ) -> BreakerChange:
        previous = b.state
        b.state, b.until_s = BreakerState.OPEN, now + b.cooldown_s
        b.probe, b.probe_started_s = None, None
        b.outcomes.clear()
        self._tripped = tuple(sorted({*self._tripped, hw}))
        reason = f"{why}: placement on {hw} paused for {b.cooldown_s:g} s"
        return BreakerChange(
            hw,
            previous,
            BreakerState.OPEN,
            reason,
            failed_tasks,
            succeeded,
            b.cooldown_s,
            b.until_s,
        )

    def _close(self, hw: str, b: _Breaker, why: str) -> BreakerChange:
        previous = b.state
        b.state, b.until_s = BreakerState.CLOSED, math.inf
        b.probe, b.probe_started_s = None, None
        b.cooldown_s = self.settings.cooldown_s
        b.outcomes.clear()
        self._tripped = tuple(h for h in self._tripped if h != hw)
        return BreakerChange(
            hw, previous, BreakerState.CLOSED, f"{why}: placement on {hw} resumed", 0, 0, None, None
        )
