"""The ``streamsched`` command line (typer + rich).

Commands: ``simulate`` (replay a trace through the policies), ``schemas export|validate``,
``bench core`` and ``demo``. Bad input ends as one ``error:`` line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

from typing import Annotated

import typer

from streamsched import __version__

from . import bench, executor_cmd, live, schemas_cmd, tasks_cmd, up_cmd
from ._common import stdout_console
from .simulate import SimulateArgs, run_simulate, simulate

__all__ = ["app", "main"]

app = typer.Typer(
    name="streamsched",
    help="Event-streaming scheduler for machine-learning work: simulate, inspect, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
app.command("simulate")(simulate)
app.add_typer(schemas_cmd.app, name="schemas")
app.add_typer(bench.app, name="bench")
app.command("executor")(executor_cmd.executor)
app.command("placement")(live.placement)
app.command("broker")(live.broker)
app.command("submit")(tasks_cmd.submit)
app.command("cancel")(tasks_cmd.cancel)
app.command("processor")(tasks_cmd.processor)
app.command("status")(tasks_cmd.status)
app.command("ingest")(tasks_cmd.ingest)
app.command("up")(up_cmd.up)

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
    """Event-streaming scheduler for machine-learning work: simulate, inspect, benchmark."""


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
