"""Map wire models (:mod:`streamsched.schemas`) onto the core's value types.

Pure functions: no clock, no I/O. Imports flow ``schemas`` <- ``scheduler``: the wire
format never imports the core, so the priority enum exists on both sides and is mapped here.
"""

from __future__ import annotations

from types import MappingProxyType

from streamsched.schemas.nodes import NodeHeartbeat
from streamsched.schemas.tasks import DeclaredWork, Priority, TaskSubmitted

from .model import NodeSpec, PriorityClass, TaskSpec

#: Wire priority -> core priority. Every wire value must appear (checked by the tests).
PRIORITY_TO_CORE: dict[Priority, PriorityClass] = {
    Priority.CRITICAL: PriorityClass.CRITICAL,
    Priority.HIGH: PriorityClass.HIGH,
    Priority.NORMAL: PriorityClass.NORMAL,
    Priority.LOW: PriorityClass.LOW,
}


def declared_work_amount(work: DeclaredWork) -> float:
    """The size feature forecasters scale with: steps if given, else epochs, else input
    bytes, else 0 (unknown)."""
    for amount in (work.steps, work.epochs, work.input_bytes):
        if amount is not None:
            return float(amount)
    return 0.0


def task_spec_from_event(ev: TaskSubmitted) -> TaskSpec:
    """The core's :class:`TaskSpec` for a submission. The deadline becomes epoch seconds
    (the live system's core time); trace loaders that use another time origin set
    ``deadline_s`` themselves."""
    res = ev.resources
    return TaskSpec(
        task_id=ev.task_id,
        task_type=ev.task_type,
        tenant=ev.tenant,
        cpu_milli=res.cpu_milli,
        memory_mib=res.memory_mib,
        gpus=res.gpus,
        gpu_milli=res.gpu_milli,
        allowed_hardware=frozenset(res.allowed_hardware),
        priority=PRIORITY_TO_CORE[ev.priority],
        deadline_s=ev.deadline.timestamp() if ev.deadline is not None else None,
        preemptible=ev.preemptible,
        depends_on=tuple(ev.depends_on),
        governance=MappingProxyType(dict(ev.governance)),
        declared_work=declared_work_amount(ev.declared_work),
        declared_runtime_s=ev.declared_work.runtime_s,
        dataset_bytes=ev.declared_work.input_bytes or 0,
        max_retries=ev.max_retries,
    )


def node_spec_from_heartbeat(hb: NodeHeartbeat) -> NodeSpec:
    """The core's :class:`NodeSpec` for a heartbeat: hardware class, capacity and labels."""
    return NodeSpec(
        node_id=hb.node_id,
        hardware=hb.hardware,
        cpu_milli=hb.capacity.cpu_milli,
        memory_mib=hb.capacity.memory_mib,
        gpus=hb.capacity.gpus,
        labels=MappingProxyType(dict(hb.labels)),
    )
