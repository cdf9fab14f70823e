"""``streamsched submit``, ``cancel``, ``ingest`` and ``status``: use a live cluster.

The write commands produce validated wire events through :class:`streamsched.client.Client`
(the same checks any consumer applies), so bad input is refused here with the field and
the reason, before it reaches Kafka. ``status`` reads the stream processor's status view.
Bad input exits 2; an unreachable broker or processor, or an unknown task, exits 1.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from rich.table import Table

from streamsched.broker import client_config
from streamsched.client import DEFAULT_TENANT, Client, ClientError, submission_event
from streamsched.schemas import codec, topics
from streamsched.schemas.data import DataIngested
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.envelope import SCHEMA_VERSION, new_event_id
from streamsched.schemas.tasks import TaskRejected
from streamsched.settings import configured_tenant, kafka_settings, sasl_principal
from streamsched.streams.state import TaskState, TaskStatus

from ._common import cli_errors, fail, parse_params, stdout_console
from .executor_cmd import parse_cpus, parse_memory_mib
from .live import require_bootstrap
from .processor_cmd import processor

__all__ = ["cancel", "ingest", "policy", "processor", "status", "submit"]


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
    tenant: Annotated[
        str | None,
        typer.Option(
            help="Tenant (team) submitting. Default: the SASL user when SASL is configured, "
            "else $STREAMSCHED_TENANT, else 'default'.",
            show_default=False,
        ),
    ] = None,
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
            "tenant": tenant or cli_tenant() or DEFAULT_TENANT,
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
        event = submission_event(data, source="cli")
    servers, settings = require_bootstrap("submit command")
    config = client_config(servers, settings)
    watcher = _DecisionWatcher(config) if wait else None
    with _client(servers) as client, cli_errors():  # e.g. a tenant not the SASL user's
        client.submit(event)
    typer.echo(f"submitted {event.task_id}")
    if watcher is not None:
        watcher.report(event.task_id, wait_s)


def cancel(
    task_id: Annotated[str, typer.Argument(help="The task to cancel.")],
    tenant: Annotated[
        str | None,
        typer.Option(
            help="Tenant asking (must own the task). Default: the SASL user when SASL is "
            "configured, else $STREAMSCHED_TENANT, else 'default'.",
            show_default=False,
        ),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "cancelled by user",
) -> None:
    """Cancel a task: queued, it is dropped; running, its attempt is stopped. The
    scheduler refuses (and audits) a cancel by a tenant that does not own the task."""
    servers, _settings = require_bootstrap("cancel command")
    with _client(servers, tenant=tenant) as client, cli_errors():
        client.cancel(task_id, reason=reason)
    typer.echo(f"cancel requested for {task_id}")


def policy(
    name: Annotated[str, typer.Argument(help="The live policy, e.g. forecast-river.")],
    param: Annotated[
        list[str] | None,
        typer.Option(help="Policy parameter KEY=VALUE (repeatable), e.g. sjf_weight=2."),
    ] = None,
    shadow: Annotated[
        str | None,
        typer.Option(help="Shadow policy: evaluated and audited, never acted on."),
    ] = None,
    split: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Fraction of tasks (stable hash of the task id) placed by NAME; the rest "
            "stay with the current policy.",
        ),
    ] = 1.0,
) -> None:
    """Change the placement policy live: switch, A/B split, shadow, parameters."""
    from streamsched.scheduler.policies import POLICY_NAMES

    for option, value in (("NAME", name), ("--shadow", shadow)):
        if value is not None and (value not in POLICY_NAMES or value == "oracle"):
            known = ", ".join(p for p in POLICY_NAMES if p != "oracle")
            fail(f"{option} {value!r}: not a live policy; choose one of {known}")
    parameters = parse_params(param)
    servers, _settings = require_bootstrap("policy command")
    with _client(servers) as client, cli_errors():
        event_id = client.update_policy(name, parameters, shadow_policy=shadow, split_ratio=split)
    what = [f"policy {name}"]
    if split < 1.0:
        what.append(f"on {split:.0%} of tasks")
    if parameters:
        what.append(", ".join(f"{k}={v:g}" for k, v in parameters.items()))
    if shadow:
        what.append(f"shadow {shadow}")
    typer.echo(f"policy update sent ({'; '.join(what)}; event {event_id})")


def ingest(
    dataset: Annotated[str, typer.Option(help="Dataset that received new data.")],
    rows: Annotated[int, typer.Option(help="Rows added by this ingestion.")],
    bytes_: Annotated[int, typer.Option("--bytes", help="Bytes added by this ingestion.")],
    location: Annotated[str, typer.Option(help="Where the new data is (s3://, gs://, file:).")],
) -> None:
    """Announce new data in a dataset (sched.data.ingested); trigger rules may fire."""
    data = {
        "type": "data.ingested",
        **_envelope(),
        "dataset": dataset,
        "rows": rows,
        "bytes": bytes_,
        "location": location,
    }
    with cli_errors():  # refuse bad input before looking for a broker
        codec.validate_as(DataIngested, data, now=datetime.now(UTC))
    servers, _settings = require_bootstrap("ingest command")
    with _client(servers) as client, cli_errors():
        event_id = client.ingest(dataset, rows, bytes_, location)
    typer.echo(f"ingested {rows} rows, {bytes_} bytes into {dataset} (event {event_id})")


def cli_tenant() -> str | None:
    """The tenant the CLI speaks for without ``--tenant``: the SASL user, else
    ``$STREAMSCHED_TENANT``."""
    return sasl_principal(kafka_settings()) or configured_tenant()


@contextmanager
def _client(
    servers: str | None = None, status_url: str | None = None, tenant: str | None = None
) -> Iterator[Client]:
    """A Client whose failures (broker or status view unreachable, a request refused)
    exit 1 with one line."""
    try:
        client = Client(servers, status_url, source="cli", tenant=tenant)
    except ClientError as exc:  # e.g. --tenant contradicts the SASL user
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        yield client
    except ClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        client.close()


def status(
    task_id: Annotated[str | None, typer.Argument(help="A task id; none: recent tasks.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    status_url: Annotated[
        str | None,
        typer.Option(
            help="Status view of the processor (default: $STREAMSCHED_STATUS_URL "
            "or http://127.0.0.1:6066)."
        ),
    ] = None,
    state: Annotated[str | None, typer.Option(help="Only tasks in this state.")] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            help="The tenant asking: the view shows only its tasks (default: the SASL user, "
            "else $STREAMSCHED_TENANT, else none: operator mode, every task).",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many tasks.")] = 20,
) -> None:
    """Show a task's status, or recent tasks and the summary, from the stream processor."""
    if state is not None and state not in {s.value for s in TaskState}:
        fail(f"--state {state!r}: expected one of {', '.join(s.value for s in TaskState)}")
    with _client(status_url=status_url, tenant=tenant) as client:
        if task_id is not None:
            one = client.query(task_id)
            if as_json:
                typer.echo(json.dumps(one.to_json(), indent=2))
            else:
                _print_task(one)
            return
        recent = client.tasks(state=state, tenant=client.tenant, limit=limit)
        summary = client.summary()
    if as_json:
        typer.echo(json.dumps({"tasks": [t.to_json() for t in recent], "summary": summary}))
        return
    _print_overview(recent, summary)


def _runtime(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _print_task(task: TaskStatus) -> None:
    rows = [
        ("task", task.task_id),
        ("state", task.state.value),
        ("tenant", task.tenant or "-"),
        ("type", task.task_type or "-"),
        ("node", task.node or "-"),
        ("hardware", task.hardware or "-"),
        ("attempt", str(task.attempt)),
        ("retries", f"{task.retries}/{task.max_retries if task.max_retries is not None else '?'}"),
        ("predicted runtime", _runtime(task.predicted_runtime_s)),
        ("actual runtime", _runtime(task.actual_runtime_s)),
        ("decision", task.decision_id or "-"),
        ("reason", task.decision_reason or "-"),
    ]
    for label, value in (
        ("rejected", task.rejection_reason),
        ("failure", task.failure_reason),
        ("cancelled", task.cancel_reason),
    ):
        if value:
            rows.append((label, value))
    if task.stale_count:
        rows.append(("stale events", str(task.stale_count)))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        typer.echo(f"{label:<{width}}  {value}")


def _print_overview(tasks: list[TaskStatus], summary: dict[str, Any]) -> None:
    console = stdout_console()
    table = Table(title="recent tasks")
    for column in ("task", "state", "tenant", "node", "hardware", "attempt", "predicted", "actual"):
        table.add_column(column)
    for t in tasks:
        table.add_row(
            t.task_id, t.state.value, t.tenant or "-", t.node or "-", t.hardware or "-",
            str(t.attempt), _runtime(t.predicted_runtime_s), _runtime(t.actual_runtime_s),
        )  # fmt: skip
    console.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in summary.get("per_state", {}).items() if v)
    console.print(f"{summary.get('tasks', 0)} tasks: {counts or 'none'}", markup=False)
    for hardware, per in sorted(summary.get("per_hardware", {}).items()):
        line = ", ".join(f"{k} {v}" for k, v in sorted(per.items()))
        console.print(f"  {hardware}: {line}", markup=False)


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
                if (
                    isinstance(event, DecisionAudit)
                    and event.kind == "assign"
                    and event.task_id == task_id
                ):
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
