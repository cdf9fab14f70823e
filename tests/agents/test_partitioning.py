"""partition_for: the node -> assignment-partition rule shared by producer and executors."""

from __future__ import annotations

import zlib
from collections import Counter

import pytest

from streamsched.agents.partitioning import ASSIGNMENT_PARTITIONS, partition_for


def test_known_values_are_crc32_mod_partitions() -> None:
    # CRC-32 (IEEE) check value: crc32(b"123456789") == 0xCBF43926 in every language.
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert partition_for("123456789", 1000) == 0xCBF43926 % 1000 == 262
    assert partition_for("node-1", 8) == 7
    assert partition_for("node-2", 8) == 5
    assert partition_for("gpu-v100-00", 8) == 0
    assert partition_for("a", 8) == 3


def test_default_partition_count() -> None:
    assert ASSIGNMENT_PARTITIONS == 8
    assert partition_for("node-1") == partition_for("node-1", ASSIGNMENT_PARTITIONS)


def test_deterministic_and_in_range() -> None:
    for partitions in (1, 2, 3, 8, 13):
        for i in range(200):
            p = partition_for(f"node-{i}", partitions)
            assert 0 <= p < partitions
            assert p == partition_for(f"node-{i}", partitions)


def test_non_ascii_ids_use_utf8() -> None:
    assert partition_for("nœud-1", 8) == zlib.crc32("nœud-1".encode()) % 8


def test_spreads_nodes_over_partitions() -> None:
    counts = Counter(partition_for(f"node-{i}", 8) for i in range(800))
    assert set(counts) == set(range(8))
    assert min(counts.values()) >= 60  # 100 expected per partition


def test_rejects_no_partitions() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        partition_for("node-1", 0)
