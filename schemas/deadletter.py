"""What a dead-lettered record carries, bounded in size.

A bad record is copied to ``sched.deadletter`` with its reason in the headers. Its value
can be anything a producer sent, up to the broker's own limit, which is about the
producer's default ``message.max.bytes`` (1,000,000 bytes): a copy of it, plus headers,
may not fit in one record again. So a value over :data:`MAX_VALUE_BYTES` is replaced by
its first :data:`MAX_VALUE_BYTES` bytes, and the headers say so (``error.truncated``) and
carry the original size and SHA-256, which identify the original record in its topic.
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["MAX_VALUE_BYTES", "bounded_value"]

#: Largest value copied whole to the dead-letter topic.
MAX_VALUE_BYTES: Final = 256 * 1024


def bounded_value(value: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    """``value`` as the dead-letter record carries it, and the headers to add (none when
    it is copied whole)."""
    if len(value) <= MAX_VALUE_BYTES:
        return value, []
    return value[:MAX_VALUE_BYTES], [
        ("error.truncated", "true"),
        ("error.original_bytes", str(len(value))),
        ("error.original_sha256", hashlib.sha256(value).hexdigest()),
    ]
