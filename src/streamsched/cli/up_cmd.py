"""``streamsched up``: the whole live system on this machine, replaying a trace."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from confluent_kafka import KafkaException
from rich.console import Group
from rich.live import Live
from rich.table import Table

from streamsched.broker import BrokerError
from streamsched.up.run import DEFAULT_EXECUTORS, UpConfig, UpResult, run_up
from streamsched.up.tracker import Snapshot

from ._common import cli_errors, fail, json_safe, stderr_console, stdout_console
from .report import human_duration, report_table

__all__ = ["up"]

#: Without a terminal, a progress line is printed this often (seconds).
PLAIN_PROGRESS_S = 10.0


def up(
    trace: Annotated[
        str, typer.Option(help="Trace to replay: gavel:sample (packaged), gavel:PATH, jsonl:PATH.")
    ] = "gavel:sample",
    throughputs: Annotated[
        Path | None, typer.Option(help="Gavel throughputs file (default: next to the trace).")
    ] = None,
    policy: Annotated[str, typer.Option(help="Placement policy.")] = "forecast-river",
    executors: Annotated[
        str,
        typer.Option(
            help="The executor fleet: CLASS=NODESxGPUS per GPU class, cpu=NODES "
            "(see `simulate --cluster`)."
        ),
    ] = DEFAULT_EXECUTORS,
    duration_s: Annotated[
        float, typer.Option("--duration-s", help="Target wall time of the replay, seconds.")
    ] = 120.0,
    warmup_s: Annotated[
        float,
        typer.Option("--warmup-s", min=0.0, help="Seconds the components get to start."),
    ] = 10.0,
    jobs: Annotated[
        int | None, typer.Option(min=1, help="Replay only the first N jobs (by arrival).")
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write the reports as JSON (the format of simulate --json)."),
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Logs and attempt files (default: a temp dir).")
    ] = None,
    timeout_s: Annotated[
        float | None,
        typer.Option(
            "--timeout-s",
            help="Give up after this many seconds (default: ten times the expected run).",
        ),
    ] = None,
    no_processor: Annotated[
        bool, typer.Option("--no-processor", help="Do not start the stream processor.")
    ] = False,
) -> None:
    """Run the live system on this machine (embedded broker unless KAFKA_BOOTSTRAP_SERVERS is
    set): stream processor, placement agent and a heterogeneous pool of replaying executors,
    fed with a real trace on a compressed clock; ends with the simulator's report table for
    the live and the simulated run."""
    if report is not None and not report.parent.is_dir():
        fail(f"--report {report}: directory {report.parent} does not exist")
    cfg = UpConfig(
        trace=trace,
        throughputs=throughputs,
        policy=policy,
        executors=executors,
        duration_s=duration_s,
        warmup_s=warmup_s,
        jobs=jobs,
        run_dir=run_dir,
        timeout_s=timeout_s,
        processor=not no_processor,
    )
    out = stdout_console()
    err = stderr_console()
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    view = _Progress(err)
    try:
        with cli_errors(), view:
            result = run_up(cfg, view.show, lambda line: view.note(line, out), stop)
    except (BrokerError, KafkaException, RuntimeError) as exc:
        typer.echo(f"error: up: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    _print_result(result, out)
    if report is not None:
        with cli_errors("--report"):
            report.write_text(json.dumps(json_safe(_report_json(result, cfg)), indent=2) + "\n")
        out.print(f"wrote {report}", markup=False, soft_wrap=True)
    if not result.complete:
        raise typer.Exit(1)


class _Progress:
    """Live progress on a terminal (rich Live), else a plain line every few seconds."""

    def __init__(self, console: object) -> None:
        from rich.console import Console

        assert isinstance(console, Console)
        self.console = console
        self.live: Live | None = None
        self._last_plain = 0.0
        self._started = time.monotonic()

    def __enter__(self) -> _Progress:
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def note(self, line: str, out: object) -> None:
        from rich.console import Console

        assert isinstance(out, Console)
        (self.live.console if self.live is not None else out).print(
            line, markup=False, soft_wrap=True
        )

    def show(self, snap: Snapshot, depth: dict[str, int]) -> None:
        if self.live is not None:
            self.live.update(_progress_view(snap, depth, time.monotonic() - self._started))
        elif time.monotonic() - self._last_plain >= PLAIN_PROGRESS_S:
            self._last_plain = time.monotonic()
            self.console.print(_progress_line(snap, depth), markup=False, soft_wrap=True)


def _mape(snap: Snapshot) -> str:
    return "-" if snap.forecast_mape is None else f"{100 * snap.forecast_mape:.0f}%"


def _progress_line(snap: Snapshot, depth: dict[str, int]) -> str:
    running = " ".join(f"{hw}={n}" for hw, n in sorted(snap.running.items())) or "none"
    queues = " ".join(f"{hw}={n}" for hw, n in sorted(depth.items())) or "-"
    return (
        f"t={human_duration(max(0.0, snap.trace_s))} submitted {snap.submitted}/{snap.total} "
        f"queued {snap.queued} (per class: {queues}) running {running} done {snap.done} "
        f"failed {snap.failed} forecast error {_mape(snap)}"
    )


def _progress_view(snap: Snapshot, depth: dict[str, int], elapsed: float) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"wall {elapsed:.0f} s",
        f"trace time {human_duration(max(0.0, snap.trace_s))}",
        f"executors {snap.nodes}",
        f"submitted {snap.submitted}/{snap.total}",
        f"done {snap.done}",
        f"failed {snap.failed}",
        f"forecast error (MAPE) {_mape(snap)}",
    )
    table = Table(title=None)
    for header in ("hardware", "queue depth", "running"):
        table.add_column(header, justify="left" if header == "hardware" else "right")
    for hw in sorted(set(depth) | set(snap.running)):
        table.add_row(hw, str(depth.get(hw, "-")), str(snap.running.get(hw, 0)))
    return Group(head, table)


def _print_result(result: UpResult, out: object) -> None:
    from rich.console import Console

    assert isinstance(out, Console)
    sim = result.simulated
    live = result.live
    sim.policy = f"{sim.policy} (simulated)"
    live.policy = f"{live.policy} (live)"
    out.print(report_table([sim, live]))
    agree = result.agreement()
    n = agree["tasks_compared"]
    if n:
        out.print(
            f"placements: {agree['same_hardware']} of {n} tasks first placed on the same "
            f"hardware class as in the simulation ({100 * agree['same_hardware_fraction']:.0f}%), "
            f"{agree['same_node']} on the same node ({100 * agree['same_node_fraction']:.0f}%)",
            markup=False,
            soft_wrap=True,
        )
    if agree["avg_jct_live_over_simulated"] is not None:
        out.print(
            f"avg JCT live / simulated: {agree['avg_jct_live_over_simulated']:.2f}x "
            f"(replayed {result.speedup:,.0f}x faster than real time)",
            markup=False,
            soft_wrap=True,
        )
    tracker = result.tracker
    out.print(
        f"tasks: {len(tracker.tasks)}, terminal {tracker.terminal}, "
        f"duplicate completions {tracker.duplicate_completions}"
        + (" (interrupted)" if result.interrupted else ""),
        markup=False,
        soft_wrap=True,
    )


def _report_json(result: UpResult, cfg: UpConfig) -> dict[str, object]:
    meta = {
        "mode": "live",
        "trace_spec": cfg.trace,
        "executors": cfg.executors,
        "speedup": result.speedup,
        "agreement": result.agreement(),
        "duplicate_completions": result.tracker.duplicate_completions,
        "terminal": result.tracker.terminal,
        "tasks": len(result.tracker.tasks),
        "interrupted": result.interrupted,
    }
    return {
        cfg.policy: {**result.live.to_dict(), "meta": meta},
        f"{cfg.policy}@simulated": {**result.simulated.to_dict(), "meta": {"mode": "simulated"}},
    }
