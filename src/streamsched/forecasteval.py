"""Runtime-forecaster evaluation by delayed progressive validation.

Labels of a runtime forecaster arrive late: a job's runtime is known only when it ends.
:func:`evaluate_runtime` replays a trace's jobs in arrival order; at each arrival every
model first learns the runtimes of the jobs that have finished by then (in finish order),
then predicts the arriving job's runtime. No model ever sees a label before the job would
have finished, and every job is predicted exactly once, before its label is known.

Which hardware class a job is scored on: the trace gives true runtimes on every class the
job can use, so each job is assigned one class deterministically — its classes sorted by
name, the job's index in arrival order modulo their count. A type is thus seen on some
classes before it is asked about others, which tests generalisation across hardware, and
the same trace always gives the same assignment.

Time-keeping (``learn_us_p50`` / ``predict_us_p50``) uses ``time.perf_counter_ns`` around
each call, so this module is outside the pure core.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from streamsched.scheduler.forecasting import (
    DaskLikeForecaster,
    DeclaredForecaster,
    IntervalForecaster,
    RunningMeanForecaster,
    RuntimeForecaster,
)
from streamsched.scheduler.learned import RiverRuntimeForecaster
from streamsched.scheduler.model import TaskSpec
from streamsched.scheduler.trace import Trace, TraceJob

__all__ = ["HARDWARE_CHOICE", "ModelScore", "default_models", "evaluate_runtime"]

HARDWARE_CHOICE = (
    "each job is scored on one of its feasible classes: sorted by name, index in arrival "
    "order modulo their count"
)


@dataclass(slots=True)
class ModelScore:
    """Accuracy and cost of one model over one trace.

    ``interval_coverage`` is the fraction of true runtimes inside ``predict_range``'s
    [low, high], or None for a model without ``predict_range``.
    """

    mae_s: float
    mape: float
    median_ape: float
    interval_coverage: float | None
    learn_us_p50: float
    predict_us_p50: float
    predictions: int
    learned: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "mae_s": self.mae_s,
            "mape": self.mape,
            "median_ape": self.median_ape,
            "interval_coverage": self.interval_coverage,
            "learn_us_p50": self.learn_us_p50,
            "predict_us_p50": self.predict_us_p50,
            "predictions": self.predictions,
            "learned": self.learned,
        }


@dataclass(slots=True)
class _Tally:
    abs_err: list[float] = field(default_factory=list)
    ape: list[float] = field(default_factory=list)
    covered: int = 0
    learn_ns: list[int] = field(default_factory=list)
    predict_ns: list[int] = field(default_factory=list)


def default_models(trace: Trace) -> dict[str, RuntimeForecaster]:
    """The learned model and the baselines, by name; ``declared`` only when some job of
    ``trace`` declares a runtime."""
    models: dict[str, RuntimeForecaster] = {
        "river-linear": RiverRuntimeForecaster(),
        "running-mean": RunningMeanForecaster(),
        "dask-like": DaskLikeForecaster(),
    }
    if any(j.spec.declared_runtime_s for j in trace.jobs):
        models["declared"] = DeclaredForecaster()
    return models


def scored_hardware(job: TraceJob, index: int) -> str:
    """The class ``job`` (the ``index``-th arrival) is scored on (see the module doc)."""
    classes = sorted(job.true_runtime_s)
    return classes[index % len(classes)]


def evaluate_runtime(
    trace: Trace,
    models: Mapping[str, RuntimeForecaster] | None = None,
    *,
    clock_ns: Callable[[], int] = time.perf_counter_ns,
) -> dict[str, ModelScore]:
    """Score each model on ``trace`` by delayed progressive validation (module doc).

    ``models`` default to :func:`default_models`; they are used as given (fitted models
    keep their state). Jobs without a finite positive true runtime on any class are not
    scored. Raises ValueError when ``trace`` has no job to score.
    """
    models = dict(models) if models is not None else default_models(trace)
    order = sorted(range(len(trace.jobs)), key=lambda i: (trace.jobs[i].arrival_s, i))
    tallies = {name: _Tally() for name in models}
    pending: list[tuple[float, int, TaskSpec, str, float]] = []
    scored = 0
    for rank, i in enumerate(order):
        job = trace.jobs[i]
        usable = {h: s for h, s in job.true_runtime_s.items() if s > 0 and math.isfinite(s)}
        if not usable:
            continue
        while pending and pending[0][0] <= job.arrival_s:
            _, _, spec, hw, seconds = heapq.heappop(pending)
            for name, model in models.items():
                start = clock_ns()
                model.learn(spec, hw, seconds)
                tallies[name].learn_ns.append(clock_ns() - start)
        hw = scored_hardware(TraceJob(job.spec, job.arrival_s, usable), rank)
        truth = usable[hw]
        for name, model in models.items():
            _score(model, job.spec, hw, truth, tallies[name], clock_ns)
        heapq.heappush(pending, (job.arrival_s + truth, rank, job.spec, hw, truth))
        scored += 1
    if not scored:
        raise ValueError(f"trace {trace.name!r}: no job with a finite true runtime to score")
    return {name: _summarise(models[name], tally) for name, tally in tallies.items()}


def _score(
    model: RuntimeForecaster,
    spec: TaskSpec,
    hw: str,
    truth: float,
    tally: _Tally,
    clock_ns: Callable[[], int],
) -> None:
    start = clock_ns()
    estimate = model.predict(spec, hw)
    tally.predict_ns.append(clock_ns() - start)
    tally.abs_err.append(abs(estimate - truth))
    tally.ape.append(abs(estimate - truth) / truth)
    if isinstance(model, IntervalForecaster):
        low, _, high = model.predict_range(spec, hw)
        tally.covered += low <= truth <= high


def _summarise(model: RuntimeForecaster, tally: _Tally) -> ModelScore:
    n = len(tally.abs_err)
    return ModelScore(
        mae_s=sum(tally.abs_err) / n,
        mape=sum(tally.ape) / n,
        median_ape=_median(tally.ape),
        interval_coverage=tally.covered / n if isinstance(model, IntervalForecaster) else None,
        learn_us_p50=_median([x / 1000 for x in tally.learn_ns]),
        predict_us_p50=_median([x / 1000 for x in tally.predict_ns]),
        predictions=n,
        learned=len(tally.learn_ns),
    )


def _median(values: list[float]) -> float:
    """The median, or nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
