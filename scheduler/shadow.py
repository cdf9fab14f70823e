"""Shadow mode: what a candidate policy would decide, on the live state, without acting.

:func:`shadow_cycle` runs one scheduling cycle (:mod:`.cycle`) with the shadow policy on a
*fork* of the core taken just before the live cycle of the same ``handle`` call, so both
policies decide on exactly the same state. The fork copies what a cycle writes and shares
what it only reads:

- copied: the cluster's free-capacity columns (O(nodes)), the per-row bookkeeping of
  running attempts (O(running)), tenant allocations, the seeded random generator (the
  shadow's draws never advance the live one's), and each task record the cycle touches
  (copy on first read, so O(tasks examined), not O(all tasks));
- fresh: the fragmentation cache (keyed by row versions, which the fork's allocations
  bump: sharing it would poison the live cache), the decision counter, the output, the
  compaction schedule of ended tasks (a fork's transition never schedules a live one);
- shared, read only: the forecaster (``predict`` only), node specs and masks, the workload
  profile, and the ready queue when the shadow orders it like the live policy (same queue
  sort, ``sjf_weight``, fair share and deadline switches); otherwise a queue of the tasks
  a shadow cycle can reach is built under the shadow's order (:func:`_head_queue`): O(queued)
  cached key reads plus O(groups x max_scan log) pushes per cycle.

The fork's ``dequeue`` leaves the queue alone (the cycle's order walk needs no removal) and
its deadline checks are silent. Shadow preemptions are not evaluated (the shadow runs with
``preemption`` off): a preemption is a request whose effect depends on executors answering,
which a shadow never gets.

:func:`shadow_assigns` turns the fork's ``Assign`` instructions into
:class:`~.instructions.ShadowAssign` with their own decision ids
(``<prefix>-shadow-<n>``), paired with the live ``Assign`` of the same task in the same
call, once per task attempt.
"""

from __future__ import annotations

import copy
import heapq
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import is_dataclass, replace

from .cluster import Cluster
from .core import SchedulerCore, TaskRecord
from .cycle import run_cycle
from .fragmentation import FragmentationCache
from .instructions import Assign, Instruction, ShadowAssign
from .model import TaskState
from .policies import Policy
from .queue import ReadyQueue


class _CopyOnRead(Mapping[str, TaskRecord]):
    """The core's task records, each copied the first time it is read (the live records
    are never written through this mapping)."""

    def __init__(self, live: dict[str, TaskRecord]) -> None:
        self._live = live
        self._copies: dict[str, TaskRecord] = {}

    def __getitem__(self, task_id: str) -> TaskRecord:
        rec = self._copies.get(task_id)
        if rec is None:
            rec = self._copies[task_id] = copy.copy(self._live[task_id])
        return rec

    def __iter__(self) -> Iterator[str]:
        return iter(self._live)

    def __len__(self) -> int:
        return len(self._live)


class _Fork(SchedulerCore):
    """A throwaway copy of a core for one shadow cycle (see the module docstring)."""

    def dequeue(self, task_id: str) -> None:
        """Placed in the fork: the shared queue is left as it is."""

    def check_deadline(self, rec: TaskRecord, now: float, predicted_finish: float) -> None:
        """Deadline warnings are the live policy's business."""

    def note_probe(self, hardware: str, task_id: str, attempt: int) -> bool:
        """Whether the placement would be a breaker's probe; the live breakers (shared
        with the fork) are left as they are."""
        return self.breakers is not None and self.breakers.probing(hardware)


def _same_order(a: Policy, b: Policy) -> bool:
    """Whether ``a`` and ``b`` key, group and flag queued tasks identically: the same queue
    sort (equal settings, for those that have any), ``sjf_weight``, fair share and deadline
    switches."""
    sa, sb = a.queue_sort, b.queue_sort
    same_sort = type(sa) is type(sb) and (not is_dataclass(sa) or sa == sb)
    return same_sort and (a.params.sjf_weight, a.fair_share, a.deadline_aware) == (
        b.params.sjf_weight,
        b.fair_share,
        b.deadline_aware,
    )


def _copy_cluster(cluster: Cluster) -> Cluster:
    out = copy.copy(cluster)
    for name in Cluster._COLUMNS:
        setattr(out, name, getattr(cluster, name).copy())
    return out


def fork(core: SchedulerCore, policy: Policy) -> SchedulerCore:
    """A copy of ``core`` deciding with ``policy`` (preemption off), whose cycles leave
    ``core`` untouched. Cost: O(nodes + running attempts), plus O(queued log queued) when
    ``policy`` orders the queue differently from the live policy."""
    f = _Fork.__new__(_Fork)
    f.__dict__.update(core.__dict__)
    f.policy = replace(policy, preemption=False)
    f.split_policy, f.split_ratio, f.shadow_policy = None, 1.0, None
    f.cluster = _copy_cluster(core.cluster)
    f.tasks = _CopyOnRead(core.tasks)  # type: ignore[assignment]
    f.on_row = {row: set(ids) for row, ids in core.on_row.items()}
    f.occupancy_s = core.occupancy_s.copy()
    f.row_next_end = core.row_next_end.copy()
    f._row_ends = {row: list(heap) for row, heap in core._row_ends.items()}
    f._end_key = dict(core._end_key)
    # Fresh keys above every key in the heaps, so a stale entry never matches a new one.
    top = max((key for heap in f._row_ends.values() for _, key, _ in heap), default=-1)
    f._end_keys = itertools.count(top + 1)
    f.tenant_alloc = {tenant: list(alloc) for tenant, alloc in core.tenant_alloc.items()}
    f.preemptible_on_row = dict(core.preemptible_on_row)
    f.pending_preemptions = {tid: set(v) for tid, v in core.pending_preemptions.items()}
    f.waiting_by_tenant = dict(core.waiting_by_tenant)  # the fork's transitions count too
    f.assignments_to = dict(core.assignments_to)  # numbering the fork's assignments
    f.rng = copy.deepcopy(core.rng)
    f.fragmentation_cache = FragmentationCache()
    f.decisions = 0
    f._ending = []
    f._out = []
    if not _same_order(core.policy, f.policy):
        f.queue = _head_queue(core, f)
    return f


def _head_queue(core: SchedulerCore, f: SchedulerCore) -> ReadyQueue:
    """The part of ``core``'s queue that a cycle of ``f``'s policy can reach, ordered by
    that policy: per group, the ``2 * max_scan`` first tasks, and the ``max_scan`` most
    urgent deadline tasks. A cycle examines at most ``max_scan`` tasks: urgent ones first
    (at most ``max_scan``), then the groups merged, each walked in key order skipping the
    urgent ones already seen, so no group yields more than ``2 * max_scan`` entries. Keys
    are cached per task (``core.shadow_keys``) while the forecaster's version, the
    hardware classes and the task's progress are unchanged, so a cycle costs O(queued)
    dictionary reads, not O(queued) forecasts."""
    scan = f.policy.params.max_scan
    cache = core.shadow_keys
    classes = len(core.cluster.hardware_names)
    groups: dict[str, list[tuple[tuple[float, ...], int, str]]] = {}
    urgent: list[tuple[float, int, str]] = []
    position: dict[str, tuple[str, tuple[float, ...], float | None]] = {}
    order = core.queue.task_ids_by_arrival()
    for i, tid in enumerate(order):
        rec = core.tasks[tid]
        stamp = (core.forecaster.version, classes, rec.progress)
        hit = cache.get(tid)
        if hit is None or hit[0] != stamp:
            key, latest_start, _ = f._queue_position(rec)
            hit = cache[tid] = (stamp, key, latest_start)
        group = rec.spec.tenant if f.policy.fair_share else ""
        position[tid] = (group, hit[1], hit[2])
        groups.setdefault(group, []).append((hit[1], i, tid))
        if hit[2] is not None:
            urgent.append((hit[2], i, tid))
    keep = {tid for _, _, tid in heapq.nsmallest(scan, urgent)}
    for entries in groups.values():
        keep.update(tid for _, _, tid in heapq.nsmallest(2 * scan, entries))
    queue = ReadyQueue()
    for tid in order:  # arrival order: ties keep it, as in the live queue
        if tid in keep:
            queue.push(tid, *position[tid])
    if len(cache) > 2 * len(order) + 64:  # forget tasks that left the queue
        for tid in [t for t in cache if t not in position]:
            del cache[tid]
    return queue


def shadow_cycle(core: SchedulerCore, now: float, stimulus_id: str) -> list[Instruction]:
    """The instructions the shadow policy's cycle gives on a fork of ``core`` (empty when
    no shadow is set). ``core`` is unchanged."""
    if core.shadow_policy is None:
        return []
    f = fork(core, core.shadow_policy)
    f._stimulus = stimulus_id
    run_cycle(f, now, stimulus_id)
    return f._out


def shadow_assigns(
    core: SchedulerCore, shadow: list[Instruction], live: list[Instruction], now: float
) -> list[ShadowAssign]:
    """The :class:`ShadowAssign` instructions for the fork's ``Assign``\\ s in ``shadow``,
    each paired with the live ``Assign`` of the same task in ``live`` (if any); once per
    task attempt (``core.shadow_decided``). Advances ``core.shadow_decisions``, the only
    core state shadow mode writes, and forgets tasks no longer queued."""
    live_by_task = {ins.task_id: ins for ins in live if isinstance(ins, Assign)}
    out = []
    for ins in shadow:
        if not isinstance(ins, Assign) or core.shadow_decided.get(ins.task_id) == ins.attempt:
            continue
        core.shadow_decisions += 1
        decision_id = f"{core.config.decision_prefix}-shadow-{core.shadow_decisions:08d}"
        lv = live_by_task.get(ins.task_id)
        out.append(
            ShadowAssign(
                stimulus_id=ins.stimulus_id,
                task_id=ins.task_id,
                attempt=ins.attempt,
                node_id=ins.node_id,
                hardware=ins.hardware,
                predicted_runtime_s=ins.predicted_runtime_s,
                predicted_start_s=now,
                predicted_completion_s=now + ins.predicted_runtime_s,
                decision=replace(
                    ins.decision,
                    decision_id=decision_id,
                    reason=f"shadow of {core.policy.version}: {ins.decision.reason}",
                ),
                live_decision_id=lv.decision.decision_id if lv else None,
                live_node_id=lv.node_id if lv else None,
                live_hardware=lv.hardware if lv else None,
            )
        )
        core.shadow_decided[ins.task_id] = ins.attempt
    queued = TaskState.QUEUED
    for tid in [t for t in core.shadow_decided if core.tasks[t].state is not queued]:
        del core.shadow_decided[tid]
    return out
