"""Field types and validation helpers shared by the wire models.

Validation that depends on the deployment or on time reads the pydantic validation context:

- ``"known_hardware"`` (an iterable of str): hardware classes accepted on top of
  :data:`~streamsched.schemas.hardware.KNOWN_HARDWARE_CLASSES`;
- ``"now"`` (an aware datetime): the reference time for "deadline in the past" checks. When
  absent, no such check runs; :func:`streamsched.schemas.codec.decode` always supplies it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, NoReturn, TypeVar

from pydantic import (
    AfterValidator,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from .hardware import HARDWARE_CLASS_PATTERN, KNOWN_HARDWARE_CLASSES, is_valid_hardware_name

#: Validation-context key: extra hardware classes accepted by this deployment.
CONTEXT_KNOWN_HARDWARE = "known_hardware"
#: Validation-context key: the aware datetime "now" for deadline checks.
CONTEXT_NOW = "now"

MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 4096
MAX_URI_CHARS = 4096
MAX_CPU_MILLI = 10_000_000
#: 64 TiB.
MAX_MEMORY_MIB = 64 * 1024 * 1024
MAX_GPUS = 64
MAX_ARGV_ITEMS = 1024
MAX_ARG_CHARS = 32_768
MAX_MAP_ITEMS = 256
MAX_LIST_ITEMS = 1024

_T = TypeVar("_T")


def fail(kind: str, reason: str) -> NoReturn:
    """Raise a validation error whose message is exactly ``reason`` (no "Value error," prefix)."""
    raise PydanticCustomError(kind, "{reason}", {"reason": reason})


def known_hardware_classes(context: Mapping[str, Any] | None) -> frozenset[str]:
    """The hardware classes valid under a validation context: built-in plus configured."""
    extra: Iterable[str] = (context or {}).get(CONTEXT_KNOWN_HARDWARE, ())
    return KNOWN_HARDWARE_CLASSES | frozenset(extra)


def context_now(info: ValidationInfo) -> datetime | None:
    """The context's ``now``, or None when the caller did not supply one."""
    context = info.context if isinstance(info.context, Mapping) else {}
    now = context.get(CONTEXT_NOW)
    if now is None:
        return None
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise TypeError(f"validation context {CONTEXT_NOW!r} must be an aware datetime")
    return now


def _check_hardware(value: str, info: ValidationInfo) -> str:
    if not is_valid_hardware_name(value):
        fail(
            "hardware_class_name",
            f"{value!r} is not a hardware class name "
            "(expected 'cpu' or 'gpu-<model>': lower-case letters, digits and '-')",
        )
    context = info.context if isinstance(info.context, Mapping) else None
    known = known_hardware_classes(context)
    if value not in known:
        fail(
            "unknown_hardware_class",
            f"unknown hardware class {value!r} (known: {', '.join(sorted(known))}; "
            "deployments add classes through configuration)",
        )
    return value


def _unique(values: tuple[_T, ...]) -> tuple[_T, ...]:
    seen: set[_T] = set()
    for value in values:
        if value in seen:
            fail("duplicate_item", f"duplicate entry {value!r}")
        seen.add(value)
    return values


def _no_nul(value: str) -> str:
    if "\x00" in value:
        fail("nul_character", "must not contain NUL characters")
    return value


#: An identifier (task id, node id, tenant, ...): 1..256 characters, no whitespace.
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^\S+$")
]
#: Free text such as a reason: 1..4096 characters.
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
#: A hardware class known to this deployment (see module docstring).
HardwareClass = Annotated[
    str,
    AfterValidator(_check_hardware),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": HARDWARE_CLASS_PATTERN,
            "description": "A hardware class: 'cpu' or 'gpu-<model>', e.g. "
            + ", ".join(sorted(KNOWN_HARDWARE_CLASSES)),
        }
    ),
]
#: A list of distinct hardware classes.
HardwareList = Annotated[
    tuple[HardwareClass, ...], Field(max_length=MAX_LIST_ITEMS), AfterValidator(_unique)
]
#: A list of distinct identifiers.
IdentifierList = Annotated[
    tuple[Identifier, ...], Field(max_length=MAX_LIST_ITEMS), AfterValidator(_unique)
]
#: A label or governance-tag key (Kubernetes-like): alphanumerics plus ``_ . / -`` inside.
LabelKey = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=253, pattern=r"^[A-Za-z0-9]([A-Za-z0-9_./-]*[A-Za-z0-9])?$"
    ),
]
LabelValue = Annotated[str, StringConstraints(max_length=MAX_ID_CHARS)]
#: Node labels or task governance tags.
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_MAP_ITEMS)]
_Arg = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ARG_CHARS), AfterValidator(_no_nul)
]
#: A command line as an argv list of non-empty strings; executed directly, never by a shell.
Argv = Annotated[tuple[_Arg, ...], Field(max_length=MAX_ARGV_ITEMS)]
#: An environment variable name: a letter or '_' then letters, digits or '_'.
EnvName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
]
_EnvValue = Annotated[str, StringConstraints(max_length=MAX_ARG_CHARS), AfterValidator(_no_nul)]
#: Environment variables for a command.
EnvMap = Annotated[dict[EnvName, _EnvValue], Field(max_length=MAX_MAP_ITEMS)]
#: A fraction of a task's whole work, 0..1.
Fraction = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
#: An attempt number (fencing token), starting at 1.
Attempt = Annotated[StrictInt, Field(ge=1)]
