"""The audit story builder (``streamsched audit``), from decoded events: no broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from streamsched.audit import UnknownTaskError, build_story, policy_changes
from streamsched.cli import app
from streamsched.schemas import (
    CancelOutcome,
    CancelTask,
    DecisionAudit,
    EventEnvelope,
    PolicyChanged,
    TaskCancelled,
    TaskEnded,
    TaskPreempted,
    TaskProgress,
    TaskRequeued,
    TaskStarted,
    TaskSubmitted,
)
from streamsched.schemas.codec import decode, encode
from streamsched.schemas.tenancy import AccessRefused

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _at(seconds: float) -> dict[str, Any]:
    return {"occurred_at": T0 + timedelta(seconds=seconds), "source": "placement:d"}


def _audit(seconds: float, decision_id: str, **fields: Any) -> DecisionAudit:
    base: dict[str, Any] = {
        "event_id": f"{decision_id}.audit",
        "decision_id": decision_id,
        "stimulus_id": "s-1",
        "task_id": "t-1",
        "attempt": 1,
        "policy": "forecast",
        "policy_version": "forecast/1",
        "model_version": "m@3",
        "decided_at_s": 0.0,
        "chosen_node_id": "n-1",
        "chosen_hardware": "gpu-v100",
        "predicted_runtime_s": 120.0,
        "reason": "earliest predicted completion",
    }
    return DecisionAudit(**_at(seconds), **{**base, **fields})


def _story_events() -> list[EventEnvelope]:
    """t-1: submitted, placed (and a shadow placement), started, preempted for t-9 by
    decision d-5, placed again, cancelled by its tenant; plus records of other tasks."""
    attempt = {"task_id": "t-1", "node_id": "n-1"}
    return [
        TaskSubmitted(
            **{**_at(0), "source": "cli"},
            event_id="sub-1",
            task_id="t-1",
            idempotency_key="k-1",
            tenant="vision",
            task_type="train",
            resources={"gpus": 1},
        ),
        _audit(1, "d-1"),
        _audit(
            1,
            "d-shadow-1",
            kind="shadow",
            chosen_node_id="n-2",
            live_decision_id="d-1",
            live_node_id="n-1",
            live_hardware="gpu-v100",
        ),
        TaskStarted(**{**_at(2), "source": "executor/n-1"}, event_id="st-1", attempt=1, **attempt),
        TaskProgress(
            **{**_at(3), "source": "executor/n-1"},
            event_id="pr-1",
            attempt=1,
            progress=0.5,
            **attempt,
        ),
        # The preemption audit is keyed by (and about) t-9, the task the room is made for.
        _audit(
            4,
            "d-5",
            event_id="d-5.t-1.1.audit",
            kind="preempt",
            task_id="t-9",
            preempted_task_id="t-1",
            preempted_attempt=1,
            reason="t-9 (critical) needs the GPU",
        ),
        TaskPreempted(
            **{**_at(5), "source": "executor/n-1"},
            event_id="pe-1",
            attempt=1,
            progress=0.5,
            **attempt,
        ),
        _audit(6, "d-7", attempt=2, chosen_node_id="n-3"),
        CancelTask(
            **{**_at(7), "source": "cli"},
            event_id="c-1",
            task_id="t-1",
            reason="superseded by t-2",
            requested_by="vision",
        ),
        CancelOutcome(
            **_at(7.1),
            event_id="c-1.cancel",
            task_id="t-1",
            request_event_id="c-1",
            requested_by="vision",
            reason="superseded by t-2",
            accepted=True,
            outcome="cancelled while assigned; attempt 2 stopped",
            attempt=2,
        ),
        TaskEnded(
            **_at(7.1),
            event_id="c-1.t-1.ended",
            task_id="t-1",
            state="cancelled",
            attempt=2,
            reason="superseded by t-2",
        ),
        TaskCancelled(
            **{**_at(8), "source": "executor/n-3"},
            event_id="ca-1",
            task_id="t-1",
            attempt=2,
            node_id="n-3",
        ),
        # Noise: another task's records.
        _audit(2, "d-2", task_id="t-2"),
        TaskStarted(**_at(3), event_id="st-2", task_id="t-2", attempt=1, node_id="n-9"),
    ]


def test_the_story_is_time_ordered_and_tells_who_why_and_which_decision() -> None:
    events = _story_events()
    shuffled = events[::-1] + events[:3]  # any read order, with redeliveries
    story = build_story("t-1", shuffled)
    whats = [e.what for e in story.entries]
    assert whats == [
        "submitted",
        "decision",
        "shadow decision",
        "started",
        "progress",
        "preempted by",
        "preempted",
        "decision",
        "cancel requested",
        "cancel accepted",
        "ended",
        "cancelled",
    ]
    assert story.verdict == "cancelled"
    by_what = {e.what: e for e in story.entries}
    assert by_what["submitted"].who == "vision via cli"
    assert "train for tenant vision" in by_what["submitted"].why
    first = story.entries[1]
    assert first.decision_id == "d-1"
    assert "predicted runtime 120.0 s" in first.why
    assert "earliest predicted completion" in first.why
    shadow = by_what["shadow decision"]
    assert shadow.why.startswith("[shadow, never executed]")
    assert shadow.decision_id == "d-shadow-1"
    victim = by_what["preempted by"]
    assert (victim.decision_id, victim.attempt) == ("d-5", 1)
    assert "to make room for t-9" in victim.why
    assert (by_what["cancel requested"].who, by_what["cancel accepted"].who) == ("vision",) * 2
    assert "attempt 2 stopped" in by_what["cancel accepted"].why


def test_the_story_deduplicates_redeliveries() -> None:
    events = _story_events()
    once = build_story("t-1", events)
    twice = build_story("t-1", events + events)
    assert [e.event_id for e in twice.entries] == [e.event_id for e in once.entries]


def test_the_story_survives_the_wire() -> None:
    events = [decode(encode(e)) for e in _story_events()]
    story = build_story("t-1", events)
    assert story.to_dict()["entries"][0]["event"]["task_id"] == "t-1"
    assert story.verdict == "cancelled"


def test_an_unknown_task_is_a_clear_error() -> None:
    with pytest.raises(UnknownTaskError, match=r"no record of task 't-404' on sched\.tasks"):
        build_story("t-404", _story_events())


def test_a_task_without_its_submission_is_unknown_even_if_others_name_it() -> None:
    events = [e for e in _story_events() if not isinstance(e, TaskSubmitted)]
    with pytest.raises(UnknownTaskError, match=r"other record\(s\) name it"):
        build_story("t-1", events)


def test_a_refused_cancel_and_an_unsettled_task() -> None:
    events = [
        *_story_events()[:5],
        CancelOutcome(
            **_at(9),
            event_id="c-2.cancel",
            task_id="t-1",
            request_event_id="c-2",
            requested_by="mallory",
            reason="because",
            accepted=False,
            outcome="refused: the scheduler has no record of this task",
        ),
    ]
    story = build_story("t-1", events)
    assert story.entries[-1].what == "cancel refused"
    assert story.entries[-1].who == "mallory"
    assert story.verdict is None


def test_a_refused_status_query_is_part_of_the_story() -> None:
    refusal = AccessRefused(
        **_at(9),
        event_id="r-1",
        requested_by="mallory",
        action="query",
        task_id="t-1",
        tenant="vision",
        reason="tenant 'mallory' may not see a task of another tenant",
    )
    story = build_story("t-1", [*_story_events(), refusal])
    (entry,) = [e for e in story.entries if e.what == "access refused"]
    assert entry.who == "mallory"
    assert entry.why == "query refused: tenant 'mallory' may not see a task of another tenant"


def _policy(seconds: float, event_id: str, accepted: bool) -> PolicyChanged:
    return PolicyChanged(
        **_at(seconds),
        event_id=event_id,
        request_event_id=event_id.removesuffix(".policy"),
        requested_by="ops",
        accepted=accepted,
        policy="forecast",
        reason="x",
    )


def test_a_second_attempt_is_explained_by_the_requeue_before_it() -> None:
    """Attempt 1's node went silent: the re-queue (why) and attempt 2's placement share
    one batch's stamp; the re-queue comes first whatever the read order."""
    submitted, first, started = _story_events()[0], _audit(1, "d-1"), _story_events()[3]
    requeued = TaskRequeued(
        **_at(20),
        event_id="heartbeat-timeout:n-1.t-1.1.requeued",
        task_id="t-1",
        attempt=1,
        previous_state="running",
        reason="no heartbeat for 11 s: node n-1",
        stimulus_id="heartbeat-timeout:n-1",
        decided_at_s=20.0,
    )
    second = _audit(20, "d-8", attempt=2, chosen_node_id="n-3")
    events = [decode(encode(e)) for e in (submitted, second, requeued, first, started)]
    story = build_story("t-1", [*events, requeued])  # with a redelivery
    assert [(e.what, e.attempt) for e in story.entries] == [
        ("submitted", None),
        ("decision", 1),
        ("started", 1),
        ("requeued", 1),
        ("decision", 2),
    ]
    entry = story.entries[3]
    assert entry.who == "placement:d"
    assert entry.why == "attempt 1 taken back while running: no heartbeat for 11 s: node n-1"
    assert entry.event_type == "task.requeued"
    assert entry.event["stimulus_id"] == "heartbeat-timeout:n-1"
    assert story.verdict is None  # a re-queue is no verdict


def test_policy_changes_are_listed_once_in_time_order() -> None:
    late, early = _policy(5, "p-2.policy", False), _policy(1, "p-1.policy", True)
    changes = policy_changes([late, *_story_events(), early, late])
    assert [c.event_id for c in changes] == ["p-1.policy", "p-2.policy"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["audit"], {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}, "give a TASK_ID"),
        (["audit", "t-1", "--policy"], {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}, "not both"),
        (["audit", "t-1"], {"KAFKA_BOOTSTRAP_SERVERS": ""}, "KAFKA_BOOTSTRAP_SERVERS is not set"),
    ],
)
def test_cli_usage_errors_are_one_line(args: list[str], env: dict[str, str], message: str) -> None:
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_the_table_shows_reasons_verbatim() -> None:
    from io import StringIO

    from rich.console import Console

    from streamsched.cli.audit_cmd import _story_table

    out = StringIO()
    Console(file=out, width=400).print(_story_table(build_story("t-1", _story_events())))
    text = out.getvalue()
    assert "[shadow, never executed]" in text  # not swallowed as rich markup
    assert "task t-1: cancelled" in text
