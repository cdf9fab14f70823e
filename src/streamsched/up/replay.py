"""Replaying a trace into a live cluster: trace jobs as wire submissions, on a compressed
clock.

A trace job becomes a ``task.submitted`` whose fields give the scheduler exactly the
:class:`~streamsched.scheduler.model.TaskSpec` the simulator sees (checked by
:func:`wire_submission`'s round trip), plus ``STREAMSCHED_REPLAY_RUNTIMES`` in its
environment: the job's true runtime on each hardware class, which a replaying executor
sleeps instead of running a command. The scheduler never reads that variable.

Time: trace second ``t`` happens at wall time ``start + t / speedup``. The placement agent
runs its core on the same compressed clock (``--replay-start``/``--replay-speedup``), so
decisions see trace seconds.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from datetime import datetime

from streamsched.scheduler.convert import task_spec_from_event
from streamsched.scheduler.simulator import SimConfig
from streamsched.scheduler.trace import ReplayClock, Trace, TraceJob
from streamsched.schemas.tasks import DeclaredWork, Priority, TaskResources, TaskSubmitted

#: The environment variable carrying a replayed job's true runtimes (JSON object
#: {hardware class: seconds}); read by executors in replay mode only.
REPLAY_RUNTIMES_ENV = "STREAMSCHED_REPLAY_RUNTIMES"
#: Trace seconds a resumed attempt spends restoring its checkpoint (as in the simulator).
REPLAY_RESTART_OVERHEAD_ENV = "STREAMSCHED_REPLAY_RESTART_OVERHEAD_S"


def wire_submission(
    job: TraceJob,
    occurred_at: datetime,
    source: str = "up:replay",
    restart_overhead_s: float = SimConfig().restart_overhead_s,
) -> TaskSubmitted:
    """The ``task.submitted`` that replays ``job``.

    Raises ValueError when the job's spec cannot be expressed on the wire without changing
    what the scheduler sees (a deadline, governance tags, or a fractional amount of work):
    the live replay would then not be the simulated one.
    """
    spec = job.spec
    if spec.deadline_s is not None:
        raise ValueError(
            f"{spec.task_id}: trace deadlines are not replayed live (they are relative to the "
            "trace's origin, live deadlines are wall-clock times)"
        )
    steps = round(spec.declared_work)
    if steps != spec.declared_work:
        raise ValueError(f"{spec.task_id}: declared work {spec.declared_work} is not whole steps")
    runtimes = {hw: float(s) for hw, s in sorted(job.true_runtime_s.items()) if math.isfinite(s)}
    event = TaskSubmitted(
        task_id=spec.task_id,
        idempotency_key=f"replay:{spec.task_id}",
        tenant=spec.tenant,
        task_type=spec.task_type,
        declared_work=DeclaredWork(
            steps=steps if spec.declared_work > 0 else None,
            runtime_s=spec.declared_runtime_s,
            input_bytes=spec.dataset_bytes or None,
        ),
        resources=TaskResources(
            cpu_milli=spec.cpu_milli,
            memory_mib=spec.memory_mib,
            gpus=spec.gpus,
            gpu_milli=spec.gpu_milli,
            allowed_hardware=tuple(sorted(spec.allowed_hardware)),
        ),
        priority=Priority(spec.priority.value),
        preemptible=spec.preemptible,
        depends_on=spec.depends_on,
        governance=dict(spec.governance),
        max_retries=spec.max_retries,
        env={
            REPLAY_RUNTIMES_ENV: json.dumps(runtimes, separators=(",", ":")),
            REPLAY_RESTART_OVERHEAD_ENV: repr(float(restart_overhead_s)),
        },
        source=source,
        occurred_at=occurred_at,
    )
    round_trip = task_spec_from_event(event)
    if round_trip != spec:
        raise ValueError(f"{spec.task_id}: the wire form changes the task ({round_trip} != {spec})")
    return event


def speedup_for(makespan_s: float, target_wall_s: float) -> float:
    """The speed-up that replays ``makespan_s`` trace seconds in ``target_wall_s`` wall
    seconds (at least 1: a replay never runs slower than the trace)."""
    if not (math.isfinite(target_wall_s) and target_wall_s > 0):
        raise ValueError(f"target duration must be a positive number, got {target_wall_s}")
    return max(1.0, makespan_s / target_wall_s)


def task_type_slug(task_type: str) -> str:
    """A wire-safe task type: ``"LM (batch size 80)"`` -> ``"lm-batch-size-80"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", task_type.lower()).strip("-")
    return slug or "task"


def replayable(trace: Trace) -> Trace:
    """``trace`` with wire-safe task types (trace files use free text such as
    ``"LM (batch size 80)"``; the wire takes identifiers). The simulated baseline and the
    live replay both run this form, so the forecasters key on the same types. Raises
    ValueError if two distinct types collapse to one slug."""
    seen: dict[str, str] = {}
    jobs = []
    for job in trace.jobs:
        slug = task_type_slug(job.spec.task_type)
        if seen.setdefault(slug, job.spec.task_type) != job.spec.task_type:
            raise ValueError(
                f"task types {seen[slug]!r} and {job.spec.task_type!r} both become {slug!r}"
            )
        jobs.append(replace(job, spec=replace(job.spec, task_type=slug)))
    return replace(trace, jobs=tuple(jobs))


__all__ = [
    "REPLAY_RESTART_OVERHEAD_ENV",
    "REPLAY_RUNTIMES_ENV",
    "ReplayClock",
    "replayable",
    "speedup_for",
    "task_type_slug",
    "wire_submission",
]
