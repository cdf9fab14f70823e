"""Which tenant the Client speaks for, and what it refuses to send (no broker needed: the
refusals happen before anything is produced)."""

from __future__ import annotations

import pytest

from streamsched.client import Client, ClientError
from streamsched.schemas.errors import InvalidEvent
from streamsched.settings import (
    configured_tenant,
    kafka_settings,
    sasl_principal,
    secured,
    status_operators,
    status_requires_tenant,
)

SASL = {
    "STREAMSCHED_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "STREAMSCHED_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "STREAMSCHED_KAFKA_SASL_USERNAME": "vision",
    "STREAMSCHED_KAFKA_SASL_PASSWORD": "secret",
}
#: Nothing listens here: a client that tried to produce would time out, not refuse.
NOWHERE = "127.0.0.1:1"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STREAMSCHED_TENANT", "STREAMSCHED_STATUS_REQUIRE_TENANT", *SASL):
        monkeypatch.delenv(name, raising=False)


def _sasl(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SASL.items():
        monkeypatch.setenv(name, value)


def test_the_sasl_user_is_the_principal_only_with_a_sasl_protocol() -> None:
    assert sasl_principal(kafka_settings(SASL)) == "vision"
    ssl_only = {**SASL, "STREAMSCHED_KAFKA_SECURITY_PROTOCOL": "SSL"}
    assert sasl_principal(kafka_settings(ssl_only)) is None
    assert sasl_principal(kafka_settings({})) is None


def test_tenant_settings_are_read_and_checked() -> None:
    assert configured_tenant({"STREAMSCHED_TENANT": " ads "}) == "ads"
    assert configured_tenant({}) is None
    assert status_requires_tenant({"STREAMSCHED_STATUS_REQUIRE_TENANT": "true"}) is True
    assert status_requires_tenant({"STREAMSCHED_STATUS_REQUIRE_TENANT": "no"}) is False
    assert status_requires_tenant({}) is None  # unset: the processor decides
    assert status_operators({"STREAMSCHED_STATUS_OPERATORS": "ops, sre,,"}) == ("ops", "sre")
    assert secured(kafka_settings(SASL)) is True
    assert secured(kafka_settings({})) is False
    with pytest.raises(ValueError, match="STREAMSCHED_STATUS_REQUIRE_TENANT='maybe'"):
        status_requires_tenant({"STREAMSCHED_STATUS_REQUIRE_TENANT": "maybe"})


def test_with_sasl_the_client_speaks_for_its_user(monkeypatch: pytest.MonkeyPatch) -> None:
    _sasl(monkeypatch)
    monkeypatch.setenv("STREAMSCHED_TENANT", "ignored-with-sasl")
    client = Client(NOWHERE, timeout_s=0.5)
    assert (client.principal, client.tenant) == ("vision", "vision")
    assert Client(NOWHERE, tenant="vision").tenant == "vision"
    with pytest.raises(ClientError, match="differs from the authenticated SASL user 'vision'"):
        Client(NOWHERE, tenant="ads")


def test_a_body_tenant_other_than_the_principal_is_refused_before_sending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _sasl(monkeypatch)
    with Client(NOWHERE, timeout_s=0.5) as client:
        with pytest.raises(InvalidEvent) as caught:
            client.submit(tenant="ads", task_type="train")
        assert caught.value.field == "tenant"
        assert "'ads' is not this client's tenant 'vision'" in caught.value.reason
        assert "authenticated SASL user" in caught.value.reason
        with pytest.raises(InvalidEvent) as cancel:
            client.cancel("t1", tenant="ads")
        assert cancel.value.field == "requested_by"
        assert client._producer is None  # nothing was produced


def test_the_configured_tenant_fills_submissions_and_cancels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMSCHED_TENANT", "ads")
    client = Client(NOWHERE, timeout_s=0.5)
    assert (client.principal, client.tenant) == (None, "ads")
    assert Client(NOWHERE, tenant="vision").tenant == "vision"  # explicit wins without SASL
    with pytest.raises(InvalidEvent):
        client.submit(tenant="vision", task_type="train")
    with pytest.raises(ClientError, match="not a valid tenant"):
        Client(NOWHERE, tenant="two words")
