"""Loader for Alibaba's openb GPU-sharing traces (``alibaba/clusterdata``, cluster-trace-gpu-v2023).

The pod list gives tasks and the node list the cluster they ran on. A pod's runtime is
``deletion_time - scheduled_time`` and does not depend on the GPU model, so its
``true_runtime_s`` is ``{"*": runtime}``, where ``"*"`` stands for any hardware class.

Pods without a runtime (no ``scheduled_time``: never scheduled in the trace; or no
``deletion_time``) are skipped with ``departures=True``; with ``departures=False`` (tasks
that never leave, as in the fill-the-cluster fragmentation experiments) they are kept with
an infinite runtime. Pods that did run keep their measured runtime either way.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from streamsched.scheduler.model import GPU_MILLI, NodeSpec, PriorityClass, TaskSpec
from streamsched.scheduler.trace import SkippedJob, Trace, TraceJob
from streamsched.schemas.hardware import normalize_hardware

from .errors import TraceFormatError, parse_float, parse_int, read_text

__all__ = ["ANY_HARDWARE", "NODE_COLUMNS", "POD_COLUMNS", "load_openb", "load_openb_nodes"]

#: The ``true_runtime_s`` key meaning "the same runtime on any hardware class".
ANY_HARDWARE = "*"

POD_COLUMNS = (
    "name",
    "cpu_milli",
    "memory_mib",
    "num_gpu",
    "gpu_milli",
    "gpu_spec",
    "qos",
    "pod_phase",
    "creation_time",
    "deletion_time",
    "scheduled_time",
)
NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")

_PRIORITY = {
    "ls": PriorityClass.HIGH,
    "guaranteed": PriorityClass.HIGH,
    "burstable": PriorityClass.NORMAL,
    "be": PriorityClass.LOW,
}
_NEVER_SCHEDULED = "pod never scheduled in the trace: no runtime"
_NEVER_DELETED = "pod has no deletion_time in the trace: no runtime"


def load_openb(
    pods_path: str | os.PathLike[str],
    nodes_path: str | os.PathLike[str],
    *,
    departures: bool = True,
) -> Trace:
    """Read an openb pod list and node list into a :class:`Trace` with its own nodes.

    Raises :class:`TraceFormatError` naming file and line for malformed input.
    """
    nodes = load_openb_nodes(nodes_path)
    path = Path(pods_path)
    jobs: list[TraceJob] = []
    skipped: list[SkippedJob] = []
    seen: set[str] = set()
    no_runtime: Counter[str] = Counter()
    for lineno, row in _read_csv(path, POD_COLUMNS):
        ref = f"{path.name}:{lineno}"
        name = row["name"].strip()
        if not name or name in seen:
            raise TraceFormatError(path, lineno, f"pod name {name!r} is empty or repeated")
        seen.add(name)
        spec = _pod_spec(path, lineno, name, row)
        arrival = parse_float(row["creation_time"], path=path, line=lineno, field="creation_time")
        runtime = _runtime(path, lineno, row, arrival)
        if runtime is None:
            reason = _NEVER_SCHEDULED if not row["scheduled_time"].strip() else _NEVER_DELETED
            no_runtime[reason] += 1
            if departures:
                skipped.append(SkippedJob(ref, reason))
                continue
            runtime = math.inf
        jobs.append(TraceJob(spec, arrival, {ANY_HARDWARE: runtime}, source_ref=ref))

    gpus = sum(n.gpus for n in nodes)
    notes = [
        f"{path.name}: loaded {len(jobs)} of {len(jobs) + len(skipped)} pods",
        f"{Path(nodes_path).name}: {len(nodes)} nodes with {gpus} GPUs",
    ]
    action = "skipped" if departures else "kept with an infinite runtime"
    notes += [f"{n} pods {action}: {why}" for why, n in sorted(no_runtime.items())]
    return Trace(path.stem, tuple(jobs), nodes=nodes, skipped=tuple(skipped), notes=tuple(notes))


def load_openb_nodes(nodes_path: str | os.PathLike[str]) -> tuple[NodeSpec, ...]:
    """Read an openb node list (``sn, cpu_milli, memory_mib, gpu, model``) into nodes."""
    path = Path(nodes_path)
    nodes: list[NodeSpec] = []
    seen: set[str] = set()
    for lineno, row in _read_csv(path, NODE_COLUMNS):
        node_id = row["sn"].strip()
        if not node_id or node_id in seen:
            raise TraceFormatError(path, lineno, f"node sn {node_id!r} is empty or repeated")
        seen.add(node_id)
        cpu = parse_int(row["cpu_milli"], path=path, line=lineno, field="cpu_milli")
        memory = parse_int(row["memory_mib"], path=path, line=lineno, field="memory_mib")
        gpus = parse_int(row["gpu"], path=path, line=lineno, field="gpu")
        try:
            hardware = normalize_hardware(row["model"])
        except ValueError as exc:
            raise TraceFormatError(path, lineno, f"bad GPU model: {exc}") from None
        if hardware == "cpu" and gpus > 0:
            raise TraceFormatError(path, lineno, f"node has {gpus} GPUs but no GPU model")
        nodes.append(NodeSpec(node_id, hardware, cpu, memory, gpus))
    return tuple(nodes)


def _pod_spec(path: Path, lineno: int, name: str, row: dict[str, str]) -> TaskSpec:
    cpu = parse_int(row["cpu_milli"], path=path, line=lineno, field="cpu_milli")
    memory = parse_int(row["memory_mib"], path=path, line=lineno, field="memory_mib")
    num_gpu = parse_int(row["num_gpu"], path=path, line=lineno, field="num_gpu")
    gpu_milli = parse_int(row["gpu_milli"], path=path, line=lineno, field="gpu_milli")
    if gpu_milli > GPU_MILLI or (num_gpu == 1 and gpu_milli == 0) or (num_gpu == 0 < gpu_milli):
        raise TraceFormatError(
            path, lineno, f"gpu_milli {gpu_milli} does not fit num_gpu {num_gpu} (0..1000)"
        )
    qos = row["qos"].strip()
    priority = _PRIORITY.get(qos.lower())
    if priority is None:
        raise TraceFormatError(path, lineno, f"unknown qos {qos!r} (LS, Guaranteed, Burstable, BE)")
    try:
        allowed = frozenset(normalize_hardware(x) for x in row["gpu_spec"].split("|") if x.strip())
    except ValueError as exc:
        raise TraceFormatError(path, lineno, f"bad gpu_spec: {exc}") from None
    share = num_gpu == 1 and gpu_milli < GPU_MILLI
    return TaskSpec(
        task_id=name,
        task_type=f"openb-{qos.lower()}-{'share' if share else f'{num_gpu}gpu'}",
        cpu_milli=cpu,
        memory_mib=memory,
        gpus=num_gpu,
        gpu_milli=gpu_milli if num_gpu == 1 else (GPU_MILLI if num_gpu > 1 else 0),
        allowed_hardware=allowed,
        priority=priority,
        preemptible=qos.lower() == "be",
    )


def _runtime(path: Path, lineno: int, row: dict[str, str], arrival: float) -> float | None:
    """``deletion_time - scheduled_time``, or None when the pod never ran in the trace."""
    scheduled_raw, deleted_raw = row["scheduled_time"], row["deletion_time"]
    if not scheduled_raw.strip() or not deleted_raw.strip():
        return None
    scheduled = parse_float(scheduled_raw, path=path, line=lineno, field="scheduled_time")
    deleted = parse_float(deleted_raw, path=path, line=lineno, field="deletion_time")
    if scheduled < arrival or deleted < scheduled:
        raise TraceFormatError(
            path,
            lineno,
            f"times out of order: creation {arrival:g}, scheduled {scheduled:g}, "
            f"deletion {deleted:g}",
        )
    return deleted - scheduled


def _read_csv(path: Path, columns: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV file whose header must be exactly ``columns``."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        header = [c.strip().lstrip("\ufeff") for c in next(reader, [])]
        missing = [c for c in columns if c not in header]
        unknown = [c for c in header if c not in columns]
        repeated = sorted({c for c in header if header.count(c) > 1})
        if missing or unknown or repeated:
            raise TraceFormatError(
                path,
                1,
                f"bad header: missing columns {missing}, unknown columns {unknown}, "
                f"repeated columns {repeated}; expected {', '.join(columns)}",
            )
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise TraceFormatError(
                    path, reader.line_num, f"expected {len(header)} fields, got {len(row)}"
                )
            rows.append((reader.line_num, dict(zip(header, row, strict=True))))
    except csv.Error as exc:
        raise TraceFormatError(path, reader.line_num, f"bad CSV: {exc}") from None
    return rows
