"""Tenants: which tenant a record or a request speaks for, and who may see what.

Kafka does not tell a consumer who produced a record, so the tenant travels with it: the
record header :data:`TENANT_HEADER` (``streamsched-tenant``) names the tenant the producer
speaks for. The streamsched client sets it from its authenticated SASL principal when
SASL is configured, else from its configured tenant or the event's own. Consumers check
it against the tenant in the body with :func:`resolve_tenant`; a disagreement is bad
input (dead-letter it with the error's field and reason). A header is only as
trustworthy as the producer: on Apache Kafka, ACLs make it binding (see docs/security.md).

The status view of the processor takes the requesting tenant from the HTTP header
:data:`HTTP_TENANT_HEADER`; :func:`access_refusal` decides, and a refusal is audited on
``sched.decisions`` as an :class:`AccessRefused` record.

Pure: no I/O, no clock, no environment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from pydantic import Field, TypeAdapter, ValidationError

from .envelope import EventEnvelope
from .errors import InvalidEvent
from .types import Identifier, Text

#: Record header naming the tenant the producer speaks for (UTF-8 value).
TENANT_HEADER: Final = "streamsched-tenant"
#: HTTP request header naming the tenant a status-view request speaks for.
HTTP_TENANT_HEADER: Final = "X-Streamsched-Tenant"
#: The ``field`` of the :class:`~.errors.InvalidEvent` raised for a bad header.
HEADER_FIELD: Final = f"headers.{TENANT_HEADER}"
#: The ``field`` of the :class:`~.errors.InvalidEvent` raised for a mismatch.
TENANT_FIELD: Final = "tenant"

#: A header list as confluent-kafka and faust give it (value bytes, str or None), or a
#: mapping of header names to values.
Headers = Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None

_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


def check_tenant(value: str, where: str) -> str:
    """``value`` if it is a valid tenant (an identifier: 1..256 characters, no
    whitespace); else ValueError naming ``where``."""
    try:
        return _IDENTIFIER.validate_python(value)
    except ValidationError:
        raise ValueError(
            f"{where}: {value[:80]!r} is not a valid tenant (1..256 characters without whitespace)"
        ) from None


def header_tenant(headers: Headers) -> str | None:
    """The tenant named by the :data:`TENANT_HEADER` header(s), or None if there is none.

    Raises :class:`InvalidEvent` (field :data:`HEADER_FIELD`) when a value is not UTF-8,
    not a valid tenant, or when the header is repeated with different values."""
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    found: str | None = None
    for name, raw in items:
        if name.lower() != TENANT_HEADER:
            continue
        if raw is None:
            raise InvalidEvent(None, HEADER_FIELD, "the header has no value")
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            value = check_tenant(text, f"header {TENANT_HEADER}")
        except UnicodeDecodeError:
            raise InvalidEvent(None, HEADER_FIELD, "the value is not UTF-8") from None
        except ValueError as exc:
            raise InvalidEvent(None, HEADER_FIELD, str(exc)) from None
        if found is not None and found != value:
            raise InvalidEvent(
                None, HEADER_FIELD, f"repeated with different tenants {found!r} and {value!r}"
            )
        found = value
    return found


def resolve_tenant(body_tenant: str | None, headers: Headers) -> str | None:
    """The tenant a record speaks for.

    - header and body agree, or only one of them names a tenant: that tenant;
    - neither names one: None (an event that carries no tenant, e.g. a heartbeat);
    - they disagree: :class:`InvalidEvent` with field ``tenant`` and a reason naming
      both, e.g. ``body tenant 'ads' differs from the streamsched-tenant header
      'vision'``;
    - a malformed header: :class:`InvalidEvent` with field :data:`HEADER_FIELD`.

    ``body_tenant`` is the event's own claim (see :func:`body_tenant_of`)."""
    claimed = header_tenant(headers)
    if claimed is None or body_tenant is None or claimed == body_tenant:
        return claimed if claimed is not None else body_tenant
    raise InvalidEvent(
        None,
        TENANT_FIELD,
        f"body tenant {body_tenant!r} differs from the {TENANT_HEADER} header {claimed!r} "
        "(the producer may only speak for its own tenant)",
    )


def body_tenant_of(event: Any) -> str | None:
    """The tenant an event claims in its body: a submission's ``tenant``, a cancel's
    ``requested_by``; None for events that name no tenant."""
    event_type = getattr(event, "type", None)
    if event_type == "task.submitted":
        return str(event.tenant)
    if event_type == "command.cancel_task":
        return str(event.requested_by)
    return None


def tenant_headers(tenant: str | None) -> list[tuple[str, bytes]]:
    """The record headers that carry ``tenant`` (none for None)."""
    return [] if tenant is None else [(TENANT_HEADER, tenant.encode("utf-8"))]


# ---------------------------------------------------------------------- the status view

Action = Literal["query", "list", "predict"]


def access_refusal(requester: str | None, owner: str | None) -> str | None:
    """Why ``requester`` may not see a task owned by ``owner``, or None if it may.

    ``requester`` None is operator mode (the view runs without tenant checks: everything
    is visible). A task whose owner is not known yet (its submission not seen) is not
    refused here; the view answers it as not known to that tenant."""
    if requester is None or owner is None or requester == owner:
        return None
    return f"tenant {requester!r} may not see a task of another tenant"


class AccessRefused(EventEnvelope):
    """A request was refused because it reached for another tenant's data. Published by
    the processor's status view to ``sched.decisions``, keyed by task id (or by the
    requester when no task was named). ``requested_by`` is the tenant the request spoke
    for; ``action`` what it asked (``query`` a task, ``list`` another tenant's tasks,
    ``predict`` a task's runtime); ``task_id`` the task, ``tenant`` the tenant whose data
    it reached for; ``reason`` the refusal as the requester saw it."""

    type: Literal["access.refused"] = "access.refused"
    requested_by: Identifier = Field(description="The tenant the request spoke for.")
    action: Action
    task_id: Identifier | None = None
    tenant: Identifier = Field(description="The tenant whose data was asked for.")
    reason: Text
