"""Task submission and its rejection: what users send, and the answer when it is refused."""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .envelope import EventEnvelope, WireModel
from .types import (
    MAX_CPU_MILLI,
    MAX_GPUS,
    MAX_ID_CHARS,
    MAX_MEMORY_MIB,
    Argv,
    EnvMap,
    HardwareList,
    Identifier,
    IdentifierList,
    Labels,
    Text,
    context_now,
    fail,
)

#: One whole GPU, in milli-GPU.
WHOLE_GPU_MILLI = 1000


class Priority(enum.StrEnum):
    """Priority classes, highest first (mirrors the core's ``PriorityClass``)."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class DeclaredWork(WireModel):
    """How much work the submitter says the task is. All optional; forecasters use whichever
    is given (steps, else epochs, else input bytes) as a size feature."""

    steps: StrictInt | None = Field(default=None, ge=0, description="Training/processing steps.")
    epochs: StrictInt | None = Field(default=None, ge=0, description="Passes over the dataset.")
    input_bytes: StrictInt | None = Field(default=None, ge=0, description="Bytes of input read.")
    runtime_s: StrictFloat | None = Field(
        default=None, gt=0, description="The submitter's own runtime estimate, in seconds."
    )


class TaskResources(WireModel):
    """What one attempt of the task needs on a node.

    ``gpus`` whole GPUs; or ``gpus == 1`` with ``gpu_milli`` in 1..999 for a share of one GPU
    (GPU-sharing tasks such as small inference servers). ``gpu_milli`` defaults to 1000
    when ``gpus >= 1`` and to 0 otherwise.
    """

    cpu_milli: StrictInt = Field(default=1000, ge=0, le=MAX_CPU_MILLI, description="Milli-CPUs.")
    memory_mib: StrictInt = Field(default=1024, ge=0, le=MAX_MEMORY_MIB, description="Memory, MiB.")
    gpus: StrictInt = Field(default=0, ge=0, le=MAX_GPUS, description="Whole GPUs.")
    gpu_milli: StrictInt = Field(
        default=0,
        ge=0,
        le=WHOLE_GPU_MILLI,
        description="Milli-GPU per GPU: 1..1000 when gpus >= 1 (below 1000 only with "
        "gpus == 1, a GPU share), 0 when gpus == 0. Default: 1000 if gpus >= 1 else 0.",
    )
    allowed_hardware: HardwareList = Field(
        default=(), description="Hardware classes the task may run on; empty means any."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_gpu_milli(cls, data: Any) -> Any:
        if isinstance(data, dict) and "gpu_milli" not in data:
            gpus = data.get("gpus", 0)
            whole = isinstance(gpus, int) and not isinstance(gpus, bool) and gpus >= 1
            return {**data, "gpu_milli": WHOLE_GPU_MILLI if whole else 0}
        return data

    @field_validator("gpu_milli")
    @classmethod
    def _gpu_milli_matches_gpus(cls, gpu_milli: int, info: ValidationInfo) -> int:
        gpus = info.data.get("gpus")
        if gpus is None:  # gpus itself was invalid and is reported on its own
            return gpu_milli
        if gpus == 0 and gpu_milli != 0:
            fail("gpu_milli_without_gpus", f"gpu_milli={gpu_milli} needs gpus >= 1 (gpus=0)")
        if gpus >= 1 and gpu_milli == 0:
            fail("gpu_milli_zero", f"must be 1..{WHOLE_GPU_MILLI} when gpus >= 1")
        if gpus > 1 and gpu_milli != WHOLE_GPU_MILLI:
            fail(
                "gpu_share_multi_gpu",
                f"a GPU share (gpu_milli={gpu_milli}) is only valid with gpus == 1 "
                f"(gpus={gpus}); whole GPUs use gpu_milli={WHOLE_GPU_MILLI}",
            )
        return gpu_milli

    @field_validator("allowed_hardware")
    @classmethod
    def _gpu_task_not_cpu_only(
        cls, allowed: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        if info.data.get("gpus", 0) and allowed and all(hw == "cpu" for hw in allowed):
            fail("gpu_task_on_cpu", "a task that needs GPUs cannot run on hardware class 'cpu'")
        return allowed


class TaskSubmitted(EventEnvelope):
    """A user asks for a task to be run. Published to ``sched.tasks.submitted``.

    Resubmitting the same ``idempotency_key`` is a no-op; reusing a ``task_id`` with a
    different key is rejected.
    """

    type: Literal["task.submitted"] = "task.submitted"
    task_id: Identifier
    idempotency_key: Identifier = Field(description="Dedup key of this submission.")
    tenant: Identifier
    task_type: Identifier = Field(description="Kind of work, e.g. 'train-resnet50'.")
    declared_work: DeclaredWork = Field(default_factory=DeclaredWork)
    resources: TaskResources = Field(default_factory=TaskResources)
    priority: Priority = Priority.NORMAL
    deadline: AwareDatetime | None = Field(
        default=None, description="When the task should be done; must be in the future."
    )
    cost_tolerance: StrictFloat | None = Field(
        default=None,
        ge=0,
        description="Largest relative slowdown accepted to run on cheaper hardware: 0.5 "
        "accepts up to 1.5x the runtime of the fastest class if it is cheaper; 0 asks for "
        "the fastest class; absent leaves it to the policy.",
    )
    governance: Labels = Field(
        default_factory=dict,
        description="Tags each node must carry as equal labels, e.g. data_region=eu.",
    )
    preemptible: StrictBool = Field(default=False, description="May be stopped (checkpointed).")
    depends_on: IdentifierList = Field(
        default=(), description="Tasks that must succeed before this one is eligible."
    )
    command: Argv = Field(
        default=(),
        description="argv executed directly (no shell); empty for simulated/replayed work.",
    )
    env: EnvMap = Field(default_factory=dict, description="Environment variables.")
    dataset: Identifier | None = Field(default=None, description="Dataset the task reads.")
    max_retries: StrictInt = Field(
        default=2, ge=0, le=10, description="Retries of failed attempts."
    )

    @field_validator("deadline")
    @classmethod
    def _deadline_in_future(
        cls, deadline: AwareDatetime | None, info: ValidationInfo
    ) -> AwareDatetime | None:
        now = context_now(info)
        if deadline is not None and now is not None and deadline <= now:
            fail(
                "deadline_in_past",
                f"deadline {deadline.isoformat()} is not in the future (now {now.isoformat()})",
            )
        return deadline

    @field_validator("depends_on")
    @classmethod
    def _not_own_dependency(
        cls, depends_on: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        if info.data.get("task_id") in depends_on:
            fail("self_dependency", "a task cannot depend on itself")
        return depends_on


class TaskRejected(EventEnvelope):
    """A submission was refused: the answer the submitter can see.

    ``task_id`` and ``idempotency_key`` echo the submission when they could be read (they
    may be absent or malformed: the submission was invalid); ``field`` names the offending
    field (dotted path, or ``(payload)``) when the rejection is about one.
    """

    type: Literal["task.rejected"] = "task.rejected"
    task_id: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    idempotency_key: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    reason: Text
    field: str | None = Field(default=None, max_length=MAX_ID_CHARS)
