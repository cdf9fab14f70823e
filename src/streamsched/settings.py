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
