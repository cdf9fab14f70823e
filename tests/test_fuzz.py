"""The fuzz generator (pure): deterministic, every kind covered, and every malformed
record really fails decoding with a field and a reason while every valid one decodes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streamsched.fuzz import MALFORMED_KINDS, VALID_KINDS, FuzzGenerator
from streamsched.schemas import codec
from streamsched.schemas.data import DataIngested
from streamsched.schemas.errors import InvalidEvent
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.schemas.topics import DATA_INGESTED

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _decodes(raw: bytes) -> bool:
    try:
        codec.decode(raw, now=NOW)
    except InvalidEvent:
        return False
    return True


def _gen(seed: int = 0) -> FuzzGenerator:
    return FuzzGenerator(seed, "run1", NOW)


def test_the_generator_is_deterministic() -> None:
    assert _gen(7).records(300, 30) == _gen(7).records(300, 30)
    assert _gen(7).records(300, 30) != _gen(8).records(300, 30)


def test_every_kind_appears_and_counts_are_exact() -> None:
    records = _gen().records(len(MALFORMED_KINDS) + 5, len(VALID_KINDS) + 1)
    assert {r.kind for r in records} == set(MALFORMED_KINDS) | set(VALID_KINDS)
    assert sum(not r.valid for r in records) == len(MALFORMED_KINDS) + 5
    assert sum(r.valid for r in records) == len(VALID_KINDS) + 1


def test_excluded_kinds_are_left_out() -> None:
    records = _gen().records(500, 0, exclude=frozenset({"oversize"}))
    assert "oversize" not in {r.kind for r in records}
    with pytest.raises(ValueError, match="nonesuch"):
        _gen().records(5, 0, exclude=frozenset({"nonesuch"}))


@pytest.mark.parametrize("kind", sorted(MALFORMED_KINDS))
def test_each_malformed_record_fails_decoding_with_a_field_and_a_reason(kind: str) -> None:
    gen = _gen()
    for _ in range(40):
        record = gen.malformed(kind)
        assert not record.valid
        if record.topic == DATA_INGESTED and _decodes(record.value):
            # a valid event of another type: the processor refuses it by its type
            assert not isinstance(codec.decode(record.value, now=NOW), DataIngested)
            continue
        with pytest.raises(InvalidEvent) as info:
            codec.decode(record.value, now=NOW)
        assert info.value.field
        assert info.value.reason


@pytest.mark.parametrize("kind", VALID_KINDS)
def test_each_valid_record_decodes_as_the_submission_it_names(kind: str) -> None:
    gen = _gen()
    for _ in range(20):
        record = gen.valid(kind)
        event = codec.decode(record.value, now=NOW)
        assert isinstance(event, TaskSubmitted)
        assert event.task_id == record.task_id
        assert event.governance == {"fuzz_run": "run1"}


def test_shell_metacharacters_in_argv_stay_literal_arguments() -> None:
    record = _gen().valid("valid_shell_argv")
    event = codec.decode(record.value, now=NOW)
    assert isinstance(event, TaskSubmitted)
    assert any(any(c in arg for c in ";$`|\n") for arg in event.command[1:])


def test_oversize_records_exceed_the_codec_limit_and_huge_ones_do_not() -> None:
    gen = _gen()
    assert all(len(gen.malformed("oversize").value) > codec.DEFAULT_MAX_BYTES for _ in range(5))
    assert all(len(gen.malformed("huge_payload").value) < 1_000_000 for _ in range(5))


def test_the_codec_names_the_payload_for_deep_nesting_and_huge_integers() -> None:
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' + b"1" * 5000 + b"}"):
        with pytest.raises(InvalidEvent) as info:
            codec.decode(raw)
        assert info.value.field == "(payload)"
