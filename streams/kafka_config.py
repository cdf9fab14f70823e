"""librdkafka configuration -> faust (aiokafka) broker settings.

Every other component uses librdkafka (confluent-kafka) with the configuration that
:mod:`streamsched.settings` reads from the environment and
:func:`streamsched.broker.client_config` assembles. faust speaks aiokafka, so the processor
converts that configuration. What passes through:

=====================================  =================================================
librdkafka setting                     faust / aiokafka
=====================================  =================================================
``bootstrap.servers``                  ``broker`` (``kafka://h1:p1;kafka://h2:p2``)
``client.id``                          ``broker_client_id``
``security.protocol``                  PLAINTEXT: none; SSL: ``SSLCredentials``;
                                       SASL_PLAINTEXT / SASL_SSL: ``SASLCredentials``
                                       (``GSSAPICredentials`` for GSSAPI)
``sasl.mechanism`` (``sasl.mechanisms``) PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI
``sasl.username``, ``sasl.password``   the SASL credentials
``sasl.kerberos.service.name``         GSSAPI service name (default ``kafka``)
``ssl.ca.location``                    CA file (or directory) of the SSL context
``ssl.certificate.location``,          client certificate chain (mutual TLS)
``ssl.key.location``,
``ssl.key.password``
``enable.ssl.certificate.verification``  ``false`` disables verification (testing only)
``ssl.endpoint.identification.algorithm``  ``none`` disables host name checks
=====================================  =================================================

Any other setting (librdkafka tuning such as ``linger.ms``) has no aiokafka equivalent
here and is reported in :attr:`FaustBrokerSettings.ignored`; OAUTHBEARER is refused.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

PASSED_THROUGH: Final = frozenset(
    {
        "bootstrap.servers",
        "client.id",
        "security.protocol",
        "sasl.mechanism",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "sasl.kerberos.service.name",
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.key.password",
        "enable.ssl.certificate.verification",
        "ssl.endpoint.identification.algorithm",
    }
)
_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI")


@dataclass(frozen=True, slots=True)
class FaustBrokerSettings:
    """faust App settings derived from a librdkafka configuration."""

    broker: str
    credentials: Any = None
    client_id: str | None = None
    #: librdkafka settings that were not converted (no aiokafka equivalent).
    ignored: tuple[str, ...] = ()

    def app_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``faust.App``."""
        out: dict[str, Any] = {"broker": self.broker}
        if self.credentials is not None:
            out["broker_credentials"] = self.credentials
        if self.client_id:
            out["broker_client_id"] = self.client_id
        return out


def broker_url(bootstrap_servers: str) -> str:
    """``h1:p1,h2:p2`` -> ``kafka://h1:p1;kafka://h2:p2``. ValueError if empty."""
    hosts = [h.strip() for h in bootstrap_servers.split(",") if h.strip()]
    if not hosts:
        raise ValueError("bootstrap.servers is empty (expected host:port[,host:port])")
    return ";".join(f"kafka://{h}" for h in hosts)


def faust_broker_settings(config: Mapping[str, Any]) -> FaustBrokerSettings:
    """Convert a librdkafka configuration (see the module docstring for what passes
    through). Raises ValueError naming the setting that cannot be converted."""
    servers = config.get("bootstrap.servers")
    if not isinstance(servers, str):
        raise ValueError("bootstrap.servers is missing from the Kafka configuration")
    protocol = str(config.get("security.protocol", "PLAINTEXT")).upper()
    if protocol not in _PROTOCOLS:
        raise ValueError(f"security.protocol={protocol!r}: expected one of {', '.join(_PROTOCOLS)}")
    credentials: Any = None
    if protocol == "SSL":
        import faust

        credentials = faust.SSLCredentials(_ssl_context(config))
    elif protocol.startswith("SASL_"):
        credentials = _sasl_credentials(config, protocol)
    client_id = config.get("client.id")
    ignored = tuple(sorted(k for k in config if k not in PASSED_THROUGH))
    return FaustBrokerSettings(
        broker_url(servers),
        credentials,
        str(client_id) if client_id else None,
        ignored,
    )


def _sasl_credentials(config: Mapping[str, Any], protocol: str) -> Any:
    import faust

    mechanism = str(config.get("sasl.mechanism", config.get("sasl.mechanisms", "GSSAPI")))
    mechanism = mechanism.upper()
    if mechanism not in _MECHANISMS:
        raise ValueError(
            f"sasl.mechanism={mechanism!r} is not supported by the processor "
            f"(supported: {', '.join(_MECHANISMS)})"
        )
    context = _ssl_context(config) if protocol == "SASL_SSL" else None
    if mechanism == "GSSAPI":
        return faust.GSSAPICredentials(
            kerberos_service_name=str(config.get("sasl.kerberos.service.name", "kafka")),
            ssl_context=context,
        )
    username, password = config.get("sasl.username"), config.get("sasl.password")
    if not username or password is None:
        raise ValueError(f"sasl.mechanism={mechanism} needs sasl.username and sasl.password")
    return faust.SASLCredentials(
        username=str(username), password=str(password), ssl_context=context, mechanism=mechanism
    )


def _ssl_context(config: Mapping[str, Any]) -> ssl.SSLContext:
    ca = config.get("ssl.ca.location")
    if ca and Path(str(ca)).is_dir():
        context = ssl.create_default_context(capath=str(ca))
    else:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    cert, key = config.get("ssl.certificate.location"), config.get("ssl.key.location")
    if cert:
        password = config.get("ssl.key.password")
        context.load_cert_chain(
            str(cert), str(key) if key else None, str(password) if password else None
        )
    algorithm = str(config.get("ssl.endpoint.identification.algorithm", "https")).lower()
    if algorithm == "none":
        context.check_hostname = False
    verify = str(config.get("enable.ssl.certificate.verification", "true")).lower()
    if verify in ("false", "0"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
