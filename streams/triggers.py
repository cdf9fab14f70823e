"""Data-ingested trigger rules: "when dataset X got >= N new rows or >= B new bytes since
its last triggered run, submit template T". Pure: the caller supplies ``now``.

A rule file is JSON (``{"rules": [...]}``) or TOML (``[[rules]]`` tables), chosen by the
file's extension. Each rule::

    name              identifier, 1..64 of [A-Za-z0-9_.-], unique; prefixes task ids
    dataset           the dataset whose data.ingested events count
    min_rows          fire at >= this many new rows      (at least one of the two)
    min_bytes         fire at >= this many new bytes
    debounce_s        no second fire within this many seconds of the previous one (0)
    allow_concurrent  fire while the previous triggered task is not terminal (false)
    template          a task.submitted body without task_id, idempotency_key,
                      occurred_at (and the envelope: type, schema_version, event_id,
                      source); ``dataset`` defaults to the rule's dataset

Fire ``n`` of rule ``r`` submits task ``r-n`` with idempotency key and event id
``trigger-r-n``, so a replay that fires again publishes the same submission, which the
scheduler drops as a duplicate. Data that arrives while a fire is held back (debounce,
concurrency) accumulates and counts towards the next fire; a fire consumes all of it.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from ..schemas.codec import validate_as
from ..schemas.data import DataIngested
from ..schemas.envelope import SCHEMA_VERSION
from ..schemas.errors import InvalidEvent, field_path
from ..schemas.tasks import TaskSubmitted

#: Template keys the trigger fills in itself.
RESERVED_TEMPLATE_KEYS: Final = (
    "task_id",
    "idempotency_key",
    "occurred_at",
    "type",
    "schema_version",
    "event_id",
    "source",
)
#: ``source`` of triggered submissions.
TRIGGER_SOURCE: Final = "processor/trigger"
#: ``data.ingested`` event ids remembered per rule for deduplication.
RECENT_INGESTS: Final = 1024
RULE_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class TriggerConfigError(ValueError):
    """A rule file that cannot be used: the message names the file, the rule and the field."""


class TriggerRule(BaseModel):
    """One rule (see the module docstring). ``template`` is validated when loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=RULE_NAME_PATTERN)
    dataset: str = Field(min_length=1, max_length=256, pattern=r"^\S+$")
    min_rows: StrictInt | None = Field(default=None, ge=1)
    min_bytes: StrictInt | None = Field(default=None, ge=1)
    debounce_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    allow_concurrent: StrictBool = False
    template: dict[str, Any]


class TriggerState(BaseModel):
    """What a rule has accumulated and fired so far."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: str
    pending_rows: int = 0
    pending_bytes: int = 0
    fired: int = 0
    last_fired_at: float | None = None
    last_task_id: str | None = None
    recent_event_ids: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------- loading


def load_rules(path: Path) -> tuple[TriggerRule, ...]:
    """Read and validate a rule file (``.json`` or ``.toml``).

    Raises :class:`TriggerConfigError` naming the file, the rule (name or position) and
    the field; OSError if the file cannot be read.
    """
    raw = path.read_bytes()
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data: Any = json.loads(raw.decode("utf-8"))
        elif suffix == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            raise TriggerConfigError(f"{path}: expected a .json or .toml file, got {suffix!r}")
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, TriggerConfigError):
            raise
        raise TriggerConfigError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    return parse_rules(data, str(path))


def parse_rules(data: Any, where: str = "rules") -> tuple[TriggerRule, ...]:
    """Validate already-parsed rule data: a mapping with a ``rules`` list."""
    if not isinstance(data, Mapping) or not isinstance(data.get("rules"), list):
        raise TriggerConfigError(f"{where}: expected a top-level 'rules' list of rule tables")
    extra = sorted(set(data) - {"rules"})
    if extra:
        raise TriggerConfigError(f"{where}: unknown top-level key {extra[0]!r}")
    rules: list[TriggerRule] = []
    seen: set[str] = set()
    for index, item in enumerate(data["rules"], start=1):
        rule = _parse_rule(item, f"{where}: rule {_rule_label(item, index)}")
        if rule.name in seen:
            raise TriggerConfigError(
                f"{where}: rule {_rule_label(item, index)}: field 'name': duplicate rule name"
            )
        seen.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _rule_label(item: Any, index: int) -> str:
    name = item.get("name") if isinstance(item, Mapping) else None
    return f"{name!r} (#{index})" if isinstance(name, str) else f"#{index}"


def _parse_rule(item: Any, where: str) -> TriggerRule:
    if not isinstance(item, Mapping):
        raise TriggerConfigError(f"{where}: expected a table/object, got {type(item).__name__}")
    try:
        rule = TriggerRule.model_validate(dict(item))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise TriggerConfigError(
            f"{where}: field {field_path(tuple(err['loc']))!r}: {err['msg']}"
        ) from None
    if rule.min_rows is None and rule.min_bytes is None:
        raise TriggerConfigError(f"{where}: field 'min_rows': give min_rows, min_bytes or both")
    for key in RESERVED_TEMPLATE_KEYS:
        if key in rule.template:
            raise TriggerConfigError(
                f"{where}: field 'template.{key}': set by the trigger, remove it from the template"
            )
    template = {"dataset": rule.dataset, **rule.template}
    rule = rule.model_copy(update={"template": template})
    try:  # a template that cannot make a valid submission is refused now, not at fire time
        submission(rule, 1, 0.0)
    except InvalidEvent as exc:
        raise TriggerConfigError(f"{where}: field 'template.{exc.field}': {exc.reason}") from None
    return rule


# ---------------------------------------------------------------------- evaluation


def observe(state: TriggerState, rule: TriggerRule, event: DataIngested) -> TriggerState:
    """Count ``event`` towards ``rule`` if it is about the rule's dataset and its
    ``event_id`` was not seen (a redelivery changes nothing)."""
    if event.dataset != rule.dataset or event.event_id in state.recent_event_ids:
        return state
    return state.model_copy(
        update={
            "pending_rows": state.pending_rows + event.rows,
            "pending_bytes": state.pending_bytes + event.bytes,
            "recent_event_ids": (*state.recent_event_ids, event.event_id)[-RECENT_INGESTS:],
        }
    )


def threshold_reached(state: TriggerState, rule: TriggerRule) -> bool:
    """True when the data accumulated since the last fire reaches a threshold."""
    rows = rule.min_rows is not None and state.pending_rows >= rule.min_rows
    size = rule.min_bytes is not None and state.pending_bytes >= rule.min_bytes
    return rows or size


def due(state: TriggerState, rule: TriggerRule, now: float, previous_done: bool) -> bool:
    """True when ``rule`` should fire now: threshold reached, debounce over and, unless
    concurrency is allowed, the previous triggered task terminal (``previous_done``)."""
    if not threshold_reached(state, rule):
        return False
    if state.last_fired_at is not None and now - state.last_fired_at < rule.debounce_s:
        return False
    return rule.allow_concurrent or state.last_task_id is None or previous_done


def fire(state: TriggerState, rule: TriggerRule, now: float) -> tuple[TriggerState, TaskSubmitted]:
    """The state after firing at ``now`` (epoch seconds), and the submission to publish.
    The caller checks :func:`due` first."""
    n = state.fired + 1
    event = submission(rule, n, now)
    new = state.model_copy(
        update={
            "pending_rows": 0,
            "pending_bytes": 0,
            "fired": n,
            "last_fired_at": now,
            "last_task_id": event.task_id,
        }
    )
    return new, event


def step(
    state: TriggerState, rule: TriggerRule, now: float, previous_done: bool
) -> tuple[TriggerState, TaskSubmitted | None]:
    """:func:`fire` if :func:`due`, else ``(state, None)``."""
    if due(state, rule, now, previous_done):
        return fire(state, rule, now)
    return state, None


def task_id_for(rule: TriggerRule, n: int) -> str:
    """The id of fire ``n`` of ``rule``."""
    return f"{rule.name}-{n}"


def submission(rule: TriggerRule, n: int, now: float) -> TaskSubmitted:
    """The task.submitted event of fire ``n`` of ``rule`` at ``now`` (epoch seconds).
    Raises :class:`InvalidEvent` if the template does not make a valid submission."""
    if not math.isfinite(now):
        raise ValueError(f"now must be finite, got {now}")
    key = f"trigger-{task_id_for(rule, n)}"
    data = {
        **rule.template,
        "type": "task.submitted",
        "schema_version": SCHEMA_VERSION,
        "event_id": key,
        "occurred_at": datetime.fromtimestamp(now, UTC),
        "source": TRIGGER_SOURCE,
        "task_id": task_id_for(rule, n),
        "idempotency_key": key,
    }
    return validate_as(TaskSubmitted, data, now=datetime.fromtimestamp(now, UTC))


def rules_for(rules: Sequence[TriggerRule], dataset: str) -> list[TriggerRule]:
    """The rules watching ``dataset``."""
    return [rule for rule in rules if rule.dataset == dataset]
