"""In-memory traces the simulator replays. Loaders (which read files) live outside the core,
in :mod:`streamsched.traces`, and produce these."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from .model import NodeSpec, TaskSpec


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job of a trace.

    ``true_runtime_s`` maps each hardware class the job can run on to its true runtime
    there (seconds from start to finish with the whole work to do). A class missing from
    the map is infeasible for the job. The simulator uses it to decide when attempts end;
    policies never see it (except ``oracle``, by construction).
    """

    spec: TaskSpec
    arrival_s: float
    true_runtime_s: Mapping[str, float]
    #: Original job index/line in the trace file, for reports.
    source_ref: str = ""


@dataclass(frozen=True, slots=True)
class SkippedJob:
    """A trace job the loader or the simulator did not run, and why."""

    source_ref: str
    reason: str


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    jobs: tuple[TraceJob, ...]
    #: Nodes given by the trace itself (openb); empty when the cluster comes from the CLI.
    nodes: tuple[NodeSpec, ...] = ()
    skipped: tuple[SkippedJob, ...] = ()
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class ReplayClock:
    """A trace replayed on a compressed clock: trace second ``t`` happens at wall (epoch)
    time ``start + t / speedup``. Pure arithmetic; the caller reads the wall clock."""

    start: float
    speedup: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.speedup) and self.speedup > 0):
            raise ValueError(f"replay speedup must be a positive finite number, got {self.speedup}")
        if not math.isfinite(self.start):
            raise ValueError(f"replay start must be finite epoch seconds, got {self.start}")

    def wall(self, trace_s: float) -> float:
        return self.start + trace_s / self.speedup

    def trace(self, wall_s: float) -> float:
        return (wall_s - self.start) * self.speedup
