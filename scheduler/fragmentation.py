"""GPU fragmentation, after "Beware of Fragmentation" (Weng et al., USENIX ATC'23).

A node's fragmentation, seen by a task shape m, is the free GPU capacity m cannot use:
all of it if m does not fit on the node at all, otherwise the free share of every GPU that
has less free than m needs per GPU. Weighted by how popular each shape is in the workload
(the *target workload*), this gives the node's expected fragmentation; fragmentation
gradient descent (FGD) places a task where that expectation grows least.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .cluster import Cluster, FloatArray, IntArray
from .model import GPU_MILLI, TaskSpec


@dataclass(frozen=True, slots=True)
class TargetWorkload:
    """GPU task shapes and their popularity (weights sum to 1)."""

    cpu_milli: IntArray
    memory_mib: IntArray
    #: GPU milli each shape needs on each of its GPUs (1000 for whole GPUs).
    per_gpu_milli: IntArray
    gpus: IntArray
    weight: FloatArray
    version: int

    @property
    def empty(self) -> bool:
        return bool(self.weight.shape[0] == 0)


class WorkloadProfile:
    """Counts submitted GPU task shapes; the target workload is refreshed every
    ``refresh_every`` submissions (so decisions stay cheap and deterministic)."""

    def __init__(self, max_shapes: int = 16, refresh_every: int = 64) -> None:
        self.max_shapes = max_shapes
        self.refresh_every = refresh_every
        self._counts: Counter[tuple[int, int, int, int]] = Counter()
        self._since_refresh = 0
        self._version = 0
        self.target = self._build()

    def observe(self, task: TaskSpec) -> None:
        if task.gpus == 0:
            return
        per_gpu = task.gpu_milli if task.is_gpu_share else GPU_MILLI
        self._counts[(task.cpu_milli, task.memory_mib, task.gpus, per_gpu)] += 1
        self._since_refresh += 1
        if self.target.empty or self._since_refresh >= self.refresh_every:
            self._since_refresh = 0
            self._version += 1
            self.target = self._build()

    def _build(self) -> TargetWorkload:
        top = sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.max_shapes]
        total = float(sum(c for _, c in top)) or 1.0
        return TargetWorkload(
            cpu_milli=np.array([s[0] for s, _ in top], np.int64),
            memory_mib=np.array([s[1] for s, _ in top], np.int64),
            gpus=np.array([s[2] for s, _ in top], np.int64),
            per_gpu_milli=np.array([s[3] for s, _ in top], np.int64),
            weight=np.array([c / total for _, c in top], np.float64),
            version=self._version,
        )


def fragmentation(
    target: TargetWorkload, cpu_free: IntArray, mem_free: IntArray, gpu_free: IntArray
) -> FloatArray:
    """Expected fragmentation (milli-GPU) of each row, for rows given as column arrays.

    ``gpu_free`` is (rows, slots) free milli per GPU, -1 for slots with no GPU.
    """
    real = np.where(gpu_free > 0, gpu_free, 0)  # (R, G)
    total_free = real.sum(axis=1)  # (R,)
    if target.empty:
        return np.zeros(cpu_free.shape[0], np.float64)
    need = target.per_gpu_milli[:, None, None]  # (S, 1, 1)
    usable = real[None, :, :] >= need  # (S, R, G): GPUs with enough free for shape
    whole = target.per_gpu_milli == GPU_MILLI
    enough_gpus = usable.sum(axis=2) >= np.where(whole, target.gpus, 1)[:, None]
    fits = (
        (cpu_free[None, :] >= target.cpu_milli[:, None])
        & (mem_free[None, :] >= target.memory_mib[:, None])
        & enough_gpus
    )  # (S, R)
    unusable = np.where(usable, 0, real[None, :, :]).sum(axis=2)  # (S, R)
    per_shape = np.where(fits, unusable, total_free[None, :])
    return np.asarray(target.weight @ per_shape, np.float64)


class FragmentationCache:
    """Each row's current expected fragmentation, recomputed only for rows that changed
    (``Cluster.row_version``) or when the target workload changed."""

    def __init__(self) -> None:
        self._value = np.zeros(0)
        self._version = np.zeros(0, np.int64)
        self._target_version = -1

    def current(self, cluster: Cluster, target: TargetWorkload, rows: IntArray) -> FloatArray:
        n = cluster.size
        if self._value.shape[0] < n or target.version != self._target_version:
            self._value = np.zeros(cluster.row_version.shape[0])
            self._version = np.full(cluster.row_version.shape[0], -1, np.int64)
            self._target_version = target.version
        stale = rows[self._version[rows] != cluster.row_version[rows]]
        if stale.size:
            self._value[stale] = fragmentation(
                target, cluster.cpu_free[stale], cluster.mem_free[stale], cluster.gpu_free[stale]
            )
            self._version[stale] = cluster.row_version[stale]
        return self._value[rows]


def fragmentation_increase(
    cluster: Cluster,
    target: TargetWorkload,
    task: TaskSpec,
    rows: IntArray,
    cache: FragmentationCache | None = None,
) -> FloatArray:
    """How much each candidate row's expected fragmentation grows if ``task`` goes there
    (the FGD score; lower is better). Rows must fit ``task``."""
    cpu = cluster.cpu_free[rows]
    mem = cluster.mem_free[rows]
    gpu = cluster.gpu_free[rows]
    if cache is not None:
        before = cache.current(cluster, target, rows)
    else:
        before = fragmentation(target, cpu, mem, gpu)
    after_gpu = gpu.copy()
    if task.is_gpu_share:
        # Same GPU choice as Cluster.choose_gpus: the fitting GPU with the least free.
        masked = np.where(after_gpu >= task.gpu_milli, after_gpu, np.iinfo(np.int64).max)
        best = masked.argmin(axis=1)
        after_gpu[np.arange(rows.shape[0]), best] -= task.gpu_milli
    elif task.gpus:
        # Lowest-index whole GPUs, as Cluster.choose_gpus.
        free_whole = after_gpu == GPU_MILLI
        order = np.cumsum(free_whole, axis=1)
        taken = free_whole & (order <= task.gpus)
        after_gpu = np.where(taken, 0, after_gpu)
    after = fragmentation(target, cpu - task.cpu_milli, mem - task.memory_mib, after_gpu)
    return after - before
