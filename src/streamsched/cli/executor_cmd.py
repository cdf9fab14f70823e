"""``streamsched executor``: run this machine as an executor node of an existing cluster.

The executor joins the broker named by ``KAFKA_BOOTSTRAP_SERVERS`` (it never starts one:
an embedded broker private to the executor would have no scheduler). Ctrl-C or SIGTERM
stops running attempts (reporting each as ``task.lost``, so the scheduler re-queues it),
flushes the reports and leaves cleanly. ``--metrics-port`` serves Prometheus metrics on
127.0.0.1 and prints ``metrics: http://127.0.0.1:PORT/metrics`` on stdout. See
docs/executor.md.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer

from streamsched import metrics
from streamsched.agents.executor import ExecutorAgent
from streamsched.agents.runner import ExecAllowList
from streamsched.broker import client_config
from streamsched.scheduler.model import NodeSpec
from streamsched.schemas.hardware import KNOWN_HARDWARE_CLASSES, normalize_hardware

from ._common import cli_errors, fail
from .live import require_bootstrap, run_until_signalled

__all__ = ["allow_list_from_options", "executor", "parse_cpus", "parse_memory_mib"]

_MEMORY_UNITS = {"mib": 1, "mi": 1, "gib": 1024, "gi": 1024, "tib": 1024**2, "ti": 1024**2}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_memory_mib(text: str) -> int:
    """``512GiB`` -> 524288, ``1024MiB`` -> 1024, ``1.5TiB``; a bare number is MiB.

    Binary units only (MiB, GiB, TiB, or Mi, Gi, Ti), case-insensitive. Raises ValueError
    naming the input.
    """
    match = _QUANTITY.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or (unit and unit not in _MEMORY_UNITS):
        raise ValueError(
            f"--memory {text!r}: expected a size such as 512GiB, 64GiB or 1024MiB "
            "(units MiB, GiB, TiB; a bare number is MiB)"
        )
    mib = Decimal(match.group(1)) * _MEMORY_UNITS[unit or "mib"]
    if mib != mib.to_integral_value() or mib < 1:
        raise ValueError(f"--memory {text!r}: must be a positive whole number of MiB")
    return int(mib)


def parse_cpus(text: str) -> int:
    """``64`` -> 64000 milli-CPUs, ``0.5`` -> 500, ``500m`` -> 500. Raises ValueError."""
    raw = text.strip()
    try:
        milli = Decimal(raw[:-1]) if raw.endswith("m") else Decimal(raw) * 1000
    except InvalidOperation:
        milli = Decimal(-1)
    if not milli.is_finite() or milli < 1 or milli != milli.to_integral_value():
        raise ValueError(
            f"--cpus {text!r}: expected a positive number of CPUs (64, 0.5) or milli-CPUs (500m)"
        )
    return int(milli)


def _parse_labels(items: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            fail(f"--label {item!r}: expected KEY=VALUE, e.g. 'data_region=eu'")
        labels[key.strip()] = value.strip()
    return labels


def allow_list_from_options(
    entries: list[str] | None, files: list[Path] | None
) -> ExecAllowList | None:
    """The allow-list of ``--allow-exec`` entries plus the entries of each
    ``--allow-exec-file``; None when neither option was given (every executable allowed).

    Raises ValueError naming the option, file and line of a bad entry or unreadable file.
    """
    if not entries and not files:
        return None
    patterns = list(entries or [])
    for path in files or []:
        try:
            patterns.extend(ExecAllowList.read(path))
        except OSError as exc:
            raise ValueError(f"--allow-exec-file {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ValueError(f"--allow-exec-file {exc}") from None
    try:
        return ExecAllowList(patterns)
    except ValueError as exc:
        raise ValueError(f"--allow-exec: {exc}") from None


def executor(
    node_id: Annotated[str, typer.Option("--node-id", help="This node's id (unique).")],
    hardware: Annotated[
        str, typer.Option("--hardware", help="Hardware class: cpu, gpu-v100, v100, ...")
    ],
    cpus: Annotated[str, typer.Option("--cpus", help="CPUs (64, 0.5) or milli-CPUs (500m).")],
    memory: Annotated[str, typer.Option("--memory", help="Memory: 512GiB, 1024MiB, ...")],
    gpus: Annotated[int, typer.Option("--gpus", min=0, help="Whole GPUs on the node.")] = 0,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Node label KEY=VALUE (repeatable).")
    ] = None,
    log_dir: Annotated[
        Path | None,
        typer.Option(
            "--log-dir",
            help="Attempt logs, progress files and the attempt journal "
            "(default: ./streamsched-logs/<node-id>).",
        ),
    ] = None,
    replay_speedup: Annotated[
        float | None,
        typer.Option(
            "--replay-speedup",
            help="Replay mode: run no command; each attempt lasts its true runtime on this "
            "hardware (STREAMSCHED_REPLAY_RUNTIMES in the task's env, else the predicted "
            "runtime) / X wall seconds.",
        ),
    ] = None,
    heartbeat_s: Annotated[
        float, typer.Option("--heartbeat-s", help="Seconds between heartbeats.")
    ] = 2.0,
    progress_poll_s: Annotated[
        float,
        typer.Option("--progress-poll-s", help="Seconds between reads of a progress file."),
    ] = 1.0,
    progress_interval_s: Annotated[
        float,
        typer.Option(
            "--progress-interval-s",
            help="Least seconds between two progress reports of an attempt (replay: period).",
        ),
    ] = 5.0,
    replay_progress_after_s: Annotated[
        float | None,
        typer.Option(
            "--replay-progress-after-s",
            help="Replay mode: also report progress once, this many trace seconds into an "
            "attempt (as the simulator does).",
        ),
    ] = None,
    allow_exec: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-exec",
            help="Only run executables matching this absolute path or glob (repeatable; "
            "argv[0] is resolved through PATH and symlinks first). Default: any.",
        ),
    ] = None,
    allow_exec_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--allow-exec-file",
            help="File of allow-list entries, one per line ('#' comments); adds to "
            "--allow-exec (repeatable).",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus metrics on 127.0.0.1:PORT (0: a free port; printed).",
        ),
    ] = None,
) -> None:
    """Run this machine as an executor node: consume its assignments, run them, report back.

    Joins the Kafka cluster in KAFKA_BOOTSTRAP_SERVERS (see docs/configuration.md).
    """
    with cli_errors("--hardware"):
        hardware_class = normalize_hardware(hardware)
    with cli_errors():
        memory_mib = parse_memory_mib(memory)
        cpu_milli = parse_cpus(cpus)
        allow_list = allow_list_from_options(allow_exec, allow_exec_file)
    if allow_list is not None and not allow_list.patterns:
        typer.echo("warning: the allow-list is empty: no command will run", err=True)
    if not node_id.strip() or any(c.isspace() for c in node_id):
        fail(f"--node-id {node_id!r}: must be non-empty without whitespace")
    if replay_speedup is not None and not replay_speedup > 0:
        fail(f"--replay-speedup {replay_speedup}: must be positive")
    if not heartbeat_s > 0:
        fail(f"--heartbeat-s {heartbeat_s}: must be positive")
    if not progress_poll_s > 0:
        fail(f"--progress-poll-s {progress_poll_s}: must be positive")
    if not progress_interval_s > 0:
        fail(f"--progress-interval-s {progress_interval_s}: must be positive")
    if replay_progress_after_s is not None and not replay_progress_after_s > 0:
        fail(f"--replay-progress-after-s {replay_progress_after_s}: must be positive")
    node = NodeSpec(node_id, hardware_class, cpu_milli, memory_mib, gpus, _parse_labels(label))
    servers, settings = require_bootstrap("executor")
    with cli_errors():
        agent = ExecutorAgent(
            client_config(servers, settings),
            node,
            log_dir=log_dir or Path("streamsched-logs") / node_id,
            heartbeat_interval_s=heartbeat_s,
            replay_speedup=replay_speedup,
            progress_poll_s=progress_poll_s,
            progress_interval_s=progress_interval_s,
            replay_progress_after_s=replay_progress_after_s,
            allow_list=allow_list,
        )
    if hardware_class not in KNOWN_HARDWARE_CLASSES:
        typer.echo(
            f"warning: hardware class {hardware_class!r} is not built in; the scheduler "
            "must be configured with it",
            err=True,
        )
    if metrics_port is not None:
        try:
            port = metrics.serve(metrics_port)
        except OSError as exc:
            agent.close()
            fail(
                f"--metrics-port {metrics_port}: cannot listen on 127.0.0.1: {exc.strerror or exc}"
            )
        typer.echo(f"metrics: http://127.0.0.1:{port}/metrics")
    run_until_signalled(agent.run, f"executor {node_id}")
