"""The discrete-event simulator on hand-built traces (JCTs by hand), a 30-day trace, the
packing mode, determinism, and one real Gavel trace."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from streamsched.scheduler.model import NodeSpec
from streamsched.scheduler.policies import POLICY_NAMES, get_policy
from streamsched.scheduler.simulator import SimConfig, SimReport, Simulator
from streamsched.scheduler.trace import Trace, TraceJob
from streamsched.testing import gpu_cluster, node, task
from streamsched.traces import load_trace, parse_cluster

V100 = "gpu-v100"


def job(
    task_id: str, arrival_s: float, runtime_s: float | dict[str, float], **spec: object
) -> TraceJob:
    """A trace job with one GPU by default; ``runtime_s`` is the true runtime on any class
    (a number) or per class (a dict)."""
    spec.setdefault("gpus", 1)
    truth = runtime_s if isinstance(runtime_s, dict) else {"*": runtime_s}
    return TraceJob(task(task_id, **spec), arrival_s, truth)  # type: ignore[arg-type]


def simulate(
    jobs: list[TraceJob],
    nodes: tuple[NodeSpec, ...] | list[NodeSpec],
    policy: str = "fifo",
    config: SimConfig | None = None,
) -> SimReport:
    return Simulator(Trace("hand", tuple(jobs)), nodes, get_policy(policy), config=config).run()


# ---------------------------------------------------------------------- by hand
def test_fifo_jcts_on_one_gpu_match_hand_calculation() -> None:
    jobs = [job("j1", 0.0, 100.0), job("j2", 10.0, 50.0), job("j3", 20.0, 30.0)]
    report = simulate(jobs, [node("g", V100, gpus=1)])
    # j1 runs 0-100, j2 100-150, j3 150-180.
    assert report.jct_s == [100.0, 140.0, 160.0]
    assert report.jobs == report.submitted == 3
    assert report.avg_jct_s == pytest.approx(400.0 / 3)
    assert report.p50_jct_s == 140.0
    assert report.makespan_s == 180.0
    assert report.avg_queue_s == pytest.approx((0.0 + 90.0 + 130.0) / 3)
    assert report.gpu_utilization == pytest.approx(1.0)
    assert report.decisions == 3
    assert (report.rejected, report.unfinished, report.preemptions) == (0, 0, 0)
    assert report.unallocated_gpu_fraction is None


def test_jobs_on_a_wide_node_run_side_by_side() -> None:
    jobs = [job("a", 0.0, 100.0, gpus=2), job("b", 0.0, 100.0, gpus=2), job("c", 5.0, 10.0)]
    report = simulate(jobs, [node("g", V100, gpus=4)])
    # a and b fill the node at 0; c waits until 100 and ends at 110.
    assert report.jct_s == [100.0, 100.0, 105.0]
    assert report.makespan_s == 110.0


def test_oracle_preempts_a_long_job_for_a_short_one() -> None:
    jobs = [job("long", 0.0, 10_000.0, preemptible=True), job("short", 1000.0, 100.0)]
    report = simulate(jobs, [node("g", V100, gpus=1)], "oracle")
    # short preempts long at 1000 (10% done) and runs 1000-1100; long resumes at 1100 with
    # 9000 s of work left plus the 30 s checkpoint restore: it ends at 10 130.
    assert report.preemptions == 1
    assert dict(zip(["long", "short"], report.jct_s, strict=True)) == {
        "long": pytest.approx(10_130.0),
        "short": pytest.approx(100.0),
    }


def test_heterogeneous_oracle_uses_the_fast_class() -> None:
    jobs = [job("a", 0.0, {"gpu-k80": 300.0, V100: 100.0})]
    report = simulate(jobs, gpu_cluster(k80=1, v100=1, gpus_per_node=1), "oracle")
    assert report.jct_s == [100.0]


def test_unplaceable_jobs_are_rejected_with_reasons() -> None:
    jobs = [
        job("ok", 0.0, 10.0),
        job("wide", 0.0, 10.0, gpus=8),
        job("k80", 1.0, 5.0, hardware="gpu-k80"),
    ]
    report = simulate(jobs, [node("g", V100, gpus=4)])
    assert report.submitted == 3
    assert report.rejected == 2
    assert report.jobs == 1
    assert report.rejection_reasons == {"no registered node can ever host it": 2}


# ---------------------------------------------------------------------- scale
MONTH_S = 30 * 86400.0


def month_of_jobs(seed: int = 1, count: int = 600) -> list[TraceJob]:
    """``count`` jobs spread over 30 days (the last one arrives on day 30), lognormal
    runtimes of hours, k80 1.5-4x slower than v100, preemptible."""
    rng = random.Random(seed)
    jobs = []
    for i in range(count):
        arrival = MONTH_S * (i + rng.random()) / count
        v100 = rng.lognormvariate(8.0, 1.0)
        gpus = rng.choice([1, 1, 1, 2, 4])
        kind = rng.choice(["resnet", "bert", "gpt"])
        truth = {V100: v100, "gpu-k80": v100 * rng.uniform(1.5, 4.0)}
        jobs.append(job(f"j{i:05d}", arrival, truth, gpus=gpus, task_type=kind, preemptible=True))
    return jobs


@pytest.mark.parametrize("policy", ["fifo", "forecast"])
def test_a_month_long_trace_runs_on_the_virtual_clock(policy: str) -> None:
    jobs = month_of_jobs()
    report = simulate(jobs, gpu_cluster(v100=2, k80=2), policy)
    assert report.jobs == len(jobs)
    assert report.unfinished == 0
    assert report.makespan_s > MONTH_S - MONTH_S / len(jobs)  # a month, never sleeping
    assert 0.0 < report.gpu_utilization <= 1.0
    assert report.runtime_mae_s is not None
    assert report.runtime_mae_s > 0


def test_oracle_runtime_error_is_zero() -> None:
    jobs = [
        TraceJob(replace(j.spec, preemptible=False), j.arrival_s, j.true_runtime_s)
        for j in month_of_jobs(count=300)
    ]
    # Without preemption no checkpoint restore distorts an observed runtime.
    report = simulate(jobs, gpu_cluster(v100=1, k80=1), "oracle")
    assert report.jobs == 300
    assert report.runtime_mae_s == 0.0


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_policy_finishes_every_job(policy: str) -> None:
    jobs = month_of_jobs(seed=3, count=150)
    report = simulate(jobs, gpu_cluster(v100=1, k80=1), policy)
    assert report.jobs == 150
    assert report.unfinished == 0
    assert all(jct > 0 for jct in report.jct_s)


# ---------------------------------------------------------------------- packing mode
def test_no_departures_drops_unplaceable_and_reports_unallocated_fraction() -> None:
    jobs = [job("a", 0.0, 1.0, gpus=3), job("b", 0.0, 1.0, gpus=3), job("c", 0.0, 1.0)]
    report = simulate(jobs, [node("g", V100, gpus=4)], config=SimConfig(departures=False))
    # Arrivals stop once their demand reaches the cluster's 4 GPUs: a (3) and b (6).
    # a is placed; b cannot be placed on arrival and is dropped.
    assert report.submitted == 2
    assert report.dropped_unplaceable == 1
    assert report.unallocated_gpu_fraction == pytest.approx(0.25)
    assert report.jobs == 0  # nothing ever departs
    assert report.fill_curve[-1] == pytest.approx((1.5, 0.25))


def test_no_departures_replays_the_trace_until_the_fill_target() -> None:
    jobs = [job("s", 0.0, 1.0, share=500)]
    report = simulate(
        jobs, [node("g", V100, gpus=2)], "forecast", SimConfig(departures=False, fill=1.0)
    )
    # Four half-GPU shares fill two GPUs exactly; nothing is dropped.
    assert report.submitted == 4
    assert report.dropped_unplaceable == 0
    assert report.unallocated_gpu_fraction == pytest.approx(0.0)


# ---------------------------------------------------------------------- determinism
@pytest.mark.parametrize("policy", ["random", "dask-like", "forecast"])
def test_two_runs_give_identical_reports(policy: str) -> None:
    jobs = month_of_jobs(seed=5, count=200)
    nodes = gpu_cluster(v100=1, k80=1)

    def run() -> dict[str, object]:
        data = simulate(jobs, nodes, policy).to_dict(series=True)
        data.pop("wall_s")
        return data

    assert run() == run()


# ---------------------------------------------------------------------- real trace
GAVEL_CLUSTER = "v100=8,p100=8,k80=8"


def gavel(shared_traces: Path, stem: str) -> Trace:
    return load_trace(f"gavel:{shared_traces / 'gavel-philly' / f'{stem}.trace'}")


@pytest.mark.parametrize("stem", ["23dbec", "51b7ef"])
def test_real_gavel_trace(shared_traces: Path, stem: str) -> None:
    trace = gavel(shared_traces, stem)
    nodes = parse_cluster(GAVEL_CLUSTER)
    for policy in ("fifo", "forecast", "oracle"):
        report = Simulator(trace, nodes, get_policy(policy)).run()
        assert report.submitted == report.jobs == len(trace.jobs) > 0
        assert report.rejected == report.unfinished == 0
        assert report.skipped_by_loader == len(trace.skipped)
        # No job finishes faster than its true runtime on its fastest class.
        fastest = {j.spec.task_id: min(j.true_runtime_s.values()) for j in trace.jobs}
        assert min(report.jct_s) >= min(fastest.values()) - 1e-6
    # Without preemption (no checkpoint restore in the observations) the oracle's
    # runtime predictions are exact.
    exact = replace(
        trace,
        jobs=tuple(replace(j, spec=replace(j.spec, preemptible=False)) for j in trace.jobs),
    )
    report = Simulator(exact, nodes, get_policy("oracle")).run()
    assert report.runtime_mae_s == 0.0


@pytest.mark.parametrize("stem", ["23dbec", "51b7ef"])
def test_oracle_beats_fifo_on_real_gavel_trace(shared_traces: Path, stem: str) -> None:
    trace = gavel(shared_traces, stem)
    nodes = parse_cluster(GAVEL_CLUSTER)
    fifo = Simulator(trace, nodes, get_policy("fifo")).run()
    oracle = Simulator(trace, nodes, get_policy("oracle")).run()
    assert oracle.avg_jct_s <= fifo.avg_jct_s


# ---------------------------------------------------------------------- learned forecaster
def test_forecast_river_runs_the_learned_forecaster_deterministically() -> None:
    from streamsched.scheduler.drift import DriftingForecaster
    from streamsched.scheduler.learned import RiverRuntimeForecaster

    jobs = month_of_jobs(seed=7, count=120)
    nodes = gpu_cluster(v100=1, k80=1)

    def run() -> tuple[dict[str, object], str]:
        sim = Simulator(Trace("hand", tuple(jobs)), nodes, get_policy("forecast-river"))
        data = sim.run().to_dict(series=True)
        data.pop("wall_s")
        assert isinstance(sim.core.forecaster, DriftingForecaster)
        assert isinstance(sim.core.forecaster.inner, RiverRuntimeForecaster)
        return data, sim.core.forecaster.version

    first, version = run()
    assert first["policy"] == "forecast-river"
    assert first["jobs"] == 120
    assert first["unfinished"] == 0
    # It learned at least once from every completed job.
    learned = int(version.removeprefix("river-linear+drift@g0:river-linear@"))
    assert learned >= 120
    assert run() == (first, version)


def test_forecaster_for_builds_the_policy_kind_without_a_trace() -> None:
    from streamsched.scheduler.forecasting import DaskLikeForecaster, RunningMeanForecaster
    from streamsched.scheduler.simulator import forecaster_for

    assert forecaster_for(get_policy("forecast-river")).name == "river-linear+drift"
    assert isinstance(forecaster_for(get_policy("forecast")), RunningMeanForecaster)
    assert isinstance(forecaster_for(get_policy("dask-like")), DaskLikeForecaster)
    with pytest.raises(ValueError, match="'oracle': the oracle forecaster needs a trace"):
        forecaster_for(get_policy("oracle"))
