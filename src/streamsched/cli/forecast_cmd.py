"""``streamsched forecast-eval``: score runtime forecasters on a trace.

``forecast-eval runtime`` replays a trace by delayed progressive validation
(:mod:`streamsched.forecasteval`) and prints one row per model. Bad input ends as one
``error:`` line and exit code 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from streamsched.forecasteval import HARDWARE_CHOICE, ModelScore, evaluate_runtime
from streamsched.traces import load_trace

from ._common import cli_errors, json_safe, stdout_console

__all__ = ["forecast_app", "runtime"]

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
