"""Trace loaders: read trace files into the core's in-memory :class:`Trace`.

They do I/O, so they live here, outside the pure core. :func:`load_trace` dispatches on a
``KIND:PATH`` spec (``gavel:``, ``openb:``, ``jsonl:``, or ``gavel:sample`` for the packaged
sample); :func:`parse_cluster` reads the ``--cluster`` flag. Malformed files raise
:class:`TraceFormatError` naming file and line.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from importlib.resources import as_file, files
from pathlib import Path

from streamsched.scheduler.trace import Trace

from .cluster import parse_cluster
from .errors import TraceFormatError
from .gavel import load_gavel
from .openb import ANY_HARDWARE, load_openb

__all__ = [
    "ANY_HARDWARE",
    "TraceFormatError",
    "load_gavel",
    "load_openb",
    "load_trace",
    "parse_cluster",
]

#: Default companion files looked up next to a trace when none is given.
GAVEL_THROUGHPUTS = "simulation_throughputs.json"
OPENB_NODES = "openb_node_list_all_node.csv"


def load_trace(
    spec: str,
    *,
    throughputs: str | os.PathLike[str] | None = None,
    nodes: str | os.PathLike[str] | None = None,
    departures: bool = True,
    wide_jobs: str = "clamp",
    max_gpus_per_job: int | None = None,
) -> Trace:
    """Load the trace named by ``spec``: ``gavel:PATH``, ``openb:PATH``, ``jsonl:PATH`` or
    ``gavel:sample`` (the packaged Gavel sample and its throughputs).

    Gavel traces need ``throughputs`` (default: ``simulation_throughputs.json`` next to the
    trace), openb traces need ``nodes`` (default: ``openb_node_list_all_node.csv`` next to
    the pod list). ``departures`` applies to openb, ``wide_jobs`` and ``max_gpus_per_job``
    to Gavel. Raises ValueError for a bad spec or a missing file (naming it).
    """
    kind, sep, target = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or not target.strip() or kind not in ("gavel", "openb", "jsonl"):
        raise ValueError(
            f"trace spec {spec!r}: expected gavel:PATH, openb:PATH, jsonl:PATH or gavel:sample"
        )
    if kind == "gavel" and target == "sample":
        data = files("streamsched") / "data"
        with ExitStack() as stack:
            trace_path = stack.enter_context(as_file(data / "gavel-sample.trace"))
            tput = (
                _existing(Path(throughputs), "--throughputs file")
                if throughputs is not None
                else stack.enter_context(as_file(data / "gavel-throughputs.json"))
            )
            return load_gavel(
                trace_path,
                tput,
                wide_jobs=wide_jobs,
                max_gpus_per_job=max_gpus_per_job,
            )
    path = _existing(Path(target), f"{kind} trace")
    if kind == "gavel":
        tput = _companion(path, throughputs, GAVEL_THROUGHPUTS, "--throughputs")
        return load_gavel(path, tput, wide_jobs=wide_jobs, max_gpus_per_job=max_gpus_per_job)
    if kind == "openb":
        node_list = _companion(path, nodes, OPENB_NODES, "--nodes")
        return load_openb(path, node_list, departures=departures)
    from streamsched.traces.jsonl import load_jsonl_trace  # lazy: pulls in the wire schemas

    return load_jsonl_trace(path)


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ValueError(f"{what} not found: {path}")
    return path


def _companion(
    trace: Path, given: str | os.PathLike[str] | None, default_name: str, flag: str
) -> Path:
    if given is not None:
        return _existing(Path(given), f"{flag} file")
    sibling = trace.parent / default_name
    if not sibling.is_file():
        raise ValueError(f"{trace} needs {flag} (no {default_name} next to it)")
    return sibling
