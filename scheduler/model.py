"""Core value types: task specifications, node specifications, task states.

These are plain frozen dataclasses, not the wire models of :mod:`streamsched.schemas`: the
core handles hundreds of thousands of tasks and must stay cheap, and the wire format must be
free to evolve without touching placement code. :mod:`streamsched.scheduler.convert` maps
wire models onto these.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: One whole GPU, in milli-GPU.
GPU_MILLI = 1000

_EMPTY: Mapping[str, str] = MappingProxyType({})


class TaskState(enum.StrEnum):
    """Where a task is in its life. It only ever moves forward (see ``statemachine``).

    ``submitted`` means accepted but not yet eligible (its dependencies have not all
    succeeded); ``queued`` means eligible and waiting for a placement.
    """

    SUBMITTED = "submitted"
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


class PriorityClass(enum.StrEnum):
    """Priority classes, highest first. Their weight in queue order is policy configuration."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for the highest class; larger is lower priority."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {p: i for i, p in enumerate(PriorityClass)}


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a user asked for. Immutable for the life of the task.

    Resources: ``gpus`` whole GPUs, or (``gpus == 1`` and ``gpu_milli < 1000``) a share of
    one GPU for GPU-sharing tasks; ``gpu_milli`` is 1000 for whole-GPU tasks and 0 when the
    task uses no GPU.
    """

    task_id: str
    task_type: str
    tenant: str = "default"
    cpu_milli: int = 1000
    memory_mib: int = 1024
    gpus: int = 0
    gpu_milli: int = 0
    #: Hardware classes the task may run on; empty means any class that fits.
    allowed_hardware: frozenset[str] = frozenset()
    priority: PriorityClass = PriorityClass.NORMAL
    #: Absolute deadline in core time (seconds), or None.
    deadline_s: float | None = None
    preemptible: bool = False
    depends_on: tuple[str, ...] = ()
    #: Governance tags; each must equal the node label of the same key (e.g. data_region).
    governance: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    #: Declared amount of work (e.g. steps); 0 when unknown. Forecasters scale with it.
    declared_work: float = 0.0
    #: The user's own runtime estimate in seconds, if given.
    declared_runtime_s: float | None = None
    #: Dataset size in bytes, if the task reads one (a forecasting feature).
    dataset_bytes: int = 0
    #: How many times a failed attempt is retried before the task fails.
    max_retries: int = 2

    @property
    def gpu_demand_milli(self) -> int:
        """GPU demand in milli-GPU: whole GPUs count 1000 each, a share counts its milli."""
        if self.gpus == 0:
            return 0
        if self.is_gpu_share:
            return self.gpu_milli
        return self.gpus * GPU_MILLI

    @property
    def is_gpu_share(self) -> bool:
        return self.gpus == 1 and 0 < self.gpu_milli < GPU_MILLI

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The resource shape: (cpu_milli, memory_mib, gpus, gpu_milli)."""
        return (self.cpu_milli, self.memory_mib, self.gpus, self.gpu_milli)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node as it registers: its hardware class, capacity and labels."""

    node_id: str
    hardware: str
    cpu_milli: int
    memory_mib: int
    gpus: int = 0
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
