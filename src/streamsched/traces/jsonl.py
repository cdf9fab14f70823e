"""Native JSONL traces: one submission per line, with its arrival and true runtimes.

Each non-blank line that does not start with ``#`` is a JSON object::

    {"at_s": 12.5, "runtime_s": {"gpu-v100": 300.0, "gpu-p100": 520.0},
     "deadline_s": 900.0, "event": {<a task.submitted wire event>}}

- ``at_s``: arrival, seconds since the trace starts (>= 0);
- ``runtime_s``: true runtime of the whole task on each hardware class it can run on
  (> 0); a class left out is infeasible for the task. The simulator uses it; policies
  never see it;
- ``deadline_s`` (optional): the deadline in seconds since the trace starts, after
  ``at_s``. The event's own ``deadline`` (an absolute time) must be absent in traces: a
  replayed trace has no wall-clock origin;
- ``event``: a complete ``task.submitted`` event as producers write it (see
  ``export_json_schemas``), validated by the same decoder as live traffic.

Any malformed line raises :class:`~streamsched.traces.errors.TraceFormatError` naming the
file and line.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, ValidationError

from streamsched.scheduler.convert import task_spec_from_event
from streamsched.scheduler.trace import Trace, TraceJob
from streamsched.schemas.codec import validate_as
from streamsched.schemas.errors import InvalidEvent, field_errors
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.schemas.types import CONTEXT_KNOWN_HARDWARE, HardwareClass

from .errors import TraceFormatError

#: The ``now`` trace events are validated against: no absolute deadline check applies.
TRACE_EPOCH = datetime.fromtimestamp(0, UTC)


class _TraceLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    at_s: StrictFloat = Field(ge=0)
    runtime_s: dict[HardwareClass, Annotated[StrictFloat, Field(gt=0)]] = Field(min_length=1)
    deadline_s: StrictFloat | None = None
    event: dict[str, Any]


def load_jsonl_trace(path: Path, *, known_hardware: Iterable[str] = ()) -> Trace:
    """Read a native JSONL trace (format in the module docstring) into a :class:`Trace`.

    ``known_hardware`` adds hardware classes to the built-in ones. Jobs are ordered by
    arrival (file order among equal arrivals); ``source_ref`` is ``FILE:LINE``.
    """
    known = frozenset(known_hardware)
    jobs: list[TraceJob] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise TraceFormatError(path, number, "not UTF-8 text") from None
        if not text or text.startswith("#"):
            continue
        job = _parse_line(path, number, text, known)
        task_id = job.spec.task_id
        if task_id in first_line:
            message = f"duplicate task_id {task_id!r} (first on line {first_line[task_id]})"
            raise TraceFormatError(path, number, message)
        first_line[task_id] = number
        jobs.append(job)
    for job in jobs:
        missing = [dep for dep in job.spec.depends_on if dep not in first_line]
        if missing:
            message = f"depends_on names tasks not in the trace: {', '.join(missing)}"
            raise TraceFormatError(path, first_line[job.spec.task_id], message)
    jobs.sort(key=lambda job: job.arrival_s)
    notes = (f"{path.name}: loaded {len(jobs)} jobs",)
    return Trace(path.stem, tuple(jobs), notes=notes)


def _parse_line(path: Path, number: int, text: str, known: frozenset[str]) -> TraceJob:
    def error(message: str) -> TraceFormatError:
        return TraceFormatError(path, number, message)

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise error(f"expected a JSON object, got {type(obj).__name__}")
    try:
        line = _TraceLine.model_validate(obj, context={CONTEXT_KNOWN_HARDWARE: known})
    except ValidationError as exc:
        first = field_errors(exc)[0]
        raise error(f"field {first.field!r}: {first.reason}") from None
    try:
        event = validate_as(TaskSubmitted, line.event, now=TRACE_EPOCH, known_hardware=known)
    except InvalidEvent as exc:
        raise error(f"in 'event': {exc}") from None
    return _job(line, event, f"{path.name}:{number}", error)


def _job(
    line: _TraceLine,
    event: TaskSubmitted,
    ref: str,
    error: Callable[[str], TraceFormatError],
) -> TraceJob:
    if event.deadline is not None:
        raise error("event.deadline must be absent in a trace; give deadline_s instead")
    if line.deadline_s is not None and line.deadline_s <= line.at_s:
        raise error(f"deadline_s {line.deadline_s:g} is not after at_s {line.at_s:g}")
    allowed = event.resources.allowed_hardware
    if allowed and not set(allowed) & set(line.runtime_s):
        raise error(
            f"runtime_s names no hardware class the task allows (allowed_hardware: "
            f"{', '.join(allowed)}; runtime_s: {', '.join(line.runtime_s)})"
        )
    # The classes a trace gives a runtime for are the ones the task can run on.
    feasible = frozenset(line.runtime_s) & frozenset(allowed or line.runtime_s)
    spec = dataclasses.replace(
        task_spec_from_event(event), deadline_s=line.deadline_s, allowed_hardware=feasible
    )
    runtimes = MappingProxyType(dict(line.runtime_s))
    return TraceJob(spec, line.at_s, runtimes, source_ref=ref)
