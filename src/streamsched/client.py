"""The Python client: submit, query, cancel and announce data from any process.

    >>> from streamsched import Client                      # doctest: +SKIP
    >>> with Client() as client:                            # doctest: +SKIP
    ...     task_id = client.submit(tenant="vision", task_type="train", resources={"gpus": 1})
    ...     client.query(task_id).state
    'queued'

Writes go to Kafka (``bootstrap_servers``, default ``KAFKA_BOOTSTRAP_SERVERS`` plus the
``STREAMSCHED_KAFKA_*`` pass-through settings); reads come from the stream processor's
status view over HTTP (``status_url``, default ``STREAMSCHED_STATUS_URL`` or
``http://127.0.0.1:6066``). Every event is validated before it is sent: bad input raises
:class:`~streamsched.schemas.errors.InvalidEvent` (a ValueError) naming the field.

Tenant: the client speaks for one tenant, :attr:`Client.tenant`: the authenticated SASL
user name when SASL is configured, else the ``tenant`` argument, else
``STREAMSCHED_TENANT``, else none (then each event names its own). Every record it
publishes carries the tenant in the ``streamsched-tenant`` header (see
:mod:`streamsched.schemas.tenancy`); an event whose body names another tenant (a
submission's ``tenant``, a cancel's ``requested_by``) is refused before it is sent. Reads
send the tenant in the ``X-Streamsched-Tenant`` request header, so the status view shows
only that tenant's tasks (:class:`AccessDenied` for another tenant's).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from confluent_kafka import KafkaError, Message, Producer

from streamsched.broker import client_config
from streamsched.schemas import codec, topics
from streamsched.schemas.commands import CancelTask, PolicyUpdate
from streamsched.schemas.data import DataIngested
from streamsched.schemas.envelope import SCHEMA_VERSION, EventEnvelope, new_event_id
from streamsched.schemas.errors import InvalidEvent
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.schemas.tenancy import (
    HTTP_TENANT_HEADER,
    body_tenant_of,
    check_tenant,
    tenant_headers,
)
from streamsched.settings import configured_tenant, kafka_settings, sasl_principal
from streamsched.streams.state import TaskStatus

__all__ = [
    "AccessDenied",
    "Client",
    "ClientError",
    "TaskNotFoundError",
    "TaskStatus",
    "submission_event",
]

DEFAULT_STATUS_URL: Final = "http://127.0.0.1:6066"
STATUS_URL_ENV: Final = "STREAMSCHED_STATUS_URL"
#: ``requested_by`` of a cancel when the client speaks for no tenant.
DEFAULT_TENANT: Final = "default"
#: The body field that names the tenant, per event type (for error messages).
_TENANT_FIELDS: Final = {"task.submitted": "tenant", "command.cancel_task": "requested_by"}


class ClientError(RuntimeError):
    """Kafka or the status view could not be reached, or refused the request."""


class TaskNotFoundError(ClientError, LookupError):
    """The status view does not know the task."""


class AccessDenied(ClientError, PermissionError):  # noqa: N818 (reads as what happened)
    """The status view refused the request: it reached for another tenant's task, or
    the view requires a tenant and the client speaks for none."""


def _envelope(source: str) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": new_event_id(),
        "occurred_at": datetime.now(UTC),
        "source": source,
    }


def submission_event(
    task: TaskSubmitted | Mapping[str, Any] | None = None,
    source: str = "client",
    **fields: Any,
) -> TaskSubmitted:
    """A validated ``task.submitted`` event from a model, a mapping or keyword fields
    (merged, keywords winning). ``task_id`` defaults to a new unique id,
    ``idempotency_key`` to the task id, the envelope to a fresh one. Raises InvalidEvent
    naming the field (a deadline must be in the future)."""
    if isinstance(task, TaskSubmitted):
        data: dict[str, Any] = task.model_dump()
    elif task is None:
        data = {}
    elif isinstance(task, Mapping):
        data = dict(task)
    else:
        raise TypeError(f"task must be a TaskSubmitted or a mapping, got {type(task).__name__}")
    data.update(fields)
    data = {"type": "task.submitted", **_envelope(source), **data}
    data.setdefault("task_id", f"task-{uuid.uuid4().hex[:12]}")
    data.setdefault("idempotency_key", data["task_id"])
    return codec.validate_as(TaskSubmitted, data, now=datetime.now(UTC))


class Client:
    """Talks to a streamsched cluster. Kafka is only contacted by the write methods
    (``submit``, ``cancel``, ``ingest``), the status view only by the read methods
    (``query``, ``tasks``, ``summary``). Close it (or use it as a context manager) to
    release the producer.

    ``tenant`` is the tenant to speak for when SASL is not configured (default
    ``STREAMSCHED_TENANT``); with SASL the authenticated user name is the tenant, and a
    different ``tenant`` raises ClientError."""

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        status_url: str | None = None,
        *,
        source: str = "client",
        timeout_s: float = 15.0,
        tenant: str | None = None,
    ) -> None:
        settings = kafka_settings()
        self.bootstrap_servers = bootstrap_servers or settings.bootstrap_servers
        self._settings = settings
        #: The authenticated SASL user name, if SASL is configured.
        self.principal = sasl_principal(settings)
        #: The tenant this client speaks for (None: each event names its own).
        self.tenant = _own_tenant(self.principal, tenant)
        self.status_url = (
            status_url or os.environ.get(STATUS_URL_ENV, "").strip() or DEFAULT_STATUS_URL
        ).rstrip("/")
        self.source = source
        self.timeout_s = timeout_s
        self._producer: Producer | None = None
        #: The last error the producer reported about the brokers (refused login, TLS).
        self._broker_error: str | None = None

    # ------------------------------------------------------------------ writes

    def submit(self, task: TaskSubmitted | Mapping[str, Any] | None = None, **fields: Any) -> str:
        """Validate and publish a submission to ``sched.tasks.submitted``; its task id.
        See :func:`submission_event` for the defaults; ``tenant`` defaults to the
        client's :attr:`tenant`."""
        if self.tenant is not None and "tenant" not in fields and not _names_tenant(task):
            fields["tenant"] = self.tenant
        event = submission_event(task, source=self.source, **fields)
        self.send(topics.TASKS_SUBMITTED, event.task_id, event)
        return event.task_id

    def cancel(
        self, task_id: str, reason: str = "cancelled by user", tenant: str | None = None
    ) -> str:
        """Ask the scheduler to cancel ``task_id`` (``sched.commands``); the event id.
        ``requested_by`` is ``tenant``, default the client's :attr:`tenant` (else
        ``"default"``); the scheduler refuses a cancel by another tenant than the task's."""
        data = {
            "type": "command.cancel_task",
            **_envelope(self.source),
            "task_id": task_id,
            "reason": reason,
            "requested_by": tenant or self.tenant or DEFAULT_TENANT,
        }
        event = codec.validate_as(CancelTask, data, now=datetime.now(UTC))
        self.send(topics.COMMANDS, task_id, event)
        return event.event_id

    def update_policy(
        self,
        policy: str,
        parameters: Mapping[str, int | float | bool | str] | None = None,
        *,
        shadow_policy: str | None = None,
        split_ratio: float = 1.0,
    ) -> str:
        """Change the placement policy live (``sched.commands``); the event id.

        The update states the whole configuration: ``policy`` with ``parameters``, the
        fraction ``split_ratio`` of tasks it places (the rest stay with the current
        policy: an A/B split), and ``shadow_policy``, evaluated on every decision and
        audited but never acted on (None ends shadow mode). The placement agent answers
        in its log and metrics; an invalid update changes nothing."""
        data = {
            "type": "command.update_policy",
            **_envelope(self.source),
            "policy": policy,
            "parameters": dict(parameters or {}),
            "shadow_policy": shadow_policy,
            "split_ratio": split_ratio,
        }
        event = codec.validate_as(PolicyUpdate, data, now=datetime.now(UTC))
        self.send(topics.COMMANDS, "policy", event)
        return event.event_id

    def ingest(self, dataset: str, rows: int, bytes: int, location: str) -> str:
        """Announce new data in ``dataset`` (``sched.data.ingested``); the event id."""
        data = {
            "type": "data.ingested",
            **_envelope(self.source),
            "dataset": dataset,
            "rows": rows,
            "bytes": bytes,
            "location": location,
        }
        event = codec.validate_as(DataIngested, data, now=datetime.now(UTC))
        self.send(topics.DATA_INGESTED, dataset, event)
        return event.event_id

    def send(self, topic: str, key: str, event: EventEnvelope) -> None:
        """Publish ``event`` with the tenant header and wait until Kafka acknowledged it
        (ClientError if not within ``timeout_s``). InvalidEvent, before anything is
        sent, if the event's body names another tenant than the client's."""
        claimed = body_tenant_of(event)
        if self.tenant is not None and claimed is not None and claimed != self.tenant:
            raise InvalidEvent(
                event.type,
                _TENANT_FIELDS.get(event.type, "tenant"),
                f"{claimed!r} is not this client's tenant {self.tenant!r} "
                f"({self._tenant_origin()}): a client speaks only for its own tenant",
            )
        tenant = self.tenant if self.tenant is not None else claimed
        producer = self._get_producer()
        failures: list[KafkaError] = []

        def delivered(error: KafkaError | None, _msg: Message) -> None:
            if error is not None:
                failures.append(error)

        producer.produce(
            topic,
            codec.encode(event),
            key=key.encode("utf-8"),
            headers=[("type", event.type), *tenant_headers(tenant)],
            on_delivery=delivered,
        )
        if producer.flush(self.timeout_s) != 0:
            raise ClientError(
                f"could not deliver {event.type} to {topic} on {self.bootstrap_servers} "
                f"within {self.timeout_s:g} s ({self._why_undelivered()})"
            )
        if failures:
            raise ClientError(
                f"delivery of {event.type} to {topic} failed: {failures[0]}"
                + (f" (last broker error: {self._broker_error})" if self._broker_error else "")
            )

    def _why_undelivered(self) -> str:
        if self._broker_error is not None:
            return f"last broker error: {self._broker_error}"
        return "is the broker reachable?"

    def _on_broker_error(self, error: KafkaError) -> None:
        self._broker_error = error.str()

    def _get_producer(self) -> Producer:
        if self._producer is None:
            if not self.bootstrap_servers:
                raise ClientError(
                    "no Kafka cluster: pass bootstrap_servers or set KAFKA_BOOTSTRAP_SERVERS"
                )
            config = client_config(self.bootstrap_servers, self._settings)
            timeout_ms = int(self.timeout_s * 1000)
            self._producer = Producer(
                {
                    **config,
                    "acks": "all",
                    "message.timeout.ms": timeout_ms,
                    "error_cb": self._on_broker_error,
                }
            )
        return self._producer

    # ------------------------------------------------------------------ reads

    def query(self, task_id: str) -> TaskStatus:
        """The task's status from the processor's status view. Raises TaskNotFoundError
        if the processor does not know the task (yet), ClientError if it cannot be reached."""
        data = self._get(f"/tasks/{urllib.parse.quote(task_id, safe='')}", task_id=task_id)
        return TaskStatus.model_validate(data)

    def tasks(
        self, state: str | None = None, tenant: str | None = None, limit: int = 50
    ) -> list[TaskStatus]:
        """The most recently updated tasks, optionally of one state and tenant."""
        params = {"limit": str(limit)}
        if state:
            params["state"] = state
        if tenant:
            params["tenant"] = tenant
        data = self._get("/tasks?" + urllib.parse.urlencode(params))
        return [TaskStatus.model_validate(item) for item in data["tasks"]]

    def summary(self) -> dict[str, Any]:
        """Task counts per state and hardware class, nodes and triggers."""
        result: dict[str, Any] = self._get("/summary")
        return result

    def _tenant_origin(self) -> str:
        if self.principal is not None:
            return "the authenticated SASL user"
        return "configured for the client"

    def _get(self, path: str, task_id: str | None = None) -> Any:
        url = self.status_url + path
        request = urllib.request.Request(url)
        if self.tenant is not None:
            request.add_header(HTTP_TENANT_HEADER, self.tenant)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            message = _error_text(exc)
            if exc.code == 404 and task_id is not None:
                raise TaskNotFoundError(
                    f"task {task_id!r} is not known to the status view at {self.status_url}"
                ) from None
            if exc.code in (401, 403):
                raise AccessDenied(f"status view {url}: {message}") from None
            raise ClientError(f"status view {url}: HTTP {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(
                f"status view at {self.status_url} is unreachable ({reason}); is "
                f"`streamsched processor` running? (set {STATUS_URL_ENV} if it runs elsewhere)"
            ) from None
        except ValueError as exc:
            raise ClientError(f"status view {url}: not JSON: {exc}") from None

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Flush and release the producer (idempotent)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(self.timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _own_tenant(principal: str | None, tenant: str | None) -> str | None:
    """The tenant a client speaks for (see :class:`Client`); ClientError if ``tenant``
    contradicts the SASL principal or is not a valid tenant."""
    try:
        if principal is not None:
            check_tenant(principal, "the SASL user name (sasl.username)")
            if tenant is not None and tenant != principal:
                raise ClientError(
                    f"tenant {tenant!r} differs from the authenticated SASL user {principal!r}: "
                    "a client authenticated by SASL speaks only for its own user"
                )
            return principal
        chosen = tenant or configured_tenant()
        return None if chosen is None else check_tenant(chosen, "tenant")
    except ValueError as exc:
        raise ClientError(str(exc)) from None


def _names_tenant(task: object) -> bool:
    if isinstance(task, TaskSubmitted):
        return True
    return isinstance(task, Mapping) and "tenant" in task


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
    except (ValueError, OSError):
        return str(exc.reason)
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else str(exc.reason)
