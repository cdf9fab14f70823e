"""A learned runtime forecaster: River's Bayesian linear regression on the log of the rate.

It follows the forecaster protocol of :mod:`.forecasting` (``predict`` / ``learn`` /
``predict_range`` / ``clone``) and stays pure: no I/O, no clock, no randomness, so the
scheduler core remains deterministic. Everything it holds pickles.

The model (see ``docs/forecasting.md``)::

    log(runtime) = log(work) + y,   y = bias + type + hardware + type x hardware
                                       + width terms + share + tenant + log(dataset)

where ``work`` is the declared work (1 when unknown). ``y`` (the log of seconds per unit of
work) is fitted online by :class:`river.linear_model.BayesianLinearRegression`, an exact
recursive ridge regression: its Gaussian prior shrinks every weight towards 0, so a
(type, hardware) interaction never observed contributes nothing and the estimate for a
type seen only on one class is ``type effect + other class's hardware effect`` — the
speed ratio the other types showed.

A (task kind, hardware) pair already observed (kind = type, GPUs, GPU share, as in
:func:`.forecasting.task_kind`) is answered from its own running mean of ``y``: exact
for repeated runs, and the regression is only needed to generalise.

Uncertainty: the residual ``log(observed / predicted)`` is scored before each update,
separately for the two sources (``seen`` pair memory and ``model`` regression), and
:class:`river.stats.Quantile` tracks its lower and upper quantiles; ``predict_range``
returns ``estimate * exp(q_low)`` .. ``estimate * exp(q_high)`` (a prior spread until
``min_spread_samples`` residuals have been seen).
"""

from __future__ import annotations

import math

from river import linear_model, stats

from .forecasting import DEFAULT_RUNTIME_S, Kind, task_kind
from .model import TaskSpec

__all__ = ["RiverRuntimeForecaster"]

#: Prior interval half-width in log space per source, before residuals are measured.
_PRIOR_LOG_SPREAD = {
    "seen": math.log(1.25),
    "model": math.log(2.0),
    "cold": math.log(4.0),
    "declared": math.log(2.0),
}
#: Predictions are clamped to this range (seconds) so one wild extrapolation stays finite.
_MIN_S, _MAX_S = 1e-3, 1e9


#: Scale of interaction features: with a shared Gaussian prior, a feature scaled by c has its
#: effect shrunk as if its prior precision were alpha / c**2, so interactions explain only
#: what the main effects cannot, and main effects (which generalise) take the rest.
_INTERACTION = 0.3


def _log1(x: float) -> float:
    return math.log1p(max(x, 0.0))


class RiverRuntimeForecaster:
    """Online log-runtime regression with per-pair memory and a learned error spread.

    Hyper-parameters (all kept by :meth:`clone`):

    - ``alpha``: prior precision of the regression weights (ridge strength);
    - ``beta``: noise precision of ``y`` (1 / variance of log-rate residuals);
    - ``quantile``: the interval covers residual quantiles ``quantile`` .. ``1 - quantile``;
    - ``min_spread_samples``: residuals needed per source before the measured spread
      replaces the prior one;
    - ``default_runtime_s``: the answer before anything is known and no estimate was
      declared;
    - ``interactions``: add one-hot (type x hardware) features. More accurate when a type
      was seen on a class at another width, but the regression's update costs O(d**2) in
      the number of features d, and these add types x classes of them (on the Gavel
      traces learn p50 goes from ~45 us to ~130-240 us), so off by default.

    Contracts: ``predict`` is always finite and > 0; before any learning it returns the
    declared runtime, else ``default_runtime_s``; a task type never observed but with a
    declared runtime gets the declared runtime; non-finite or non-positive observations are
    ignored. Features are built from the :class:`TaskSpec` in a fixed (sorted) order, so
    predictions do not depend on how the spec was constructed.
    """

    name = "river-linear"

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
        #: Mean |log error| of the two cold-start estimates on first sightings of a type.
        self._cold_error = {"model": stats.Mean(), "cold": stats.Mean()}
        self._pair: dict[tuple[Kind, str], stats.Mean] = {}
        self._types_seen: set[str] = set()
        self._spread: dict[str, _Spread] = {}
        self._learned = 0

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
        return self._estimate(task, hardware)[0]

    def predict_range(self, task: TaskSpec, hardware: str) -> tuple[float, float, float]:
        estimate, source = self._estimate(task, hardware)
        low, high = self._log_bounds(source)
        return (
            min(max(estimate * math.exp(low), _MIN_S), estimate),
            estimate,
            max(min(estimate * math.exp(high), _MAX_S), estimate),
        )

    def learn(self, task: TaskSpec, hardware: str, observed_s: float) -> None:
        if not (observed_s > 0 and math.isfinite(observed_s)):
            return
        estimate, source = self._estimate(task, hardware)
        if source != "default":
            residual = math.log(observed_s / estimate)
            spread = self._spread.get(source)
            if spread is None:
                spread = self._spread[source] = _Spread(self.quantile)
            spread.update(residual)
        if task.task_type not in self._types_seen and self._learned:
            for name, guess in (
                ("model", self._model_estimate(task, hardware)),
                ("cold", self._cold_estimate(task, hardware)),
            ):
                self._cold_error[name].update(abs(math.log(observed_s / guess)))
        y = math.log(observed_s) - math.log(_work(task))
        _learn(self._regression, features(task, hardware, interactions=self.interactions), y)
        _learn(self._cold_regression, cold_features(task, hardware), math.log(observed_s))
        key = (task_kind(task), hardware)
        pair = self._pair.get(key)
        if pair is None:
            pair = self._pair[key] = stats.Mean()
        pair.update(y)
        self._types_seen.add(task.task_type)
        self._learned += 1

    # ------------------------------------------------------------------ internals
    def _estimate(self, task: TaskSpec, hardware: str) -> tuple[float, str]:
        """The estimate in seconds and its source: ``seen`` (pair memory), ``declared``,
        ``default``, ``model`` (regression, type seen) or ``cold`` (type never seen)."""
        pair = self._pair.get((task_kind(task), hardware))
        if pair is not None:
            return _clamp(math.exp(pair.get()) * _work(task)), "seen"
        if task.task_type not in self._types_seen and task.declared_runtime_s:
            return _clamp(task.declared_runtime_s), "declared"
        if self._learned == 0:
            return self.default_runtime_s, "default"
        model = self._model_estimate(task, hardware)
        if task.task_type in self._types_seen:
            return model, "model"
        # A type never seen: blend the two estimates in log space, each weighted by the
        # inverse square of its mean |log error| on first sightings (equal weights until
        # measured). Hedging bounds the cost of either being far off.
        cold = self._cold_estimate(task, hardware)
        w_model, w_cold = (
            1.0 / max(self._cold_error[k].get(), 1e-3) ** 2 for k in ("model", "cold")
        )
        log_mix = (w_model * math.log(model) + w_cold * math.log(cold)) / (w_model + w_cold)
        return _clamp(math.exp(log_mix)), "cold"

    def _model_estimate(self, task: TaskSpec, hardware: str) -> float:
        """The main regression's estimate (seconds per unit of work, times the work)."""
        y = _predict(self._regression, features(task, hardware, interactions=self.interactions))
        return _clamp(math.exp(min(y, 50.0)) * _work(task))

    def _cold_estimate(self, task: TaskSpec, hardware: str) -> float:
        """The type-blind regression's estimate of the whole runtime."""
        y = _predict(self._cold_regression, cold_features(task, hardware))
        return _clamp(math.exp(min(y, 50.0)))

    def _log_bounds(self, source: str) -> tuple[float, float]:
        """Lower and upper log-residual bounds for an estimate from ``source``."""
        measured = self._spread.get(source)
        if measured is not None and measured.count >= self.min_spread_samples:
            low, high = measured.low.get(), measured.high.get()
            if low is not None and high is not None:
                return min(low, 0.0), max(high, 0.0)
        prior = _PRIOR_LOG_SPREAD.get(source, math.log(10.0))
        return -prior, prior


class _Spread:
    """Online lower and upper quantiles of log residuals (River's P-square estimator)."""

    __slots__ = ("count", "high", "low")

    def __init__(self, quantile: float) -> None:
        self.count = 0
        self.low = stats.Quantile(quantile)
        self.high = stats.Quantile(1 - quantile)

    def update(self, residual: float) -> None:
        self.count += 1
        self.low.update(residual)
        self.high.update(residual)


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
