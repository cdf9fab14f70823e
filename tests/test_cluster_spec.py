"""The ``--cluster`` flag parser, table-driven."""

from __future__ import annotations

import re

import pytest

from streamsched.traces import parse_cluster

# (spec, gpus_per_node, [(node_id, hardware, gpus), ...])
VALID = [
    (
        "v100=4,p100=4,k80=4",
        8,
        [("gpu-v100-0", "gpu-v100", 4), ("gpu-p100-0", "gpu-p100", 4), ("gpu-k80-0", "gpu-k80", 4)],
    ),
    ("v100=12", 8, [("gpu-v100-0", "gpu-v100", 8), ("gpu-v100-1", "gpu-v100", 4)]),
    ("v100=16", 8, [("gpu-v100-0", "gpu-v100", 8), ("gpu-v100-1", "gpu-v100", 8)]),
    (
        "v100=10",
        4,
        [
            ("gpu-v100-0", "gpu-v100", 4),
            ("gpu-v100-1", "gpu-v100", 4),
            ("gpu-v100-2", "gpu-v100", 2),
        ],
    ),
    ("v100=1", 8, [("gpu-v100-0", "gpu-v100", 1)]),
    ("v100=2x8", 4, [("gpu-v100-0", "gpu-v100", 8), ("gpu-v100-1", "gpu-v100", 8)]),
    ("a100=1X2", 8, [("gpu-a100-0", "gpu-a100", 2)]),
    ("cpu=2", 8, [("cpu-0", "cpu", 0), ("cpu-1", "cpu", 0)]),
    (" gpu-V100 = 4 , cpu=1 ", 8, [("gpu-v100-0", "gpu-v100", 4), ("cpu-0", "cpu", 0)]),
    (
        "t4=3,v100=2x1",
        2,
        [
            ("gpu-t4-0", "gpu-t4", 2),
            ("gpu-t4-1", "gpu-t4", 1),
            ("gpu-v100-0", "gpu-v100", 1),
            ("gpu-v100-1", "gpu-v100", 1),
        ],
    ),
]


@pytest.mark.parametrize(("spec", "per_node", "expected"), VALID)
def test_valid_specs(spec: str, per_node: int, expected: list[tuple[str, str, int]]) -> None:
    nodes = parse_cluster(spec, gpus_per_node=per_node)
    assert [(n.node_id, n.hardware, n.gpus) for n in nodes] == expected
    for node in nodes:
        if node.hardware == "cpu":
            assert (node.cpu_milli, node.memory_mib) == (64000, 262144)
        else:
            assert node.cpu_milli == 8000 * node.gpus + 8000
            assert node.memory_mib == 65536 * node.gpus


def test_default_gpus_per_node_is_8() -> None:
    assert [n.gpus for n in parse_cluster("v100=20")] == [8, 8, 4]


# (spec, message the ValueError must contain)
INVALID = [
    ("v100=x", "cluster spec 'v100=x': count must be a positive integer"),
    ("v100=0", "cluster spec 'v100=0': count must be a positive integer"),
    ("v100=-1", "cluster spec 'v100=-1': count must be a positive integer"),
    ("v100=1.5", "cluster spec 'v100=1.5': count must be a positive integer"),
    ("v100=0x8", "cluster spec 'v100=0x8': count must be a positive integer"),
    ("v100=2x0", "cluster spec 'v100=2x0': count must be a positive integer"),
    ("v100=2x", "cluster spec 'v100=2x': count must be a positive integer"),
    ("v100=", "cluster spec 'v100=': count must be a positive integer"),
    ("v100=4,v100=2", "cluster spec 'v100=2': gpu-v100 is given more than once"),
    ("v100=4,gpu-v100=2", "cluster spec 'gpu-v100=2': gpu-v100 is given more than once"),
    ("cpu=1,CPU=2", "cluster spec 'CPU=2': cpu is given more than once"),
    ("v100", "cluster spec 'v100': expected CLASS=COUNT"),
    ("=4", "cluster spec '=4': expected CLASS=COUNT"),
    ("v100=4,", "cluster spec 'v100=4,': empty entry"),
    ("", "cluster spec is empty"),
    ("  ", "cluster spec is empty"),
    ("cpu=2x4", "cluster spec 'cpu=2x4': CPU nodes take a plain count"),
    ("bad name!=4", "cluster spec 'bad name!=4': 'bad name!' is not a hardware class"),
]


@pytest.mark.parametrize(("spec", "message"), INVALID)
def test_invalid_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_cluster(spec)


@pytest.mark.parametrize("per_node", [0, -8])
def test_invalid_gpus_per_node(per_node: int) -> None:
    with pytest.raises(ValueError, match="gpus_per_node"):
        parse_cluster("v100=4", gpus_per_node=per_node)
