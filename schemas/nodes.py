"""Node heartbeats: executors announce their node, its capacity, usage and running attempts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictInt, field_validator

from .envelope import EventEnvelope, WireModel
from .types import (
    MAX_CPU_MILLI,
    MAX_GPUS,
    MAX_LIST_ITEMS,
    MAX_MEMORY_MIB,
    Attempt,
    HardwareClass,
    Identifier,
    Labels,
    fail,
)


class NodeResources(WireModel):
    """An amount of node resources (capacity or usage)."""

    cpu_milli: StrictInt = Field(ge=0, le=MAX_CPU_MILLI, description="Milli-CPUs.")
    memory_mib: StrictInt = Field(ge=0, le=MAX_MEMORY_MIB, description="Memory, MiB.")
    gpus: StrictInt = Field(default=0, ge=0, le=MAX_GPUS, description="Whole GPUs.")


class RunningAttempt(WireModel):
    """An attempt the executor is running right now."""

    task_id: Identifier
    attempt: Attempt


class NodeHeartbeat(EventEnvelope):
    """A node is alive. Published to ``sched.nodes.heartbeats``.

    The first heartbeat registers the node; later ones refresh liveness. ``usage`` is what
    the executor measures and may briefly exceed ``capacity`` (CPU bursts), so it is not
    checked against it. ``sequence`` increases by one per heartbeat of an executor process,
    so consumers can ignore reordered heartbeats.
    """

    type: Literal["node.heartbeat"] = "node.heartbeat"
    node_id: Identifier
    hardware: HardwareClass
    capacity: NodeResources
    usage: NodeResources
    running: tuple[RunningAttempt, ...] = Field(default=(), max_length=MAX_LIST_ITEMS)
    labels: Labels = Field(default_factory=dict, description="Node labels, e.g. data_region.")
    sequence: StrictInt = Field(ge=0, description="Per-executor heartbeat counter.")
    ended: tuple[RunningAttempt, ...] = Field(
        default=(),
        max_length=MAX_LIST_ITEMS,
        description="Attempts that ended here recently (their terminal event is "
        "acknowledged on sched.tasks.events, which a reader may not have read yet): not "
        "running, but not lost either.",
    )
    assignments_seen: StrictInt | None = Field(
        default=None,
        ge=0,
        description="The highest assignment `sequence` this node has consumed from its "
        "assignment partition (across restarts; null: unknown). An attempt assigned with a "
        "higher sequence is on its way, not lost.",
    )

    @field_validator("running", "ended")
    @classmethod
    def _distinct_attempts(cls, running: tuple[RunningAttempt, ...]) -> tuple[RunningAttempt, ...]:
        seen: set[tuple[str, int]] = set()
        for item in running:
            key = (item.task_id, item.attempt)
            if key in seen:
                fail("duplicate_item", f"attempt {item.attempt} of {item.task_id!r} listed twice")
            seen.add(key)
        return running
