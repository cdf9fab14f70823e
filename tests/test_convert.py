"""Wire models -> core value types."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from streamsched.scheduler.convert import (
    PRIORITY_TO_CORE,
    node_spec_from_heartbeat,
    task_spec_from_event,
)
from streamsched.scheduler.model import NodeSpec, PriorityClass, TaskSpec
from streamsched.schemas import NodeHeartbeat, Priority, TaskSubmitted

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def submitted(**fields: Any) -> TaskSubmitted:
    base: dict[str, Any] = {
        "occurred_at": T0,
        "source": "tests",
        "event_id": "e-1",
        "task_id": "t-1",
        "idempotency_key": "k-1",
        "tenant": "vision",
        "task_type": "train-resnet50",
    }
    return TaskSubmitted(**{**base, **fields})


def test_full_submission() -> None:
    ev = submitted(
        declared_work={"steps": 5000, "epochs": 3, "input_bytes": 7_000, "runtime_s": 900.0},
        resources={
            "cpu_milli": 8000,
            "memory_mib": 32768,
            "gpus": 4,
            "allowed_hardware": ["gpu-v100", "gpu-p100"],
        },
        priority="critical",
        deadline=datetime(2025, 3, 3, 12, 0, tzinfo=UTC),
        governance={"data_region": "eu"},
        preemptible=True,
        depends_on=["prep-1", "prep-2"],
        max_retries=4,
    )
    assert task_spec_from_event(ev) == TaskSpec(
        task_id="t-1",
        task_type="train-resnet50",
        tenant="vision",
        cpu_milli=8000,
        memory_mib=32768,
        gpus=4,
        gpu_milli=1000,
        allowed_hardware=frozenset({"gpu-v100", "gpu-p100"}),
        priority=PriorityClass.CRITICAL,
        deadline_s=datetime(2025, 3, 3, 12, 0, tzinfo=UTC).timestamp(),
        preemptible=True,
        depends_on=("prep-1", "prep-2"),
        governance={"data_region": "eu"},
        declared_work=5000.0,
        declared_runtime_s=900.0,
        dataset_bytes=7_000,
        max_retries=4,
    )


def test_minimal_submission_uses_core_defaults() -> None:
    spec = task_spec_from_event(submitted())
    defaults = TaskSpec(task_id="t-1", task_type="train-resnet50", tenant="vision")
    assert spec == defaults


# (declared_work on the wire, declared_work in the core, dataset_bytes in the core)
DECLARED_WORK: list[tuple[dict[str, Any], float, int]] = [
    ({}, 0.0, 0),
    ({"steps": 100, "epochs": 3, "input_bytes": 5}, 100.0, 5),
    ({"steps": 0, "epochs": 3}, 0.0, 0),  # 0 steps is given: it wins over epochs
    ({"epochs": 3, "input_bytes": 5}, 3.0, 5),
    ({"input_bytes": 5}, 5.0, 5),
    ({"runtime_s": 60.0}, 0.0, 0),
]


@pytest.mark.parametrize(("work", "amount", "dataset_bytes"), DECLARED_WORK)
def test_declared_work(work: dict[str, Any], amount: float, dataset_bytes: int) -> None:
    spec = task_spec_from_event(submitted(declared_work=work))
    assert spec.declared_work == amount
    assert spec.dataset_bytes == dataset_bytes
    assert spec.declared_runtime_s == work.get("runtime_s")


def test_every_priority_maps_to_the_same_core_class() -> None:
    assert set(PRIORITY_TO_CORE) == set(Priority)
    for wire in Priority:
        core = task_spec_from_event(submitted(priority=wire)).priority
        assert core is PriorityClass(wire.value)
    assert {p.value for p in Priority} == {p.value for p in PriorityClass}


# (resources on the wire, core shape (cpu_milli, memory_mib, gpus, gpu_milli), GPU demand)
RESOURCES: list[tuple[dict[str, Any], tuple[int, int, int, int], int]] = [
    ({"cpu_milli": 500, "memory_mib": 256}, (500, 256, 0, 0), 0),
    ({"gpus": 1}, (1000, 1024, 1, 1000), 1000),
    ({"gpus": 8}, (1000, 1024, 8, 1000), 8000),
    ({"gpus": 1, "gpu_milli": 250}, (1000, 1024, 1, 250), 250),
]


@pytest.mark.parametrize(("resources", "shape", "gpu_demand"), RESOURCES)
def test_resources(resources: dict[str, Any], shape: tuple[int, ...], gpu_demand: int) -> None:
    spec = task_spec_from_event(submitted(resources=resources))
    assert spec.shape == shape
    assert spec.gpu_demand_milli == gpu_demand
    assert spec.is_gpu_share == (0 < resources.get("gpu_milli", 1000) < 1000)


def test_deadline_is_epoch_seconds_whatever_the_offset() -> None:
    ev = submitted(deadline="2025-03-03T14:00:00+02:00")
    assert task_spec_from_event(ev).deadline_s == datetime(2025, 3, 3, 12, tzinfo=UTC).timestamp()


def test_conversion_is_pure() -> None:
    ev = submitted(resources={"gpus": 2}, governance={"team": "a"})
    assert task_spec_from_event(ev) == task_spec_from_event(ev)
    spec = task_spec_from_event(ev)
    with pytest.raises(TypeError):
        spec.governance["team"] = "b"  # type: ignore[index]
    assert ev.governance == {"team": "a"}


def test_node_spec_from_heartbeat() -> None:
    hb = NodeHeartbeat(
        occurred_at=T0,
        source="executor/node-7",
        node_id="node-7",
        hardware="gpu-v100",
        capacity={"cpu_milli": 64000, "memory_mib": 262144, "gpus": 8},
        usage={"cpu_milli": 1000, "memory_mib": 2048, "gpus": 1},
        running=[{"task_id": "t-1", "attempt": 1}],
        labels={"data_region": "eu", "rack": "r12"},
        sequence=3,
    )
    node = node_spec_from_heartbeat(hb)
    assert node == NodeSpec(
        node_id="node-7",
        hardware="gpu-v100",
        cpu_milli=64000,
        memory_mib=262144,
        gpus=8,
        labels={"data_region": "eu", "rack": "r12"},
    )
    with pytest.raises(TypeError):
        node.labels["rack"] = "r13"  # type: ignore[index]
