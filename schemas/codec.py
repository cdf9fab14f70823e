"""Serialisation of events: the one place that turns events into bytes and back.

>>> from datetime import datetime, timezone
>>> ev = TaskStarted(task_id="t1", attempt=1, node_id="n1", source="executor/n1",
...                  occurred_at=datetime(2025, 1, 1, tzinfo=timezone.utc), event_id="e1")
>>> encode(ev)[:40]
b'{"type":"task.started","schema_version":'
>>> decode(encode(ev)) == ev
True
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, TypeAlias, TypeVar

from pydantic import Field, TypeAdapter, ValidationError

from .commands import CancelTask, PolicyUpdate, StopAttempt
from .data import DataIngested
from .decisions import (
    Assignment,
    BreakerChanged,
    CancelOutcome,
    DecisionAudit,
    PolicyChanged,
    TaskEnded,
    TaskRequeued,
)
from .envelope import (
    SUPPORTED_SCHEMA_VERSIONS,
    WIRE_REQUIRED_FIELDS,
    EventEnvelope,
    check_schema_version,
    event_type_of,
)
from .errors import EVENT_FIELD, PAYLOAD_FIELD, FieldError, InvalidEvent, field_errors
from .lifecycle import (
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskLost,
    TaskPreempted,
    TaskProgress,
    TaskStarted,
)
from .models import ModelDrift
from .nodes import NodeHeartbeat
from .tasks import TaskRejected, TaskSubmitted
from .tenancy import AccessRefused
from .types import CONTEXT_KNOWN_HARDWARE, CONTEXT_NOW

#: Any event streamsched carries.
Event: TypeAlias = (
    TaskSubmitted
    | TaskRejected
    | DataIngested
    | NodeHeartbeat
    | TaskStarted
    | TaskProgress
    | TaskCompleted
    | TaskFailed
    | TaskPreempted
    | TaskCancelled
    | TaskLost
    | Assignment
    | DecisionAudit
    | TaskEnded
    | TaskRequeued
    | CancelOutcome
    | PolicyChanged
    | BreakerChanged
    | AccessRefused
    | CancelTask
    | PolicyUpdate
    | StopAttempt
    | ModelDrift
)

_EVENT_CLASSES: tuple[type[EventEnvelope], ...] = Event.__args__

#: Event type literal -> event model, e.g. ``"task.submitted" -> TaskSubmitted``.
EVENT_TYPES: Final[dict[str, type[EventEnvelope]]] = {
    event_type_of(cls): cls for cls in _EVENT_CLASSES
}

#: Default largest accepted payload: 512 KiB. Half of Kafka's usual record limit (about
#: 1 MB), so that what the scheduler derives from an event (an assignment copies a
#: submission's command and environment) still fits in one record.
DEFAULT_MAX_BYTES = 524_288

E = TypeVar("E", bound=EventEnvelope)

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Annotated[Event, Field(discriminator="type")])


def encode(event: EventEnvelope) -> bytes:
    """The event as compact UTF-8 JSON."""
    return event.model_dump_json().encode("utf-8")


def decode(
    raw: bytes | str,
    *,
    now: datetime | None = None,
    known_hardware: Iterable[str] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Event:
    """Parse and validate any event, choosing the model by its ``type``.

    ``now`` (default: the current UTC time) is the reference for "deadline in the past";
    ``known_hardware`` adds hardware classes to the built-in ones. Raises
    :class:`InvalidEvent` naming the field and the reason.
    """
    data = _parse(raw, max_bytes)
    return _validate(_EVENT_ADAPTER, data, now, known_hardware, union=True)


def decode_as(
    model: type[E],
    raw: bytes | str,
    *,
    now: datetime | None = None,
    known_hardware: Iterable[str] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> E:
    """Like :func:`decode`, but the payload must be a ``model`` event."""
    return validate_as(model, _parse(raw, max_bytes), now=now, known_hardware=known_hardware)


def validate_as(
    model: type[E],
    data: Mapping[str, Any],
    *,
    now: datetime | None = None,
    known_hardware: Iterable[str] = (),
) -> E:
    """Validate an already-parsed JSON object (e.g. embedded in a trace line) as ``model``."""
    return _validate(_adapter(model), data, now, known_hardware, union=False)


def _adapter(model: type[E]) -> TypeAdapter[E]:
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(model)
    return adapter


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidEvent(None, PAYLOAD_FIELD, f"duplicate key {key!r} in a JSON object")
        result[key] = value
    return result


def _parse(raw: bytes | str, max_bytes: int) -> dict[str, Any]:
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8"))
    if size > max_bytes:
        reason = f"payload is {size} bytes, over the limit of {max_bytes} bytes"
        raise InvalidEvent(None, PAYLOAD_FIELD, reason)
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise InvalidEvent(
            None, PAYLOAD_FIELD, f"not UTF-8: {exc.reason} at byte {exc.start}"
        ) from None
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        raise InvalidEvent(None, PAYLOAD_FIELD, reason) from None
    except InvalidEvent:
        raise
    except RecursionError:
        raise InvalidEvent(None, PAYLOAD_FIELD, "JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer over Python's digit limit
        raise InvalidEvent(None, PAYLOAD_FIELD, f"not acceptable JSON: {exc}") from None
    if not isinstance(data, dict):
        reason = f"expected a JSON object, got {type(data).__name__}"
        raise InvalidEvent(None, PAYLOAD_FIELD, reason)
    return data


def _validate(
    adapter: TypeAdapter[E],
    data: Mapping[str, Any],
    now: datetime | None,
    known_hardware: Iterable[str],
    *,
    union: bool,
) -> E:
    if "type" not in data:
        raise InvalidEvent(None, "type", "Field required (the event type, e.g. 'task.submitted')")
    type_value = data["type"]
    event_type = type_value if isinstance(type_value, str) and type_value in EVENT_TYPES else None
    if event_type is not None:
        _check_envelope_first(event_type, data)
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    context = {CONTEXT_NOW: now, CONTEXT_KNOWN_HARDWARE: frozenset(known_hardware)}
    try:
        return adapter.validate_python(data, context=context)
    except ValidationError as exc:
        errors = field_errors(exc, skip=1 if union and event_type else 0)
        raise InvalidEvent.from_errors(event_type, _name_type_field(errors)) from None


def _check_envelope_first(event_type: str, data: Mapping[str, Any]) -> None:
    """The envelope fields Python defaults must be on the wire; an unknown schema version is
    reported before any field error (a newer schema's fields would look like mistakes)."""
    for name in WIRE_REQUIRED_FIELDS:
        if name not in data:
            current = max(SUPPORTED_SCHEMA_VERSIONS)
            hint = f"current version is {current}" if name == "schema_version" else "dedup key"
            raise InvalidEvent(event_type, name, f"Field required on the wire ({hint})")
    version = data["schema_version"]
    if isinstance(version, int) and not isinstance(version, bool):
        try:
            check_schema_version(version)
        except ValueError as exc:  # PydanticCustomError is a ValueError
            raise InvalidEvent(event_type, "schema_version", str(exc)) from None


def _name_type_field(errors: tuple[FieldError, ...]) -> tuple[FieldError, ...]:
    """Union tag errors have an empty location; they are about the ``type`` field."""
    return tuple(FieldError("type", e.reason) if e.field == EVENT_FIELD else e for e in errors)
