"""The broker layer against a real broker (the ``kafka_bootstrap`` fixture)."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from streamsched.broker import BrokerError, EmbeddedBroker, client_config, ensure_topics
from streamsched.schemas import codec, topics
from streamsched.schemas.data import DataIngested
from streamsched.settings import kafka_settings

pytestmark = pytest.mark.kafka


def _unique(name: str) -> str:
    return f"{name}.{uuid.uuid4().hex[:8]}"


def test_ensure_topics_creates_with_partitions_and_is_idempotent(kafka_bootstrap: str) -> None:
    config = client_config(kafka_bootstrap)
    wanted = {_unique(topics.TASKS_SUBMITTED): 3, _unique(topics.assignment_topic("gpu-v100")): 2}
    ensure_topics(config, wanted)
    ensure_topics(config, wanted)  # a second call changes nothing and does not fail
    meta = AdminClient(config).list_topics(timeout=10).topics
    for name, count in wanted.items():
        assert name in meta
        assert len(meta[name].partitions) == count


def test_event_round_trip_through_the_broker(kafka_bootstrap: str) -> None:
    topic = _unique(topics.DATA_INGESTED)
    config = client_config(kafka_bootstrap)
    ensure_topics(config, {topic: 1})
    event = DataIngested(
        source="test",
        occurred_at=datetime.now(UTC),
        dataset="clicks",
        rows=10,
        bytes=2048,
        location="s3://b/k",
    )
    producer = Producer(config)
    producer.produce(topic, codec.encode(event), key=b"clicks", headers={"type": event.type})
    assert producer.flush(10) == 0
    consumer = Consumer(
        {
            **config,
            "group.id": _unique("g"),
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        },
    )
    consumer.subscribe([topic])
    try:
        msg = None
        for _ in range(40):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                break
        assert msg is not None
        assert msg.error() is None
        assert codec.decode(msg.value()) == event
        assert msg.key() == b"clicks"
        assert dict(msg.headers() or [])["type"] == b"data.ingested"
    finally:
        consumer.close()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(addr)
    return found


def test_embedded_broker_listens_on_loopback_only_and_stops_cleanly() -> None:
    broker = EmbeddedBroker()
    broker.start()
    pid = broker.pid
    assert pid is not None
    try:
        assert _listening_addresses(broker.port) == {"0100007F"}  # 127.0.0.1, nothing else
    finally:
        broker.stop()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert _listening_addresses(broker.port) == set()


def test_embedded_broker_reports_a_start_failure_clearly() -> None:
    with EmbeddedBroker() as first:
        clash = EmbeddedBroker(port=first.port, startup_timeout_s=5)
        with pytest.raises(BrokerError, match=f"port {first.port} on 127.0.0.1 is in use"):
            clash.start()


def test_settings_pass_librdkafka_options_through() -> None:
    settings = kafka_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9093,kafka-2:9093",
            "STREAMSCHED_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "STREAMSCHED_KAFKA_SASL_MECHANISM": "PLAIN",
            "UNRELATED": "x",
        }
    )
    assert settings.bootstrap_servers == "kafka-1:9093,kafka-2:9093"
    assert client_config(settings.bootstrap_servers, settings) == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
    }
    assert kafka_settings({}).bootstrap_servers is None
