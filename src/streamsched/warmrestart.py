"""The warm-restart proof: does a restarted stream processor keep what its models learned?

:func:`run_warm_restart` starts an embedded broker and a real processor subprocess
(``streamsched processor``), replays ``2 * per_phase`` completed jobs of a trace as
``task.submitted`` + ``decision.audit`` + ``task.completed`` events (true runtimes from the
trace, first attempt, no executors), restarts the processor after the first
``per_phase`` completions (SIGTERM, which checkpoints on stop, or SIGKILL after the
periodic checkpoint of the last completion), and reads the processor's own prequential
errors (``GET /models``: each completion predicted just before it is learned) over the
``per_phase`` completions before and the ``per_phase`` after the restart. It does this
twice on fresh brokers: ``warm`` (the new processor restores its models) and ``cold``
(the new processor runs with ``--no-restore``). A third row, ``continuous``, feeds the
same completions in the same order to one in-process :class:`ModelHub` that never
restarts: what the live numbers should match.

Task types become wire-safe slugs (:func:`streamsched.up.replay.replayable`). Jobs are
taken in completion order (arrival + true runtime on the hardware they are
scored on, as in ``forecast-eval runtime``: see
:func:`streamsched.forecasteval.scored_hardware`), so the order the models see is the
order completions would arrive in. This module does I/O (broker, processes, HTTP); it is
a benchmark that prints figures, not a test.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from streamsched.broker import EmbeddedBroker, client_config, free_port
from streamsched.forecasteval import scored_hardware
from streamsched.scheduler.trace import Trace, TraceJob
from streamsched.schemas import codec, topics
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.lifecycle import TaskCompleted
from streamsched.streams.models import ModelHub
from streamsched.up.replay import replayable, wire_submission

__all__ = ["PhaseErrors", "ReplayJob", "completion_order", "run_warm_restart"]

#: Time origin of the replayed events (the trace's second 0).
ORIGIN = datetime(2026, 1, 1, tzinfo=UTC)
APP_ID = "warmrestart"


@dataclass(frozen=True, slots=True)
class ReplayJob:
    """One trace job as replayed: its hardware class and true runtime there."""

    job: TraceJob
    hardware: str
    runtime_s: float

    @property
    def task_id(self) -> str:
        return self.job.spec.task_id


@dataclass(frozen=True, slots=True)
class PhaseErrors:
    """Prequential errors over one phase: count, MAE seconds, mean |log error|."""

    n: int
    mae_s: float
    mean_log_error: float

    @classmethod
    def of(cls, entries: list[tuple[float, float]]) -> PhaseErrors:
        """From ``(predicted_s, actual_s)`` pairs."""
        if not entries:
            return cls(0, math.nan, math.nan)
        return cls(
            len(entries),
            sum(abs(p - a) for p, a in entries) / len(entries),
            sum(abs(math.log(p / a)) for p, a in entries) / len(entries),
        )


def completion_order(trace: Trace, count: int) -> tuple[list[ReplayJob], int]:
    """The first ``count`` jobs of ``trace`` in completion order, and how many jobs were
    left out because they cannot be replayed (no finite runtime, or not expressible on the
    wire). Raises ValueError if fewer than ``count`` remain."""
    arrivals = sorted(range(len(trace.jobs)), key=lambda i: (trace.jobs[i].arrival_s, i))
    chosen: list[tuple[float, int, ReplayJob]] = []
    left_out = 0
    for rank, index in enumerate(arrivals):
        job = trace.jobs[index]
        usable = {h: s for h, s in job.true_runtime_s.items() if s > 0 and math.isfinite(s)}
        if not usable:
            left_out += 1
            continue
        hardware = scored_hardware(TraceJob(job.spec, job.arrival_s, usable), rank)
        try:
            wire_submission(job, ORIGIN)
        except ValueError:
            left_out += 1
            continue
        replay = ReplayJob(job, hardware, usable[hardware])
        chosen.append((job.arrival_s + replay.runtime_s, rank, replay))
    chosen.sort(key=lambda item: (item[0], item[1]))
    if len(chosen) < count:
        raise ValueError(
            f"trace {trace.name!r} has {len(chosen)} replayable completed jobs, {count} needed"
        )
    return [r for _, _, r in chosen[:count]], left_out


def _events(replay: ReplayJob) -> list[tuple[str, Any]]:
    job = replay.job
    submitted_at = ORIGIN + timedelta(seconds=job.arrival_s)
    done_at = submitted_at + timedelta(seconds=replay.runtime_s)
    submission = wire_submission(job, submitted_at, source="warmrestart")
    audit = DecisionAudit(
        occurred_at=submitted_at, source="warmrestart", decision_id=f"d-{replay.task_id}",
        stimulus_id=f"s-{replay.task_id}", task_id=replay.task_id, attempt=1,
        policy="replay", policy_version="1", model_version="trace", decided_at_s=job.arrival_s,
        chosen_node_id=f"{replay.hardware}-0", chosen_hardware=replay.hardware,
        predicted_runtime_s=replay.runtime_s, reason="warm-restart replay",
    )  # fmt: skip
    completed = TaskCompleted(
        occurred_at=done_at, source="warmrestart", task_id=replay.task_id, attempt=1,
        node_id=f"{replay.hardware}-0", runtime_s=replay.runtime_s,
    )  # fmt: skip
    return [
        (topics.TASKS_SUBMITTED, submission),
        (topics.DECISIONS, audit),
        (topics.TASK_EVENTS, completed),
    ]


def _publish(config: dict[str, Any], jobs: list[ReplayJob]) -> None:
    from confluent_kafka import Producer

    producer = Producer({**config, "linger.ms": 5})
    for replay in jobs:
        for topic, event in _events(replay):
            producer.produce(
                topic,
                key=replay.task_id.encode(),
                value=codec.encode(event),
                headers=[("type", event.type.encode())],
            )
            producer.poll(0)
    left = producer.flush(60)
    if left:
        raise RuntimeError(f"warm-restart: {left} events not delivered to the broker")


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.loads(answer.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _wait(what: str, probe: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"warm-restart: timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.25)


class _Processor:
    """``streamsched processor`` as a subprocess (output to a log file)."""

    def __init__(self, servers: str, *, restore: bool, log: Any, timeout_s: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "streamsched.cli", "processor", "--web-port",
                str(self.port), "--app-id", APP_ID, "--loglevel", "warning",
                "--checkpoint-every", "50"]  # fmt: skip
        if not restore:
            argv.append("--no-restore")
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": servers}
        self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        _wait("the processor's /models view", self.models, timeout_s)

    def models(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"warm-restart: processor exited with {self.proc.returncode}")
        view: dict[str, Any] | None = _get(f"{self.url}/models")
        return view

    def stop(self, kill: bool) -> None:
        if kill:
            self.proc.send_signal(signal.SIGKILL)
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _phase(
    proc: _Processor, config: dict[str, Any], jobs: list[ReplayJob], timeout_s: float
) -> tuple[PhaseErrors, dict[str, Any]]:
    """Publish ``jobs``; wait until the processor learned each of them; their errors."""
    wanted = {r.task_id for r in jobs}
    _publish(config, jobs)

    def learned_all() -> dict[str, Any] | None:
        view = proc.models()
        if view is None:
            return None
        seen = {e["task_id"] for e in view["ring"]}
        return view if wanted <= seen else None

    view = _wait(f"{len(jobs)} completions to be learned", learned_all, timeout_s)
    entries = [(e["predicted_s"], e["actual_s"]) for e in view["ring"] if e["task_id"] in wanted]
    return PhaseErrors.of(entries), view


def _run_mode(
    mode: str, jobs: list[ReplayJob], per_phase: int, kill: bool, timeout_s: float, log: Any
) -> dict[str, Any]:
    started = time.monotonic()
    with _Broker() as servers:
        config = client_config(servers)
        first = _Processor(servers, restore=True, log=log, timeout_s=timeout_s)
        try:
            before, view = _phase(first, config, jobs[:per_phase], timeout_s)
            if kill:  # only after the periodic checkpoint of the last completion
                _wait(
                    "the last checkpoint",
                    lambda: (
                        (
                            (v := first.models())
                            and not any(m["dirty"] for m in v["models"].values())
                        )
                        or None
                    ),
                    timeout_s,
                )
        finally:
            first.stop(kill)
        second = _Processor(servers, restore=mode == "warm", log=log, timeout_s=timeout_s)
        try:
            restored = second.models() or {}
            after, _ = _phase(second, config, jobs[per_phase : 2 * per_phase], timeout_s)
        finally:
            second.stop(kill=False)
    runtime = restored.get("models", {}).get("river-linear+drift", {})
    return {
        "before": asdict(before),
        "after": asdict(after),
        "restored_from": runtime.get("restored_from"),
        "model_version_before_stop": view["models"]["river-linear+drift"]["model_version"],
        "wall_s": time.monotonic() - started,
    }


class _Broker:
    def __enter__(self) -> str:
        self.broker = EmbeddedBroker()
        return self.broker.start()

    def __exit__(self, *exc: object) -> None:
        self.broker.stop()


def _continuous(jobs: list[ReplayJob], per_phase: int) -> dict[str, Any]:
    hub = ModelHub()
    for replay in jobs[: 2 * per_phase]:
        hub.learn(replay.task_id, replay.job.spec, replay.hardware, replay.runtime_s)
    ring = [(e.predicted_s, e.actual_s) for e in hub.ring]
    return {
        "before": asdict(PhaseErrors.of(ring[:per_phase])),
        "after": asdict(PhaseErrors.of(ring[per_phase : 2 * per_phase])),
        "restored_from": "no restart (in-process ModelHub)",
    }


def run_warm_restart(
    trace: Trace,
    *,
    per_phase: int = 500,
    modes: tuple[str, ...] = ("warm", "cold"),
    kill: bool = False,
    timeout_s: float = 300.0,
    log_path: str = os.devnull,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the proof (see the module docstring); ``{mode: {before, after, ...}, "meta"}``.

    Raises ValueError for a trace with too few replayable jobs or an unknown mode,
    TimeoutError if the processor does not keep up within ``timeout_s`` per step."""
    unknown = set(modes) - {"warm", "cold"}
    if unknown or per_phase < 1:
        raise ValueError(
            f"modes must be warm and/or cold, per_phase >= 1; got {modes}, {per_phase}"
        )
    jobs, left_out = completion_order(replayable(trace), 2 * per_phase)
    result: dict[str, Any] = {"continuous": _continuous(jobs, per_phase)}
    with open(log_path, "a") as log:
        for mode in modes:
            progress(f"{mode}: {2 * per_phase} completions, restart after {per_phase}")
            result[mode] = _run_mode(mode, jobs, per_phase, kill, timeout_s, log)
    result["meta"] = {
        "trace": trace.name,
        "completions": 2 * per_phase,
        "per_phase": per_phase,
        "left_out_jobs": left_out,
        "restart": "SIGKILL after the checkpoint" if kill else "SIGTERM (checkpoint on stop)",
        "order": "completion order (arrival + true runtime on the scored hardware class)",
        "error": "processor's prequential error: predicted just before learning each completion",
    }
    return result
