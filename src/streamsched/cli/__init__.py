"""The ``streamsched`` command line (typer + rich).

Live: ``up`` (the whole system on this machine), ``submit``, ``status``, ``cancel``,
``ingest``, and the parts ``processor``, ``placement``, ``executor``, ``broker``. Offline:
``simulate``, ``demo``, ``schemas export|validate``, ``bench core|pipeline``. Bad input
ends as one ``error:`` line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

from typing import Annotated

import typer

from streamsched import __version__

from . import (
    audit_cmd,
    bench,
    chaos_cmd,
    executor_cmd,
    forecast_cmd,
    forecast_load_cmd,
    live,
    processor_cmd,
    schemas_cmd,
    shadow_cmd,
    tasks_cmd,
    up_cmd,
)
from ._common import stdout_console
from .simulate import SimulateArgs, run_simulate, simulate

__all__ = ["app", "main"]

app = typer.Typer(
    name="streamsched",
    help="Event-streaming scheduler for machine-learning work on Kafka: run a live cluster, "
    "submit and watch tasks, simulate, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
# The live system: one command for all of it, then the clients, then its parts.
app.command("up")(up_cmd.up)
app.command("submit")(tasks_cmd.submit)
app.command("status")(tasks_cmd.status)
app.command("cancel")(tasks_cmd.cancel)
app.command("ingest")(tasks_cmd.ingest)
app.command("policy")(tasks_cmd.policy)
app.command("processor")(processor_cmd.processor)
app.command("placement")(live.placement)
app.command("executor")(executor_cmd.executor)
app.command("broker")(live.broker)
app.command("shadow-report")(shadow_cmd.shadow_report)
app.command("audit")(audit_cmd.audit)
app.command("chaos")(chaos_cmd.chaos)
# Offline: simulation, schemas, benchmarks.
app.command("simulate")(simulate)
app.add_typer(schemas_cmd.app, name="schemas")
app.add_typer(bench.app, name="bench")
forecast_cmd.forecast_app.command("load")(forecast_load_cmd.load)
app.add_typer(forecast_cmd.forecast_app, name="forecast-eval")

#: What ``streamsched demo`` (and ``make demo``) runs.
DEMO = SimulateArgs(trace="gavel:sample", cluster="v100=4,p100=4,k80=4", policy="all")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"streamsched {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Event-streaming scheduler for machine-learning work on Kafka: run a live cluster,
    submit and watch tasks, simulate, benchmark."""


@app.command("demo")
def demo() -> None:
    """Replay the packaged Gavel sample through every policy on a 12-GPU fleet."""
    stdout_console().print(
        "demo: a slice of Microsoft's Philly trace (as prepared by Gavel) replayed on "
        "4 V100 + 4 P100 + 4 K80 GPUs, once per policy; same as\n"
        "  streamsched simulate --trace gavel:sample --cluster v100=4,p100=4,k80=4 "
        "--policy all",
        markup=False,
        soft_wrap=True,
    )
    run_simulate(DEMO)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="streamsched")
