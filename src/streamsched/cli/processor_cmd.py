"""``streamsched processor``: the stream processor (faust worker) in the foreground.

    export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT
    streamsched processor --web-port 6066 --metrics-port 9102 --triggers triggers.toml

It prints ``status view on http://127.0.0.1:6066`` once the web view answers; Ctrl-C or
SIGTERM stops it cleanly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from confluent_kafka import KafkaException

from streamsched import metrics
from streamsched.broker import BrokerError, client_config
from streamsched.schemas.tenancy import check_tenant
from streamsched.settings import secured, status_operators, status_requires_tenant

from ._common import cli_errors, fail
from .live import require_bootstrap

__all__ = ["processor"]

_APP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")


def processor(
    web_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port of the status view on 127.0.0.1.")
    ] = 6066,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Serve Prometheus metrics on 127.0.0.1:PORT."),
    ] = None,
    triggers: Annotated[
        Path | None, typer.Option(help="Data-ingested trigger rules (.json or .toml).")
    ] = None,
    app_id: Annotated[
        str, typer.Option(help="faust app id: consumer group and table topic prefix.")
    ] = "streamsched-processor",
    loglevel: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    restore: Annotated[
        bool,
        typer.Option(
            "--restore/--no-restore",
            help="Restore the learned models from the newest valid checkpoints on the models "
            "topic at start (--no-restore: start them cold).",
        ),
    ] = True,
    checkpoint_every: Annotated[
        int, typer.Option(min=1, help="Checkpoint the models every N completions learned.")
    ] = 50,
    checkpoint_interval: Annotated[
        float,
        typer.Option(min=0.1, help="Checkpoint changed models at least every S seconds."),
    ] = 60.0,
    models_topic: Annotated[
        str, typer.Option(help="Topic of the model checkpoints and drift events.")
    ] = "sched.models",
    require_tenant: Annotated[
        bool | None,
        typer.Option(
            "--require-tenant/--no-require-tenant",
            help="Refuse status-view requests without the X-Streamsched-Tenant header "
            "(default: $STREAMSCHED_STATUS_REQUIRE_TENANT, else true when the Kafka "
            "connection uses SASL or TLS, else false: such requests are answered in "
            "operator mode).",
            show_default=False,
        ),
    ] = None,
    operator: Annotated[
        list[str] | None,
        typer.Option(
            "--operator",
            help="A tenant whose status-view requests see every task, like an operator "
            "(repeatable; default: $STREAMSCHED_STATUS_OPERATORS, comma-separated).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the stream processor: the task status view, node and dataset state, triggers,
    and the learned models (restored at start, checkpointed to the models topic)."""
    from streamsched.streams.app import ProcessorConfig, run
    from streamsched.streams.triggers import TriggerRule, load_rules

    if not _APP_ID.match(app_id):
        fail(f"--app-id {app_id!r}: expected letters, digits, '_', '.', '-' (1..101)")
    if loglevel.lower() not in ("debug", "info", "warning", "error"):
        fail(f"--loglevel {loglevel!r}: expected debug, info, warning or error")
    if not _APP_ID.match(models_topic):
        fail(f"--models-topic {models_topic!r}: expected letters, digits, '_', '.', '-'")
    rules: tuple[TriggerRule, ...] = ()
    if triggers is not None:
        with cli_errors("--triggers"):
            rules = load_rules(triggers)
    with cli_errors():
        from_env = status_requires_tenant()
        operators = tuple(operator or status_operators())
        for name in operators:
            check_tenant(name, "--operator")
    servers, settings = require_bootstrap("processor")
    if require_tenant is None:
        require_tenant = from_env if from_env is not None else secured(settings)
    config = client_config(servers, settings)
    if metrics_port is not None:
        with cli_errors("--metrics-port"):
            bound = metrics.serve(metrics_port)
        typer.echo(f"metrics on http://127.0.0.1:{bound}/metrics", err=True)

    def ready(url: str) -> None:
        typer.echo(f"status view on {url}")

    cfg = ProcessorConfig(
        kafka_config=config,
        web_port=web_port,
        rules=rules,
        app_id=app_id,
        on_web_ready=ready,
        models_topic=models_topic,
        restore_models=restore,
        checkpoint_every=checkpoint_every,
        checkpoint_interval_s=checkpoint_interval,
        require_tenant=require_tenant,
        status_operators=operators,
    )
    try:
        with cli_errors():
            run(cfg, loglevel=loglevel.lower())
    except (BrokerError, KafkaException) as exc:
        typer.echo(f"error: processor: {exc}", err=True)
        raise typer.Exit(1) from None
