"""Runtime forecasters: one contract suite run against every forecaster (as River checks
every estimator), then the specifics of each."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from streamsched.scheduler.forecasting import (
    DEFAULT_RUNTIME_S,
    DaskLikeForecaster,
    DeclaredForecaster,
    OracleForecaster,
    RunningMeanForecaster,
    RuntimeForecaster,
)
from streamsched.scheduler.learned import RiverRuntimeForecaster
from streamsched.scheduler.model import TaskSpec
from streamsched.testing import task

HARDWARE = ("cpu", "gpu-k80", "gpu-v100")
TRUTH = {"a": {"gpu-v100": 100.0, "gpu-k80": 300.0}, "b": {"*": 50.0}}


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], RuntimeForecaster]
    #: Hyper-parameters, by attribute name, that a clone must keep.
    hyper: tuple[str, ...]
    learns: bool


RIVER_HYPER = (
    "alpha",
    "beta",
    "quantile",
    "min_spread_samples",
    "default_runtime_s",
    "interactions",
)

CASES = [
    Case("running-mean", RunningMeanForecaster, ("default_runtime_s",), True),
    Case("running-mean-42", lambda: RunningMeanForecaster(42.0), ("default_runtime_s",), True),
    Case("dask-like", DaskLikeForecaster, ("unknown_duration_s",), True),
    Case("dask-like-2", lambda: DaskLikeForecaster(2.0), ("unknown_duration_s",), True),
    Case("declared", DeclaredForecaster, ("default_runtime_s",), False),
    Case("declared-99", lambda: DeclaredForecaster(99.0), ("default_runtime_s",), False),
    Case("oracle", lambda: OracleForecaster(TRUTH), ("_truth",), False),
    Case("river-linear", RiverRuntimeForecaster, RIVER_HYPER, True),
    Case(
        "river-linear-tuned",
        lambda: RiverRuntimeForecaster(
            alpha=1.0, beta=2.0, quantile=0.2, default_runtime_s=42.0, interactions=True
        ),
        RIVER_HYPER,
        True,
    ),
]


def probes() -> list[TaskSpec]:
    """Tasks of every kind of knowledge: nothing, declared work, declared runtime, both."""
    return [
        task("a", "resnet", gpus=1),
        task("b", "bert", gpus=2, work=500.0),
        task("c", "bert", runtime_s=77.0),
        task("d", "never-seen", work=10.0, runtime_s=5.0),
        task("e", "resnet", share=500, work=2.0),
    ]


def observations() -> list[tuple[TaskSpec, str, float]]:
    return [
        (task("a", "resnet", gpus=1), "gpu-v100", 100.0),
        (task("a", "resnet", gpus=1), "gpu-k80", 310.0),
        (task("b", "bert", work=500.0), "gpu-k80", 900.0),
        (task("a", "resnet", gpus=1), "gpu-v100", 120.0),
        (task("x", "etl"), "cpu", 30.0),
    ]


def feed(model: RuntimeForecaster) -> RuntimeForecaster:
    for spec, hw, seconds in observations():
        model.learn(spec, hw, seconds)
    return model


def predictions(model: RuntimeForecaster) -> list[float]:
    return [model.predict(spec, hw) for spec in probes() for hw in HARDWARE]


@pytest.fixture(params=CASES, ids=[c.id for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- contract
def test_follows_the_protocol(case: Case) -> None:
    model = case.make()
    assert isinstance(model, RuntimeForecaster)
    assert isinstance(model.name, str)
    assert model.name
    assert model.version.startswith(model.name)


def test_clone_is_unfitted_with_the_same_hyper_parameters(case: Case) -> None:
    model = feed(case.make())
    clone = model.clone()  # type: ignore[attr-defined]
    assert type(clone) is type(model)
    assert clone is not model
    for name in case.hyper:
        assert getattr(clone, name) == getattr(model, name)
    fresh = case.make()
    assert predictions(clone) == predictions(fresh)
    assert clone.version == fresh.version
    # Cloning does not disturb the original.
    assert predictions(model) == predictions(feed(case.make()))


def test_pickle_round_trip_preserves_predictions(case: Case) -> None:
    model = feed(case.make())
    copy = pickle.loads(pickle.dumps(model))
    assert predictions(copy) == predictions(model)
    assert copy.version == model.version
    # The copy keeps learning the same way.
    for m in (model, copy):
        m.learn(task("a", "resnet", gpus=1), "gpu-v100", 90.0)
    assert predictions(copy) == predictions(model)


def test_deterministic(case: Case) -> None:
    assert predictions(feed(case.make())) == predictions(feed(case.make()))


def test_sensible_before_and_after_learning(case: Case) -> None:
    for model in (case.make(), feed(case.make())):
        for value in predictions(model):
            assert math.isfinite(value)
            assert value > 0


def test_ignores_impossible_observations(case: Case) -> None:
    model = feed(case.make())
    before, version = predictions(model), model.version
    for bad in (0.0, -5.0, math.inf, math.nan):
        model.learn(task("a", "resnet", gpus=1), "gpu-v100", bad)
    assert predictions(model) == before
    assert model.version == version


def test_version_tracks_learning(case: Case) -> None:
    model = case.make()
    version = model.version
    model.learn(task("a", "resnet", gpus=1), "gpu-v100", 100.0)
    assert (model.version != version) is case.learns


LEARNERS = [c for c in CASES if c.learns]


@pytest.mark.parametrize("value", [3.0, 250.0, 86_400.0])
@pytest.mark.parametrize("learner", LEARNERS, ids=[c.id for c in LEARNERS])
def test_converges_on_a_constant_series(learner: Case, value: float) -> None:
    model = learner.make()
    spec = task("a", "resnet", gpus=1)
    for _ in range(40):
        model.learn(spec, "gpu-v100", value)
    assert model.predict(spec, "gpu-v100") == pytest.approx(value, rel=1e-9)


# ---------------------------------------------------------------------- running mean
def test_running_mean_is_the_mean_per_type_and_hardware() -> None:
    model = RunningMeanForecaster()
    for seconds in (100.0, 200.0, 600.0):
        model.learn(task("t", "resnet"), "gpu-v100", seconds)
    model.learn(task("t", "resnet"), "gpu-k80", 5000.0)
    assert model.predict(task("t", "resnet"), "gpu-v100") == pytest.approx(300.0)
    assert model.predict(task("t", "resnet"), "gpu-k80") == pytest.approx(5000.0)


def test_running_mean_scales_with_declared_work() -> None:
    model = RunningMeanForecaster()
    model.learn(task("t", "train", work=100.0), "gpu-v100", 200.0)  # 2 s per unit
    assert model.predict(task("u", "train", work=50.0), "gpu-v100") == pytest.approx(100.0)
    assert model.predict(task("u", "train", work=1000.0), "gpu-v100") == pytest.approx(2000.0)


def test_running_mean_cold_start_uses_other_hardware_scaled_by_learned_ratio() -> None:
    model = RunningMeanForecaster()
    # resnet teaches that v100 is 3x faster than k80.
    model.learn(task("t", "resnet"), "gpu-v100", 100.0)
    model.learn(task("t", "resnet"), "gpu-k80", 300.0)
    # bert has only been seen on k80: on v100 expect a third of it.
    model.learn(task("t", "bert"), "gpu-k80", 600.0)
    assert model.predict(task("u", "bert"), "gpu-v100") == pytest.approx(200.0)
    # ... and an unseen pair the other way round is scaled up.
    model.learn(task("t", "gpt"), "gpu-v100", 50.0)
    assert model.predict(task("u", "gpt"), "gpu-k80") == pytest.approx(150.0)
    # The ratio is the geometric mean over the types seen on both classes.
    model.learn(task("t", "vit"), "gpu-v100", 100.0)
    model.learn(task("t", "vit"), "gpu-k80", 1200.0)  # 12x; with resnet's 3x: sqrt(36) = 6
    assert model.predict(task("u", "bert"), "gpu-v100") == pytest.approx(100.0)


def test_running_mean_cold_start_with_no_common_type_uses_ratio_one() -> None:
    model = RunningMeanForecaster()
    model.learn(task("t", "bert"), "gpu-k80", 600.0)
    assert model.predict(task("u", "bert"), "gpu-v100") == pytest.approx(600.0)


def test_running_mean_fallbacks_for_unseen_types() -> None:
    model = RunningMeanForecaster(default_runtime_s=123.0)
    assert model.predict(task("u", "new"), "cpu") == 123.0  # nothing known: the default
    assert model.predict(task("u", "new", runtime_s=45.0), "cpu") == 45.0  # declared
    model.learn(task("t", "etl", work=10.0), "cpu", 40.0)
    model.learn(task("t", "etl", work=10.0), "gpu-v100", 20.0)
    # The user's estimate still wins for a type never seen; without one, the guess comes
    # from what was learned about other types, finite and positive on every class.
    assert model.predict(task("u", "new", work=5.0, runtime_s=7.0), "cpu") == 7.0
    for hw in HARDWARE:
        guess = model.predict(task("u", "new", work=5.0), hw)
        assert math.isfinite(guess)
        assert guess > 0


# ---------------------------------------------------------------------- the others
def test_dask_like_halves_towards_each_observation_and_ignores_hardware() -> None:
    model = DaskLikeForecaster()
    spec = task("t", "inc")
    assert model.predict(spec, "cpu") == 0.5
    model.learn(spec, "cpu", 10.0)
    assert model.predict(spec, "gpu-v100") == 10.0
    model.learn(spec, "gpu-v100", 20.0)
    assert model.predict(spec, "cpu") == 15.0
    model.learn(task("other", "inc", work=1e6), "cpu", 5.0)
    assert model.predict(spec, "cpu") == 10.0


def test_declared_uses_the_estimate_or_its_default() -> None:
    model = DeclaredForecaster(default_runtime_s=60.0)
    assert model.predict(task("t", runtime_s=12.0), "cpu") == 12.0
    assert model.predict(task("t"), "gpu-v100") == 60.0
    model.learn(task("t"), "cpu", 1.0)
    assert model.predict(task("t"), "cpu") == 60.0


def test_oracle_knows_the_truth_per_hardware() -> None:
    model = OracleForecaster({**TRUTH, "inf": {"cpu": math.inf}})
    assert model.predict(task("a"), "gpu-v100") == 100.0
    assert model.predict(task("a"), "gpu-k80") == 300.0
    assert model.predict(task("b"), "anything") == 50.0  # "*" stands for any class
    assert model.predict(task("a"), "cpu") == DEFAULT_RUNTIME_S  # not in the truth
    assert model.predict(task("zzz"), "cpu") == DEFAULT_RUNTIME_S
    assert model.predict(task("inf"), "cpu") == DEFAULT_RUNTIME_S
