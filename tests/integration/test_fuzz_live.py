"""The hostile-input fuzz against a live placement agent and processor (the code of
``streamsched bench fuzz``), shorter: 500 malformed records and 50 valid submissions."""

from __future__ import annotations

import pytest

from streamsched.fuzz import run_fuzz

pytestmark = pytest.mark.kafka


def test_malformed_records_are_dead_lettered_once_and_valid_ones_processed(
    kafka_bootstrap: str,
) -> None:
    result = run_fuzz(500, 50, seed=1, bootstrap=kafka_bootstrap, exclude=frozenset({"oversize"}))
    assert result.crashes == 0, result.crash_logs
    assert result.refused_by_broker == 0
    assert result.dead_lettered == result.malformed == 500, result.missing[:10]
    assert result.dead_lettered_with_reason == 500
    assert result.dead_lettered_twice == 0
    assert result.dead_letter_bytes_changed == 0
    assert result.valid_processed == result.valid == 50, result.missing[:10]
    assert result.valid_dead_lettered == 0
    assert result.ok


def test_an_oversize_record_is_dead_lettered_without_a_crash(kafka_bootstrap: str) -> None:
    result = run_fuzz(20, 5, seed=2, bootstrap=kafka_bootstrap, settle_timeout_s=60.0)
    assert result.crashes == 0, result.crash_logs
    assert result.ok, result.missing[:10]
