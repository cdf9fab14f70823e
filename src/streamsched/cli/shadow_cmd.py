"""``streamsched shadow-report``: compare a shadow policy's would-be placements with the
live ones, from ``sched.decisions`` (and ``sched.tasks.events`` for actual runtimes).

Bad input, no configured broker, an unreachable broker, or no shadow decision yet: one
``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from streamsched.broker import client_config
from streamsched.shadowreport import PolicyComparison, compare, read_records

from ._common import cli_errors, fail, json_safe, stdout_console
from .live import require_bootstrap
from .report import human_duration

__all__ = ["shadow_report"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(rows: list[PolicyComparison]) -> Table:
    table = Table(title="shadow vs live (same task attempts)", title_justify="left")
    headers = ["shadow", "live", "decisions", "paired", "same node", "same hw"]
    headers += ["pred. runtime shadow/live", "pred. completion shadow/live", "live wait"]
    headers += ["finished", "actual runtime (live)", "live pending"]
    for h in headers:
        table.add_column(h, justify="left" if h in ("shadow", "live") else "right")
    for r in rows:
        table.add_row(
            ", ".join(r.shadow_versions),
            ", ".join(r.live_policies) or "-",
            str(r.decisions),
            str(r.paired),
            _pct(r.agreement_node),
            _pct(r.agreement_hardware),
            f"{human_duration(r.mean_shadow_runtime_s)} / {human_duration(r.mean_live_runtime_s)}",
            f"{human_duration(r.mean_shadow_completion_s)} / "
            f"{human_duration(r.mean_live_completion_s)}",
            human_duration(r.mean_live_wait_s),
            str(r.finished),
            human_duration(r.mean_actual_runtime_s),
            str(r.live_pending),
        )
    return table


def shadow_report(
    since_s: Annotated[
        float | None,
        typer.Option(
            "--since-s",
            help="Only shadow decisions from the last N seconds (default: all on the topic).",
        ),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the comparison as JSON to this file."),
    ] = None,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", help="Give up reading the topics after this long.")
    ] = 30.0,
) -> None:
    """Compare the shadow policy's would-be placements with the live decisions: agreement
    (same node, same hardware class), mean predicted runtime and completion of each, and
    the actual runtime of the live placements that finished. Needs KAFKA_BOOTSTRAP_SERVERS."""
    if since_s is not None and not since_s > 0:
        fail(f"--since-s must be a positive number of seconds, got {since_s}")
    if not timeout_s > 0:
        fail(f"--timeout-s must be positive, got {timeout_s}")
    servers, settings = require_bootstrap("shadow report")
    since = datetime.now(UTC) - timedelta(seconds=since_s) if since_s is not None else None
    with cli_errors():
        records = read_records(client_config(servers, settings), timeout_s=timeout_s)
        rows = compare(records, since=since)
    stdout_console().print(_table(rows))
    if json_out is not None:
        with cli_errors("--json"):
            json_out.write_text(
                json.dumps(json_safe([r.to_dict() for r in rows]), indent=2, sort_keys=True) + "\n"
            )
