"""``streamsched bench core``: how a placement decision's cost grows with nodes and backlog
(the method is in :mod:`streamsched.benchcore`); ``streamsched bench pipeline``: latency
and throughput of the live pipeline on a broker (:mod:`streamsched.benchpipeline`);
``streamsched bench fuzz``: hostile input (:mod:`streamsched.fuzz`); ``streamsched bench
burst``: a burst of submissions, memory per process and nothing lost
(:mod:`streamsched.burst`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamsched.benchcore import BenchPoint, machine_info, run_grid
from streamsched.benchpipeline import BenchError, PipelineResult, RatePoint, run_pipeline_bench

from ._common import (
    cli_errors,
    finish_run,
    json_safe,
    machine_line,
    parse_int_list,
    parse_params,
    stderr_console,
    stdout_console,
)

__all__ = ["app"]

app = typer.Typer(help="Benchmarks.", no_args_is_help=True)


@app.command("core")
def core(
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write machine info and points as JSON.")
    ] = None,
    nodes: Annotated[str, typer.Option(help="Node counts, comma-separated.")] = "100,1000,10000",
    queued: Annotated[
        str, typer.Option(help="Queued-task counts, comma-separated.")
    ] = "1000,10000,100000",
    decisions: Annotated[
        int, typer.Option(min=1, help="Completion calls to time per grid point (at most).")
    ] = 2000,
    policy: Annotated[str, typer.Option(help="Policy to measure.")] = "forecast",
    param: Annotated[
        list[str] | None, typer.Option(help="Policy parameter KEY=VALUE (repeatable).")
    ] = None,
    budget_s: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Stop a grid point after this many seconds of measuring (setup not counted; "
            "0: no limit).",
        ),
    ] = 15.0,
    seed: Annotated[int, typer.Option(help="Seed of the workload.")] = 0,
    split: Annotated[
        bool,
        typer.Option(
            help="Time the scheduling decision alone: deliver each completion in an untimed "
            "call first (release, learning, re-keying), then time a Tick."
        ),
    ] = False,
) -> None:
    """Time SchedulerCore.handle for one completion (which frees room) at each
    (nodes x queued) point: latency p50/p99/max in microseconds, assignments per call."""
    node_counts = parse_int_list(nodes, "--nodes")
    queue_sizes = parse_int_list(queued, "--queued")
    params = parse_params(param)
    out, err = stdout_console(), stderr_console()
    info = machine_info()
    out.print(
        f"machine: {info['platform']}, Python {info['python']}, {info['cpu_count']} CPUs, "
        f"numpy {info['numpy']}",
        markup=False,
        soft_wrap=True,
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    progress = Progress(
        *columns, TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal
    )
    task = progress.add_task("setup", total=decisions)

    def on_decision(done: int, total: int) -> None:
        progress.update(task, completed=done, description="measuring")

    def on_point(point: BenchPoint) -> None:
        progress.console.print(_point_line(point), markup=False, soft_wrap=True)
        progress.update(task, completed=0, description="setup")

    with progress, cli_errors():
        points = run_grid(
            node_counts,
            queue_sizes,
            decisions,
            policy=policy,
            params=params,
            seed=seed,
            budget_s=budget_s if budget_s > 0 else math.inf,
            on_point=on_point,
            on_decision=on_decision,
            split=split,
        )
    out.print(_table(points, policy))
    if any(p.stopped_by_budget for p in points):
        out.print(
            f"some points stopped before {decisions} decisions after --budget-s "
            f"{budget_s:g} s of measuring (see the 'calls' column)",
            markup=False,
            soft_wrap=True,
        )
    if json_out is not None:
        config = {
            "policy": policy,
            "params": params,
            "nodes": node_counts,
            "queued": queue_sizes,
            "decisions": decisions,
            "budget_s": budget_s,
            "split": split,
            "seed": seed,
        }
        data = {"machine": info, "config": config, "points": [p.to_dict() for p in points]}
        with cli_errors("--json"):
            json_out.write_text(json.dumps(json_safe(data), indent=2) + "\n", "utf-8")
        out.print(f"wrote {json_out}", markup=False, soft_wrap=True)


def _point_line(p: BenchPoint) -> str:
    return (
        f"nodes={p.nodes} queued={p.queued_target}: p50 {p.p50_us:,.0f} us, "
        f"p99 {p.p99_us:,.0f} us over {p.decisions} calls (setup {p.setup_s:.1f} s)"
    )


def _table(points: list[BenchPoint], policy: str) -> Table:
    table = Table(title=f"core decision latency, policy {policy}", title_justify="left")
    headers = ["nodes", "queued", "running", "GPU alloc", "calls", "p50 us", "p99 us"]
    headers += ["max us", "assigns/call", "setup s"]
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)
    for p in points:
        table.add_row(
            f"{p.nodes:,}",
            f"{p.queued_at_start:,}",
            f"{p.running_at_start:,}",
            f"{100 * p.gpu_allocated_at_start:.0f}%",
            f"{p.decisions}",
            f"{p.p50_us:,.0f}",
            f"{p.p99_us:,.0f}",
            f"{p.max_us:,.0f}",
            f"{p.assigns_per_call:.2f}",
            f"{p.setup_s:.1f}",
        )
    return table


@app.command("pipeline")
def pipeline(
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write machine info and all figures as JSON.")
    ] = None,
    rates: Annotated[
        str, typer.Option(help="Offered submission rates per second, comma-separated.")
    ] = "500,1000,2000,4000",
    duration_s: Annotated[
        float, typer.Option(min=0.1, help="Seconds each rate is offered.")
    ] = 10.0,
    nodes: Annotated[int, typer.Option(min=1, help="Fake CPU nodes the tasks go to.")] = 64,
    pings: Annotated[int, typer.Option(min=1, help="Raw broker round trips to time.")] = 2000,
    journal: Annotated[
        bool,
        typer.Option(help="Run the placement agent with its journal (as deployed) or without."),
    ] = True,
) -> None:
    """Time the live pipeline on a broker (KAFKA_BOOTSTRAP_SERVERS, else an embedded one):
    the raw broker round trip, then submission-to-assignment latency and throughput of one
    placement agent process at rising offered rates (stops when it falls behind)."""
    rate_list = parse_int_list(rates, "--rates")
    out, err = stdout_console(), stderr_console()

    def on_stage(stage: str) -> None:
        err.print(f"[bench] {stage}", markup=False, soft_wrap=True)

    def on_point(point: RatePoint) -> None:
        err.print(_rate_line(point), markup=False, soft_wrap=True)

    with cli_errors():
        try:
            result = run_pipeline_bench(
                rate_list,
                duration_s,
                nodes,
                pings,
                on_point=on_point,
                on_stage=on_stage,
                journal=journal,
            )
        except BenchError as exc:
            raise ValueError(str(exc)) from None
    info = result.machine
    out.print(
        f"machine: {info['platform']}, Python {info['python']}, {info['cpu_count']} CPUs, "
        f"broker: {info['broker']}",
        markup=False,
        soft_wrap=True,
    )
    out.print(_pipeline_table(result))
    out.print(_profile_table(result))
    out.print(_verdict(result), markup=False, soft_wrap=True)
    if json_out is not None:
        with cli_errors("--json"):
            json_out.write_text(json.dumps(json_safe(result.to_dict()), indent=2) + "\n", "utf-8")
        out.print(f"wrote {json_out}", markup=False, soft_wrap=True)


def _rate_line(p: RatePoint) -> str:
    lat = p.latency
    return (
        f"{p.offered_per_s:,.0f}/s offered: {p.assigned}/{p.submitted} assigned, "
        f"{p.achieved_per_s:,.0f}/s achieved, p50 {lat.p50_ms:.2f} ms, p99 {lat.p99_ms:.2f} ms"
    )


def _pipeline_table(result: PipelineResult) -> Table:
    raw = result.raw
    table = Table(
        title=f"pipeline latency (raw broker round trip: p50 {raw.p50_ms:.2f} ms, "
        f"p99 {raw.p99_ms:.2f} ms over {raw.count})",
        title_justify="left",
    )
    headers = ["offered/s", "submitted", "assigned", "achieved/s", "p50 ms", "p99 ms"]
    headers += ["max ms", "p99 / raw p99", "kept up"]
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)
    for p in result.points:
        lat = p.latency
        ratio = lat.p99_ms / raw.p99_ms if raw.p99_ms > 0 else math.nan
        table.add_row(
            f"{p.offered_per_s:,.0f}",
            f"{p.submitted:,}",
            f"{p.assigned:,}",
            f"{p.achieved_per_s:,.0f}",
            f"{lat.p50_ms:.2f}",
            f"{lat.p99_ms:.2f}",
            f"{lat.max_ms:.2f}",
            f"{ratio:.1f}x",
            "yes" if p.kept_up else "no",
        )
    return table


def _profile_table(result: PipelineResult) -> Table:
    table = Table(
        title="where the placement agent's time goes (per batch, ms; share of wall time)",
        title_justify="left",
    )
    headers = ["offered/s", "batches", "records/batch", "decode", "core.handle"]
    headers += ["encode+produce", "flush", "commit", "cores: agent/broker/bench/other"]
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)
    for p in result.points:
        a = p.agent

        def part(name: str, a: dict[str, float] = a) -> str:
            return f"{a[name + '_ms_per_batch']:.2f} ({100 * a[name + '_share']:.0f}%)"

        table.add_row(
            f"{p.offered_per_s:,.0f}",
            f"{a['batches']:,.0f}",
            f"{a['records_per_batch']:.1f}",
            part("decode"),
            part("core"),
            part("publish"),
            part("flush"),
            part("commit"),
            _cores(p.cpu),
        )
    return table


def _cores(cpu: dict[str, float]) -> str:
    names = ("agent_cores", "broker_cores", "bench_cores", "other_cores")
    return "/".join("-" if math.isnan(cpu[n]) else f"{cpu[n]:.2f}" for n in names)


def _verdict(result: PipelineResult) -> str:
    point = result.ratio_point()
    where = f"{point.offered_per_s:,.0f}/s" if point is not None else "-"
    return (
        f"pipeline p99 / raw p99 at {where}: {result.ratio():.1f}x (target <= 5x); "
        f"sustained: {result.sustained_per_s():,.0f} submissions/s (target >= 2,000/s)"
    )


@app.command("fuzz")
def fuzz(
    malformed: Annotated[int, typer.Option(min=0, help="Malformed records to produce.")] = 10_000,
    valid: Annotated[int, typer.Option(min=0, help="Valid submissions interleaved.")] = 1_000,
    seed: Annotated[int, typer.Option(help="Seed of the generator.")] = 0,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="Leave out a malformed kind (repeatable), e.g. oversize."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON.")
    ] = None,
) -> None:
    """Produce malformed records interleaved with valid submissions to a live placement
    agent and processor (KAFKA_BOOTSTRAP_SERVERS, else an embedded broker); check that every
    malformed one is dead-lettered once with a reason, every valid one processed, and that
    no process died. Exits 1 when an invariant fails."""
    from streamsched.fuzz import FuzzError, run_fuzz

    err, out = stderr_console(), stdout_console()
    with cli_errors():
        try:
            result = run_fuzz(
                malformed,
                valid,
                seed,
                exclude=frozenset(exclude or ()),
                on_stage=lambda s: err.print(f"[fuzz] {s}", markup=False, soft_wrap=True),
            )
        except FuzzError as exc:
            raise ValueError(str(exc)) from None
    r = result
    rate = (r.malformed + r.valid) / max(r.produce_s + r.settle_s, 1e-9)
    rss = ", ".join(f"{k} {v:.0f} MiB" for k, v in r.peak_rss_mib.items())
    lines = (
        f"broker: {r.broker}; wall {r.wall_s:.1f} s (produce {r.produce_s:.1f} s, "
        f"settle {r.settle_s:.1f} s); {rate:,.0f} records/s end to end",
        f"malformed {r.malformed:,}: dead-lettered {r.dead_lettered:,} (with reason "
        f"{r.dead_lettered_with_reason:,}, twice {r.dead_lettered_twice}, bytes changed "
        f"{r.dead_letter_bytes_changed}), refused by the broker {r.refused_by_broker}",
        f"valid {r.valid:,}: processed {r.valid_processed:,} (audited {r.valid_audited:,}, in "
        f"the status view {r.valid_in_status_view:,}), dead-lettered {r.valid_dead_lettered}",
        f"crashes {r.crashes} (exit codes {r.exit_codes}); peak RSS: {rss}",
        *(f"{name} died; log tail:\n{log[-1500:]}" for name, log in r.crash_logs.items()),
        *r.missing[:20],
    )
    finish_run(out, lines, r, r.ok, json_out)


@app.command("burst")
def burst(
    count: Annotated[int, typer.Option(min=1, help="Submissions produced at once.")] = 100_000,
    executors: Annotated[int, typer.Option(min=1, help="CPU executor processes.")] = 4,
    slots: Annotated[int, typer.Option(min=1, help="One-CPU slots per executor.")] = 32,
    timeout_s: Annotated[
        float, typer.Option(min=1.0, help="Longest the run waits for every verdict.")
    ] = 900.0,
    idle_timeout_s: Annotated[
        float, typer.Option(min=1.0, help="Stop when no new verdict arrived this long.")
    ] = 60.0,
    view_timeout_s: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Then wait up to this long for the processor's status view to show every "
            "submission terminal, and report the memory then (0: do not wait).",
        ),
    ] = 0.0,
    run_dir: Annotated[
        Path | None, typer.Option(help="Logs of every process (default: a temporary dir).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the figures as JSON.")
    ] = None,
) -> None:
    """Produce COUNT submissions at once into the live system on an embedded broker
    (processor, placement agent and executors running `true`); account for every one
    (terminal, or rejected with a reason) and report each process's peak RSS. Exits 1 when
    a submission is unaccounted for, completed twice, or a process died."""
    from streamsched.burst import BurstConfig, BurstError, run_burst

    err, out = stderr_console(), stdout_console()
    cfg = BurstConfig(
        count=count,
        executors=executors,
        slots=slots,
        timeout_s=timeout_s,
        idle_timeout_s=idle_timeout_s,
        view_timeout_s=view_timeout_s,
        run_dir=run_dir,
    )

    def note(line: str) -> None:
        err.print(f"[burst] {line}", markup=False, soft_wrap=True)

    def progress(p: dict[str, Any]) -> None:
        note(f"{p['elapsed_s']:.0f} s: {p['verdicts']:,} of {p['count']:,} have a verdict")

    with cli_errors():
        try:
            result = run_burst(cfg, note=note, progress=progress)
        except BurstError as exc:
            raise ValueError(str(exc)) from None
    r = result
    m = r.machine
    out.print(_burst_table(r.to_dict()))
    rss = Table(title="memory (MiB) and CPU time per process", title_justify="left")
    headers = ["process", "peak RSS", "RSS at the last verdict"]
    headers += ["RSS once the view caught up"] if r.view_rss_mib else []
    for header in [*headers, "CPU s"]:
        rss.add_column(header, justify="right" if header != "process" else "left")
    for name, peak in sorted(r.peak_rss_mib.items()):
        end, cpu = r.end_rss_mib.get(name), r.cpu_s.get(name)
        row = [name, f"{peak:,.0f}", "-" if end is None else f"{end:,.0f}"]
        if r.view_rss_mib:
            then = r.view_rss_mib.get(name)
            row.append("-" if then is None else f"{then:,.0f}")
        rss.add_row(*row, "-" if cpu is None else f"{cpu:,.1f}")
    out.print(rss)
    lines = (
        machine_line(m),
        f"ended: {r.ended_by}; logs: {r.run_dir}",
        *(
            f"unaccounted (first 20): {' '.join(r.unaccounted_sample)}"
            for _ in [0]
            if r.unaccounted
        ),
        *(f"{name} died on its own; log tail:\n{log}" for name, log in r.crash_logs.items()),
    )
    finish_run(out, lines, r, r.ok, json_out)


def _burst_table(d: dict[str, Any]) -> Table:
    table = Table(title="burst: every submission accounted for", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    view = d.get("status_view") or {}
    view_states = ", ".join(
        f"{k} {v:,}" for k, v in sorted((view.get("per_state") or {}).items()) if v
    )
    rows = [
        ("submissions", f"{d['count']:,}"),
        ("produced", f"{d['produced']:,} in {d['produce_s']:.1f} s ({d['produce_per_s']:,.0f}/s)"),
        ("accepted", f"{d['accepted']:,}"),
        ("terminal (of accepted)", f"{d['terminal']:,}"),
        (
            "rejected (with a reason)",
            f"{d['rejected']:,} ({d['rejected'] - d['rejected_without_reason']:,})",
        ),
        ("unaccounted", f"{d['unaccounted']:,}"),
        ("duplicate completions", f"{d['duplicate_completions']:,}"),
        ("states", ", ".join(f"{k} {v:,}" for k, v in sorted(d["states"].items()))),
        ("all verdicts after", f"{d['drain_s']:.1f} s ({d['end_to_end_per_s']:,.0f} tasks/s)"),
        ("processor status view", f"{view.get('tasks') or 0:,} tasks: {view_states}"),
        (
            "status view caught up after",
            "-" if d["view_caught_up_s"] is None else f"{d['view_caught_up_s']:.1f} s",
        ),
        ("wall", f"{d['wall_s']:.1f} s"),
    ]
    for reason, n in d["rejection_reasons"].items():
        rows.append((f"rejected: {_clip(reason)}", f"{n:,}"))
    rows.append(("tasks placed more than once", f"{d['requeued_tasks']:,}"))
    for reason, n in d["requeue_reasons"].items():
        rows.append((f"re-placed: {_clip(reason)}", f"{n:,}"))
    for row in rows:
        table.add_row(*row)
    return table


def _clip(text: str, limit: int = 72) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
