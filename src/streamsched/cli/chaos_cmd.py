"""``streamsched chaos``: kill executors, the processor and the placement agent of a live
system on an embedded broker while it runs real tasks; check that nothing is lost or
completed twice (the method and definitions are in :mod:`streamsched.chaos`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ._common import cli_errors, finish_run, machine_line, stderr_console, stdout_console

__all__ = ["chaos"]


def chaos(
    tasks: Annotated[int, typer.Option(min=1, help="Tasks to submit.")] = 2000,
    kills: Annotated[
        int, typer.Option(min=0, help="Executors to SIGKILL (each restarts, same node id).")
    ] = 10,
    restarts: Annotated[
        int, typer.Option(min=0, help="Processor restarts (SIGKILL, start again).")
    ] = 2,
    placement_restarts: Annotated[
        int | None,
        typer.Option(min=0, help="Placement-agent restarts (default: same as --restarts)."),
    ] = None,
    executors: Annotated[int, typer.Option(min=2, help="Executor processes.")] = 4,
    slots: Annotated[int, typer.Option(min=1, help="Slots (CPUs, GPUs) per executor.")] = 4,
    task_s: Annotated[
        float, typer.Option(min=0.0, help="Each task runs `sleep TASK_S` (0: `true`).")
    ] = 0.2,
    rate: Annotated[
        float | None,
        typer.Option(
            help="Submissions per second (default: spread over max(tasks/50, 6 s per fault))."
        ),
    ] = None,
    restart_delay_s: Annotated[
        float, typer.Option(min=0.0, help="Seconds a killed executor stays down.")
    ] = 1.0,
    timeout_s: Annotated[
        float, typer.Option(min=0.0, help="Longest wait after the last submission.")
    ] = 240.0,
    idle_timeout_s: Annotated[
        float,
        typer.Option(min=0.0, help="After the last fault, stop when no task ended this long."),
    ] = 45.0,
    seed: Annotated[int, typer.Option(help="Seed of the fault order and the victims.")] = 0,
    run_dir: Annotated[
        Path | None, typer.Option(help="Logs of every process (default: a temporary dir).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write every figure as JSON.")
    ] = None,
) -> None:
    """Fault injection on the live system (embedded broker, real subprocesses, real
    commands): SIGKILL random executors and restart them, restart the processor and the
    placement agent, and count from the Kafka topics what became of every task. Exits 1
    unless lost == 0, duplicate_completions == 0 and terminal == tasks."""
    from streamsched.chaos import ChaosConfig, ChaosError, run_chaos

    out, err = stdout_console(), stderr_console()
    cfg = ChaosConfig(
        tasks=tasks,
        kills=kills,
        processor_restarts=restarts,
        placement_restarts=restarts if placement_restarts is None else placement_restarts,
        executors=executors,
        slots=slots,
        task_s=task_s,
        rate=rate,
        restart_delay_s=restart_delay_s,
        timeout_s=timeout_s,
        idle_timeout_s=idle_timeout_s,
        seed=seed,
        run_dir=run_dir,
    )

    def note(line: str) -> None:
        err.print(f"[chaos] {line}", markup=False, soft_wrap=True)

    def progress(p: dict[str, Any]) -> None:
        if err.is_terminal or int(p["elapsed_s"]) % 10 == 0:
            note(
                f"{p['elapsed_s']:.0f} s: submitted {p['submitted']}, terminal "
                f"{p['terminal']}, faults {p['faults']}/{p['of_faults']}"
            )

    with cli_errors():
        try:
            result = run_chaos(cfg, note=note, progress=progress)
        except ChaosError as exc:
            raise ValueError(str(exc)) from None
    r = result
    out.print(_summary(r.to_dict()))
    out.print(_faults(r.faults))
    rss = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.peak_rss_mib.items()))
    m = r.machine
    lines = (
        machine_line(m),
        f"peak RSS (MiB): {rss}",
        "CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(r.cpu_s.items())),
        f"ended: {r.ended_by}; logs: {r.run_dir}",
        *(f"lost (first {len(r.lost_sample)}): {' '.join(r.lost_sample)}" for _ in [0] if r.lost),
        *(f"duplicates: {' '.join(r.duplicate_sample)}" for _ in [0] if r.duplicate_completions),
        *(f"{name} died on its own; log tail:\n{log}" for name, log in r.crash_logs.items()),
    )
    finish_run(out, lines, r, r.ok, json_out)


def _summary(d: dict[str, Any]) -> Table:
    table = Table(title="chaos: what became of every task", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("required", justify="right")
    rec = d["max_recovery_s"]
    rows = [
        ("tasks", f"{d['tasks']:,}", ""),
        ("terminal", f"{d['terminal']:,}", f"= {d['tasks']:,}"),
        ("lost", f"{d['lost']:,} (never placed {d['lost_never_placed']:,})", "0"),
        ("duplicate completions", f"{d['duplicate_completions']:,}", "0"),
        ("states", ", ".join(f"{k} {v:,}" for k, v in sorted(d["states"].items())), ""),
        ("executor kills", str(d["executor_kills"]), ""),
        ("processor restarts", str(d["processor_restarts"]), ""),
        ("placement restarts", str(d["placement_restarts"]), ""),
        ("max recovery", "never (see faults)" if rec is None else f"{rec:.2f} s", ""),
        ("unrecovered faults", str(d["unrecovered_faults"]), ""),
        (
            "redelivered / stale attempt events",
            f"{d['redelivered_events']:,} / {d['stale_attempt_events']:,}",
            "",
        ),
        ("attempts placed", f"{d['attempts']['placed']:,}", ""),
        ("wall", f"{d['wall_s']:.1f} s (run {d['run_s']:.1f} s)", ""),
    ]
    view = d.get("status_view") or {}
    if view.get("answered"):
        per_state = view.get("per_state") or {}
        shown = ", ".join(f"{k} {v:,}" for k, v in sorted(per_state.items()) if v)
        rows.append(("processor status view", f"{view.get('tasks', 0):,} tasks: {shown}", ""))
    for row in rows:
        table.add_row(*row)
    return table


def _faults(faults: list[dict[str, Any]]) -> Table:
    table = Table(title="faults (seconds from the first submission)", title_justify="left")
    for header in ("#", "kind", "target", "at s", "in flight", "recovery s", "detail"):
        table.add_column(header, justify="right" if header != "detail" else "left")
    for i, f in enumerate(faults):
        extra = {k: v for k, v in f.items() if k in ("view_answering_s",)}
        rec = f["recovery_s"]
        table.add_row(
            str(i + 1),
            f["kind"],
            f["target"],
            "-" if f["injected_at_s"] is None else f"{f['injected_at_s']:.1f}",
            str(f["inflight_attempts"]) if f["kind"] == "executor" else "",
            "never" if rec is None else f"{rec:.2f}",
            ", ".join(f"{k}={v}" for k, v in extra.items()),
        )
    return table
