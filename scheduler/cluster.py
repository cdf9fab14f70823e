"""Cluster capacity as column arrays, so filters and scores run over every node at once.

One row per node that ever registered (rows are never reused; a lost node's row is marked
dead). GPU state is a matrix of free milli-GPU per (node, GPU slot); slots beyond a node's
GPU count hold -1 so that no request ever fits them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from .model import GPU_MILLI, NodeSpec, TaskSpec

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_NO_GPU = -1


class Cluster:
    """Free and total capacity of every node, plus liveness, hardware class and labels."""

    def __init__(self, max_gpus_per_node: int = 8, initial_rows: int = 64) -> None:
        self.max_gpus_per_node = max_gpus_per_node
        self.node_ids: list[str] = []
        self.specs: list[NodeSpec] = []
        self.index: dict[str, int] = {}
        self.hardware_names: list[str] = []
        self._hardware_index: dict[str, int] = {}
        self._rows = 0
        self._alloc(initial_rows)
        self._hw_mask_cache: dict[frozenset[str], BoolArray] = {}
        self._totals: tuple[int, int, int] | None = None
        self._class_rows: dict[int, IntArray] = {}
        self._label_mask_cache: dict[tuple[str, str], BoolArray] = {}

    # ------------------------------------------------------------------ storage
    def _alloc(self, rows: int) -> None:
        g = self.max_gpus_per_node
        self.cpu_cap = np.zeros(rows, np.int64)
        self.mem_cap = np.zeros(rows, np.int64)
        self.cpu_free = np.zeros(rows, np.int64)
        self.mem_free = np.zeros(rows, np.int64)
        self.gpu_cap = np.zeros(rows, np.int64)
        self.gpu_free = np.full((rows, g), _NO_GPU, np.int64)
        self.hw = np.full(rows, -1, np.int64)
        self.alive = np.zeros(rows, np.bool_)
        #: Derived per row, kept up to date on every change: whole GPUs fully free, and
        #: the largest free share of any one GPU.
        self.whole_free = np.zeros(rows, np.int64)
        self.share_free = np.zeros(rows, np.int64)
        #: Total free milli-GPU of the row (derived like the two above).
        self.gpu_free_milli = np.zeros(rows, np.int64)
        #: Bumped on every change of the row, so derived values can be cached per row.
        self.row_version = np.zeros(rows, np.int64)

    _COLUMNS = (
        "cpu_cap",
        "mem_cap",
        "cpu_free",
        "mem_free",
        "gpu_cap",
        "gpu_free",
        "hw",
        "alive",
        "whole_free",
        "share_free",
        "gpu_free_milli",
        "row_version",
    )

    def _grow(self) -> None:
        old = {name: getattr(self, name) for name in self._COLUMNS}
        n = len(self.node_ids)
        self._alloc(max(64, 2 * self.cpu_cap.shape[0]))
        for name, prev in old.items():
            getattr(self, name)[:n] = prev[:n]

    @property
    def size(self) -> int:
        """Number of rows in use (registered nodes, alive or not)."""
        return len(self.node_ids)

    # ------------------------------------------------------------------ membership
    def upsert(self, spec: NodeSpec) -> tuple[int, bool]:
        """Register a node, or mark a known node alive. Returns (row, changed)."""
        if spec.gpus > self.max_gpus_per_node:
            raise ValueError(
                f"node {spec.node_id!r} has {spec.gpus} GPUs; at most "
                f"{self.max_gpus_per_node} per node are supported"
            )
        row = self.index.get(spec.node_id)
        if row is not None and self.alive[row]:
            return row, False
        if row is None:
            row = len(self.node_ids)
            if row >= self.cpu_cap.shape[0]:
                self._grow()
            self.node_ids.append(spec.node_id)
            self.specs.append(spec)
            self.index[spec.node_id] = row
        # A new node, or one coming back after being declared lost (possibly with other
        # hardware or labels): it starts empty, its old attempts were re-queued.
        if spec.hardware not in self._hardware_index:
            self._hardware_index[spec.hardware] = len(self.hardware_names)
            self.hardware_names.append(spec.hardware)
        self._reset_row(row, spec)
        self._hw_mask_cache.clear()
        self._label_mask_cache.clear()
        return row, True

    def _reset_row(self, row: int, spec: NodeSpec) -> None:
        self.specs[row] = spec
        self.cpu_cap[row] = self.cpu_free[row] = spec.cpu_milli
        self.mem_cap[row] = self.mem_free[row] = spec.memory_mib
        self.gpu_cap[row] = spec.gpus
        self.gpu_free[row, :] = _NO_GPU
        self.gpu_free[row, : spec.gpus] = GPU_MILLI
        self.hw[row] = self._hardware_index[spec.hardware]
        self.alive[row] = True
        self.refresh_row(row)
        self._totals = None
        self._class_rows.clear()

    def refresh_row(self, row: int) -> None:
        """Recompute a row's derived GPU indexes (call after writing ``gpu_free``)."""
        free = self.gpu_free[row]
        self.whole_free[row] = int((free == GPU_MILLI).sum())
        self.share_free[row] = int(free.max())
        self.gpu_free_milli[row] = int(free[free > 0].sum())
        self.row_version[row] += 1

    def mark_dead(self, row: int) -> None:
        self.alive[row] = False
        self._totals = None
        self._class_rows.clear()

    def class_rows(self, hw_index: int) -> IntArray:
        """Alive rows of one hardware class (cached until membership changes)."""
        rows = self._class_rows.get(hw_index)
        if rows is None:
            n = self.size
            rows = self._class_rows[hw_index] = np.flatnonzero(
                (self.hw[:n] == hw_index) & self.alive[:n]
            )
        return rows

    # ------------------------------------------------------------------ masks
    def hardware_mask(self, allowed: frozenset[str]) -> BoolArray:
        """Rows whose hardware class is in ``allowed`` (all rows when it is empty)."""
        n = self.size
        if not allowed:
            return np.ones(n, np.bool_)
        mask = self._hw_mask_cache.get(allowed)
        if mask is None or mask.shape[0] != n:
            ids = [self._hardware_index[h] for h in allowed if h in self._hardware_index]
            mask = np.isin(self.hw[:n], ids)
            self._hw_mask_cache[allowed] = mask
        return mask

    def label_mask(self, governance: Mapping[str, str]) -> BoolArray | None:
        """Rows whose labels carry every governance tag with the same value; None if the
        task has no tags."""
        if not governance:
            return None
        n = self.size
        out = np.ones(n, np.bool_)
        for item in sorted(governance.items()):
            mask = self._label_mask_cache.get(item)
            if mask is None or mask.shape[0] != n:
                key, value = item
                mask = np.fromiter(
                    (s.labels.get(key) == value for s in self.specs), np.bool_, count=n
                )
                self._label_mask_cache[item] = mask
            out &= mask
        return out

    def fit_mask(self, task: TaskSpec) -> BoolArray:
        """Rows where ``task`` fits right now: alive, allowed hardware, governance tags,
        CPU, memory and GPUs (whole GPUs fully free, or one GPU with enough share left)."""
        n = self.size
        mask = self.alive[:n] & (self.cpu_free[:n] >= task.cpu_milli)
        mask &= self.mem_free[:n] >= task.memory_mib
        if task.gpus:
            mask &= self.gpu_fit(task, slice(0, n))
        if task.allowed_hardware:
            mask &= self.hardware_mask(task.allowed_hardware)
        labels = self.label_mask(task.governance)
        if labels is not None:
            mask &= labels
        return mask

    def gpu_fit(self, task: TaskSpec, rows: slice | IntArray) -> BoolArray:
        if task.is_gpu_share:
            return np.asarray(self.share_free[rows] >= task.gpu_milli)
        return np.asarray(self.whole_free[rows] >= task.gpus)

    def could_ever_fit(self, task: TaskSpec) -> bool:
        """True when some alive node could host ``task`` if it were empty."""
        n = self.size
        mask = self.alive[:n] & (self.cpu_cap[:n] >= task.cpu_milli)
        mask &= (self.mem_cap[:n] >= task.memory_mib) & (self.gpu_cap[:n] >= task.gpus)
        if task.allowed_hardware:
            mask &= self.hardware_mask(task.allowed_hardware)
        labels = self.label_mask(task.governance)
        if labels is not None:
            mask &= labels
        return bool(mask.any())

    # ------------------------------------------------------------------ allocation
    def choose_gpus(self, row: int, task: TaskSpec) -> tuple[int, ...]:
        """The GPU slots an allocation of ``task`` on ``row`` takes.

        A share goes to the GPU with the least free share that still fits (best fit within
        the node, which keeps whole GPUs whole); whole GPUs are the lowest free indices.
        """
        if task.gpus == 0:
            return ()
        free = self.gpu_free[row]
        if task.is_gpu_share:
            fits = np.flatnonzero(free >= task.gpu_milli)
            best = fits[np.argmin(free[fits])]
            return (int(best),)
        whole = np.flatnonzero(free == GPU_MILLI)
        return tuple(int(i) for i in whole[: task.gpus])

    def allocate(self, row: int, task: TaskSpec, gpu_indices: Iterable[int]) -> None:
        self.cpu_free[row] -= task.cpu_milli
        self.mem_free[row] -= task.memory_mib
        per_gpu = task.gpu_milli if task.is_gpu_share else GPU_MILLI
        for g in gpu_indices:
            self.gpu_free[row, g] -= per_gpu
            if self.gpu_free[row, g] < 0:
                raise AssertionError(f"over-allocated GPU {g} of node {self.node_ids[row]}")
        if self.cpu_free[row] < 0 or self.mem_free[row] < 0:
            raise AssertionError(f"over-allocated node {self.node_ids[row]}")
        self.refresh_row(row)

    def release(self, row: int, task: TaskSpec, gpu_indices: Iterable[int]) -> None:
        if not self.alive[row]:
            return  # a dead node's row is reset when it comes back
        self.cpu_free[row] += task.cpu_milli
        self.mem_free[row] += task.memory_mib
        per_gpu = task.gpu_milli if task.is_gpu_share else GPU_MILLI
        for g in gpu_indices:
            self.gpu_free[row, g] += per_gpu
        self.refresh_row(row)

    # ------------------------------------------------------------------ aggregates
    def totals(self) -> tuple[int, int, int]:
        """(cpu_milli, memory_mib, gpu_milli) of all alive nodes (cached until membership
        changes)."""
        if self._totals is None:
            n = self.size
            alive = self.alive[:n]
            self._totals = (
                int(self.cpu_cap[:n][alive].sum()),
                int(self.mem_cap[:n][alive].sum()),
                int(self.gpu_cap[:n][alive].sum()) * GPU_MILLI,
            )
        return self._totals

    def envelope(self) -> tuple[int, int, int, int]:
        """Upper bounds of what any single alive node has free: (cpu, memory, whole GPUs,
        largest free GPU share). A task above one of them fits nowhere."""
        n = self.size
        alive = self.alive[:n]
        return (
            int(np.max(self.cpu_free[:n], where=alive, initial=0)),
            int(np.max(self.mem_free[:n], where=alive, initial=0)),
            int(np.max(self.whole_free[:n], where=alive, initial=0)),
            int(np.max(self.share_free[:n], where=alive, initial=0)),
        )

    def gpu_allocated_milli(self) -> int:
        n = self.size
        alive = self.alive[:n]
        free = self.gpu_free[:n][alive]
        return int(self.gpu_cap[:n][alive].sum()) * GPU_MILLI - int(free[free > 0].sum())
