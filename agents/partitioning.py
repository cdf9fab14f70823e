"""Which partition of an assignment topic carries a node's assignments.

Assignments for hardware class ``H`` go to ``sched.assignments.<H>`` with key = node id, and
to the explicit partition :func:`partition_for` of that node id. The placement agent sets the
partition itself (it does not rely on the client's key partitioner, which differs between
librdkafka, the Java client and others), and each executor ``assign()``\\ s exactly that one
partition, so no consumer-group rebalance is ever waited for.

The function is CRC-32 (IEEE 802.3, the one in zlib, Java's ``java.util.zip.CRC32``, Go's
``hash/crc32.ChecksumIEEE``) of the node id's UTF-8 bytes, as an unsigned 32-bit integer,
modulo the partition count::

    partition = crc32(utf8(node_id)) mod partitions

Several nodes may share a partition; an executor ignores records keyed with another node id.

>>> partition_for("node-1", 8)
7
"""

from __future__ import annotations

import zlib

#: Partitions of every assignment topic (created with this count when missing).
ASSIGNMENT_PARTITIONS = 8


def partition_for(node_id: str, partitions: int = ASSIGNMENT_PARTITIONS) -> int:
    """The assignment-topic partition of ``node_id``: ``crc32(node_id) % partitions``."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    return zlib.crc32(node_id.encode("utf-8")) % partitions


__all__ = ["ASSIGNMENT_PARTITIONS", "partition_for"]
