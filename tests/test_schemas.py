"""Wire formats: round trips, validation messages, JSON Schema export."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from streamsched.schemas import (
    EVENT_TYPES,
    AccessRefused,
    Assignment,
    BreakerChanged,
    CancelOutcome,
    CancelTask,
    DataIngested,
    DecisionAudit,
    DecisionCandidate,
    EventEnvelope,
    InvalidEvent,
    ModelDrift,
    NodeHeartbeat,
    NodeResources,
    PolicyChanged,
    PolicyUpdate,
    RunningAttempt,
    StopAttempt,
    TaskCancelled,
    TaskCompleted,
    TaskEnded,
    TaskFailed,
    TaskLost,
    TaskPreempted,
    TaskProgress,
    TaskRejected,
    TaskRequeued,
    TaskResources,
    TaskStarted,
    TaskSubmitted,
    decode,
    decode_as,
    encode,
    event_type_of,
    export_json_schemas,
)

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(seconds=5)
ENV: dict[str, Any] = {"occurred_at": T0, "source": "tests"}
ATTEMPT: dict[str, Any] = {**ENV, "task_id": "t-1", "attempt": 2, "node_id": "node-7"}

SUBMITTED = TaskSubmitted(
    **ENV,
    event_id="e-submit",
    task_id="t-1",
    idempotency_key="k-1",
    tenant="vision",
    task_type="train-resnet50",
    declared_work={"epochs": 90, "input_bytes": 10**9, "runtime_s": 3600.0},
    resources={"cpu_milli": 8000, "memory_mib": 32768, "gpus": 4, "allowed_hardware": ["gpu-v100"]},
    priority="high",
    deadline=T0 + timedelta(hours=6),
    cost_tolerance=0.5,
    governance={"data_region": "eu"},
    preemptible=True,
    depends_on=["prep-1"],
    command=["python", "train.py", "--epochs", "90"],
    env={"NCCL_DEBUG": "WARN"},
    dataset="imagenet",
)

#: One valid example of every event type.
EXAMPLES: list[EventEnvelope] = [
    SUBMITTED,
    TaskRejected(**ENV, task_id="t-2", idempotency_key="k-2", reason="bad", field="resources"),
    DataIngested(**ENV, dataset="clicks", rows=1000, bytes=52_000, location="s3://b/clicks/1"),
    NodeHeartbeat(
        **ENV,
        node_id="node-7",
        hardware="gpu-v100",
        capacity=NodeResources(cpu_milli=64000, memory_mib=262144, gpus=8),
        usage=NodeResources(cpu_milli=12000, memory_mib=65536, gpus=4),
        running=[RunningAttempt(task_id="t-1", attempt=2)],
        labels={"data_region": "eu"},
        sequence=41,
    ),
    TaskStarted(**ATTEMPT),
    TaskProgress(**ATTEMPT, progress=0.25),
    TaskCompleted(**ATTEMPT, runtime_s=3512.5),
    TaskFailed(**ATTEMPT, reason="CUDA out of memory", exit_code=1, retryable=False),
    TaskPreempted(**ATTEMPT, progress=0.5),
    TaskCancelled(**ATTEMPT, reason="user asked"),
    TaskLost(**ATTEMPT, reason="node heartbeat timeout"),
    Assignment(
        **ENV,
        decision_id="d-1",
        task_id="t-3",
        attempt=1,
        node_id="node-7",
        hardware="gpu-t4",
        gpu_indices=[3],
        gpu_milli=250,
        predicted_runtime_s=120.0,
        resume_progress=0.0,
        command=["python", "-m", "serve"],
        env={"PORT": "8080"},
        tenant="search",
        task_type="inference",
    ),
    DecisionAudit(
        **ENV,
        decision_id="d-1",
        stimulus_id="s-9",
        task_id="t-3",
        attempt=1,
        policy="predicted-completion",
        policy_version="3",
        model_version="runtime-arf@1042",
        decided_at_s=1741.5,
        chosen_node_id="node-7",
        chosen_hardware="gpu-t4",
        predicted_runtime_s=120.0,
        reason="earliest predicted completion",
        candidates=[
            DecisionCandidate(
                node_id="node-7",
                hardware="gpu-t4",
                score=-120.0,
                predicted_runtime_s=120.0,
                expected_wait_s=0.0,
            ),
            DecisionCandidate(
                node_id="node-2",
                hardware="cpu",
                score=None,
                predicted_runtime_s=900.0,
                expected_wait_s=30.0,
            ),
        ],
    ),
    CancelTask(**ENV, task_id="t-1", reason="superseded", requested_by="vision"),
    PolicyUpdate(
        **ENV,
        policy="predicted-completion",
        parameters={"age_weight": 0.1, "max_preemptions": 2, "explain": True, "tie": "fifo"},
        shadow_policy="fifo",
        split_ratio=0.2,
    ),
    StopAttempt(
        **ENV,
        task_id="t-1",
        attempt=2,
        node_id="gpu-v100-0",
        mode="preempt",
        reason="make room for t-9 (high)",
        decision_id="d-00000042",
        for_task_id="t-9",
    ),
    TaskEnded(
        **ENV,
        task_id="t-4",
        state="cancelled",
        attempt=0,
        reason="upstream task t-3 failed",
    ),
    ModelDrift(
        **ENV,
        model="river-linear+drift",
        key="gpu-v100",
        model_version="river-linear@812",
        error_before=0.21,
        error_after=0.74,
        observations=812,
        window=64,
        adapted=True,
    ),
    PolicyChanged(
        **ENV,
        request_event_id="pol-7",
        requested_by="cli",
        accepted=True,
        changed=True,
        policy="forecast",
        version="forecast/1",
        previous_policy="forecast-river",
        previous_version="forecast-river/1",
        shadow_policy="least-loaded",
        shadow_version="least-loaded/1",
        parameters={"sjf_weight": 2.0},
        reason="live forecast/1 (was forecast-river/1); shadow least-loaded/1",
    ),
    CancelOutcome(
        **ENV,
        task_id="t-1",
        request_event_id="c-9",
        requested_by="vision",
        reason="superseded",
        accepted=False,
        outcome="refused: the task had already succeeded",
        attempt=1,
    ),
    BreakerChanged(
        **ENV,
        decision_id="d-breaker-000001",
        hardware="gpu-v100",
        state="open",
        previous_state="closed",
        reason="5 different tasks failed on gpu-v100 in the last 300 s against 1 successful "
        "attempts (failure ratio 0.83 >= 0.5, at least 5 tasks): placement on gpu-v100 "
        "paused for 30 s",
        failed_tasks=5,
        succeeded=1,
        cooldown_s=30.0,
        half_open_at_s=1771.5,
        decided_at_s=1741.5,
    ),
    AccessRefused(
        **ENV,
        requested_by="ads",
        action="query",
        task_id="t-1",
        tenant="vision",
        reason="tenant 'ads' may not see a task of another tenant",
    ),
    TaskRequeued(
        **ENV,
        task_id="t-1",
        attempt=1,
        previous_state="running",
        reason="attempt 1 lost: node node-7 does not run it (not listed by its heartbeats "
        "for 12 s)",
        node_id="node-7",
        stimulus_id="e-heartbeat-9",
        decided_at_s=1741.5,
    ),
]


def test_examples_cover_every_event_type() -> None:
    assert sorted(event_type_of(type(ev)) for ev in EXAMPLES) == sorted(EVENT_TYPES)
    assert all(EVENT_TYPES[ev.type] is type(ev) for ev in EXAMPLES)


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda ev: ev.type)
def test_round_trip(event: EventEnvelope) -> None:
    raw = encode(event)
    assert decode(raw, now=NOW) == event
    assert decode_as(type(event), raw.decode(), now=NOW) == event
    assert encode(decode(raw, now=NOW)) == raw
    assert b'": ' not in raw  # compact
    assert b'", "' not in raw


def test_defaults_and_immutability() -> None:
    ev = TaskSubmitted(**ENV, task_id="a", idempotency_key="a", tenant="t", task_type="x")
    assert len(ev.event_id) == 32
    assert ev.schema_version == 1
    assert ev.resources.gpu_milli == 0
    assert ev.max_retries == 2
    assert TaskResources(gpus=2).gpu_milli == 1000
    assert TaskResources(gpus=1, gpu_milli=250).gpu_milli == 250
    with pytest.raises(ValidationError):
        ev.task_id = "b"  # type: ignore[misc]


def _payload(event: EventEnvelope) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(encode(event))
    return loaded


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def mutate(payload: dict[str, Any]) -> None:
        node = payload
        for part in parents:
            node = node[part]
        node[last] = value

    return mutate


def _drop(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload.pop(name)


def _resources(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return _set("resources", {"cpu_milli": 1000, "memory_mib": 1024, **fields})


# (mutation of a valid task.submitted payload, field named, words in the reason)
SUBMISSION_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("unknown field", _set("colour", "red"), "colour", "Extra inputs are not permitted"),
    ("unknown nested field", _set("resources.tpus", 1), "resources.tpus", "Extra inputs"),
    ("negative cpu", _set("resources.cpu_milli", -1), "resources.cpu_milli", ">= 0"),
    ("huge cpu", _set("resources.cpu_milli", 10_000_001), "resources.cpu_milli", "<= 10000000"),
    ("negative memory", _set("resources.memory_mib", -5), "resources.memory_mib", ">= 0"),
    ("too many gpus", _resources(gpus=65), "resources.gpus", "<= 64"),
    ("gpu_milli without gpus", _resources(gpu_milli=500), "resources.gpu_milli", "gpus >= 1"),
    ("gpu_milli zero", _resources(gpus=1, gpu_milli=0), "resources.gpu_milli", "1..1000"),
    ("gpu_milli over", _resources(gpus=1, gpu_milli=1001), "resources.gpu_milli", "<= 1000"),
    ("share of many", _resources(gpus=2, gpu_milli=500), "resources.gpu_milli", "gpus == 1"),
    (
        "gpu task on cpu",
        _resources(gpus=1, allowed_hardware=["cpu"]),
        "resources.allowed_hardware",
        "cannot run on hardware class 'cpu'",
    ),
    (
        "unknown hardware",
        _set("resources.allowed_hardware", ["gpu-x9"]),
        "resources.allowed_hardware.0",
        "unknown hardware class 'gpu-x9'",
    ),
    (
        "not a hardware name",
        _set("resources.allowed_hardware", ["gpu-v100", "V100"]),
        "resources.allowed_hardware.1",
        "not a hardware class name",
    ),
    (
        "duplicate hardware",
        _set("resources.allowed_hardware", ["gpu-v100", "gpu-v100"]),
        "resources.allowed_hardware",
        "duplicate entry 'gpu-v100'",
    ),
    ("past deadline", _set("deadline", "2025-03-03T08:00:00Z"), "deadline", "not in the future"),
    ("naive deadline", _set("deadline", "2030-01-01T00:00:00"), "deadline", "timezone"),
    ("naive occurred_at", _set("occurred_at", "2025-03-03T09:00:00"), "occurred_at", "timezone"),
    ("future version", _set("schema_version", 2), "schema_version", "unsupported schema version 2"),
    ("version zero", _set("schema_version", 0), "schema_version", "unsupported schema version 0"),
    ("no version", _drop("schema_version"), "schema_version", "required"),
    ("no event id", _drop("event_id"), "event_id", "required"),
    ("empty event id", _set("event_id", ""), "event_id", "at least 1 character"),
    ("no source", _drop("source"), "source", "required"),
    ("unknown type", _set("type", "task.submited"), "type", "does not match"),
    ("no type", _drop("type"), "type", "required"),
    ("depends on itself", _set("depends_on", ["t-1"]), "depends_on", "itself"),
    ("duplicate dependency", _set("depends_on", ["a", "a"]), "depends_on", "duplicate entry"),
    ("empty argv item", _set("command", ["python", ""]), "command.1", "at least 1 character"),
    ("NUL in argv", _set("command", ["python", "a\x00b"]), "command.1", "NUL"),
    ("bad env name", _set("env", {"1BAD": "x"}), "env.1BAD.[key]", "pattern"),
    ("too many retries", _set("max_retries", 11), "max_retries", "<= 10"),
    ("negative tolerance", _set("cost_tolerance", -0.1), "cost_tolerance", ">= 0"),
    ("NaN tolerance", _set("cost_tolerance", float("nan")), "cost_tolerance", "finite"),
    ("unknown priority", _set("priority", "urgent"), "priority", "'critical'"),
    ("negative steps", _set("declared_work.steps", -1), "declared_work.steps", ">= 0"),
    ("zero runtime", _set("declared_work.runtime_s", 0), "declared_work.runtime_s", "> 0"),
    ("empty tenant", _set("tenant", ""), "tenant", "at least 1 character"),
    ("space in task id", _set("task_id", "my task"), "task_id", "pattern"),
    ("string for int", _set("resources.cpu_milli", "1000"), "resources.cpu_milli", "integer"),
    ("float for int", _set("resources.gpus", 1.0), "resources.gpus", "integer"),
    ("bool for int", _set("max_retries", True), "max_retries", "integer"),
    ("string for bool", _set("preemptible", "yes"), "preemptible", "boolean"),
    ("bool for float", _set("cost_tolerance", True), "cost_tolerance", "number"),
]


def _reason_matches(reason: str, words: str) -> bool:
    # pydantic says "greater than or equal to 0"; the table uses the short form.
    long = words.replace(">= ", "greater than or equal to ").replace(
        "<= ", "less than or equal to "
    )
    long = long.replace("> ", "greater than ")
    return words.lower() in reason.lower() or long.lower() in reason.lower()


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [case[1:] for case in SUBMISSION_CASES],
    ids=[case[0] for case in SUBMISSION_CASES],
)
def test_invalid_submission_names_field(
    mutate: Callable[[dict[str, Any]], None], field: str, words: str
) -> None:
    payload = _payload(SUBMITTED)
    mutate(payload)
    with pytest.raises(InvalidEvent) as info:
        decode(json.dumps(payload), now=NOW)
    assert info.value.field == field, str(info.value)
    assert _reason_matches(info.value.reason, words), info.value.reason
    assert f"field {field!r}: " in str(info.value)


def test_error_message_format() -> None:
    payload = _payload(SUBMITTED)
    payload["resources"]["cpu_milli"] = -1
    with pytest.raises(InvalidEvent) as info:
        decode(json.dumps(payload), now=NOW)
    assert str(info.value) == (
        "invalid task.submitted event: field 'resources.cpu_milli': "
        "Input should be greater than or equal to 0"
    )
    assert isinstance(info.value, ValueError)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.field, copy.reason, str(copy)) == (
        "resources.cpu_milli",
        info.value.reason,
        str(info.value),
    )


def test_every_problem_is_listed() -> None:
    payload = _payload(SUBMITTED)
    payload["max_retries"] = -1
    payload["tenant"] = ""
    with pytest.raises(InvalidEvent) as info:
        decode(json.dumps(payload), now=NOW)
    assert {e.field for e in info.value.errors} == {"max_retries", "tenant"}
    assert str(info.value).endswith("(and 1 more problem)")


# (event, mutation, field named, words in the reason)
OTHER_CASES: list[tuple[EventEnvelope, Callable[[dict[str, Any]], None], str, str]] = [
    (EXAMPLES[3], _set("usage.cpu_milli", -1), "usage.cpu_milli", ">= 0"),
    (EXAMPLES[3], _set("hardware", "gpu-mi300"), "hardware", "unknown hardware class"),
    (EXAMPLES[3], _set("sequence", -1), "sequence", ">= 0"),
    (
        EXAMPLES[3],
        _set("running", [{"task_id": "a", "attempt": 1}] * 2),
        "running",
        "listed twice",
    ),
    (EXAMPLES[3], _set("running", [{"task_id": "a", "attempt": 0}]), "running.0.attempt", ">= 1"),
    (EXAMPLES[4], _set("attempt", 0), "attempt", ">= 1"),
    (EXAMPLES[5], _set("progress", 1.5), "progress", "<= 1"),
    (EXAMPLES[6], _set("exit_code", 1), "exit_code", "0"),
    (EXAMPLES[6], _set("runtime_s", -3), "runtime_s", ">= 0"),
    (EXAMPLES[7], _set("reason", ""), "reason", "at least 1 character"),
    (EXAMPLES[8], _set("progress", -0.1), "progress", ">= 0"),
    (EXAMPLES[11], _set("gpu_indices", []), "gpu_milli", "needs gpu_indices"),
    (EXAMPLES[11], _set("gpu_indices", [1, 1]), "gpu_indices", "distinct"),
    (EXAMPLES[11], _set("resume_progress", 2), "resume_progress", "<= 1"),
    (EXAMPLES[12], _set("chosen_hardware", "tpu"), "chosen_hardware", "not a hardware class"),
    (EXAMPLES[12], _set("policy", ""), "policy", "at least 1 character"),
    (EXAMPLES[2], _set("location", "/data/x"), "location", "pattern"),
    (EXAMPLES[2], _set("rows", -1), "rows", ">= 0"),
    (EXAMPLES[13], _set("requested_by", ""), "requested_by", "at least 1 character"),
    (EXAMPLES[14], _set("split_ratio", 1.5), "split_ratio", "<= 1"),
    (EXAMPLES[14], _set("parameters", {"w": [1]}), "parameters", "'w' must be a number"),
    (EXAMPLES[-1], _set("previous_state", "queued"), "previous_state", "'assigned' or 'running'"),
    (EXAMPLES[-1], _set("attempt", 0), "attempt", ">= 1"),
]


@pytest.mark.parametrize(
    ("event", "mutate", "field", "words"),
    OTHER_CASES,
    ids=[f"{case[0].type}-{case[2]}" for case in OTHER_CASES],
)
def test_invalid_event_names_field(
    event: EventEnvelope, mutate: Callable[[dict[str, Any]], None], field: str, words: str
) -> None:
    payload = _payload(event)
    mutate(payload)
    with pytest.raises(InvalidEvent) as info:
        decode(json.dumps(payload), now=NOW)
    assert (info.value.event_type, info.value.field) == (event.type, field), str(info.value)
    assert _reason_matches(info.value.reason, words), info.value.reason


PAYLOAD_CASES: list[tuple[str, bytes | str, str]] = [
    ("not json", b'{"type": ', "not valid JSON: Expecting value at line 1 column 10"),
    ("second line", '{\n  "type": tru\n}', "at line 2 column"),
    ("array", b"[1, 2]", "expected a JSON object, got list"),
    ("duplicate key", b'{"type": "task.started", "type": "task.lost"}', "duplicate key 'type'"),
    ("not utf-8", b'{"source": "\xff"}', "not UTF-8"),
]


@pytest.mark.parametrize(
    ("raw", "words"), [c[1:] for c in PAYLOAD_CASES], ids=[c[0] for c in PAYLOAD_CASES]
)
def test_bad_payload(raw: bytes | str, words: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode(raw, now=NOW)
    assert info.value.field == "(payload)"
    assert words in info.value.reason
    assert str(info.value).startswith("invalid event: field '(payload)': ")


def test_oversize_payload() -> None:
    raw = encode(SUBMITTED)
    assert decode(raw, now=NOW, max_bytes=len(raw)) == SUBMITTED
    with pytest.raises(InvalidEvent) as info:
        decode(raw, now=NOW, max_bytes=len(raw) - 1)
    assert info.value.field == "(payload)"
    assert f"{len(raw)} bytes" in info.value.reason
    assert f"limit of {len(raw) - 1} bytes" in info.value.reason


def test_oversize_field() -> None:
    payload = _payload(SUBMITTED)
    payload["command"] = ["x" * 40_000]
    with pytest.raises(InvalidEvent) as info:
        decode(json.dumps(payload), now=NOW)
    assert info.value.field == "command.0"


def test_known_hardware_from_context() -> None:
    payload = _payload(EXAMPLES[3])
    payload["hardware"] = "gpu-mi300"
    raw = json.dumps(payload)
    assert decode(raw, now=NOW, known_hardware=["gpu-mi300"]).hardware == "gpu-mi300"  # type: ignore[union-attr]
    with pytest.raises(InvalidEvent, match="unknown hardware class 'gpu-mi300'"):
        decode(raw, now=NOW)
    assert NodeHeartbeat.model_validate(payload, context={"known_hardware": {"gpu-mi300"}})


def test_deadline_checked_only_against_a_given_now() -> None:
    payload = _payload(SUBMITTED)
    payload["deadline"] = "2025-03-03T09:00:01Z"
    assert TaskSubmitted.model_validate(payload).deadline is not None  # no "now": no check
    assert decode(json.dumps(payload), now=T0) == TaskSubmitted.model_validate(payload)
    with pytest.raises(InvalidEvent, match="not in the future"):
        decode(json.dumps(payload), now=T0 + timedelta(seconds=1))
    with pytest.raises(InvalidEvent, match="not in the future"):
        decode(json.dumps(payload))  # default now: the clock, long after 2025-03-03
    with pytest.raises(ValueError, match="aware"):
        decode(json.dumps(payload), now=datetime(2025, 1, 1))


def test_decode_as_checks_the_type() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_as(TaskCompleted, encode(EXAMPLES[4]), now=NOW)
    assert (info.value.event_type, info.value.field) == ("task.started", "type")


# ---- JSON Schema export -------------------------------------------------------------------

_ANNOTATIONS = {"title", "description", "default", "examples", "format", "$schema", "$id", "$defs"}
_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def _problems(value: Any, schema: dict[str, Any], root: dict[str, Any], at: str = "") -> list[str]:
    """A small JSON Schema (2020-12 subset) checker: jsonschema is not a dependency. It
    fails loudly on keywords it does not know, so it never passes by ignoring a rule."""
    if "$ref" in schema:
        schema = {
            **root["$defs"][schema["$ref"].removeprefix("#/$defs/")],
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
    out: list[str] = []
    for key, rule in schema.items():
        if key in _ANNOTATIONS or key in ("$ref", "additionalProperties", "propertyNames"):
            continue
        if key == "type":
            ok = _TYPES[rule](value)
        elif key == "const":
            ok = value == rule
        elif key == "enum":
            ok = value in rule
        elif key == "anyOf":
            ok = any(not _problems(value, sub, root, at) for sub in rule)
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            ok = (
                not _TYPES["number"](value)
                or {
                    "minimum": value >= rule,
                    "maximum": value <= rule,
                    "exclusiveMinimum": value > rule,
                    "exclusiveMaximum": value < rule,
                }[key]
            )
        elif key in ("minLength", "maxLength", "minItems", "maxItems", "maxProperties"):
            size = len(value) if isinstance(value, str | list | dict) else None
            ok = size is None or (size >= rule if key.startswith("min") else size <= rule)
        elif key == "pattern":
            ok = not isinstance(value, str) or re.search(rule, value) is not None
        elif key == "required":
            ok = not isinstance(value, dict) or all(name in value for name in rule)
        elif key == "properties":
            ok = True
            if isinstance(value, dict):
                for name, sub in rule.items():
                    if name in value:
                        out += _problems(value[name], sub, root, f"{at}.{name}")
        elif key == "items":
            ok = True
            if isinstance(value, list):
                for i, item in enumerate(value):
                    out += _problems(item, rule, root, f"{at}.{i}")
        else:
            raise AssertionError(f"checker does not know keyword {key!r} at {at or '(root)'}")
        if not ok:
            out.append(f"{at or '(root)'}: {key}={rule!r}")
    if isinstance(value, dict):
        known = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        names = schema.get("propertyNames")
        for name, item in value.items():
            if names is not None:
                out += _problems(name, names, root, f"{at}.{name}[key]")
            if name not in known:
                if extra is False:
                    out.append(f"{at}.{name}: additional property")
                elif isinstance(extra, dict):
                    out += _problems(item, extra, root, f"{at}.{name}")
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("schemas")
    paths = export_json_schemas(out)
    assert [p.name for p in paths] == sorted(f"{t}.schema.json" for t in EVENT_TYPES)
    return {p.name.removesuffix(".schema.json"): json.loads(p.read_text()) for p in paths}


def test_export_is_deterministic(tmp_path: Path) -> None:
    first = [p.read_bytes() for p in export_json_schemas(tmp_path / "a")]
    second = [p.read_bytes() for p in export_json_schemas(tmp_path / "b")]
    assert first == second
    text = first[0].decode()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_exported_schema_matches_model(
    exported: dict[str, dict[str, Any]], event_type: str
) -> None:
    schema = exported[event_type]
    model = EVENT_TYPES[event_type]
    assert schema["$id"] == f"urn:streamsched:schema:v1:{event_type}"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert model.__name__ in schema["title"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(model.model_fields)
    required_in_python = {n for n, f in model.model_fields.items() if f.is_required()}
    wire_required = {"type", "schema_version", "event_id"}
    assert set(schema["required"]) == required_in_python | wire_required
    assert schema["properties"]["type"]["const"] == event_type


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda ev: ev.type)
def test_examples_validate_against_exported_schema(
    exported: dict[str, dict[str, Any]], event: EventEnvelope
) -> None:
    schema = exported[event.type]
    assert _problems(json.loads(encode(event)), schema, schema) == []


@pytest.mark.parametrize(
    "mutate",
    [
        _set("resources.cpu_milli", -1),
        _set("colour", "red"),
        _drop("event_id"),
        _set("schema_version", 2),
        _set("env", {"1BAD": "x"}),
        _set("resources.allowed_hardware", ["V100"]),
        _set("priority", "urgent"),
    ],
)
def test_exported_schema_rejects_invalid(
    exported: dict[str, dict[str, Any]], mutate: Callable[[dict[str, Any]], None]
) -> None:
    payload = _payload(SUBMITTED)
    mutate(payload)
    schema = exported["task.submitted"]
    assert _problems(payload, schema, schema) != []


# ---- preemption audits (decision.audit with kind="preempt") ---------------------------------
PREEMPT_AUDIT = DecisionAudit(
    **ENV,
    event_id="d-00000042.t-batch.3.audit",
    kind="preempt",
    decision_id="d-00000042",
    stimulus_id="e-urgent",
    task_id="t-urgent",
    attempt=1,
    policy="forecast",
    policy_version="forecast/1",
    model_version="running-mean@12",
    decided_at_s=1741.5,
    chosen_node_id="gpu-v100-0",
    chosen_hardware="gpu-v100",
    predicted_runtime_s=600.0,
    reason="forecast: preempt attempt 3 of t-batch on gpu-v100-0: critical outranks low",
    preempted_task_id="t-batch",
    preempted_attempt=3,
)


def test_preempt_audit_round_trips_and_matches_the_exported_schema(
    exported: dict[str, dict[str, Any]],
) -> None:
    raw = encode(PREEMPT_AUDIT)
    assert decode(raw, now=NOW) == PREEMPT_AUDIT
    schema = exported["decision.audit"]
    assert _problems(json.loads(raw), schema, schema) == []
    # An audit written before the field existed is an assignment audit.
    old = _payload(next(ev for ev in EXAMPLES if isinstance(ev, DecisionAudit)))
    del old["kind"], old["preempted_task_id"], old["preempted_attempt"]
    assert decode(json.dumps(old), now=NOW).kind == "assign"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (_set("preempted_attempt", None), "needs preempted_task_id and preempted_attempt"),
        (_drop("preempted_task_id"), "needs preempted_task_id and preempted_attempt"),
        (_set("kind", "assign"), 'need kind="preempt"'),
        (_set("kind", "evict"), "'assign', 'preempt' or 'shadow'"),
        (_set("preempted_attempt", 0), "greater than or equal to 1"),
    ],
)
def test_invalid_preempt_audit_names_the_problem(
    mutate: Callable[[dict[str, Any]], None], words: str
) -> None:
    payload = _payload(PREEMPT_AUDIT)
    mutate(payload)
    with pytest.raises(InvalidEvent) as info:
        decode(json.dumps(payload), now=NOW)
    assert words in info.value.reason, info.value.reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"hardware": "gpu-h200"}', "gpu-h200"),
        (b'{"hardware": "cpu", "node_id": "n"}', "cpu"),
        (b'{"hardware": "GPU H200"}', None),
        (b'{"hardware": 7}', None),
        (b"[1, 2]", None),
        (b"not json", None),
    ],
)
def test_hardware_named_in_a_raw_heartbeat(raw: bytes, expected: str | None) -> None:
    from streamsched.schemas.hardware import hardware_named_in

    assert hardware_named_in(raw) == expected
