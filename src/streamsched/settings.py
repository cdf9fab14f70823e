"""The one module that reads the environment.

``KAFKA_BOOTSTRAP_SERVERS`` points every component at an existing Kafka cluster; without
it, streamsched starts an embedded broker. Any other librdkafka setting is passed through
from variables named ``STREAMSCHED_KAFKA_<SETTING>``, with ``_`` for ``.``: e.g.
``STREAMSCHED_KAFKA_SECURITY_PROTOCOL=SASL_SSL``, ``STREAMSCHED_KAFKA_SASL_MECHANISM=PLAIN``,
``STREAMSCHED_KAFKA_SASL_USERNAME=...``, ``STREAMSCHED_KAFKA_SSL_CA_LOCATION=...``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

KAFKA_PREFIX = "STREAMSCHED_KAFKA_"


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    #: ``host:port[,host:port]``; None means "start the embedded broker".
    bootstrap_servers: str | None
    #: Extra librdkafka settings (security and tuning), already in dotted form.
    client_config: Mapping[str, str] = field(default_factory=dict)


def kafka_settings(environ: Mapping[str, str] | None = None) -> KafkaSettings:
    """Read Kafka settings from ``environ`` (default: the process environment)."""
    env = os.environ if environ is None else environ
    servers = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() or None
    extra = {
        key[len(KAFKA_PREFIX) :].lower().replace("_", "."): value
        for key, value in sorted(env.items())
        if key.startswith(KAFKA_PREFIX) and len(key) > len(KAFKA_PREFIX)
    }
    return KafkaSettings(servers, extra)


# ---------------------------------------------------------------------- tenants

#: The tenant the client and the CLI speak for when no SASL principal is configured.
TENANT_ENV = "STREAMSCHED_TENANT"
#: ``true``: the processor's status view refuses requests that name no tenant.
REQUIRE_TENANT_ENV = "STREAMSCHED_STATUS_REQUIRE_TENANT"
#: Comma-separated tenants that the status view answers like an operator (every task).
STATUS_OPERATORS_ENV = "STREAMSCHED_STATUS_OPERATORS"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def sasl_principal(settings: KafkaSettings) -> str | None:
    """The SASL user name the Kafka clients authenticate as (``sasl.username`` when
    ``security.protocol`` is SASL_PLAINTEXT or SASL_SSL), or None. Kerberos (GSSAPI)
    and OAUTHBEARER principals are not read from the configuration: name the tenant
    with ``STREAMSCHED_TENANT`` then."""
    config = settings.client_config
    if not str(config.get("security.protocol", "")).upper().startswith("SASL_"):
        return None
    return str(config.get("sasl.username", "")).strip() or None


def configured_tenant(environ: Mapping[str, str] | None = None) -> str | None:
    """``STREAMSCHED_TENANT`` (None when unset or blank)."""
    env = os.environ if environ is None else environ
    return env.get(TENANT_ENV, "").strip() or None


def status_requires_tenant(environ: Mapping[str, str] | None = None) -> bool | None:
    """``STREAMSCHED_STATUS_REQUIRE_TENANT`` as a flag, None when unset or blank (the
    processor then decides: see :func:`secured`). ValueError naming the variable for
    anything but true/false, 1/0, yes/no, on/off."""
    env = os.environ if environ is None else environ
    raw = env.get(REQUIRE_TENANT_ENV, "").strip().lower()
    if not raw:
        return None
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{REQUIRE_TENANT_ENV}={raw!r}: expected true or false")


def status_operators(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """``STREAMSCHED_STATUS_OPERATORS``: the tenants, comma-separated (blanks dropped)."""
    env = os.environ if environ is None else environ
    return tuple(t.strip() for t in env.get(STATUS_OPERATORS_ENV, "").split(",") if t.strip())


def secured(settings: KafkaSettings) -> bool:
    """True when the Kafka connection is authenticated or encrypted (``security.protocol``
    other than PLAINTEXT): the deployment is not a local, single-user one."""
    protocol = str(settings.client_config.get("security.protocol", "PLAINTEXT")).upper()
    return protocol != "PLAINTEXT"
