"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    """The shared real-trace directory: ``$STREAMSCHED_SHARED_TRACES`` if set, else
    ``<repo root>/../shared/traces``. Tests using it are skipped when it is absent."""
    env = os.environ.get("STREAMSCHED_SHARED_TRACES")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "traces"
    if not path.is_dir():
        pytest.skip(
            f"shared traces not found at {path}; set STREAMSCHED_SHARED_TRACES to the "
            "directory holding gavel-philly/ and alibaba-openb-2023/"
        )
    return path


def _docker_answers() -> bool:
    """True when a Docker engine answers a ping (never constructs a container otherwise)."""
    try:
        import docker  # installed with testcontainers

        docker.from_env(timeout=2).ping()
    except Exception:  # no engine, no socket, no permission: all mean "no Docker"
        return False
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real broker, in this order: ``KAFKA_BOOTSTRAP_SERVERS`` if
    set; else a testcontainers Kafka if a Docker engine answers; else the embedded Tansu
    broker on a free loopback port."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if servers:
        yield servers
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    from streamsched.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers
