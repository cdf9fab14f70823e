"""Commands that run parts of a live cluster by hand: ``streamsched broker`` (the embedded
broker, standalone) and ``streamsched placement`` (the placement agent). With
``streamsched executor`` on each node, they make a working cluster:

    streamsched broker                       # prints KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT
    export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT
    streamsched placement &
    streamsched executor --node-id v100-0 --hardware gpu-v100 --gpus 8 --cpus 64 --memory 512GiB

Ctrl-C or SIGTERM stops each cleanly.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Annotated, Any

import typer
from confluent_kafka import KafkaException

from streamsched.agents.placement import (
    HEARTBEAT_TIMEOUT_S,
    MAX_QUEUED_PER_TENANT,
    RECONCILE_GRACE_S,
    PlacementAgent,
)
from streamsched.agents.placement_journal import JournalError, journal_topic, read_journal_header
from streamsched.broker import BrokerError, EmbeddedBroker, client_config, ensure_topics
from streamsched.scheduler.policies import POLICY_NAMES
from streamsched.schemas import topics
from streamsched.settings import KafkaSettings, kafka_settings

from ._common import cli_errors, fail

__all__ = ["broker", "placement", "require_bootstrap", "run_until_signalled"]


def require_bootstrap(role: str) -> tuple[str, KafkaSettings]:
    """The configured cluster, or exit 2 explaining that ``role`` joins an existing one."""
    settings = kafka_settings()
    if not settings.bootstrap_servers:
        fail(
            f"KAFKA_BOOTSTRAP_SERVERS is not set: the {role} joins an existing broker; "
            "set KAFKA_BOOTSTRAP_SERVERS=host:port of your Kafka cluster "
            "(`streamsched broker` runs one on this machine)"
        )
    assert settings.bootstrap_servers is not None
    return settings.bootstrap_servers, settings


def run_until_signalled(run: Callable[[threading.Event], None], what: str) -> None:
    """Call ``run(stop)``; SIGINT or SIGTERM sets ``stop``. Broker failures exit 1 with
    one line naming ``what``."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        run(stop)
    except (BrokerError, KafkaException, JournalError) as exc:
        typer.echo(f"error: {what}: {exc}", err=True)
        raise typer.Exit(1) from None


def broker(
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port on 127.0.0.1 (default: a free one).")
    ] = None,
) -> None:
    """Run the embedded broker (Tansu, in memory) on 127.0.0.1 until Ctrl-C."""
    with cli_errors():
        embedded = EmbeddedBroker(port=port)

    def run(stop: threading.Event) -> None:
        with embedded:
            ensure_topics(client_config(embedded.bootstrap_servers), topics.CORE_TOPIC_PARTITIONS)
            typer.echo(f"KAFKA_BOOTSTRAP_SERVERS={embedded.bootstrap_servers}")
            typer.echo("broker running in memory on loopback; Ctrl-C stops it", err=True)
            stop.wait()

    run_until_signalled(run, "embedded broker")


def placement(
    policy: Annotated[str, typer.Option(help="Placement policy.")] = "forecast-river",
    decision_prefix: Annotated[
        str, typer.Option(help="Prefix of decision ids (unique per agent instance).")
    ] = "d",
    heartbeat_timeout_s: Annotated[
        float, typer.Option(min=1.0, help="A node silent this long is lost (seconds).")
    ] = HEARTBEAT_TIMEOUT_S,
    reconcile_grace_s: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="An attempt its node's heartbeats have not listed for this long is lost "
            "(seconds).",
        ),
    ] = RECONCILE_GRACE_S,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: a free port; "
            "default: no metrics server).",
        ),
    ] = None,
    replay_start: Annotated[
        float | None,
        typer.Option(
            hidden=True,
            help="Replay: core time is (now - REPLAY_START) * speedup (epoch seconds).",
        ),
    ] = None,
    replay_speedup: Annotated[
        float, typer.Option(hidden=True, help="Replay: trace seconds per wall second (> 0).")
    ] = 1.0,
    warm_start: Annotated[
        bool,
        typer.Option(
            help="Start the learned runtime model from the stream processor's newest valid "
            "checkpoint on sched.models (policies with a learned model; never in a replay).",
        ),
    ] = True,
    max_queued_per_tenant: Annotated[
        int,
        typer.Option(
            min=0,
            help="Queued tasks a tenant may have; further submissions are rejected with the "
            "reason (0: no bound).",
        ),
    ] = MAX_QUEUED_PER_TENANT,
    operator: Annotated[
        list[str] | None,
        typer.Option(
            "--operator",
            help="A tenant allowed to cancel any tenant's task (repeatable; default: none, "
            "each tenant cancels only its own tasks).",
        ),
    ] = None,
    journal: Annotated[
        bool,
        typer.Option(
            help="Journal every core call to sched.placement.journal.<decision prefix> and "
            "restore from it on start, so a restarted agent forgets nothing (never in a "
            "replay; see docs/architecture.md).",
        ),
    ] = True,
) -> None:
    """Run the placement agent: live events in, assignments and audit records out."""
    import math

    from streamsched import metrics

    if policy not in POLICY_NAMES or policy == "oracle":
        known = ", ".join(p for p in POLICY_NAMES if p != "oracle")
        fail(f"--policy {policy!r}: not a live policy; choose one of {known}")
    if not (math.isfinite(replay_speedup) and replay_speedup > 0):
        fail(f"--replay-speedup {replay_speedup:g}: must be a finite number > 0")
    if replay_start is not None and not math.isfinite(replay_start):
        fail(f"--replay-start {replay_start:g}: must be finite epoch seconds")
    servers, settings = require_bootstrap("placement agent")
    config = client_config(servers, settings)
    forecaster, identity = None, None
    journaling = journal and replay_start is None
    header = None
    if journaling:
        try:
            header = read_journal_header(config, journal_topic(decision_prefix))
        except (JournalError, KafkaException) as exc:
            fail(f"placement journal: {exc}")
    if header is not None:
        # A restart: the core must start from the runtime model it started from before.
        with cli_errors("--warm-start"):
            forecaster, identity = journaled_forecaster(config, policy, header.forecaster)
    elif warm_start and replay_start is None:
        with cli_errors("--warm-start"):
            forecaster, identity = warm_start_model(config, policy)
    with cli_errors():
        agent = PlacementAgent(
            config,
            policy=policy,
            forecaster=forecaster,
            forecaster_identity=identity,
            journal=journaling,
            decision_prefix=decision_prefix,
            heartbeat_timeout_s=heartbeat_timeout_s,
            reconcile_grace_s=reconcile_grace_s,
            max_queued_per_tenant=max_queued_per_tenant or None,
            core_options={"cancel_operators": tuple(operator or ())},
            replay_start=replay_start,
            replay_speedup=replay_speedup,
        )
    if metrics_port is not None:
        with cli_errors("--metrics-port"):
            bound = metrics.serve(metrics_port)
        typer.echo(f"metrics: http://127.0.0.1:{bound}/metrics")
    run_until_signalled(agent.run, "placement agent")


def warm_forecaster(config: dict[str, Any], policy: str) -> Any:
    """The processor's newest valid runtime-model checkpoint, if ``policy`` runs the learned
    model and one exists (else None: the policy's own forecaster starts cold). Says which
    on stderr."""
    return warm_start_model(config, policy)[0]


def warm_start_model(config: dict[str, Any], policy: str) -> tuple[Any, dict[str, Any] | None]:
    """:func:`warm_forecaster` and the checkpoint's identity for the journal (None: cold)."""
    from streamsched.scheduler.drift import DriftingForecaster
    from streamsched.scheduler.policies import get_policy
    from streamsched.streams.models import RUNTIME_MODEL, newest_checkpoint

    if get_policy(policy).forecaster != "river-linear":
        return None, None
    found = newest_checkpoint(config, RUNTIME_MODEL, expect_type=DriftingForecaster)
    if found is None:
        typer.echo(f"runtime model: no valid {RUNTIME_MODEL} checkpoint yet; cold start", err=True)
        return None, None
    model, header = found
    typer.echo(
        f"runtime model: warm start from checkpoint {header.model_name} "
        f"({header.model_version}, created {header.created_at_s:.0f})",
        err=True,
    )
    return model, _checkpoint_identity(header)


def _checkpoint_identity(header: Any) -> dict[str, Any]:
    return {
        "kind": "checkpoint",
        "model_name": header.model_name,
        "model_version": header.model_version,
        "created_at_s": header.created_at_s,
    }


def journaled_forecaster(
    config: dict[str, Any], policy: str, identity: dict[str, Any]
) -> tuple[Any, dict[str, Any] | None]:
    """The runtime model a journal says its agent started from: the same checkpoint
    (ValueError if it is no longer readable), or a cold start."""
    from streamsched.scheduler.checkpoint import newest_valid
    from streamsched.scheduler.drift import DriftingForecaster
    from streamsched.streams.models import read_model_records

    if identity.get("kind") != "checkpoint":
        typer.echo("runtime model: as journaled, cold start", err=True)
        return None, None
    name = str(identity.get("model_name"))
    for record in reversed(read_model_records(config, topics.MODELS)):
        if record.key != name or record.headers.get("model.version") != identity.get(
            "model_version"
        ):
            continue
        found, _skipped = newest_valid(
            [record.value], expect_name=name, expect_type=DriftingForecaster
        )
        if found is not None and found.header.created_at_s == identity.get("created_at_s"):
            typer.echo(
                f"runtime model: as journaled, checkpoint {name} ({found.header.model_version})",
                err=True,
            )
            return found.model, _checkpoint_identity(found.header)
    raise ValueError(
        f"the journal says the agent started from checkpoint {name} "
        f"{identity.get('model_version')} (created {identity.get('created_at_s')}), which "
        f"is not readable on {topics.MODELS} any more; start a fresh instance with another "
        "--decision-prefix"
    )
