"""``streamsched forecast-eval``: score runtime forecasters on a trace.

``forecast-eval runtime`` replays a trace by delayed progressive validation
(:mod:`streamsched.forecasteval`) and prints one row per model. ``forecast-eval
warm-restart`` replays a trace through a real processor that is restarted halfway
(:mod:`streamsched.warmrestart`) and prints its prequential error before and after the
restart, with and without restoring its models. Bad input ends as one ``error:`` line and
exit code 2.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from streamsched.forecasteval import HARDWARE_CHOICE, ModelScore, evaluate_runtime
from streamsched.traces import load_trace

from ._common import cli_errors, json_safe, stdout_console

__all__ = ["forecast_app", "runtime", "warm_restart"]

forecast_app = typer.Typer(
    help="Evaluate forecasters on traces (delayed progressive validation).",
    no_args_is_help=True,
)


@forecast_app.callback()
def _group() -> None:
    """Evaluate forecasters on traces (delayed progressive validation)."""


@forecast_app.command("runtime")
def runtime(
    trace: Annotated[
        str,
        typer.Option(help="gavel:PATH, jsonl:PATH or openb:PATH; gavel:sample is packaged."),
    ],
    throughputs: Annotated[
        Path | None,
        typer.Option(help="Gavel throughputs JSON (default: next to the trace)."),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write {model: scores, 'meta': {...}} as JSON here."),
    ] = None,
) -> None:
    """Score the River runtime forecaster and the baselines on a trace."""
    with cli_errors("--trace"):
        loaded = load_trace(trace, throughputs=throughputs)
    with cli_errors():
        scores = evaluate_runtime(loaded)
    result = build_result(trace, loaded.name, len(loaded.jobs), scores)
    _print_table(trace, scores, result["meta"])
    if json_out is not None:
        with cli_errors("--json"):
            json_out.write_text(json.dumps(json_safe(result), indent=2) + "\n")


def build_result(spec: str, name: str, jobs: int, scores: dict[str, ModelScore]) -> dict[str, Any]:
    """The JSON document: ``{model: scores, "meta": {...}}``."""
    result: dict[str, Any] = {model: score.as_dict() for model, score in scores.items()}
    meta: dict[str, Any] = {
        "trace": spec,
        "trace_name": name,
        "jobs": jobs,
        "protocol": "delayed progressive validation (labels revealed at arrival + runtime)",
        "hardware_choice": HARDWARE_CHOICE,
    }
    if "river-linear" in scores and "dask-like" in scores:
        dask = scores["dask-like"].mae_s
        meta["mae_reduction_vs_dask_like"] = (
            1 - scores["river-linear"].mae_s / dask if dask > 0 else math.nan
        )
    result["meta"] = meta
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def _print_table(spec: str, scores: dict[str, ModelScore], meta: dict[str, Any]) -> None:
    table = Table(title=f"runtime forecasters on {spec} ({meta['jobs']} jobs)")
    for column in (
        "model",
        "MAE s",
        "MAPE",
        "median APE",
        "coverage",
        "learn µs p50",
        "predict µs p50",
    ):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, s in scores.items():
        table.add_row(
            name,
            _fmt(s.mae_s, ",.0f"),
            _fmt(s.mape, ".3f"),
            _fmt(s.median_ape, ".3f"),
            _fmt(s.interval_coverage, ".2f"),
            _fmt(s.learn_us_p50, ".1f"),
            _fmt(s.predict_us_p50, ".1f"),
        )
    console = stdout_console()
    console.print(table)
    if "mae_reduction_vs_dask_like" in meta:
        console.print(
            f"river-linear MAE vs dask-like: {_fmt(meta['mae_reduction_vs_dask_like'], '+.1%')} "
            "reduction"
        )


@forecast_app.command("warm-restart")
def warm_restart(
    trace: Annotated[
        str,
        typer.Option(help="gavel:PATH, jsonl:PATH or openb:PATH (>= 2 x --per-phase jobs)."),
    ],
    throughputs: Annotated[
        Path | None,
        typer.Option(help="Gavel throughputs JSON (default: next to the trace)."),
    ] = None,
    per_phase: Annotated[
        int, typer.Option(min=1, help="Completions before, and after, the restart.")
    ] = 500,
    kill: Annotated[
        bool,
        typer.Option(
            "--kill/--terminate",
            help="Restart by SIGKILL (after the periodic checkpoint) instead of SIGTERM.",
        ),
    ] = False,
    only: Annotated[
        str | None, typer.Option(help="Run only 'warm' or only 'cold' (default: both).")
    ] = None,
    log: Annotated[
        Path | None, typer.Option(help="Append the processors' output to this file.")
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write {mode: {before, after, ...}, 'meta': {...}} here."),
    ] = None,
) -> None:
    """Prove warm restarts: the processor's prequential error over the completions
    before and after a restart, restoring its models (warm) or not (cold)."""
    from streamsched.warmrestart import run_warm_restart

    if only is not None and only not in ("warm", "cold"):
        raise typer.BadParameter(f"{only!r}: expected warm or cold", param_hint="--only")
    with cli_errors("--trace"):
        loaded = load_trace(trace, throughputs=throughputs)
    console = stdout_console()
    with cli_errors():
        result = run_warm_restart(
            loaded,
            per_phase=per_phase,
            modes=(only,) if only else ("warm", "cold"),
            kill=kill,
            log_path=str(log) if log is not None else os.devnull,
            progress=lambda line: console.print(line, style="dim"),
        )
    _print_warm_restart(trace, result)
    if json_out is not None:
        with cli_errors("--json"):
            json_out.write_text(json.dumps(json_safe(result), indent=2) + "\n")


def _print_warm_restart(spec: str, result: dict[str, Any]) -> None:
    meta = result["meta"]
    table = Table(
        title=f"processor prequential error around a restart on {spec} "
        f"({meta['per_phase']} completions before, {meta['per_phase']} after; "
        f"{meta['restart']})"
    )
    for column in ("run", "MAE s before", "MAE s after", "|log| before", "|log| after", "bar"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for mode in ("continuous", "warm", "cold"):
        if mode not in result:
            continue
        before, after = result[mode]["before"], result[mode]["after"]
        bar = (
            after["mae_s"] <= before["mae_s"]
            and after["mean_log_error"] <= before["mean_log_error"]
        )
        table.add_row(
            mode,
            _fmt(before["mae_s"], ",.0f"),
            _fmt(after["mae_s"], ",.0f"),
            _fmt(before["mean_log_error"], ".3f"),
            _fmt(after["mean_log_error"], ".3f"),
            "met" if bar else "NOT met",
        )
    console = stdout_console()
    console.print(table)
    for mode in ("warm", "cold"):
        if mode in result:
            console.print(f"{mode}: restored from {result[mode]['restored_from']}")
    console.print(
        "bar: error over the completions after the restart no worse than before it "
        "(both MAE and mean |log error|)"
    )
