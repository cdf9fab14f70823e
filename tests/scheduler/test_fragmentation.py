"""GPU fragmentation (FGD): hand-computed examples on small nodes, the workload profile,
and the placement FGD prefers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsched.scheduler.cluster import Cluster
from streamsched.scheduler.fragmentation import (
    FragmentationCache,
    TargetWorkload,
    WorkloadProfile,
    fragmentation,
    fragmentation_increase,
)
from streamsched.scheduler.model import TaskSpec
from streamsched.testing import assigns, drive, new_core, node, submitted, task

#: (cpu_milli, memory_mib, gpus, per-GPU milli, weight)
Shape = tuple[int, int, int, int, float]
WHOLE_1: Shape = (1000, 1024, 1, 1000, 0.5)
SHARE_500: Shape = (1000, 1024, 1, 500, 0.5)


def target(*shapes: Shape) -> TargetWorkload:
    return TargetWorkload(
        cpu_milli=np.array([s[0] for s in shapes], np.int64),
        memory_mib=np.array([s[1] for s in shapes], np.int64),
        gpus=np.array([s[2] for s in shapes], np.int64),
        per_gpu_milli=np.array([s[3] for s in shapes], np.int64),
        weight=np.array([s[4] for s in shapes], np.float64),
        version=1,
    )


def frag_of(t: TargetWorkload, gpu_free: list[int], cpu: int = 64000, mem: int = 1 << 20) -> float:
    """Fragmentation of one node with ``gpu_free`` per slot (-1: no GPU there)."""
    result = fragmentation(
        t,
        np.array([cpu], np.int64),
        np.array([mem], np.int64),
        np.array([gpu_free], np.int64),
    )
    assert result.shape == (1,)
    return float(result[0])


# ---------------------------------------------------------------------- fragmentation()
@pytest.mark.parametrize(
    ("gpu_free", "shapes", "expected"),
    [
        # Whole-1 fits on GPU 0; GPU 1's 300 is unusable for it. Share-500 fits on GPU 0;
        # GPU 1's 300 is too small for it too. 0.5 * 300 + 0.5 * 300.
        ([1000, 300, 0, -1], (WHOLE_1, SHARE_500), 300.0),
        # Neither shape fits anywhere: all 600 free milli are fragments for both.
        ([300, 300, 0, -1], (WHOLE_1, SHARE_500), 600.0),
        # Whole-1 does not fit (all 1100 free are fragments); share-500 fits on GPUs 0
        # and 2, and GPU 1's 100 is too small for it: 0.5 * 1100 + 0.5 * 100.
        ([500, 100, 500, -1], (WHOLE_1, SHARE_500), 600.0),
        # A 2-GPU shape needs two whole GPUs: fits, the 500 left over is a fragment.
        ([1000, 1000, 500, -1], ((1000, 1024, 2, 1000, 1.0),), 500.0),
        # ... and with one whole GPU only, everything free is a fragment.
        ([1000, 500, 500, -1], ((1000, 1024, 2, 1000, 1.0),), 2000.0),
        # A fully free node leaves no fragment for any shape that fits.
        ([1000, 1000, 1000, 1000], (WHOLE_1, SHARE_500), 0.0),
        # Nothing free, nothing fragmented.
        ([0, 0, -1, -1], (WHOLE_1, SHARE_500), 0.0),
        # A CPU-only node has no GPU to fragment.
        ([-1, -1, -1, -1], (WHOLE_1,), 0.0),
    ],
)
def test_hand_computed_fragmentation(
    gpu_free: list[int], shapes: tuple[Shape, ...], expected: float
) -> None:
    assert frag_of(target(*shapes), gpu_free) == pytest.approx(expected)


def test_a_shape_short_of_cpu_or_memory_sees_every_free_gpu_as_fragment() -> None:
    t = target((4000, 1024, 1, 1000, 1.0))
    assert frag_of(t, [1000, 300, -1, -1], cpu=8000) == pytest.approx(300.0)
    assert frag_of(t, [1000, 300, -1, -1], cpu=2000) == pytest.approx(1300.0)
    t = target((1000, 8192, 1, 1000, 1.0))
    assert frag_of(t, [1000, 300, -1, -1], mem=4096) == pytest.approx(1300.0)


def test_empty_target_means_no_fragmentation() -> None:
    assert frag_of(target(), [1000, 300, 0, -1]) == 0.0


def test_rows_are_independent() -> None:
    t = target(WHOLE_1, SHARE_500)
    rows = [[1000, 300, 0, -1], [300, 300, 0, -1], [-1, -1, -1, -1]]
    got = fragmentation(
        t, np.full(3, 64000, np.int64), np.full(3, 1 << 20, np.int64), np.array(rows, np.int64)
    )
    assert got.tolist() == pytest.approx([300.0, 600.0, 0.0])


# ---------------------------------------------------------------------- increase
def two_node_cluster() -> Cluster:
    """n0: two free GPUs; n1: GPU 0 half used by a share, GPU 1 free."""
    cluster = Cluster(max_gpus_per_node=2)
    for name in ("n0", "n1"):
        cluster.upsert(node(name, gpus=2))
    half = task("half", share=500)
    cluster.allocate(1, half, cluster.choose_gpus(1, half))
    assert cluster.gpu_free[1].tolist() == [500, 1000]
    return cluster


def test_increase_prefers_the_placement_that_keeps_whole_gpus_whole() -> None:
    cluster = two_node_cluster()
    t = target(WHOLE_1, SHARE_500)
    share = task("s", share=500)
    increase = fragmentation_increase(cluster, t, share, np.array([0, 1], np.int64))
    # n0: [1000, 1000] -> [500, 1000]: whole-1 now sees a 500 fragment: 0 -> 250.
    # n1: [500, 1000] -> [0, 1000]: the half-used GPU is filled: 250 -> 0.
    assert increase.tolist() == pytest.approx([250.0, -250.0])
    # A whole GPU on n1 would strand the half GPU for whole-1 tasks; on n0 it costs
    # nothing.
    whole = task("w", gpus=1)
    increase = fragmentation_increase(cluster, t, whole, np.array([0, 1], np.int64))
    # n1 after: [500, 0]: whole-1 does not fit (500 fragment), share fits: 250 -> 250.
    assert increase.tolist() == pytest.approx([0.0, 0.0])


def test_increase_matches_an_actual_allocation() -> None:
    cluster = two_node_cluster()
    t = target(WHOLE_1, SHARE_500, (1000, 1024, 2, 1000, 0.25))
    rows = np.array([0, 1], np.int64)
    for spec in (task("s", share=300), task("w", gpus=1), task("s7", share=700)):
        predicted = fragmentation_increase(cluster, t, spec, rows)
        for i, row in enumerate(rows.tolist()):
            assert predicted[i] == pytest.approx(_actual_increase(cluster, t, spec, row))


def _actual_increase(cluster: Cluster, t: TargetWorkload, spec: TaskSpec, row: int) -> float:
    def frag() -> float:
        return float(
            fragmentation(
                t,
                cluster.cpu_free[[row]],
                cluster.mem_free[[row]],
                cluster.gpu_free[[row]],
            )[0]
        )

    before = frag()
    gpus = cluster.choose_gpus(row, spec)
    cluster.allocate(row, spec, gpus)
    after = frag()
    cluster.release(row, spec, gpus)
    return after - before


@settings(max_examples=80, deadline=None)
@given(
    free=st.lists(
        st.lists(st.sampled_from([0, 100, 300, 500, 700, 1000]), min_size=4, max_size=4),
        min_size=1,
        max_size=4,
    ),
    demand=st.sampled_from(
        [("share", 200), ("share", 500), ("share", 900), ("whole", 1), ("whole", 2)]
    ),
)
def test_increase_agrees_with_allocation_on_random_nodes(
    free: list[list[int]], demand: tuple[str, int]
) -> None:
    cluster = Cluster(max_gpus_per_node=4)
    for i, per_gpu in enumerate(free):
        cluster.upsert(node(f"n{i}", gpus=4))
        cluster.gpu_free[i, :] = per_gpu  # set the free shares directly
        cluster.refresh_row(i)
    kind, amount = demand
    spec = task("x", share=amount) if kind == "share" else task("x", gpus=amount)
    rows = np.flatnonzero(cluster.fit_mask(spec))
    t = target(WHOLE_1, SHARE_500, (1000, 1024, 2, 1000, 0.25), (1000, 1024, 1, 200, 0.1))
    predicted = fragmentation_increase(cluster, t, spec, rows)
    for i, row in enumerate(rows.tolist()):
        assert predicted[i] == pytest.approx(_actual_increase(cluster, t, spec, row))


# ---------------------------------------------------------------------- end to end
@pytest.mark.parametrize(("policy", "expected"), [("forecast", "n1"), ("best-fit", "n0")])
def test_fgd_fills_the_half_used_gpu_where_best_fit_would_not(policy: str, expected: str) -> None:
    nodes = [node(f"n{i}", gpus=2, labels={"pin": f"n{i}"}) for i in range(3)]
    core = new_core(policy, nodes=nodes)
    pinned = [
        task("whole", gpus=1, governance={"pin": "n2"}),  # makes whole-1 the target shape
        task("cpu-hog", cpu_milli=20_000, governance={"pin": "n0"}),  # n0: GPUs free, CPU busy
        task("half", share=500, governance={"pin": "n1"}),  # n1: GPU 0 half used
    ]
    out = drive(core, [submitted(s) for s in pinned], 1.0)
    assert len(assigns(out)) == 3
    (a,) = assigns(drive(core, submitted(task("s", share=500)), 2.0))
    # Best fit sees n0 as the fuller node (its CPU); FGD sees that a share on n0 would
    # break a whole GPU, while on n1 it fills the half-used one.
    assert a.node_id == expected
    if expected == "n1":
        assert a.gpu_indices == (0,)


# ---------------------------------------------------------------------- profile
def test_profile_counts_gpu_shapes_only_and_refreshes_on_schedule() -> None:
    profile = WorkloadProfile(max_shapes=2, refresh_every=3)
    assert profile.target.empty
    profile.observe(task("cpu"))
    assert profile.target.empty  # CPU-only tasks do not shape GPU fragmentation
    profile.observe(task("a", gpus=1))
    # The first GPU shape builds a target at once.
    assert profile.target.version == 1
    assert profile.target.per_gpu_milli.tolist() == [1000]
    profile.observe(task("b", share=500))
    profile.observe(task("c", share=500))
    assert profile.target.version == 1  # not yet refreshed
    profile.observe(task("d", share=500))
    # Three observations since the last refresh: rebuilt, most popular first.
    assert profile.target.version == 2
    assert profile.target.per_gpu_milli.tolist() == [500, 1000]
    assert profile.target.weight.tolist() == pytest.approx([0.75, 0.25])
    for i in range(3):
        profile.observe(task(f"w{i}", gpus=4))
    # Only the top max_shapes shapes are kept; weights are renormalised over them.
    assert profile.target.gpus.tolist() == [1, 4]
    assert profile.target.weight.sum() == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from([("share", 300), ("share", 500), ("whole", 1), ("whole", 2)]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_cached_increase_equals_uncached_through_changes(
    steps: list[tuple[int, tuple[str, int]]],
) -> None:
    """The per-row cache never serves a stale value: after each real allocation (which
    changes one row) and a target-workload change, cached and fresh scores agree."""
    cluster = Cluster(max_gpus_per_node=4)
    for i in range(4):
        cluster.upsert(node(f"n{i}", gpus=4))
    cache = FragmentationCache()
    targets = [target(WHOLE_1, SHARE_500), replace(target(WHOLE_1), version=2)]
    for step, (row, (kind, amount)) in enumerate(steps):
        spec = task("x", share=amount) if kind == "share" else task("x", gpus=amount)
        t = targets[step % 2 if step > len(steps) // 2 else 0]
        rows = np.flatnonzero(cluster.fit_mask(spec))
        if rows.size == 0:
            continue
        cached = fragmentation_increase(cluster, t, spec, rows, cache)
        fresh = fragmentation_increase(cluster, t, spec, rows)
        assert np.array_equal(cached, fresh)
        if row in rows:
            cluster.allocate(row, spec, cluster.choose_gpus(row, spec))
