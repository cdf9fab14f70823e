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
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.settings import kafka_settings
from streamsched.streams.state import TaskStatus

__all__ = ["Client", "ClientError", "TaskNotFoundError", "TaskStatus", "submission_event"]

DEFAULT_STATUS_URL: Final = "http://127.0.0.1:6066"
STATUS_URL_ENV: Final = "STREAMSCHED_STATUS_URL"


class ClientError(RuntimeError):
    """Kafka or the status view could not be reached, or refused the request."""


class TaskNotFoundError(ClientError, LookupError):
    """The status view does not know the task."""


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
    release the producer."""

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        status_url: str | None = None,
        *,
        source: str = "client",
        timeout_s: float = 15.0,
    ) -> None:
        settings = kafka_settings()
        self.bootstrap_servers = bootstrap_servers or settings.bootstrap_servers
        self._settings = settings
        self.status_url = (
            status_url or os.environ.get(STATUS_URL_ENV, "").strip() or DEFAULT_STATUS_URL
        ).rstrip("/")
        self.source = source
        self.timeout_s = timeout_s
        self._producer: Producer | None = None

    # ------------------------------------------------------------------ writes

    def submit(self, task: TaskSubmitted | Mapping[str, Any] | None = None, **fields: Any) -> str:
        """Validate and publish a submission to ``sched.tasks.submitted``; its task id.
        See :func:`submission_event` for the defaults."""
        event = submission_event(task, source=self.source, **fields)
        self.send(topics.TASKS_SUBMITTED, event.task_id, event)
        return event.task_id

    def cancel(
        self, task_id: str, reason: str = "cancelled by user", tenant: str = "default"
    ) -> str:
        """Ask the scheduler to cancel ``task_id`` (``sched.commands``); the event id."""
        data = {
            "type": "command.cancel_task",
            **_envelope(self.source),
            "task_id": task_id,
            "reason": reason,
            "requested_by": tenant,
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
        """Publish ``event`` and wait until Kafka acknowledged it (ClientError if not
        within ``timeout_s``)."""
        producer = self._get_producer()
        failures: list[KafkaError] = []

        def delivered(error: KafkaError | None, _msg: Message) -> None:
            if error is not None:
                failures.append(error)

        producer.produce(
            topic,
            codec.encode(event),
            key=key.encode("utf-8"),
            headers=[("type", event.type)],
            on_delivery=delivered,
        )
        if producer.flush(self.timeout_s) != 0:
            raise ClientError(
                f"could not deliver {event.type} to {topic} on {self.bootstrap_servers} "
                f"within {self.timeout_s:g} s (is the broker reachable?)"
            )
        if failures:
            raise ClientError(f"delivery of {event.type} to {topic} failed: {failures[0]}")

    def _get_producer(self) -> Producer:
        if self._producer is None:
            if not self.bootstrap_servers:
                raise ClientError(
                    "no Kafka cluster: pass bootstrap_servers or set KAFKA_BOOTSTRAP_SERVERS"
                )
            config = client_config(self.bootstrap_servers, self._settings)
            timeout_ms = int(self.timeout_s * 1000)
            self._producer = Producer({**config, "acks": "all", "message.timeout.ms": timeout_ms})
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

    def _get(self, path: str, task_id: str | None = None) -> Any:
        url = self.status_url + path
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            message = _error_text(exc)
            if exc.code == 404 and task_id is not None:
                raise TaskNotFoundError(
                    f"task {task_id!r} is not known to the status view at {self.status_url}"
                ) from None
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


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
    except (ValueError, OSError):
        return str(exc.reason)
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else str(exc.reason)
