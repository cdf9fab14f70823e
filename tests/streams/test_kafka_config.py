"""librdkafka configuration -> faust broker settings."""

from __future__ import annotations

import ssl

import faust
import pytest

from streamsched.streams.kafka_config import broker_url, faust_broker_settings


def test_plain_servers_become_kafka_urls_and_tuning_is_reported() -> None:
    out = faust_broker_settings(
        {"bootstrap.servers": "a:9092, b:9093", "client.id": "proc", "linger.ms": "5"}
    )
    assert out.broker == "kafka://a:9092;kafka://b:9093"
    assert out.app_kwargs() == {"broker": out.broker, "broker_client_id": "proc"}
    assert out.ignored == ("linger.ms",)


def test_sasl_ssl_becomes_sasl_credentials_with_an_ssl_context() -> None:
    out = faust_broker_settings(
        {
            "bootstrap.servers": "k:9094",
            "security.protocol": "sasl_ssl",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "alice",
            "sasl.password": "s3cret",
            "ssl.endpoint.identification.algorithm": "none",
        }
    )
    creds = out.credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == (
        "alice", "s3cret", "SCRAM-SHA-512",
    )  # fmt: skip
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    assert creds.ssl_context.check_hostname is False


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "bootstrap.servers is missing"),
        ({"bootstrap.servers": " , "}, "bootstrap.servers is empty"),
        ({"bootstrap.servers": "k:1", "security.protocol": "TLS"}, "security.protocol='TLS'"),
        ({"bootstrap.servers": "k:1", "security.protocol": "SASL_PLAINTEXT",
          "sasl.mechanism": "OAUTHBEARER"}, "sasl.mechanism='OAUTHBEARER' is not supported"),
        ({"bootstrap.servers": "k:1", "security.protocol": "SASL_PLAINTEXT",
          "sasl.mechanism": "PLAIN"}, "needs sasl.username and sasl.password"),
    ],
)  # fmt: skip
def test_settings_that_cannot_be_converted_are_named(config: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        faust_broker_settings(config)
    assert broker_url("h:1") == "kafka://h:1"
