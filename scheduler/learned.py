"""A learned runtime forecaster: per-pair statistics, with River for task types never seen.

It follows the forecaster protocol of :mod:`.forecasting` (``predict`` / ``learn`` /
``predict_range`` / ``clone``) and stays pure: no I/O, no clock, no randomness, so the
scheduler core remains deterministic. Everything it holds pickles.

The estimate is hierarchical (see ``docs/forecasting.md``):

- Wherever the per-(kind, hardware) statistics of :class:`.forecasting.RunningMeanForecaster`
  (held inside) have an answer, it is used: the pair's own mean rate, else the same kind
  on other classes scaled by the learned speed ratios, else the type at another width on
  this class, else the declared runtime. On the Gavel/Philly traces these are exact after
  one observation, and blending River's regression into them (by observation count or by
  measured error) gave worse simulated JCT.
- For a type never seen (no declared runtime), where the simple estimator could only
  give its cold guess (a geometric-mean runtime), River
  answers: :class:`river.linear_model.BayesianLinearRegression` fits

      log(runtime) = log(work) + y,   y = bias + type + hardware + width terms + share
                                         + tenant + log(cpus, memory, dataset)

  blended in log space with a type-blind regression of log(runtime) on hardware, width
  and log(work), each weighted by its error on first sightings. The answer is the
  *lower* of River's estimate and the cold guess: the queue is ordered shortest first,
  so an optimistic guess lets a new kind run and be learned early, and a low guess costs
  at most the true runtime in absolute error while a high one is unbounded.

Uncertainty: ``predict_range`` keeps the simple estimator's relative spread for the rule
that produced the estimate (``exp`` of its mean absolute log error), applied around this
model's estimate. It is narrower than an 80% interval (coverage 0.61-0.68 on the Philly
traces); residual-quantile intervals covered 0.85-0.92 but lengthened simulated JCT, whose
queue order uses the low end.
"""

from __future__ import annotations

import math
from typing import Any

from river import linear_model, stats

from .forecasting import DEFAULT_RUNTIME_S, RunningMeanForecaster
from .model import TaskSpec

__all__ = ["RiverRuntimeForecaster"]

#: Predictions are clamped to this range (seconds) so one wild extrapolation stays finite.
_MIN_S, _MAX_S = 1e-3, 1e9

#: Scale of interaction features: with a shared Gaussian prior, a feature scaled by c has its
#: effect shrunk as if its prior precision were alpha / c**2, so interactions explain only
#: what the main effects cannot, and main effects (which generalise) take the rest.
_INTERACTION = 0.3


def _log1(x: float) -> float:
    return math.log1p(max(x, 0.0))


class RiverRuntimeForecaster:
    """Per-(kind, hardware) statistics for known types, River regressions for new ones.

    Hyper-parameters (all kept by :meth:`clone`):

    - ``alpha``: prior precision of the regression weights (ridge strength);
    - ``beta``: noise precision of ``y`` (1 / variance of log-rate residuals);
    - ``quantile``, ``min_spread_samples``: accepted and validated for compatibility with
      revision 1 (residual-quantile intervals); unused since revision 2, whose range is
      the simple estimator's spread (module doc);
    - ``default_runtime_s``: the answer before anything is known and no estimate was
      declared;
    - ``interactions``: add one-hot (type x hardware) features to the main regression
      (they cannot inform a type never seen, so they only cost learn time now).

    Contracts: ``predict`` is always finite and > 0; before any learning it returns the
    declared runtime, else ``default_runtime_s``; a task type never observed but with a
    declared runtime gets the declared runtime; non-finite or non-positive observations are
    ignored. Features are built from the :class:`TaskSpec` in a fixed (sorted) order, so
    predictions do not depend on how the spec was constructed. The pickled state carries
    :attr:`revision`; unpickling a state of another revision raises ``ValueError`` (a
    checkpoint reader reports it as a payload that does not unpickle).
    """

    name = "river-linear"
    #: Bumped whenever the estimate changes meaning, so an old checkpoint is refused.
    revision = 2

    def __init__(
        self,
        alpha: float = 0.1,
        beta: float = 4.0,
        quantile: float = 0.1,
        min_spread_samples: int = 10,
        default_runtime_s: float = DEFAULT_RUNTIME_S,
        interactions: bool = False,
    ) -> None:
        if not (alpha > 0 and beta > 0):
            raise ValueError(f"alpha and beta must be > 0, got alpha={alpha}, beta={beta}")
        if not 0 < quantile < 0.5:
            raise ValueError(f"quantile must be in (0, 0.5), got {quantile}")
        self.alpha = alpha
        self.beta = beta
        self.quantile = quantile
        self.min_spread_samples = min_spread_samples
        self.default_runtime_s = default_runtime_s
        self.interactions = interactions
        self._regression = linear_model.BayesianLinearRegression(alpha=alpha, beta=beta)
        self._cold_regression = linear_model.BayesianLinearRegression(alpha=alpha, beta=beta)
        #: Mean |log error| of the two River cold-start estimates on first sightings.
        self._cold_error = {"model": stats.Mean(), "cold": stats.Mean()}
        self._simple = RunningMeanForecaster(default_runtime_s)
        self._types_seen: set[str] = set()
        self._learned = 0
        self._revision = self.revision

    # ------------------------------------------------------------------ protocol
    @property
    def version(self) -> str:
        return f"{self.name}@{self._learned}"

    def clone(self) -> RiverRuntimeForecaster:
        """An unfitted copy with the same hyper-parameters."""
        return RiverRuntimeForecaster(
            alpha=self.alpha,
            beta=self.beta,
            quantile=self.quantile,
            min_spread_samples=self.min_spread_samples,
            default_runtime_s=self.default_runtime_s,
            interactions=self.interactions,
        )

    def predict(self, task: TaskSpec, hardware: str) -> float:
        if not self._is_cold(task, hardware):
            return self._simple.predict(task, hardware)
        return min(self._simple.predict(task, hardware), self._river(task, hardware))

    def predict_range(self, task: TaskSpec, hardware: str) -> tuple[float, float, float]:
        low, simple, high = self._simple.predict_range(task, hardware)
        if not self._is_cold(task, hardware):
            return low, simple, high
        estimate = min(simple, self._river(task, hardware))
        return (
            min(max(estimate * low / simple, _MIN_S), estimate),
            estimate,
            max(min(estimate * high / simple, _MAX_S), estimate),
        )

    def learn(self, task: TaskSpec, hardware: str, observed_s: float) -> None:
        if not (observed_s > 0 and math.isfinite(observed_s)):
            return
        if task.task_type not in self._types_seen and self._learned:
            for name, guess in (
                ("model", self._model_estimate(task, hardware)),
                ("cold", self._cold_estimate(task, hardware)),
            ):
                self._cold_error[name].update(abs(math.log(observed_s / guess)))
        y = math.log(observed_s) - math.log(_work(task))
        _learn(self._regression, features(task, hardware, interactions=self.interactions), y)
        _learn(self._cold_regression, cold_features(task, hardware), math.log(observed_s))
        self._simple.learn(task, hardware, observed_s)
        self._types_seen.add(task.task_type)
        self._learned += 1

    def __setstate__(self, state: dict[str, Any]) -> None:
        found = state.get("_revision", 1)
        if found != self.revision:
            raise ValueError(
                f"{self.name} state of revision {found} cannot be loaded by revision "
                f"{self.revision}: the model changed; start from a fresh model"
            )
        self.__dict__.update(state)

    # ------------------------------------------------------------------ internals
    def _is_cold(self, task: TaskSpec, hardware: str) -> bool:
        """True for a type never observed, without a declared runtime, once something was
        learned (answering also a seen type at a new width and class by the regression
        cut runtime MAE but lengthened simulated JCT: see docs/forecasting.md)."""
        return (
            self._learned > 0
            and task.task_type not in self._types_seen
            and not task.declared_runtime_s
        )

    def _river(self, task: TaskSpec, hardware: str) -> float:
        """River's estimate: the main regression for a type seen (its type, hardware and
        width effects generalise to a new width or class), else the cold blend."""
        if task.task_type in self._types_seen:
            return self._model_estimate(task, hardware)
        return self._river_cold(task, hardware)

    def _river_cold(self, task: TaskSpec, hardware: str) -> float:
        """River's estimate for a type never seen: the main and the type-blind regressions
        blended in log space, each weighted by the inverse square of its mean |log error|
        on first sightings (equal weights until measured)."""
        model = self._model_estimate(task, hardware)
        cold = self._cold_estimate(task, hardware)
        w_model, w_cold = (
            1.0 / max(self._cold_error[k].get(), 1e-3) ** 2 for k in ("model", "cold")
        )
        log_mix = (w_model * math.log(model) + w_cold * math.log(cold)) / (w_model + w_cold)
        return _clamp(math.exp(log_mix))

    def _model_estimate(self, task: TaskSpec, hardware: str) -> float:
        """The main regression's estimate (seconds per unit of work, times the work)."""
        y = _predict(self._regression, features(task, hardware, interactions=self.interactions))
        return _clamp(math.exp(min(y, 50.0)) * _work(task))

    def _cold_estimate(self, task: TaskSpec, hardware: str) -> float:
        """The type-blind regression's estimate of the whole runtime."""
        y = _predict(self._cold_regression, cold_features(task, hardware))
        return _clamp(math.exp(min(y, 50.0)))


def _learn(model: linear_model.BayesianLinearRegression, x: dict[str, float], y: float) -> None:
    """River's ``learn_one``, typed (River's signatures are not)."""
    model.learn_one(x, y)  # type: ignore[no-untyped-call]


def _predict(model: linear_model.BayesianLinearRegression, x: dict[str, float]) -> float:
    """River's ``predict_one`` (the posterior mean), typed."""
    return float(model.predict_one(x))  # type: ignore[no-untyped-call]


def _work(task: TaskSpec) -> float:
    return task.declared_work if task.declared_work > 0 else 1.0


def _clamp(seconds: float) -> float:
    return min(max(seconds, _MIN_S), _MAX_S)


def features(task: TaskSpec, hardware: str, *, interactions: bool = False) -> dict[str, float]:
    """The regression's features for ``task`` on ``hardware``, keys in sorted order.

    One-hot: type, hardware, tenant (and type x hardware with ``interactions``); numeric:
    log2 of the GPU count (alone, per type and per hardware), the GPU share
    (1 - gpu_milli / 1000 for a share of one GPU), log CPU cores and memory GiB, log
    dataset GiB, and whether work was declared (a task without declared work has its
    whole runtime as its "rate").
    """
    width = math.log2(task.gpus) if task.gpus > 0 else -1.0
    share = 1.0 - task.gpu_milli / 1000 if task.is_gpu_share else 0.0
    t, h = task.task_type, hardware
    x = {
        "bias": 1.0,
        f"type={t}": 1.0,
        f"hw={h}": 1.0,
        f"tenant={task.tenant}": 1.0,
        "log2_gpus": width,
        f"log2_gpus|type={t}": width * _INTERACTION,
        f"log2_gpus|hw={h}": width * _INTERACTION,
        "gpu_share": share,
        "log_cpus": _log1(task.cpu_milli / 1000),
        "log_mem_gib": _log1(task.memory_mib / 1024),
        "log_dataset_gib": _log1(task.dataset_bytes / 2**30),
        "no_work": 0.0 if task.declared_work > 0 else 1.0,
    }
    if interactions:
        x[f"type={t}|hw={h}"] = _INTERACTION
    return {k: x[k] for k in sorted(x)}


def cold_features(task: TaskSpec, hardware: str) -> dict[str, float]:
    """Features of the type-blind regression of log(runtime) used for task types never
    seen: hardware, width, and log of the declared work (whose exponent across types is
    learned, rather than assumed to be 1), keys in sorted order."""
    x = {
        "bias": 1.0,
        f"hw={hardware}": 1.0,
        "log2_gpus": math.log2(task.gpus) if task.gpus > 0 else -1.0,
        "log_work": math.log(task.declared_work) if task.declared_work > 0 else 0.0,
        "no_work": 0.0 if task.declared_work > 0 else 1.0,
        "log_dataset_gib": _log1(task.dataset_bytes / 2**30),
    }
    return {k: x[k] for k in sorted(x)}
