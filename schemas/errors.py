"""The error every decoding failure raises: :class:`InvalidEvent`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

#: Pseudo field naming the payload as a whole (size, encoding, JSON syntax).
PAYLOAD_FIELD = "(payload)"
#: Pseudo field naming the event as a whole (a rule across several fields).
EVENT_FIELD = "(event)"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem: the dotted path of the field (``resources.cpu_milli``) and why."""

    field: str
    reason: str


def field_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as a dotted path; the empty location is ``(event)``."""
    return ".".join(str(part) for part in loc) or EVENT_FIELD


def field_errors(exc: ValidationError, *, skip: int = 0) -> tuple[FieldError, ...]:
    """The errors of ``exc`` as :class:`FieldError` s, dropping ``skip`` leading location
    parts (the tag a discriminated union puts first)."""
    return tuple(
        FieldError(field_path(tuple(err["loc"])[skip:]), err["msg"]) for err in exc.errors()
    )


class InvalidEvent(ValueError):  # noqa: N818 (the name is part of the public API)
    """An event that cannot be accepted.

    ``field`` is the dotted path of the (first) offending field, or ``(payload)`` when the
    bytes themselves are wrong; ``reason`` says why; ``errors`` lists every problem found;
    ``event_type`` is the event's type literal when it could be read.
    """

    def __init__(
        self,
        event_type: str | None,
        field: str,
        reason: str,
        errors: tuple[FieldError, ...] = (),
    ) -> None:
        self.event_type = event_type
        self.field = field
        self.reason = reason
        self.errors = errors or (FieldError(field, reason),)
        super().__init__(event_type, field, reason, self.errors)

    @classmethod
    def from_errors(cls, event_type: str | None, errors: tuple[FieldError, ...]) -> InvalidEvent:
        """Build from a non-empty list of field errors; the first one is reported."""
        first = errors[0]
        return cls(event_type, first.field, first.reason, errors)

    def __str__(self) -> str:
        what = f"invalid {self.event_type} event" if self.event_type else "invalid event"
        message = f"{what}: field {self.field!r}: {self.reason}"
        more = len(self.errors) - 1
        if more > 0:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        return message
