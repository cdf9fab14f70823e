"""How ``simulate`` shows its reports: one rich table, policies side by side, and the
average-JCT ratios against ``fifo`` and ``oracle``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.table import Table

from streamsched.scheduler.simulator import SimReport

__all__ = ["human_duration", "ratio_lines", "report_table"]

_UNITS = ((120.0, 1.0, "s"), (7200.0, 60.0, "min"), (259200.0, 3600.0, "h"))


def human_duration(seconds: float | None) -> str:
    """``44280.0`` -> ``"12.3 h"``: seconds below 2 min, minutes below 2 h, hours below
    3 days, then days; ``-`` for None or a non-finite value."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for limit, scale, unit in _UNITS:
        if abs(seconds) < limit:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds / 86400.0:.1f} d"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None or not math.isfinite(fraction) else f"{100 * fraction:.1f}%"


def report_table(reports: Sequence[SimReport], *, packing: bool = False) -> Table:
    """The reports as one table, policies as rows.

    ``packing`` (``--no-departures``): jobs never finish, so JCT, queue and utilisation
    columns would be empty; the table shows arrivals, placements, drops and the share of
    GPUs left unallocated instead.
    """
    table = Table(title=f"trace {reports[0].trace}" if reports else None, title_justify="left")
    headers = _PACKING_HEADERS if packing else _HEADERS
    for header in headers:
        left = header == "policy"
        table.add_column(header, justify="left" if left else "right", no_wrap=True)
    for r in reports:
        table.add_row(*(_packing_row(r) if packing else _row(r)))
    return table


_HEADERS: tuple[str, ...] = ("policy", "jobs", "avg JCT", "p50 JCT", "p95 JCT", "p99 JCT")
_HEADERS += ("makespan", "avg queue", "GPU util", "deadline misses", "runtime MAE")
_HEADERS += ("preempt", "wall s")
_PACKING_HEADERS: tuple[str, ...] = ("policy", "arrived", "placed", "dropped", "rejected")
_PACKING_HEADERS += ("unalloc GPU", "preempt", "wall s")


def _row(r: SimReport) -> list[str]:
    finished = r.jobs > 0
    jct = [r.avg_jct_s, r.p50_jct_s, r.p95_jct_s, r.p99_jct_s, r.makespan_s]
    row = [r.policy, f"{r.jobs}", *(human_duration(v) if finished else "-" for v in jct)]
    row += [human_duration(r.avg_queue_s), _percent(r.gpu_utilization)]
    row += [f"{r.deadline_misses}", human_duration(r.runtime_mae_s)]
    return [*row, f"{r.preemptions}", f"{r.wall_s:.2f}"]


def _packing_row(r: SimReport) -> list[str]:
    placed = r.submitted - r.dropped_unplaceable - r.rejected
    row = [r.policy, f"{r.submitted}", f"{placed}", f"{r.dropped_unplaceable}", f"{r.rejected}"]
    return [*row, _percent(r.unallocated_gpu_fraction), f"{r.preemptions}", f"{r.wall_s:.2f}"]


def ratio_lines(reports: Sequence[SimReport]) -> list[str]:
    """``avg JCT vs fifo`` (fifo's average over each policy's: >1 is faster than fifo) and
    ``avg JCT vs oracle`` (each policy's average over oracle's: 1.00x is the limit), when
    those policies ran and jobs finished."""
    by_name = {r.policy: r for r in reports if r.jobs > 0 and r.avg_jct_s > 0}
    lines = []
    fifo = by_name.get("fifo")
    others = [r for r in by_name.values() if r.policy != "fifo"]
    if fifo is not None and others:
        parts = [f"{r.policy} {fifo.avg_jct_s / r.avg_jct_s:.2f}x" for r in others]
        lines.append("avg JCT speed-up vs fifo (fifo avg / policy avg): " + ", ".join(parts))
    oracle = by_name.get("oracle")
    others = [r for r in by_name.values() if r.policy != "oracle"]
    if oracle is not None and others:
        parts = [f"{r.policy} {r.avg_jct_s / oracle.avg_jct_s:.2f}x" for r in others]
        lines.append("avg JCT vs oracle (policy avg / oracle avg): " + ", ".join(parts))
    return lines
