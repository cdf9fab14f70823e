"""Commands: requests to change what the scheduler does (cancel a task, switch policy) and
what an executor does (stop an attempt)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StringConstraints, field_validator

from .envelope import EventEnvelope
from .types import MAX_ARG_CHARS, MAX_MAP_ITEMS, Attempt, Fraction, Identifier, Text, fail

_ParamName = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
]
_ParamValue = (
    StrictBool
    | StrictInt
    | StrictFloat
    | Annotated[str, StringConstraints(max_length=MAX_ARG_CHARS)]
)


class CancelTask(EventEnvelope):
    """Cancel a task (queued or running). Idempotent: cancelling a task that already ended
    changes nothing."""

    type: Literal["command.cancel_task"] = "command.cancel_task"
    task_id: Identifier
    reason: Text
    requested_by: Identifier = Field(description="Tenant asking; must own the task.")


class PolicyUpdate(EventEnvelope):
    """Switch the placement policy or its parameters.

    ``split_ratio`` is the fraction of tasks (chosen by a stable hash of ``task_id``) placed
    by ``policy``; the rest stay with the current policy (1.0 switches over fully; 0.0
    ends a split). ``shadow_policy``, if given, is evaluated (with its default parameters)
    on every scheduling cycle and recorded in the audit trail (``decision.audit`` with
    ``kind="shadow"``) but never acted on; an update without it ends shadow mode.
    Declarative: every update states the whole configuration. See docs/policies.md,
    "Shadow mode and A/B".
    """

    type: Literal["command.update_policy"] = "command.update_policy"
    policy: Identifier
    parameters: dict[_ParamName, _ParamValue] = Field(
        default_factory=dict, max_length=MAX_MAP_ITEMS, description="Scalar policy parameters."
    )
    shadow_policy: Identifier | None = None
    split_ratio: Fraction = 1.0

    @field_validator("parameters", mode="before")
    @classmethod
    def _scalar_values(cls, parameters: object) -> object:
        # One clear message instead of one error per member of the value union.
        if isinstance(parameters, dict):
            for name, value in parameters.items():
                if not isinstance(value, bool | int | float | str):
                    fail(
                        "parameter_not_scalar",
                        f"parameter {name!r} must be a number, string or boolean, "
                        f"got {type(value).__name__}",
                    )
        return parameters


class StopAttempt(EventEnvelope):
    """The scheduler asks the executor running ``attempt`` of ``task_id`` on ``node_id`` to
    stop it: ``preempt`` keeps the checkpoint (the task is re-queued and resumes later),
    ``cancel`` does not (the task was cancelled, or failed upstream). The attempt number is
    the fencing token: an executor running another attempt ignores the command. Published
    to the assignment topic of the node's hardware class, keyed and partitioned like an
    assignment, so the executor that runs the attempt reads it in order after it.
    """

    type: Literal["command.stop_attempt"] = "command.stop_attempt"
    task_id: Identifier
    attempt: Attempt
    node_id: Identifier
    mode: Literal["preempt", "cancel"]
    reason: Text
    #: The decision behind a preemption, and the task it makes room for.
    decision_id: Identifier | None = None
    for_task_id: Identifier | None = None
