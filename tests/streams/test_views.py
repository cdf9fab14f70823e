"""The status view's answers per requesting tenant (the Processor with plain dicts as
tables: the same code the faust views call), and the tenant check on task records."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from streamsched.schemas import codec, topics
from streamsched.schemas.commands import CancelTask
from streamsched.schemas.errors import InvalidEvent
from streamsched.schemas.lifecycle import TaskStarted
from streamsched.schemas.tenancy import HTTP_TENANT_HEADER, TENANT_HEADER, AccessRefused
from streamsched.streams.app import Processor
from streamsched.streams.views import Answer, StatusView
from streamsched.testing import wire_submission


def _env() -> dict[str, Any]:
    return {"occurred_at": datetime.now(UTC), "source": "test"}


@pytest.fixture
def proc() -> Processor:
    """Tasks a1, a2 of tenant ads, v1 of vision."""
    p = Processor((), {}, {}, {}, {})
    for task_id, tenant in (("a1", "ads"), ("a2", "ads"), ("v1", "vision")):
        sub = wire_submission(task_id).model_copy(update={"tenant": tenant})
        p.on_task_event(sub)
    return p


@pytest.fixture
def view(proc: Processor) -> StatusView:
    return StatusView(proc)


def test_operator_mode_sees_every_task(proc: Processor, view: StatusView) -> None:
    assert view.answer_task("", "v1").status == 200
    listed = view.answer_tasks("", {})
    assert sorted(t["task_id"] for t in listed.body["tasks"]) == ["a1", "a2", "v1"]
    assert proc.summary()["tasks"] == 3


def test_a_tenant_sees_its_own_tasks_only(proc: Processor, view: StatusView) -> None:
    own = view.answer_task("ads", "a1")
    assert (own.status, own.body["task_id"], own.refusal) == (200, "a1", None)
    listed = view.answer_tasks("ads", {"limit": "10"})
    assert sorted(t["task_id"] for t in listed.body["tasks"]) == ["a1", "a2"]
    same = view.answer_tasks("ads", {"tenant": "ads"})
    assert len(same.body["tasks"]) == 2
    summary = proc.summary("ads")
    assert (summary["tasks"], summary["per_state"]["queued"], summary["tenant"]) == (2, 2, "ads")


def test_another_tenants_task_is_refused_with_an_audit_record(
    proc: Processor, view: StatusView
) -> None:
    answer = view.answer_task("vision", "a1")
    assert answer.status == 403
    assert "'vision' may not see a task of another tenant" in answer.body["error"]
    record = answer.refusal
    assert isinstance(record, AccessRefused)
    assert (record.requested_by, record.action, record.task_id, record.tenant) == (
        "vision", "query", "a1", "ads",
    )  # fmt: skip
    assert record.reason == answer.body["error"]
    assert codec.decode_as(AccessRefused, codec.encode(record)) == record


def test_listing_another_tenants_tasks_is_refused_and_audited(
    proc: Processor, view: StatusView
) -> None:
    answer = view.answer_tasks("vision", {"tenant": "ads"})
    assert answer.status == 403
    assert answer.refusal is not None
    assert (answer.refusal.action, answer.refusal.tenant, answer.refusal.task_id) == (
        "list", "ads", None,
    )  # fmt: skip


def test_a_prediction_for_another_tenants_task_is_refused(
    proc: Processor, view: StatusView
) -> None:
    answer = view.answer_predict("vision", {"task_id": "a1", "hardware": "gpu-v100"})
    assert answer.status == 403
    assert answer.refusal is not None
    assert answer.refusal.action == "predict"
    assert view.answer_predict("ads", {"task_id": "a1", "hardware": "gpu-v100"}).status == 200


def test_unknown_and_ownerless_tasks_are_not_found_for_a_tenant(
    proc: Processor, view: StatusView
) -> None:
    assert view.answer_task("ads", "nope").status == 404
    # only an executor's report seen: the owner is unknown, so no tenant may read it yet
    proc.on_task_event(TaskStarted(**_env(), task_id="o1", attempt=1, node_id="n1"))
    assert view.answer_task("ads", "o1").status == 404
    assert view.answer_task("ads", "o1").refusal is None
    assert view.answer_task("", "o1").status == 200  # the operator sees it


@pytest.mark.parametrize(
    ("headers", "require", "expected"),
    [
        ({}, False, ""),
        ({HTTP_TENANT_HEADER: "ads"}, False, "ads"),
        ({HTTP_TENANT_HEADER: " ads "}, True, "ads"),
        ({HTTP_TENANT_HEADER: ""}, False, ""),
    ],
)
def test_the_requester_comes_from_the_header(
    proc: Processor, headers: dict[str, str], require: bool, expected: str
) -> None:
    assert StatusView(proc, require).requester(headers) == expected


def test_a_missing_or_malformed_tenant_header_is_answered_with_the_reason(
    proc: Processor,
) -> None:
    missing = StatusView(proc, True).requester({})
    assert isinstance(missing, Answer)
    assert missing.status == 401
    assert HTTP_TENANT_HEADER in missing.body["error"]
    bad = StatusView(proc, False).requester({HTTP_TENANT_HEADER: "two words"})
    assert isinstance(bad, Answer)
    assert bad.status == 400
    assert "not a valid tenant" in bad.body["error"]


def test_a_record_whose_tenant_header_contradicts_its_body_is_refused(proc: Processor) -> None:
    raw = codec.encode(wire_submission("t9"))  # tenant team-a
    assert proc.decode(topics.TASKS_SUBMITTED, raw, [(TENANT_HEADER, b"team-a")]).type == (
        "task.submitted"
    )
    with pytest.raises(InvalidEvent) as caught:
        proc.decode(topics.TASKS_SUBMITTED, raw, [(TENANT_HEADER, b"vision")])
    assert caught.value.field == "tenant"
    cancel = CancelTask(**_env(), task_id="a1", reason="r", requested_by="ads")
    with pytest.raises(InvalidEvent):
        proc.decode(topics.COMMANDS, codec.encode(cancel), {TENANT_HEADER: b"vision"})


def test_the_views_own_audit_records_are_recognised_on_the_decisions_topic(
    proc: Processor, view: StatusView
) -> None:
    record = view.answer_task("vision", "a1").refusal
    assert record is not None
    decoded = proc.decode(topics.DECISIONS, codec.encode(record))
    assert decoded == record
    assert proc.refusals_seen == 1
    with pytest.raises(InvalidEvent):  # elsewhere it is just an unknown type
        proc.decode(topics.TASK_EVENTS, codec.encode(record))


def test_an_operator_tenant_is_answered_like_an_operator(proc: Processor) -> None:
    view = StatusView(proc, require_tenant=True, operators=("ops",))
    assert view.requester({HTTP_TENANT_HEADER: "ops"}) == ""
    assert view.answer_task("", "v1").status == 200
    assert view.requester({HTTP_TENANT_HEADER: "ads"}) == "ads"
    missing = view.requester({})
    assert isinstance(missing, Answer)
    assert missing.status == 401
