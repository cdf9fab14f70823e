"""The CLI speaks for one tenant: with SASL configured it is the SASL user, and a command
that names another is refused before anything reaches Kafka or the status view (exit 2,
one ``error:`` line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from streamsched.cli import app

runner = CliRunner()
#: Nothing listens here: a command that tried to connect would fail differently.
NOWHERE = "127.0.0.1:1"
SASL = {
    "KAFKA_BOOTSTRAP_SERVERS": NOWHERE,
    "STREAMSCHED_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "STREAMSCHED_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "STREAMSCHED_KAFKA_SASL_USERNAME": "vision",
    "STREAMSCHED_KAFKA_SASL_PASSWORD": "secret",
    "STREAMSCHED_STATUS_URL": f"http://{NOWHERE}",
}


@pytest.fixture(autouse=True)
def _sasl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMSCHED_TENANT", raising=False)
    for name, value in SASL.items():
        monkeypatch.setenv(name, value)


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def assert_refused(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_status_and_cancel_refuse_a_tenant_that_is_not_the_sasl_user() -> None:
    assert_refused(invoke("status", "--tenant", "ads"), "'ads'", "SASL user 'vision'")
    assert_refused(invoke("cancel", "t1", "--tenant", "ads"), "'ads'", "SASL user 'vision'")


def test_submit_refuses_a_body_tenant_that_is_not_the_sasl_user(tmp_path: Path) -> None:
    assert_refused(invoke("submit", "--tenant", "ads", "--", "true"), "field 'tenant'", "'vision'")
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"tenant": "ads", "task_type": "train"}), encoding="utf-8")
    assert_refused(invoke("submit", "--file", task), "field 'tenant'", "authenticated SASL user")


def test_processor_refuses_a_bad_require_tenant_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCHED_STATUS_REQUIRE_TENANT", "perhaps")
    assert_refused(invoke("processor"), "STREAMSCHED_STATUS_REQUIRE_TENANT='perhaps'")
