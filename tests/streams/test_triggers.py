"""Trigger rules: loading (and its errors), thresholds, debounce, concurrency, dedup; and
the processor's trigger logic over plain dict tables (no broker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streamsched.schemas.data import DataIngested
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.lifecycle import TaskCompleted
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.streams.app import Processor
from streamsched.streams.triggers import (
    TriggerConfigError,
    TriggerRule,
    TriggerState,
    load_rules,
    observe,
    parse_rules,
    step,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TEMPLATE = {"tenant": "ads", "task_type": "retrain", "resources": {"gpus": 1}}


def rule(**extra: Any) -> TriggerRule:
    data = {"name": "retrain", "dataset": "clicks", "min_rows": 100, "template": TEMPLATE}
    return parse_rules({"rules": [{**data, **extra}]})[0]


def ingest(rows: int, event_id: str, nbytes: int = 0, dataset: str = "clicks") -> DataIngested:
    return DataIngested(
        occurred_at=T0, source="t", event_id=event_id, dataset=dataset, rows=rows,
        bytes=nbytes, location="s3://b/k",
    )  # fmt: skip


def feed(
    r: TriggerRule, state: TriggerState, ev: DataIngested, now: float, done: bool = True
) -> tuple[TriggerState, TaskSubmitted | None]:
    return step(observe(state, r, ev), r, now, previous_done=done)


def test_fires_when_rows_or_bytes_reach_the_threshold() -> None:
    r = rule(min_bytes=1000)
    state, out = feed(r, TriggerState(rule=r.name), ingest(60, "e1"), 0.0)
    assert out is None
    assert state.pending_rows == 60
    state, out = feed(r, state, ingest(40, "e2"), 1.0)
    assert out is not None
    assert (out.task_id, out.idempotency_key, out.event_id) == (
        "retrain-1", "trigger-retrain-1", "trigger-retrain-1",
    )  # fmt: skip
    assert (out.tenant, out.dataset, out.resources.gpus) == ("ads", "clicks", 1)
    assert (state.pending_rows, state.fired, state.last_task_id) == (0, 1, "retrain-1")
    state, out = feed(r, state, ingest(1, "e3", nbytes=1000), 2.0)
    assert out is not None
    assert out.task_id == "retrain-2"


def test_debounce_holds_back_a_second_fire_and_data_carries_over() -> None:
    r = rule(debounce_s=60.0, allow_concurrent=True)
    state, out = feed(r, TriggerState(rule=r.name), ingest(100, "e1"), 0.0)
    assert out is not None
    state, out = feed(r, state, ingest(150, "e2"), 30.0)
    assert out is None
    assert state.pending_rows == 150
    state, out = step(state, r, 59.9, previous_done=True)
    assert out is None
    state, out = step(state, r, 60.0, previous_done=True)  # a tick after the debounce
    assert out is not None
    assert out.task_id == "retrain-2"
    assert state.pending_rows == 0


def test_no_new_fire_while_the_previous_task_runs_unless_concurrency_is_allowed() -> None:
    r = rule()
    state, out = feed(r, TriggerState(rule=r.name), ingest(100, "e1"), 0.0)
    assert out is not None
    state, out = feed(r, state, ingest(100, "e2"), 1.0, done=False)
    assert out is None
    assert state.pending_rows == 100
    state, out = step(state, r, 2.0, previous_done=True)
    assert out is not None
    assert out.task_id == "retrain-2"
    concurrent = rule(allow_concurrent=True)
    s2, out = feed(concurrent, TriggerState(rule="retrain"), ingest(100, "e1"), 0.0)
    s2, out = feed(concurrent, s2, ingest(100, "e2"), 1.0, done=False)
    assert out is not None
    assert out.task_id == "retrain-2"


def test_duplicates_and_other_datasets_do_not_count() -> None:
    r = rule()
    state = observe(TriggerState(rule=r.name), r, ingest(60, "e1"))
    assert observe(state, r, ingest(60, "e1")) == state
    assert observe(state, r, ingest(60, "e9", dataset="other")) == state


def test_the_same_fire_makes_the_same_submission() -> None:
    r = rule()
    _, a = feed(r, TriggerState(rule=r.name), ingest(100, "e1"), 5.0)
    _, b = feed(r, TriggerState(rule=r.name), ingest(100, "e1"), 5.0)
    assert a == b


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"rule": []}, "expected a top-level 'rules' list"),
        ({"rules": [{"name": "r", "dataset": "d", "template": TEMPLATE}]},
         "rule 'r' (#1): field 'min_rows': give min_rows, min_bytes or both"),
        ({"rules": [{"name": "r", "dataset": "d", "min_rows": 0, "template": TEMPLATE}]},
         "rule 'r' (#1): field 'min_rows': Input should be greater than or equal to 1"),
        ({"rules": [{"name": "bad name", "dataset": "d", "min_rows": 1, "template": TEMPLATE}]},
         "rule 'bad name' (#1): field 'name'"),
        ({"rules": [{"name": "r", "dataset": "d", "min_rows": 1, "template": TEMPLATE,
                     "debounce": 5}]}, "rule 'r' (#1): field 'debounce': Extra inputs"),
        ({"rules": [{"name": "r", "dataset": "d", "min_rows": 1,
                     "template": {**TEMPLATE, "task_id": "x"}}]},
         "rule 'r' (#1): field 'template.task_id': set by the trigger"),
        ({"rules": [{"name": "r", "dataset": "d", "min_rows": 1,
                     "template": {**TEMPLATE, "resources": {"gpus": -1}}}]},
         "rule 'r' (#1): field 'template.resources.gpus': Input should be greater than or equal"),
        ({"rules": [{"name": "r", "dataset": "d", "min_rows": 1, "template": {}}]},
         "rule 'r' (#1): field 'template.tenant': Field required"),
        ({"rules": [{"name": "r", "dataset": "d", "min_rows": 1, "template": TEMPLATE}] * 2},
         "rule 'r' (#2): field 'name': duplicate rule name"),
        ({"rules": ["x"]}, "rule #1: expected a table/object, got str"),
    ],
)  # fmt: skip
def test_bad_rule_files_name_file_rule_and_field(
    tmp_path: Path, rules: dict[str, Any], message: str
) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    with pytest.raises(TriggerConfigError) as info:
        load_rules(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_toml_and_json_files_load_and_bad_syntax_is_named(tmp_path: Path) -> None:
    toml = tmp_path / "rules.toml"
    toml.write_text(
        '[[rules]]\nname = "retrain"\ndataset = "clicks"\nmin_bytes = 1_000_000\n'
        'debounce_s = 600\n[rules.template]\ntenant = "ads"\ntask_type = "retrain"\n'
        'command = ["python", "train.py"]\n'
    )
    (loaded,) = load_rules(toml)
    assert (loaded.min_bytes, loaded.debounce_s, loaded.allow_concurrent) == (1_000_000, 600, False)
    assert loaded.template["dataset"] == "clicks"
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rules]\n")
    with pytest.raises(TriggerConfigError, match=r"bad.toml: not valid TOML"):
        load_rules(bad)
    other = tmp_path / "rules.yaml"
    other.write_text("rules: []")
    with pytest.raises(TriggerConfigError, match=r"expected a .json or .toml file"):
        load_rules(other)


def _processor(rules: tuple[TriggerRule, ...], clock: list[float]) -> Processor:
    return Processor(rules, {}, {}, {}, {}, clock=lambda: clock[0])


def test_processor_fires_holds_back_and_fires_on_tick_when_the_task_ends() -> None:
    clock = [1000.0]
    proc = _processor((rule(),), clock)
    assert proc.on_ingest(ingest(60, "e1")) == []
    (first,) = proc.on_ingest(ingest(60, "e2"))
    assert first.task_id == "retrain-1"
    assert proc.on_ingest(ingest(60, "e2")) == []  # redelivery
    proc.on_task_event(first)
    assert proc.on_ingest(ingest(100, "e3")) == []  # retrain-1 is still queued
    assert proc.due_rules() == []
    assert proc.on_tick() == []
    proc.on_task_event(
        DecisionAudit(
            occurred_at=T0,
            source="p",
            decision_id="d1",
            stimulus_id="s",
            task_id="retrain-1",
            attempt=1,
            policy="fifo",
            policy_version="1",
            model_version="m",
            decided_at_s=0.0,
            chosen_node_id="n1",
            chosen_hardware="cpu",
            predicted_runtime_s=10.0,
            reason="r",
        )
    )
    proc.on_task_event(
        TaskCompleted(
            occurred_at=T0, source="e", task_id="retrain-1", attempt=1, node_id="n1", runtime_s=12.0
        )
    )
    assert [r.name for r in proc.due_rules()] == ["retrain"]
    (second,) = proc.on_tick()
    assert second.task_id == "retrain-2"
    assert proc.datasets["clicks"]["rows_total"] == 220
    assert proc.summary()["triggers"] == {"retrain": 2}
