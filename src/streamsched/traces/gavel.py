"""Loader for Gavel's Philly-derived traces (``*.trace`` + ``simulation_throughputs.json``).

A trace line is one job: 7 tab-separated fields, of which the loader uses job_type (1),
total_steps (5), arrival_time_s (6) and scale_factor (7, the GPUs the job uses). Its true
runtime on hardware ``hw`` is ``total_steps / throughput``, with the isolated throughput
``data[hw][str((job_type, scale_factor))]["null"]`` in steps/s. Co-location entries and the
``*_unconsolidated`` sections are ignored.

Modelling choices:

* Every job is ``preemptible``: Gavel's workloads checkpoint and resume (Gavel's own
  scheduler preempts them every round), so preempting one loses no finished work.
* A throughput of 0, or no entry for a class, makes that class infeasible: it is left out of
  ``true_runtime_s`` and the job's ``allowed_hardware`` lists the feasible classes (empty,
  i.e. unconstrained, when every class of the throughputs file is feasible).
* Jobs without a throughput entry for their (job_type, scale_factor) or with no feasible
  class are not loaded; they are listed in ``Trace.skipped`` with the reason. In Gavel's
  ``simulation_throughputs.json`` that is every scale factor above 8, and A3C, CycleGAN and
  Recommendation at more than one GPU (measured at one GPU only).
* ``wide_jobs="clamp"`` (the default) keeps every job it can: a job wider than
  ``max_gpus_per_job`` (the largest node), or whose own width has no throughput data, runs
  at the widest power-of-two width <= both that has data. This is an extrapolation: the job
  keeps its total steps and runs at the measured throughput of the narrower width. With
  ``wide_jobs="reject"`` such jobs are skipped instead. Either way the notes count them.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TypeAlias, TypeGuard

from streamsched.scheduler.model import GPU_MILLI, TaskSpec
from streamsched.scheduler.trace import SkippedJob, Trace, TraceJob
from streamsched.schemas.hardware import normalize_hardware

from .errors import TraceFormatError, parse_float, parse_int, read_text

__all__ = ["ThroughputTable", "load_gavel", "load_throughputs"]

#: (job_type, scale_factor) -> {hardware class: isolated throughput in steps/s, > 0 only}.
#: A key with an empty map has entries, all 0: the job cannot run anywhere.
ThroughputTable: TypeAlias = Mapping[tuple[str, int], Mapping[str, float]]

CPU_MILLI_PER_GPU = 4000
MEMORY_MIB_PER_GPU = 16384
_FIELDS = 7


def load_gavel(
    trace_path: str | os.PathLike[str],
    throughputs_path: str | os.PathLike[str],
    *,
    wide_jobs: str = "clamp",
    max_gpus_per_job: int | None = None,
) -> Trace:
    """Read a Gavel ``.trace`` file into a :class:`Trace` (see the module docstring).

    Raises :class:`TraceFormatError` naming file and line for malformed input, ValueError
    for bad arguments.
    """
    if wide_jobs not in ("reject", "clamp"):
        raise ValueError(f"wide_jobs must be 'reject' or 'clamp', got {wide_jobs!r}")
    if max_gpus_per_job is not None and max_gpus_per_job < 1:
        raise ValueError(f"max_gpus_per_job must be >= 1, got {max_gpus_per_job}")
    path = Path(trace_path)
    tput_name = Path(throughputs_path).name
    table = load_throughputs(throughputs_path)
    all_classes = frozenset(hw for per_hw in table.values() for hw in per_hw)
    widths: dict[str, list[int]] = {}
    for type_name, width in sorted(k for k, per_hw in table.items() if per_hw):
        widths.setdefault(type_name, []).append(width)

    jobs: list[TraceJob] = []
    skipped: list[SkippedJob] = []
    skip_counts: Counter[tuple[str, int]] = Counter()  # (reason template, GPUs)
    clamp_counts: Counter[tuple[int, int]] = Counter()
    constrained = 0
    for lineno, job_type, steps, arrival, scale in _read_lines(path):
        ref = f"{path.name}:{lineno}"
        width = scale
        largest = max_gpus_per_job or scale
        too_wide = scale > largest
        if too_wide and wide_jobs == "reject":
            reason = f"needs {scale} GPUs; the largest node has {max_gpus_per_job}"
            skipped.append(SkippedJob(ref, reason))
            skip_counts[("wider than the largest node ({} GPUs)", largest)] += 1
            continue
        if wide_jobs == "clamp" and (too_wide or (job_type, scale) not in table):
            clamped = _clamp_width(table, job_type, min(scale, largest))
            if clamped is None and too_wide:
                reason = (
                    f"needs {scale} GPUs; the largest node has {max_gpus_per_job} and no "
                    f"narrower width has throughput data in {tput_name}"
                )
                skipped.append(SkippedJob(ref, reason))
                skip_counts[("wider than the largest node ({} GPUs)", largest)] += 1
                continue
            if clamped is not None:
                width = clamped
                clamp_counts[(scale, width)] += 1
        key = (job_type, width)
        per_hw = table.get(key)
        if not per_hw:
            if per_hw is None:
                reason = f"no throughput data for {key!r} in {tput_name}"
                if widths.get(job_type):
                    reason += f" (only scale factors {widths[job_type]} have data)"
                skip_counts[("no throughput data (scale factor {})", width)] += 1
            else:
                reason = f"no feasible hardware for {key!r}: throughput 0 everywhere in {tput_name}"
                skip_counts[("no feasible hardware", 0)] += 1
            skipped.append(SkippedJob(ref, reason))
            continue
        # The classes with a measured throughput are the only ones a job may use: on a
        # cluster with other classes too, nothing says how fast it would run there.
        allowed = frozenset(per_hw)
        constrained += not per_hw.keys() >= all_classes
        spec = TaskSpec(
            task_id=f"{path.stem}-{lineno:05d}",
            task_type=job_type,
            cpu_milli=CPU_MILLI_PER_GPU * width,
            memory_mib=MEMORY_MIB_PER_GPU * width,
            gpus=width,
            gpu_milli=GPU_MILLI,
            allowed_hardware=allowed,
            preemptible=True,
            declared_work=float(steps),
        )
        runtimes = {hw: steps / per_hw[hw] for hw in sorted(per_hw)}
        jobs.append(TraceJob(spec, arrival, runtimes, source_ref=ref))

    notes = [f"{path.name}: loaded {len(jobs)} of {len(jobs) + len(skipped)} jobs"]
    notes += [f"skipped {n} jobs: {why.format(k)}" for (why, k), n in sorted(skip_counts.items())]
    notes += [
        f"clamped {n} jobs from {wide} to {narrow} GPUs (runtime extrapolated: same total "
        f"steps at the measured {narrow}-GPU throughput)"
        for (wide, narrow), n in sorted(clamp_counts.items())
    ]
    if constrained:
        notes.append(f"{constrained} jobs restricted to the hardware classes they can run on")
    return Trace(path.stem, tuple(jobs), skipped=tuple(skipped), notes=tuple(notes))


def _read_lines(path: Path) -> list[tuple[int, str, int, float, int]]:
    """(line number, job_type, total_steps, arrival_time_s, scale_factor) per non-blank line."""
    text = read_text(path)
    rows = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != _FIELDS:
            raise TraceFormatError(
                path, lineno, f"expected {_FIELDS} tab-separated fields, got {len(fields)}"
            )
        job_type = fields[0].strip()
        if not job_type:
            raise TraceFormatError(path, lineno, "job_type (field 1) is empty")
        steps = parse_int(fields[4], path=path, line=lineno, field="total_steps", minimum=1)
        arrival = parse_float(fields[5], path=path, line=lineno, field="arrival_time_s")
        scale = parse_int(fields[6], path=path, line=lineno, field="scale_factor", minimum=1)
        rows.append((lineno, job_type, steps, arrival, scale))
    return rows


def _clamp_width(table: ThroughputTable, job_type: str, limit: int) -> int | None:
    """The largest power of two <= ``limit`` at which ``job_type`` can run somewhere."""
    width = 1 << (limit.bit_length() - 1)
    while width >= 1:
        if table.get((job_type, width)):
            return width
        width //= 2
    return None


def load_throughputs(path: str | os.PathLike[str]) -> ThroughputTable:
    """The isolated-throughput table of a ``simulation_throughputs.json``-format file.

    Parsed once per file version (cached on resolved path, mtime and size).
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _parse_throughputs(resolved, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _parse_throughputs(path: Path, mtime_ns: int, size: int) -> ThroughputTable:
    del mtime_ns, size  # cache key only
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceFormatError(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise TraceFormatError(path, 1, "expected a JSON object keyed by hardware (k80, ...)")
    table: dict[tuple[str, int], dict[str, float]] = {}
    for hw_key, entries in data.items():
        if hw_key.endswith("_unconsolidated"):
            continue
        section = text.find(json.dumps(hw_key))
        line = _line_at(text, section)
        try:
            hw = normalize_hardware(hw_key)
        except ValueError as exc:
            raise TraceFormatError(path, line, f"bad hardware name: {exc}") from None
        if not isinstance(entries, dict):
            raise TraceFormatError(path, line, f"{hw_key!r} must map job keys to entries")
        for key, entry in entries.items():
            job_key = _parse_key(key)
            tput = entry.get("null") if isinstance(entry, dict) else None
            if job_key is None or not _is_throughput(tput):
                found = re.compile(re.escape(json.dumps(key)) + r"\s*:\s*\{").search(text, section)
                problem = (
                    "is not a ('job type', scale_factor) key"
                    if job_key is None
                    else f'needs a "null" throughput that is a number >= 0, got {tput!r}'
                )
                where = _line_at(text, found.start()) if found else line
                raise TraceFormatError(path, where, f"{hw_key}: entry {key!r} {problem}")
            per_hw = table.setdefault(job_key, {})
            if tput > 0:
                per_hw[hw] = float(tput)
    return table


def _parse_key(key: str) -> tuple[str, int] | None:
    try:
        value = ast.literal_eval(key)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and type(value[1]) is int
        and value[1] >= 1
    ):
        return (value[0], value[1])
    return None


def _is_throughput(value: object) -> TypeGuard[float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _line_at(text: str, offset: int) -> int | None:
    return text.count("\n", 0, offset) + 1 if offset >= 0 else None
