"""PNG plots of simulation reports (``streamsched simulate --plot DIR``).

Matplotlib runs on the non-interactive ``Agg`` backend (no display needed); figures are
built with the object API, never ``pyplot``, so nothing global is left open.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure

from streamsched.scheduler.simulator import SimReport

__all__ = ["plot_fill_curve", "plot_jct_cdf", "plot_utilization", "write_plots"]

_SIZE = (8.0, 5.0)
_DPI = 120


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path


def plot_jct_cdf(reports: Sequence[SimReport], path: Path) -> Path:
    """Empirical CDF of job completion time per policy, hours on a log axis."""
    fig = Figure(figsize=_SIZE)
    ax = fig.add_subplot()
    for report in reports:
        hours = sorted(max(s, 1.0) / 3600.0 for s in report.jct_s)
        if hours:
            fractions = [(i + 1) / len(hours) for i in range(len(hours))]
            ax.step(hours, fractions, where="post", label=report.policy)
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (hours, log scale)")
    ax.set_ylabel("fraction of jobs")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(f"JCT CDF - {reports[0].trace}" if reports else "JCT CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_utilization(reports: Sequence[SimReport], path: Path) -> Path:
    """Allocated share of the cluster's GPUs over time per policy, hours on x."""
    fig = Figure(figsize=_SIZE)
    ax = fig.add_subplot()
    for report in reports:
        if report.utilization:
            hours = [t / 3600.0 for t, _ in report.utilization]
            percent = [100.0 * u for _, u in report.utilization]
            ax.step(hours, percent, where="post", label=report.policy, linewidth=0.8)
    ax.set_xlabel("time (hours)")
    ax.set_ylabel("GPUs allocated (%)")
    ax.set_ylim(0.0, 105.0)
    ax.set_title(f"GPU utilisation - {reports[0].trace}" if reports else "GPU utilisation")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_fill_curve(reports: Sequence[SimReport], path: Path) -> Path:
    """Unallocated share of the GPUs against arrived GPU demand (the packing experiment,
    ``--no-departures``), both in percent of the cluster's GPUs."""
    fig = Figure(figsize=_SIZE)
    ax = fig.add_subplot()
    for report in reports:
        if report.fill_curve:
            demand = [100.0 * d for d, _ in report.fill_curve]
            unallocated = [100.0 * u for _, u in report.fill_curve]
            ax.plot(demand, unallocated, label=report.policy, linewidth=0.9)
    if any(r.fill_curve for r in reports):
        top = max(100.0 * d for r in reports for d, _ in r.fill_curve)
        ax.plot(
            [0.0, min(top, 100.0), top],
            [100.0, max(0.0, 100.0 - top), 0.0],
            "k:",
            linewidth=0.8,
            label="perfect packing",
        )
    ax.set_xlabel("arrived GPU demand (% of cluster GPUs)")
    ax.set_ylabel("unallocated GPUs (%)")
    ax.set_title(
        f"Unallocated GPUs vs demand - {reports[0].trace}" if reports else "Unallocated GPUs"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    return _save(fig, path)


def write_plots(reports: Sequence[SimReport], out_dir: Path) -> list[Path]:
    """Every plot the reports have data for, as PNGs in ``out_dir`` (created if needed):
    ``jct_cdf.png`` and ``gpu_utilization.png`` when jobs finished (departures on),
    ``unallocated_gpu.png`` for the packing experiment. Returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if any(r.jct_s for r in reports):
        written.append(plot_jct_cdf(reports, out_dir / "jct_cdf.png"))
    if any(r.utilization for r in reports):
        written.append(plot_utilization(reports, out_dir / "gpu_utilization.png"))
    if any(r.fill_curve for r in reports):
        written.append(plot_fill_curve(reports, out_dir / "unallocated_gpu.png"))
    return written
