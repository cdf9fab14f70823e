"""The tenant of a record (header vs body) and who may see which task."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamsched.schemas import codec
from streamsched.schemas.commands import CancelTask
from streamsched.schemas.errors import InvalidEvent
from streamsched.schemas.lifecycle import TaskStarted
from streamsched.schemas.tenancy import (
    HEADER_FIELD,
    TENANT_HEADER,
    AccessRefused,
    access_refusal,
    body_tenant_of,
    header_tenant,
    resolve_tenant,
    tenant_headers,
)
from streamsched.testing import wire_submission

H = TENANT_HEADER


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        ("vision", [], "vision"),
        ("vision", None, "vision"),
        (None, [], None),
        (None, [(H, b"vision")], "vision"),
        ("vision", [(H, b"vision")], "vision"),
        ("vision", [("type", b"task.submitted"), (H, b"vision")], "vision"),
        ("vision", {H: "vision"}, "vision"),
        ("vision", [("Streamsched-Tenant", b"vision")], "vision"),  # names are case-blind
        ("vision", [(H, b"vision"), (H, b"vision")], "vision"),  # a repeat that agrees
    ],
)
def test_the_tenant_is_the_one_header_and_body_agree_on(
    body: str | None, headers: Any, expected: str | None
) -> None:
    assert resolve_tenant(body, headers) == expected


def test_a_body_tenant_that_differs_from_the_header_is_refused_with_both_named() -> None:
    with pytest.raises(InvalidEvent) as caught:
        resolve_tenant("ads", [(H, b"vision")])
    assert caught.value.field == "tenant"
    assert "'ads'" in caught.value.reason
    assert "'vision'" in caught.value.reason
    assert TENANT_HEADER in caught.value.reason


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ([(H, b"\xff\xfe")], "not UTF-8"),
        ([(H, b"two words")], "not a valid tenant"),
        ([(H, b"")], "not a valid tenant"),
        ([(H, None)], "no value"),
        ([(H, b"a"), (H, b"b")], "repeated with different tenants"),
        ([(H, b"x" * 300)], "not a valid tenant"),
    ],
)
def test_a_malformed_tenant_header_is_bad_input(headers: Any, why: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        header_tenant(headers)
    assert caught.value.field == HEADER_FIELD
    assert why in caught.value.reason


@given(
    body=st.one_of(st.none(), st.sampled_from(["a", "b", "team-c"])),
    header=st.one_of(st.none(), st.sampled_from(["a", "b", "team-c"])),
)
def test_resolve_never_returns_a_tenant_the_header_did_not_claim(
    body: str | None, header: str | None
) -> None:
    headers = tenant_headers(header)
    if header is not None and body is not None and header != body:
        with pytest.raises(InvalidEvent):
            resolve_tenant(body, headers)
        return
    resolved = resolve_tenant(body, headers)
    assert resolved == (header if header is not None else body)


def _env() -> dict[str, Any]:
    return {"occurred_at": datetime.now(UTC), "source": "test"}


def test_body_tenant_of_names_the_submitter_and_the_canceller() -> None:
    assert body_tenant_of(wire_submission("t1")) == "team-a"
    cancel = CancelTask(**_env(), task_id="t1", reason="r", requested_by="ads")
    assert body_tenant_of(cancel) == "ads"
    assert body_tenant_of(TaskStarted(**_env(), task_id="t1", attempt=1, node_id="n")) is None


@pytest.mark.parametrize(
    ("requester", "owner", "refused"),
    [
        (None, "ads", False),  # operator mode
        ("ads", "ads", False),
        ("ads", None, False),  # owner unknown yet: the view answers "not known"
        ("vision", "ads", True),
    ],
)
def test_access_is_refused_only_across_tenants(
    requester: str | None, owner: str | None, refused: bool
) -> None:
    reason = access_refusal(requester, owner)
    assert (reason is not None) == refused
    if reason is not None:
        assert repr(requester) in reason


def test_an_access_refusal_record_round_trips_through_the_codec() -> None:
    record = AccessRefused(
        **_env(), requested_by="vision", action="query", task_id="t1", tenant="ads",
        reason="tenant 'vision' may not see a task of another tenant",
    )  # fmt: skip
    assert codec.decode_as(AccessRefused, codec.encode(record)) == record
    with pytest.raises(InvalidEvent):
        codec.validate_as(AccessRefused, {**record.model_dump(), "action": "delete"})
