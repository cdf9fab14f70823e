"""The ``--cluster`` flag: a compact description of a simulated fleet.

``v100=4,p100=4,k80=4`` is four GPUs of each class. ``CLASS=N`` means N GPUs of that class
split into nodes of at most ``gpus_per_node`` GPUs (12 with 8 per node -> 8 + 4);
``CLASS=NxG`` means N nodes of G GPUs each; ``cpu=N`` means N CPU-only nodes. Class names
go through :func:`~streamsched.schemas.hardware.normalize_hardware` (``v100`` ->
``gpu-v100``). GPU nodes get ample CPU and memory so that only GPUs bind for GPU jobs.
"""

from __future__ import annotations

import re

from streamsched.scheduler.model import NodeSpec
from streamsched.schemas.hardware import normalize_hardware

__all__ = ["parse_cluster"]

CPU_NODE_CPU_MILLI = 64000
CPU_NODE_MEMORY_MIB = 262144
_COUNT = re.compile(r"(\d+)(?:[xX](\d+))?")


def parse_cluster(spec: str, *, gpus_per_node: int = 8) -> tuple[NodeSpec, ...]:
    """Parse a cluster spec such as ``v100=4,p100=2x8,cpu=2`` into nodes.

    Node ids are ``<class>-<i>`` counted per class. A GPU node with ``g`` GPUs has
    ``8000 * g + 8000`` milli-CPU and ``65536 * g`` MiB; a CPU node 64000 milli-CPU and
    262144 MiB. Raises ValueError naming the bad part.
    """
    if gpus_per_node < 1:
        raise ValueError(f"gpus_per_node must be >= 1, got {gpus_per_node}")
    if not spec.strip():
        raise ValueError("cluster spec is empty (expected e.g. 'v100=4,p100=4,k80=4')")
    nodes: list[NodeSpec] = []
    seen: set[str] = set()
    for raw in spec.split(","):
        part = raw.strip()
        if not part:
            raise ValueError(f"cluster spec {spec!r}: empty entry (a stray comma?)")
        name, eq, count = (s.strip() for s in part.partition("="))
        if not eq or not name:
            raise ValueError(f"cluster spec {part!r}: expected CLASS=COUNT, e.g. 'v100=4'")
        try:
            hardware = normalize_hardware(name)
        except ValueError as exc:
            raise ValueError(f"cluster spec {part!r}: {exc}") from None
        if hardware in seen:
            raise ValueError(f"cluster spec {part!r}: {hardware} is given more than once")
        seen.add(hardware)
        match = _COUNT.fullmatch(count)
        if match is None or int(match[1]) == 0 or (match[2] is not None and int(match[2]) == 0):
            raise ValueError(
                f"cluster spec {part!r}: count must be a positive integer N or NxG "
                "(N nodes of G GPUs), e.g. 'v100=4' or 'v100=2x8'"
            )
        if hardware == "cpu":
            if match[2] is not None:
                raise ValueError(f"cluster spec {part!r}: CPU nodes take a plain count N")
            nodes += _cpu_nodes(int(match[1]))
        elif match[2] is not None:
            nodes += _gpu_nodes(hardware, [int(match[2])] * int(match[1]))
        else:
            full, rest = divmod(int(match[1]), gpus_per_node)
            nodes += _gpu_nodes(hardware, [gpus_per_node] * full + ([rest] if rest else []))
    return tuple(nodes)


def _gpu_nodes(hardware: str, sizes: list[int]) -> list[NodeSpec]:
    return [
        NodeSpec(f"{hardware}-{i}", hardware, 8000 * g + 8000, 65536 * g, g)
        for i, g in enumerate(sizes)
    ]


def _cpu_nodes(count: int) -> list[NodeSpec]:
    return [
        NodeSpec(f"cpu-{i}", "cpu", CPU_NODE_CPU_MILLI, CPU_NODE_MEMORY_MIB) for i in range(count)
    ]
