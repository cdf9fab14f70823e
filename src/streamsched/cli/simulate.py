"""``streamsched simulate``: replay a trace through one or every policy on a simulated fleet.

Loading (trace, cluster, parameters) is checked at the edge: bad input ends as one
``error:`` line and exit code 2. The simulations themselves run outside that net, so a bug
in the core still shows its traceback.
"""

from __future__ import annotations

import enum
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamsched.scheduler.model import NodeSpec
from streamsched.scheduler.policies import POLICY_NAMES, Policy, get_policy
from streamsched.scheduler.simulator import SimConfig, SimReport, Simulator
from streamsched.scheduler.trace import Trace
from streamsched.traces import load_trace, parse_cluster

from ._common import cli_errors, fail, json_safe, parse_params, stderr_console, stdout_console
from .report import ratio_lines, report_table

__all__ = ["SimulateArgs", "run_simulate", "simulate"]


class WideJobs(enum.StrEnum):
    reject = "reject"
    clamp = "clamp"


@dataclass(frozen=True, slots=True)
class SimulateArgs:
    """The ``simulate`` options, as ``demo`` and tests can build them too."""

    trace: str
    cluster: str | None = None
    throughputs: Path | None = None
    nodes: Path | None = None
    policy: str = "forecast"
    json_out: Path | None = None
    departures: bool = True
    fill: float = 1.0
    gpus_per_node: int = 8
    wide_jobs: str = "clamp"
    params: Sequence[str] = field(default_factory=tuple)
    seed: int = 0
    plot_dir: Path | None = None


def simulate(
    trace: Annotated[
        str,
        typer.Option(
            help="KIND:PATH with KIND gavel, openb or jsonl; gavel:sample is the packaged "
            "Gavel sample."
        ),
    ],
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Simulated fleet, e.g. v100=4,p100=4,k80=4 (CLASS=GPUS, CLASS=NODESxGPUS, "
            "cpu=NODES). Required for gavel and jsonl traces; overrides openb's node list."
        ),
    ] = None,
    throughputs: Annotated[
        Path | None,
        typer.Option(help="Gavel throughputs JSON (default: next to the trace)."),
    ] = None,
    nodes: Annotated[
        Path | None,
        typer.Option(help="openb node list CSV (default: next to the pod list)."),
    ] = None,
    policy: Annotated[
        str,
        typer.Option(
            help=f"A policy, a comma-separated list, or 'all': {', '.join(POLICY_NAMES)}."
        ),
    ] = "forecast",
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write {policy: report} as JSON to this file."),
    ] = None,
    departures: Annotated[
        bool,
        typer.Option(
            help="--no-departures: jobs never finish; arrivals stop at --fill times the "
            "cluster's GPUs (the packing experiment)."
        ),
    ] = True,
    fill: Annotated[
        float, typer.Option(help="Target GPU demand / cluster GPUs with --no-departures.")
    ] = 1.0,
    gpus_per_node: Annotated[
        int, typer.Option(help="Node size when --cluster gives CLASS=GPUS.")
    ] = 8,
    wide_jobs: Annotated[
        WideJobs,
        typer.Option(
            help="Gavel jobs wider than the largest node, or whose width has no throughput "
            "data: clamp them to the widest measured width that fits, or reject them."
        ),
    ] = WideJobs.clamp,
    param: Annotated[
        list[str] | None,
        typer.Option(help="Policy parameter KEY=VALUE (repeatable), e.g. sjf_weight=2."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulation.")] = 0,
    plot: Annotated[Path | None, typer.Option(help="Write PNG plots into this directory.")] = None,
) -> None:
    """Replay a trace through one or every policy and compare the results."""
    run_simulate(
        SimulateArgs(
            trace=trace,
            cluster=cluster,
            throughputs=throughputs,
            nodes=nodes,
            policy=policy,
            json_out=json_out,
            departures=departures,
            fill=fill,
            gpus_per_node=gpus_per_node,
            wide_jobs=wide_jobs.value,
            params=tuple(param or ()),
            seed=seed,
            plot_dir=plot,
        )
    )


def run_simulate(args: SimulateArgs) -> dict[str, SimReport]:
    """Load, run every requested policy, print the table; write JSON and plots."""
    policies = _policies(args.policy, parse_params(list(args.params)))
    if not (math.isfinite(args.fill) and args.fill > 0):
        fail(f"--fill must be a positive number, got {args.fill}")
    if args.json_out is not None and not args.json_out.parent.is_dir():
        fail(f"--json {args.json_out}: directory {args.json_out.parent} does not exist")
    trace, nodes = _load(args)
    out = stdout_console()
    out.print(_describe_setup(args, trace, nodes), soft_wrap=True)
    for note in trace.notes:
        out.print(f"  note: {note}", soft_wrap=True, markup=False)
    if args.plot_dir is not None:
        from streamsched import plots  # selects matplotlib's Agg backend: no display needed

        with cli_errors("--plot"):
            args.plot_dir.mkdir(parents=True, exist_ok=True)
    config = SimConfig(departures=args.departures, fill=args.fill, seed=args.seed)
    reports = _run_all(trace, nodes, policies, config)
    out.print(report_table(list(reports.values()), packing=not args.departures))
    for line in ratio_lines(list(reports.values())):
        out.print(line, soft_wrap=True, markup=False)
    if args.json_out is not None:
        meta = _meta(args, trace, nodes)
        data = {
            name: {**r.to_dict(), "meta": {**meta, "policy_version": policies[i].version}}
            for i, (name, r) in enumerate(reports.items())
        }
        with cli_errors("--json"):
            args.json_out.write_text(json.dumps(json_safe(data), indent=2) + "\n", "utf-8")
        out.print(f"wrote {args.json_out}", soft_wrap=True, markup=False)
    if args.plot_dir is not None:
        with cli_errors("--plot"):
            for path in plots.write_plots(list(reports.values()), args.plot_dir):
                out.print(f"wrote {path}", soft_wrap=True, markup=False)
    return reports


def _policies(spec: str, params: dict[str, float]) -> list[Policy]:
    names = list(POLICY_NAMES) if spec.strip() == "all" else [s.strip() for s in spec.split(",")]
    if len(set(names)) != len(names):
        fail(f"--policy {spec!r}: a policy is named twice")
    with cli_errors("--policy"):
        return [get_policy(name, **params) for name in names]


def _load(args: SimulateArgs) -> tuple[Trace, tuple[NodeSpec, ...]]:
    kind = args.trace.partition(":")[0].strip().lower()
    if args.throughputs is not None and kind != "gavel":
        fail(f"--throughputs applies to gavel traces only, not {args.trace!r}")
    if args.nodes is not None and kind != "openb":
        fail(f"--nodes applies to openb traces only, not {args.trace!r}")
    if args.cluster is None and kind in ("gavel", "jsonl"):
        fail(
            f"--cluster is required for {kind} traces (e.g. --cluster v100=4,p100=4,k80=4); "
            "only openb traces bring their own nodes"
        )
    nodes: tuple[NodeSpec, ...] = ()
    if args.cluster is not None:
        with cli_errors("--cluster"):
            nodes = parse_cluster(args.cluster, gpus_per_node=args.gpus_per_node)
    widest = max((n.gpus for n in nodes), default=0)
    with cli_errors():
        trace = load_trace(
            args.trace,
            throughputs=args.throughputs,
            nodes=args.nodes,
            departures=args.departures,
            wide_jobs=args.wide_jobs,
            max_gpus_per_job=widest or None,
        )
    nodes = nodes or trace.nodes
    if not nodes:
        fail(f"{args.trace}: no nodes to simulate on; give --cluster")
    if not trace.jobs:
        fail(f"{args.trace}: no jobs to simulate ({'; '.join(trace.notes) or 'empty trace'})")
    return trace, nodes


def _fleet(nodes: Sequence[NodeSpec]) -> str:
    gpus: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for n in nodes:
        count[n.hardware] += 1
        gpus[n.hardware] += n.gpus
    parts = [
        f"{hw} {count[hw]} node{'s' if count[hw] > 1 else ''}"
        + (f"/{gpus[hw]} GPUs" if gpus[hw] else "")
        for hw in sorted(count)
    ]
    return ", ".join(parts)


def _describe_setup(args: SimulateArgs, trace: Trace, nodes: Sequence[NodeSpec]) -> str:
    mode = "departures" if args.departures else f"no departures, fill {args.fill:g}"
    skipped = f", {len(trace.skipped)} skipped by the loader" if trace.skipped else ""
    return (
        f"[bold]{escape(trace.name)}[/bold]: {len(trace.jobs)} jobs{skipped}; "
        f"fleet: {_fleet(nodes)}; {mode}; seed {args.seed}"
    )


def _run_all(
    trace: Trace, nodes: Sequence[NodeSpec], policies: Sequence[Policy], config: SimConfig
) -> dict[str, SimReport]:
    console = stderr_console()
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    reports: dict[str, SimReport] = {}
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as bar:
        for policy in policies:
            task = bar.add_task(policy.name, total=len(trace.jobs))

            def on_progress(done: int, total: int, task: Any = task) -> None:
                bar.update(task, completed=done, total=total)

            sim = Simulator(
                trace,
                nodes,
                policy,
                config=config,
                on_progress=on_progress,
                clock=time.perf_counter,
            )
            reports[policy.name] = sim.run()
            bar.remove_task(task)
    return reports


def _meta(args: SimulateArgs, trace: Trace, nodes: Sequence[NodeSpec]) -> dict[str, Any]:
    hardware: Counter[str] = Counter()
    for n in nodes:
        hardware[n.hardware] += n.gpus
    return {
        "trace": trace.name,
        "trace_spec": args.trace,
        "cluster": args.cluster if args.cluster is not None else "from the trace's node list",
        "nodes": len(nodes),
        "gpus": sum(n.gpus for n in nodes),
        "gpus_by_hardware": dict(sorted(hardware.items())),
        "loader_notes": list(trace.notes),
        "skipped_by_loader": len(trace.skipped),
        "departures": args.departures,
        "fill": args.fill,
        "seed": args.seed,
        "params": parse_params(list(args.params)),
    }
