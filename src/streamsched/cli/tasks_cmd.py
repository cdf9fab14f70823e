"""``streamsched submit`` and ``streamsched cancel``: put work on a live cluster.

Both produce validated wire events (the same checks any consumer applies), so bad input
is refused here with the field and the reason, before it reaches Kafka.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamsched.broker import client_config
from streamsched.schemas import codec, topics
from streamsched.schemas.commands import CancelTask
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.envelope import SCHEMA_VERSION, new_event_id
from streamsched.schemas.tasks import TaskRejected, TaskSubmitted

from ._common import cli_errors, fail
from .executor_cmd import parse_cpus, parse_memory_mib
from .live import require_bootstrap

__all__ = ["cancel", "submit"]


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{option} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _envelope() -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": new_event_id(),
        "occurred_at": datetime.now(UTC).isoformat(),
        "source": "cli",
    }


def submit(
    command: Annotated[
        list[str] | None, typer.Argument(help="The task's command (argv), after --.")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="A task.submitted event as JSON.")
    ] = None,
    task_id: Annotated[str | None, typer.Option(help="Default: a new unique id.")] = None,
    tenant: Annotated[str, typer.Option(help="Tenant (team) submitting.")] = "default",
    task_type: Annotated[str, typer.Option("--type", help="Kind of work.")] = "task",
    gpus: Annotated[int, typer.Option(help="Whole GPUs (1 with --gpu-milli: a share).")] = 0,
    gpu_milli: Annotated[
        int | None, typer.Option(help="Share of one GPU in milli (1..1000).")
    ] = None,
    cpus: Annotated[str, typer.Option(help="CPUs (2, 0.5) or milli-CPUs (500m).")] = "1",
    memory: Annotated[str, typer.Option(help="Memory: 16GiB, 512MiB, ...")] = "1GiB",
    hardware: Annotated[
        list[str] | None, typer.Option(help="Allowed hardware class (repeatable).")
    ] = None,
    priority: Annotated[str, typer.Option(help="critical, high, normal or low.")] = "normal",
    deadline: Annotated[str | None, typer.Option(help="ISO 8601 time with zone.")] = None,
    preemptible: Annotated[bool, typer.Option(help="May be checkpointed and stopped.")] = False,
    depends_on: Annotated[
        list[str] | None, typer.Option(help="Upstream task id (repeatable).")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="Governance tag KEY=VALUE (repeatable).")
    ] = None,
    env: Annotated[list[str] | None, typer.Option(help="Environment KEY=VALUE.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the scheduler's decision.")] = False,
    wait_s: Annotated[float, typer.Option(min=1.0, help="How long --wait waits.")] = 30.0,
) -> None:
    """Submit a task to the live cluster (sched.tasks.submitted)."""
    if file is not None:
        with cli_errors("--file"):
            data = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            fail(f"--file {file}: expected one JSON object (a task.submitted event)")
        data = {"type": "task.submitted", **_envelope(), **data}
    else:
        with cli_errors():
            resources: dict[str, Any] = {
                "cpu_milli": parse_cpus(cpus),
                "memory_mib": parse_memory_mib(memory),
                "gpus": gpus,
                "allowed_hardware": hardware or [],
            }
        if gpu_milli is not None:
            resources["gpu_milli"] = gpu_milli
        tid = task_id or f"task-{uuid.uuid4().hex[:12]}"
        data = {
            "type": "task.submitted",
            **_envelope(),
            "task_id": tid,
            "idempotency_key": tid,
            "tenant": tenant,
            "task_type": task_type,
            "resources": resources,
            "priority": priority,
            "deadline": deadline,
            "preemptible": preemptible,
            "depends_on": depends_on or [],
            "governance": _pairs(tag, "--tag"),
            "command": command or [],
            "env": _pairs(env, "--env"),
        }
    with cli_errors():
        event = codec.validate_as(TaskSubmitted, data, now=datetime.now(UTC))
    servers, settings = require_bootstrap("submit command")
    config = client_config(servers, settings)
    watcher = _DecisionWatcher(config) if wait else None
    _produce(config, topics.TASKS_SUBMITTED, event.task_id, codec.encode(event))
    typer.echo(f"submitted {event.task_id}")
    if watcher is not None:
        watcher.report(event.task_id, wait_s)


def cancel(
    task_id: Annotated[str, typer.Argument(help="The task to cancel.")],
    tenant: Annotated[str, typer.Option(help="Tenant asking (the task's owner).")] = "default",
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "cancelled by user",
) -> None:
    """Cancel a task: queued, it is dropped; running, its attempt is stopped."""
    data = {
        "type": "command.cancel_task",
        **_envelope(),
        "task_id": task_id,
        "reason": reason,
        "requested_by": tenant,
    }
    with cli_errors():
        event = codec.validate_as(CancelTask, data, now=datetime.now(UTC))
    servers, settings = require_bootstrap("cancel command")
    _produce(client_config(servers, settings), topics.COMMANDS, task_id, codec.encode(event))
    typer.echo(f"cancel requested for {task_id}")


def _produce(config: dict[str, Any], topic: str, key: str, value: bytes) -> None:
    producer = Producer(config)
    producer.produce(topic, value, key=key.encode())
    if producer.flush(15) != 0:
        typer.echo(f"error: could not deliver to {topic} within 15 s", err=True)
        raise typer.Exit(1)


class _DecisionWatcher:
    """Reads sched.decisions from its current end, started before the submission so the
    decision cannot be missed (reading a few older records is harmless)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._consumer = Consumer(
            {**config, "group.id": f"cli-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
        meta = AdminClient(config).list_topics(topics.DECISIONS, timeout=10)
        parts = meta.topics[topics.DECISIONS].partitions
        assigned = []
        for p in sorted(parts):
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(topics.DECISIONS, p), timeout=10
            )
            assigned.append(TopicPartition(topics.DECISIONS, p, max(high - 1, 0)))
        self._consumer.assign(assigned)

    def report(self, task_id: str, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        try:
            while time.monotonic() < deadline:
                msg = self._consumer.poll(0.3)
                if msg is None or msg.error() is not None or msg.key() != task_id.encode():
                    continue
                event = codec.decode(msg.value() or b"")
                if isinstance(event, DecisionAudit) and event.task_id == task_id:
                    typer.echo(
                        f"assigned to {event.chosen_node_id} ({event.chosen_hardware}), "
                        f"predicted {event.predicted_runtime_s:.0f} s; "
                        f"decision {event.decision_id}: {event.reason}"
                    )
                    return
                if isinstance(event, TaskRejected) and event.task_id == task_id:
                    typer.echo(f"error: rejected: {event.reason}", err=True)
                    raise typer.Exit(1)
        finally:
            self._consumer.close()
        typer.echo(f"no decision for {task_id} within {wait_s:g} s (still queued?)", err=True)
        raise typer.Exit(1)
