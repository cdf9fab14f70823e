"""The River runtime forecaster's specifics (the contract suite in test_forecasting.py
covers the protocol: clone, pickle, determinism, bad observations, convergence)."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from streamsched.scheduler.checkpoint import CheckpointError, decode, encode
from streamsched.scheduler.forecasting import DEFAULT_RUNTIME_S, RunningMeanForecaster
from streamsched.scheduler.learned import RiverRuntimeForecaster, features
from streamsched.scheduler.model import TaskSpec
from streamsched.testing import task

#: True seconds per step on v100 of each type; p100 is SLOWDOWN times slower for all.
RATE = {"resnet": 0.5, "bert": 2.0, "gpt": 8.0, "lstm": 0.1, "vit": 1.5}
SLOWDOWN = 3.0


def _stream(seed: int, n: int) -> list[tuple[TaskSpec, str, float]]:
    """Observations with 5% multiplicative noise; "vit" only ever runs on v100."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.choice(sorted(RATE))
        hw = "v100" if kind == "vit" else rng.choice(["v100", "p100"])
        work = rng.choice([100.0, 1_000.0, 10_000.0])
        slow = SLOWDOWN if hw == "p100" else 1.0
        seconds = RATE[kind] * work * slow * math.exp(rng.gauss(0, 0.05))
        out.append((task(f"t{i}", kind, gpus=1, work=work), hw, seconds))
    return out


def _fed(model: RiverRuntimeForecaster, seed: int = 7, n: int = 400) -> RiverRuntimeForecaster:
    for spec, hw, seconds in _stream(seed, n):
        model.learn(spec, hw, seconds)
    return model


def test_before_learning_uses_declared_runtime_else_default() -> None:
    model = RiverRuntimeForecaster()
    assert model.predict(task("a", "x", runtime_s=77.0), "v100") == 77.0
    assert model.predict(task("a", "x", work=10.0), "v100") == DEFAULT_RUNTIME_S
    assert RiverRuntimeForecaster(default_runtime_s=5.0).predict(task("a"), "cpu") == 5.0


@pytest.mark.parametrize("interactions", [False, True])
def test_generalises_to_an_unseen_type_hardware_pair(interactions: bool) -> None:
    model = _fed(RiverRuntimeForecaster(interactions=interactions))
    spec = task("new", "vit", gpus=1, work=1_000.0)
    truth = RATE["vit"] * 1_000.0 * SLOWDOWN
    # Never seen on p100: type effect (from v100) times the p100 factor the others showed.
    assert model.predict(spec, "p100") == pytest.approx(truth, rel=0.15)
    # A naive per-type answer (the v100 runtime) would be SLOWDOWN times too small.
    assert model.predict(spec, "p100") > 2 * model.predict(spec, "v100")


def test_seen_pairs_scale_with_declared_work() -> None:
    model = _fed(RiverRuntimeForecaster())
    small = model.predict(task("s", "bert", gpus=1, work=100.0), "v100")
    large = model.predict(task("l", "bert", gpus=1, work=1_000.0), "v100")
    assert large == pytest.approx(10 * small, rel=1e-9)
    assert small == pytest.approx(RATE["bert"] * 100.0, rel=0.05)


def test_interval_is_one_typical_error_wide_and_contains_the_estimate() -> None:
    model = _fed(RiverRuntimeForecaster())
    covered, held_out = 0, _stream(seed=99, n=300)
    for spec, hw, seconds in held_out:
        low, mid, high = model.predict_range(spec, hw)
        assert 0 < low <= mid <= high
        assert mid == model.predict(spec, hw)
        covered += low <= seconds <= high
        model.learn(spec, hw, seconds)
    # estimate / exp(mean |log error|) .. estimate * exp(...): about 58% of Gaussian noise.
    assert 0.45 <= covered / len(held_out) <= 0.75


def test_interval_is_wider_for_a_type_never_seen() -> None:
    model = _fed(RiverRuntimeForecaster())
    low, _, high = model.predict_range(task("n", "never", gpus=1, work=100.0), "v100")
    s_low, _, s_high = model.predict_range(task("b", "bert", gpus=1, work=100.0), "v100")
    assert high / low > s_high / s_low


def test_same_seeded_stream_gives_identical_models() -> None:
    a, b = _fed(RiverRuntimeForecaster(), seed=3), _fed(RiverRuntimeForecaster(), seed=3)
    probes = [spec for spec, _, _ in _stream(seed=11, n=30)] + [task("z", "never", work=5.0)]
    for hw in ("v100", "p100", "k80"):
        assert [a.predict_range(p, hw) for p in probes] == [b.predict_range(p, hw) for p in probes]
    assert a.version == b.version


def test_pickle_round_trip_keeps_ranges_and_learning() -> None:
    model = _fed(RiverRuntimeForecaster(interactions=True))
    copy = pickle.loads(pickle.dumps(model))
    probe = task("p", "vit", gpus=1, work=10.0)
    assert copy.predict_range(probe, "p100") == model.predict_range(probe, "p100")
    for m in (model, copy):
        m.learn(task("q", "vit", gpus=2, work=10.0), "p100", 40.0)
    assert copy.predict_range(probe, "p100") == model.predict_range(probe, "p100")


def test_predictions_do_not_depend_on_how_the_spec_was_built() -> None:
    model = _fed(RiverRuntimeForecaster())
    first = TaskSpec(
        task_id="x", task_type="bert", tenant="t1", gpus=2, gpu_milli=1000,
        declared_work=50.0, dataset_bytes=2**31, cpu_milli=4000, memory_mib=8192,
    )  # fmt: skip
    second = TaskSpec(
        memory_mib=8192, cpu_milli=4000, dataset_bytes=2**31, declared_work=50.0,
        gpu_milli=1000, gpus=2, tenant="t1", task_type="bert", task_id="x",
    )  # fmt: skip
    assert list(features(first, "p100")) == sorted(features(first, "p100"))
    assert features(first, "p100") == features(second, "p100")
    for hw in ("v100", "p100", "k80"):
        assert model.predict_range(first, hw) == model.predict_range(second, hw)


def test_rejects_bad_hyper_parameters() -> None:
    with pytest.raises(ValueError, match="alpha"):
        RiverRuntimeForecaster(alpha=0.0)
    with pytest.raises(ValueError, match="quantile"):
        RiverRuntimeForecaster(quantile=0.5)


def test_known_types_are_answered_by_the_per_pair_statistics() -> None:
    model, simple = _fed(RiverRuntimeForecaster()), RunningMeanForecaster()
    for spec, hw, seconds in _stream(7, 400):
        simple.learn(spec, hw, seconds)
    for spec, _, _ in _stream(seed=5, n=20):
        for hw in ("v100", "p100", "k80"):
            assert model.predict_range(spec, hw) == simple.predict_range(spec, hw)


def test_a_new_type_gets_rivers_estimate_when_it_is_below_the_cold_guess() -> None:
    """Tenant "small" runs 10 s jobs, "big" 10,000 s ones, of many types and no declared
    work. A new type of tenant "small": the simple estimator's cold guess is the geometric
    mean runtime (~316 s); River's regression knows the tenant effect."""
    model, simple = RiverRuntimeForecaster(), RunningMeanForecaster()
    for i in range(200):
        tenant = "small" if i % 2 else "big"
        seconds = 10.0 if tenant == "small" else 10_000.0
        spec = task(f"t{i}", f"type{i % 20}", tenant=tenant, gpus=1)
        for m in (model, simple):
            m.learn(spec, "v100", seconds)
    new = task("n", "never-seen", tenant="small", gpus=1)
    assert simple.predict(new, "v100") > 100.0
    # Within 2x of the truth (ridge shrinkage and the type-blind blend pull it up a little).
    assert 5.0 < model.predict(new, "v100") < 20.0
    low, mid, high = model.predict_range(new, "v100")
    assert 0 < low <= mid <= high
    # Never above the cold guess, even for the "big" tenant.
    big = task("m", "never-seen", tenant="big", gpus=1)
    assert model.predict(big, "v100") <= simple.predict(big, "v100")


def test_a_checkpoint_of_the_previous_revision_is_refused() -> None:
    old = _fed(RiverRuntimeForecaster())
    del old.__dict__["_revision"]  # the state a revision-1 model pickled
    with pytest.raises(CheckpointError, match="revision 1 cannot be loaded by revision 2"):
        decode(encode(old, created_at_s=0.0), expect_name="river-linear")
    current = _fed(RiverRuntimeForecaster())
    probe = task("p", "vit", gpus=1, work=10.0)
    restored = decode(encode(current, created_at_s=0.0), expect_name="river-linear")
    assert restored.predict_range(probe, "p100") == current.predict_range(probe, "p100")
