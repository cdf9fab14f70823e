"""What a dead-letter record carries: the value whole, or a bounded prefix named by its
hash when it is too large to copy."""

from __future__ import annotations

import hashlib

from streamsched.schemas.deadletter import MAX_VALUE_BYTES, bounded_value


def test_a_value_within_the_bound_is_copied_whole() -> None:
    for value in (b"", b"not json", b"x" * MAX_VALUE_BYTES):
        assert bounded_value(value) == (value, [])


def test_a_larger_value_is_cut_and_named_by_its_size_and_hash() -> None:
    value = bytes(range(256)) * (MAX_VALUE_BYTES // 256 + 10)
    kept, headers = bounded_value(value)
    assert kept == value[:MAX_VALUE_BYTES]
    assert dict(headers) == {
        "error.truncated": "true",
        "error.original_bytes": str(len(value)),
        "error.original_sha256": hashlib.sha256(value).hexdigest(),
    }
