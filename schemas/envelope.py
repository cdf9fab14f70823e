"""The envelope every event carries, and the base class of all wire models.

Every event has a ``type`` discriminator (``"task.submitted"``, ...), a ``schema_version``,
a unique ``event_id`` (consumers deduplicate redeliveries on it), the aware time
``occurred_at`` at which the producer observed what the event reports, and the ``source``
that produced it (a component or client name such as ``"executor/node-7"``).
"""

from __future__ import annotations

import uuid

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, field_validator

from .types import Identifier, fail

#: The schema version this build writes.
SCHEMA_VERSION = 1
#: The schema versions this build reads.
SUPPORTED_SCHEMA_VERSIONS: frozenset[int] = frozenset({1})
#: Envelope fields a payload must carry on the wire even though Python constructors default
#: them: a decoder that made up an ``event_id`` would defeat deduplication of redeliveries.
WIRE_REQUIRED_FIELDS = ("type", "schema_version", "event_id")


def new_event_id() -> str:
    """A fresh random event id (uuid4, 32 hex digits)."""
    return uuid.uuid4().hex


def check_schema_version(version: int) -> int:
    """Return ``version`` if this build reads it; otherwise fail with a clear message."""
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        readable = ", ".join(str(v) for v in sorted(SUPPORTED_SCHEMA_VERSIONS))
        fail(
            "unsupported_schema_version",
            f"unsupported schema version {version} (this build reads version {readable}; "
            "upgrade the consumer or have the producer write a supported version)",
        )
    return version


class WireModel(BaseModel):
    """Base of every wire model: immutable, unknown fields rejected, floats finite."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class EventEnvelope(WireModel):
    """Fields common to every event. Concrete events narrow ``type`` to one literal."""

    type: str = Field(description="Event type discriminator, e.g. 'task.submitted'.")
    schema_version: StrictInt = Field(
        default=SCHEMA_VERSION, description="Version of the event schema (currently 1)."
    )
    event_id: Identifier = Field(
        default_factory=new_event_id, description="Unique id of this event (dedup key)."
    )
    occurred_at: AwareDatetime = Field(
        description="When the reported fact happened (RFC 3339 with a UTC offset)."
    )
    source: Identifier = Field(description="Who produced the event, e.g. 'cli', 'executor/n7'.")

    @field_validator("schema_version")
    @classmethod
    def _supported_version(cls, version: int) -> int:
        return check_schema_version(version)


def event_type_of(model: type[EventEnvelope]) -> str:
    """The ``type`` literal of an event class (the default of its ``type`` field)."""
    default = model.model_fields["type"].default
    if not isinstance(default, str):
        raise TypeError(f"{model.__name__} does not define a 'type' literal")
    return default
