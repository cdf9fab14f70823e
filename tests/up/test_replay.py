"""Trace jobs as wire submissions, and the compressed replay clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from streamsched.scheduler.convert import task_spec_from_event
from streamsched.scheduler.trace import Trace, TraceJob
from streamsched.schemas import codec
from streamsched.testing import task
from streamsched.traces import load_trace
from streamsched.up.replay import (
    REPLAY_RUNTIMES_ENV,
    ReplayClock,
    replayable,
    speedup_for,
    task_type_slug,
    wire_submission,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_every_packaged_job_replays_as_the_spec_the_simulator_sees() -> None:
    trace = replayable(load_trace("gavel:sample", max_gpus_per_job=4))
    assert len(trace.jobs) == 140
    for job in trace.jobs:
        event = wire_submission(job, NOW)
        decoded = codec.decode(codec.encode(event))  # what the placement agent reads
        assert task_spec_from_event(decoded) == job.spec  # type: ignore[arg-type]
        runtimes = json.loads(event.env[REPLAY_RUNTIMES_ENV])
        assert runtimes == pytest.approx(dict(job.true_runtime_s))
        assert event.command == ()  # replayed, never executed


@pytest.mark.parametrize(
    ("raw", "slug"),
    [
        ("LM (batch size 80)", "lm-batch-size-80"),
        ("ResNet-18 (batch size 256)", "resnet-18-batch-size-256"),
        ("train", "train"),
        ("  ", "task"),
    ],
)
def test_task_type_slug(raw: str, slug: str) -> None:
    assert task_type_slug(raw) == slug


def test_colliding_task_types_are_refused() -> None:
    jobs = (
        TraceJob(task("a", "A b"), 0.0, {"cpu": 1.0}),
        TraceJob(task("b", "a-B"), 0.0, {"cpu": 1.0}),
    )
    with pytest.raises(ValueError, match="both become 'a-b'"):
        replayable(Trace("t", jobs))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (task("d", deadline_s=10.0), "deadlines are not replayed"),
        (task("w", work=1.5), "not whole steps"),
    ],
)
def test_jobs_the_wire_cannot_replay_faithfully_are_refused(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wire_submission(TraceJob(spec, 0.0, {"cpu": 1.0}), NOW)  # type: ignore[arg-type]


def test_replay_clock_round_trips() -> None:
    clock = ReplayClock(start=1000.0, speedup=60.0)
    assert clock.wall(0.0) == 1000.0
    assert clock.wall(600.0) == 1010.0
    assert clock.trace(clock.wall(1234.5)) == pytest.approx(1234.5)
    with pytest.raises(ValueError, match="positive"):
        ReplayClock(0.0, 0.0)


def test_speedup_for() -> None:
    assert speedup_for(86400.0, 120.0) == 720.0
    assert speedup_for(60.0, 120.0) == 1.0  # never slower than real time
    with pytest.raises(ValueError, match="positive"):
        speedup_for(10.0, 0.0)


def test_up_loads_the_first_jobs_from_time_zero_with_an_optional_id_prefix() -> None:
    from streamsched.up.run import UpConfig, load

    plain, nodes = load(UpConfig(jobs=3))
    assert [j.spec.task_id for j in plain.jobs] == [
        "gavel-sample-00001",
        "gavel-sample-00002",
        "gavel-sample-00003",
    ]
    assert plain.jobs[0].arrival_s == 0.0
    assert len(nodes) == 8  # the default fleet
    prefixed, _ = load(UpConfig(jobs=3), "up123-")
    assert [j.spec.task_id for j in prefixed.jobs] == [
        "up123-" + j.spec.task_id for j in plain.jobs
    ]
    with pytest.raises(ValueError, match="--executors"):
        load(UpConfig(executors="v100=0"))
