"""``streamsched forecast-eval load``: score the load (arrival) forecaster on a series.

Either ``--series CSV`` (one column of a regular series) or ``--trace SPEC`` (arrivals per
``--interval-s`` derived from a trace, optionally written with ``--derive-out``). The lead
registers :func:`load` on the ``forecast-eval`` group; this module defines no app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from streamsched.loadeval import (
    ALL,
    RIVER_MODEL,
    ModelScore,
    derive_series,
    evaluate_series,
    read_series_csv,
    write_series_csv,
)

from ._common import cli_errors, fail, json_safe, stdout_console

SECONDS_PER_DAY = 86_400.0


def load(
    series: Annotated[
        Path | None, typer.Option(help="CSV of a regular series to evaluate (or use --trace).")
    ] = None,
    time_col: Annotated[
        str, typer.Option(help="Time column of the CSV: seconds or ISO 8601.")
    ] = "time_s",
    value_col: Annotated[
        str, typer.Option(help="Value column to evaluate (with --trace: all, any or a class).")
    ] = ALL,
    trace: Annotated[
        str | None,
        typer.Option(help="Derive arrivals from a trace: gavel:PATH, openb:PATH, jsonl:PATH."),
    ] = None,
    throughputs: Annotated[
        Path | None, typer.Option(help="Gavel throughputs file (default: next to the trace).")
    ] = None,
    interval_s: Annotated[
        float, typer.Option(help="Interval of the derived series, seconds.")
    ] = 600.0,
    season: Annotated[
        int | None,
        typer.Option(help="Intervals per season (default: one day of the series' interval)."),
    ] = None,
    warmup: Annotated[
        int | None,
        typer.Option(help="Leading intervals learned but not scored (default: one season)."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write {model: scores, meta: ...} as JSON.")
    ] = None,
    derive_out: Annotated[
        Path | None, typer.Option(help="With --trace: write the derived series as CSV.")
    ] = None,
) -> None:
    """Score one-step-ahead load forecasts: the River model against naive baselines."""
    if (series is None) == (trace is None):
        fail("give exactly one of --series CSV or --trace SPEC")
    if derive_out is not None and trace is None:
        fail("--derive-out needs --trace")
    with cli_errors():
        values, step_s, source = _values(
            series, trace, throughputs, time_col, value_col, interval_s, derive_out
        )
        season_n = season if season is not None else max(1, round(SECONDS_PER_DAY / step_s))
        scores, meta = evaluate_series(values, season=season_n, warmup=warmup)
    meta.update(source=source, column=value_col, interval_s=step_s)
    stdout_console().print(_table(scores, meta))
    if json_out is not None:
        out = {name: s.as_dict() for name, s in scores.items()} | {"meta": meta}
        with cli_errors("--json"):
            json_out.write_text(json.dumps(json_safe(out), indent=2) + "\n", encoding="utf-8")


def _values(
    series: Path | None,
    trace: str | None,
    throughputs: Path | None,
    time_col: str,
    value_col: str,
    interval_s: float,
    derive_out: Path | None,
) -> tuple[list[float], float, str]:
    if series is not None:
        values, step_s = read_series_csv(series, time_col, value_col)
        return values, step_s, str(series)
    assert trace is not None
    from streamsched.traces import load_trace  # lazy: only the trace path needs loaders

    derived = derive_series(load_trace(trace, throughputs=throughputs), interval_s)
    if derive_out is not None:
        write_series_csv(derived, derive_out, time_col)
    if value_col not in derived.columns:
        raise ValueError(
            f"--value-col {value_col!r}: trace {trace} has series {', '.join(derived.columns)}"
        )
    return derived.columns[value_col], interval_s, trace


def _table(scores: dict[str, ModelScore], meta: dict[str, object]) -> Table:
    source = f"{escape(str(meta['source']))} \\[{meta['column']}]"
    table = Table(
        title=(
            f"load forecasts, {source}: {meta['scored']} steps scored, "
            f"mean {meta['mean']:.3g}, zeros {meta['zero_share']:.0%}"
        ),
        caption=f"{meta['mape_note']}; MAE of always 0: {meta['mae_of_zero_forecast']:.4g}",
    )
    for col in ("model", "mae", "vs naive", "mape", "coverage", "learn µs p50", "predict µs p50"):
        table.add_column(col, justify="left" if col == "model" else "right")
    naive = scores["naive"].mae
    for name, s in scores.items():
        table.add_row(
            name + (" (ensemble)" if name == RIVER_MODEL else ""),
            f"{s.mae:.4f}",
            f"{(s.mae / naive - 1):+.1%}" if naive > 0 else "-",
            "-" if s.mape is None else f"{s.mape:.3f}",
            "-" if s.interval_coverage is None else f"{s.interval_coverage:.1%}",
            f"{s.learn_us_p50:.1f}",
            f"{s.predict_us_p50:.1f}",
        )
    return table
