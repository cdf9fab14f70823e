"""One scheduling cycle, in numbered steps (as Kueue writes its cycle):

1. Order: urgent deadline tasks (least slack first), then the ready queue, merging tenants
   by their static key plus a fair-share penalty (dominant resource share, DRF).
2. For each task, up to ``max_scan``: filter the nodes it fits on now (hard rules, and
   reservations made earlier in this cycle), then score them with the policy's scorers.
3. Heterogeneity-aware policies compare that with waiting for a faster hardware class:
   expected start (from predicted ends of running attempts) + predicted runtime there.
4. Place (assume the resources in the core at once; the assignment is published after), or
   block: strict FIFO stops; EASY backfilling reserves the node the blocked task will
   get first, and later tasks may use it only if they end before or leave room.
5. Preemption: blocked tasks may evict preemptible attempts (checkpoint kept) when that
   lowers total completion time, serves a higher priority class or saves a deadline.
6. Migration: when nothing is left queued, a long preemptible attempt on slow hardware is
   stopped (checkpoint kept) so that it restarts on a faster class with room now.

Under an A/B split (``SchedulerCore.policy_of``) each task's arm supplies steps 2-3 for
that task (scorers, waiting for faster hardware, the decision's policy name); the order,
backfilling, reservations and preemption are the live policy's for every task.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .cluster import Cluster, FloatArray, IntArray
from .core import SchedulerCore, TaskRecord
from .instructions import Assign, Candidate, Decision, Preempt
from .model import GPU_MILLI, PriorityClass, TaskSpec, TaskState
from .plugins import ScoreContext
from .policies import Policy

S = TaskState

#: Rows per hardware class examined when estimating when a blocked task could start.
EARLIEST_START_ROWS = 32
#: Deferral ahead of a predicted peak keeps at most this fraction of a class's GPUs free.
MAX_HEADROOM_FRACTION = 0.5
#: Migrations issued per cycle at most, and running attempts examined for them.
MAX_MIGRATIONS_PER_CYCLE = 2
MAX_MIGRATION_CHECKS = 256


@dataclass(slots=True)
class Reservation:
    """Resources of ``row`` promised to a blocked task from ``start_s`` on."""

    task_id: str
    row: int
    start_s: float
    #: When the reserving task is predicted to finish on this row.
    end_s: float
    spare_gpus: int
    spare_cpu: int
    spare_mem: int

    def has_room(self, spec: TaskSpec) -> bool:
        """Whether ``spec`` fits beside the reserved task once it starts."""
        return (
            spec.gpus <= self.spare_gpus
            and spec.cpu_milli <= self.spare_cpu
            and spec.memory_mib <= self.spare_mem
        )

    def admits(self, spec: TaskSpec, runtime_s: float, now: float) -> bool:
        return now + runtime_s <= self.start_s or self.has_room(spec)

    def consume(self, spec: TaskSpec, runtime_s: float, now: float) -> None:
        if now + runtime_s > self.start_s:
            self.spare_gpus -= spec.gpus
            self.spare_cpu -= spec.cpu_milli
            self.spare_mem -= spec.memory_mib


@dataclass(frozen=True, slots=True)
class WaitOption:
    hardware_index: int
    row: int
    start_s: float
    completion_s: float


def run_cycle(core: SchedulerCore, now: float, stimulus_id: str) -> None:
    _Cycle(core, now, stimulus_id).run()


class _Cycle:
    def __init__(self, core: SchedulerCore, now: float, stimulus_id: str) -> None:
        self.core = core
        self.cluster = core.cluster
        self.policy = core.policy
        self.params = core.policy.params
        self.now = now
        self.stimulus_id = stimulus_id
        self.reservations: dict[int, Reservation] = {}
        self.blocked: list[TaskRecord] = []
        self.failed_shapes: set[object] = set()
        self._envelope: tuple[int, int, int, int] | None = None
        self._rows_memo: dict[object, tuple[IntArray, IntArray]] = {}
        self._shares: dict[str, float] = {}
        self._start_memo: dict[tuple[object, int], tuple[float, int]] = {}
        # Load deferral and node risk (see _defer_peaks and _risk_penalty).
        self._demand: dict[int, float] = {}
        #: Per hardware class, its GPU capacity (fixed within a cycle).
        self._class_gpus: dict[int, float] = {}
        self._deferrals: dict[str, tuple[float, str]] = {}
        self._risk: tuple[float, FloatArray | None] | None = None
        # Circuit breakers (see breaker.py): hardware indices nothing may be placed on
        # now (open, or half-open with a probe in flight), and those not closed (no
        # preemption or migration onto them). Usually empty: then nothing is filtered.
        self._blocked_hw: list[int] = []
        self._tripped_hw: list[int] = []
        breakers = core.breakers
        if breakers is not None and breakers.not_closed():
            names = self.cluster.hardware_names
            self._blocked_hw = sorted(names.index(h) for h in breakers.blocked() if h in names)
            self._tripped_hw = sorted(names.index(h) for h in breakers.not_closed() if h in names)

    # ------------------------------------------------------------------ step 1
    def _order(self) -> Iterator[str]:
        queue, params = self.core.queue, self.params
        seen: set[str] = set()
        if self.policy.deadline_aware:
            urgent = []
            for tid in queue.urgent(self.now + params.urgency_horizon_s):
                urgent.append(tid)
                if len(urgent) >= params.max_scan:
                    break
            for tid in urgent:
                seen.add(tid)
                yield tid
        groups = queue.groups()
        cursors: dict[str, int] = {}
        while True:
            best: tuple[tuple[float, ...], int, str] | None = None
            for group, entries in groups.items():
                i = cursors.get(group, 0)
                while i < len(entries) and entries[i][2] in seen:
                    i += 1
                cursors[group] = i
                if i >= len(entries):
                    continue
                key, seq, _ = entries[i]
                if self.policy.fair_share:
                    key = (key[0] + params.fair_share_s * self._share(group), *key[1:])
                if best is None or (key, seq) < best[:2]:
                    best = (key, seq, group)
            if best is None:
                return
            group = best[2]
            tid = groups[group][cursors[group]][2]
            seen.add(tid)
            yield tid
            if tid in queue:
                cursors[group] += 1

    def _share(self, tenant: str) -> float:
        """The tenant's dominant share, cached for the cycle (placements update it)."""
        share = self._shares.get(tenant)
        if share is None:
            share = self._shares[tenant] = self.core.tenant_share(tenant)
        return share

    # ------------------------------------------------------------------ steps 2-4
    def run(self) -> None:
        examined = 0
        strict = self.policy.backfill == "none"
        for tid in self._order():
            if examined >= self.params.max_scan or self.envelope[0] <= 0:
                break
            examined += 1
            rec = self.core.tasks[tid]
            spec = rec.spec
            shape = (spec.shape, spec.allowed_hardware, tuple(sorted(spec.governance.items())))
            if shape in self.failed_shapes:
                if strict:
                    break
                self.blocked.append(rec)
                continue
            if not self._try(rec, shape) and strict:
                break
        if self.policy.preemption and self.blocked and self.core.preemptible_on_row:
            self._preempt()
        if self.core.may_migrate() and not len(self.core.queue):
            self._migrate()
        if self._deferrals:  # rebound, not mutated: a shadow fork shares the dict
            self.core.deferred = {**self.core.deferred, **self._deferrals}

    @property
    def envelope(self) -> tuple[int, int, int, int]:
        """:meth:`Cluster.envelope`, computed when first needed after a change."""
        if self._envelope is None:
            self._envelope = self.cluster.envelope()
        return self._envelope

    def _classes(self, rows: IntArray) -> IntArray:
        """Hardware classes present among ``rows``, ascending (linear, no sort)."""
        counts = np.bincount(self.cluster.hw[rows], minlength=len(self.cluster.hardware_names))
        return np.flatnonzero(counts)

    def _fits_envelope(self, spec: TaskSpec) -> bool:
        cpu, mem, whole, share = self.envelope
        if spec.cpu_milli > cpu or spec.memory_mib > mem:
            return False
        if spec.is_gpu_share:
            return spec.gpu_milli <= share
        return spec.gpus <= whole

    def _try(self, rec: TaskRecord, shape: object) -> bool:
        spec, c = rec.spec, self.cluster
        runtimes = self.core.runtimes(rec)
        if not self._fits_envelope(spec):
            self.failed_shapes.add(shape)
            self._block(rec, runtimes, None, shape)
            return False
        rows, classes = self._fitting_rows(spec, shape)
        if self.reservations and rows.size:
            barred = [
                row
                for row, res in self.reservations.items()
                if not res.admits(spec, float(runtimes[c.hw[row]]), self.now)
            ]
            if barred:
                rows = rows[~np.isin(rows, barred)]
                classes = self._classes(rows)
        if rec.avoid_nodes and rows.size > 1:
            rows, classes = self._avoid_failed_nodes(rec, rows, classes)
        wait = None
        arm = self.core.policy_of(spec.task_id)  # an A/B split's arm (else the policy)
        peaked: set[int] = set()
        if rows.size and self._may_defer(rec, arm):
            rows, classes, peaked = self._defer_peaks(rec, rows, classes, arm)
            if rows.size == 0:
                return False  # deferred: no reservation, no preemption
        if arm.hardware_aware:
            wait = self._best_wait(rec, runtimes, set(classes.tolist()) | peaked, shape)
        if rows.size == 0:
            self.failed_shapes.add(shape)
            self._block(rec, runtimes, wait, shape)
            return False
        # Decide whether to wait for faster hardware before scoring nodes: the best that
        # can start now is the fastest fitting class (the primary scorer's choice).
        best_now = float(runtimes[classes].min())
        if wait is not None and wait.completion_s < self.now + best_now * (
            1 - arm.params.wait_margin
        ):
            self._block(rec, runtimes, wait, shape)
            return False
        chosen, candidates = self._choose(spec, rows, classes, runtimes, arm)
        self._assign(rec, chosen, float(runtimes[c.hw[chosen]]), candidates, wait, arm)
        return True

    def _fitting_rows(self, spec: TaskSpec, shape: object) -> tuple[IntArray, IntArray]:
        """Rows the shape fits on now, and their hardware classes (memoised per shape
        until the next placement); never rows of a class whose breaker blocks placement."""
        memo = self._rows_memo.get(shape)
        if memo is None:
            rows = np.flatnonzero(self.cluster.fit_mask(spec))
            if self._blocked_hw:
                rows = rows[~np.isin(self.cluster.hw[rows], self._blocked_hw)]
            memo = self._rows_memo[shape] = (rows, self._classes(rows))
        return memo

    def _avoid_failed_nodes(
        self, rec: TaskRecord, rows: IntArray, classes: IntArray
    ) -> tuple[IntArray, IntArray]:
        """``rows`` without the nodes ``rec``'s attempts failed or were lost on, unless
        that leaves none (a retry avoids them only when another node fits)."""
        index = self.cluster.index
        avoid = sorted(index[n] for n in rec.avoid_nodes if n in index)
        kept = rows[~np.isin(rows, avoid)] if avoid else rows
        if kept.size == 0 or kept.size == rows.size:
            return rows, classes
        return kept, self._classes(kept)

    def _choose(
        self,
        spec: TaskSpec,
        rows: IntArray,
        classes: IntArray,
        runtimes: FloatArray,
        arm: Policy | None = None,
    ) -> tuple[int, list[Candidate]]:
        """The node ``arm`` (default: the cycle's policy) scores best, and the candidates."""
        core, c = self.core, self.cluster
        ctx = ScoreContext(
            cluster=c,
            now=self.now,
            runtime_by_hw=runtimes,
            occupancy_s=core.occupancy_s,
            rng=core.rng,
            round_robin_next=core.round_robin_next,
            workload=core.workload.target,
            fragmentation_cache=core.fragmentation_cache,
            risk_penalty=self._risk_penalty(arm or self.policy),
        )
        cand = rows
        primary: FloatArray | None = None
        for scorer in (arm or self.policy).scorers:
            scores = scorer.score(spec, cand, ctx)
            if primary is None:
                primary = scores
                candidates = self._candidates(rows, classes, scores, runtimes)
            top = scores.max()
            cand = cand[scores == top]
            if cand.shape[0] == 1:
                break
        return int(cand[0]), candidates

    def _candidates(
        self, rows: IntArray, classes: IntArray, scores: FloatArray, runtimes: FloatArray
    ) -> list[Candidate]:
        """The best node of each hardware class, by the primary score."""
        c = self.cluster
        hws = c.hw[rows]
        out = []
        for h in classes.tolist():
            in_class = np.flatnonzero(hws == h)
            best = in_class[np.argmax(scores[in_class])]
            row = int(rows[best])
            out.append(
                Candidate(
                    node_id=c.node_ids[row],
                    hardware=c.hardware_names[int(h)],
                    score=float(scores[best]),
                    predicted_runtime_s=float(runtimes[int(h)]),
                    expected_wait_s=0.0,
                )
            )
        return out

    def _assign(
        self,
        rec: TaskRecord,
        row: int,
        runtime: float,
        candidates: list[Candidate],
        wait: WaitOption | None,
        arm: Policy | None = None,
    ) -> None:
        core, c, spec = self.core, self.cluster, rec.spec
        arm = arm or self.policy
        hardware = c.specs[row].hardware
        if wait is not None:
            candidates.append(self._wait_candidate(wait, rec))
        core.decisions += 1
        decision_id = f"{core.config.decision_prefix}-{core.decisions:08d}"
        rec.attempt += 1
        rec.predicted_s = runtime
        rec.predicted_full_s = core.forecaster.predict(spec, hardware)
        rec.assigned_at, rec.started_at = self.now, None
        rec.reported_progress = rec.progress
        rec.decision_id = decision_id
        gpus = c.choose_gpus(row, spec)
        notes = self._load_notes(rec, row, arm)  # before dequeue forgets a deferral
        if self._tripped_hw and core.note_probe(hardware, spec.task_id, rec.attempt):
            self._blocked_hw = sorted({*self._blocked_hw, int(c.hw[row])})
            notes += f"; probe attempt of the half-open circuit breaker of {hardware}"
        core.hold(rec, row, gpus)
        core.dequeue(spec.task_id)
        res = self.reservations.get(row)
        if res is not None:
            res.consume(spec, runtime, self.now)
        core.round_robin_next = row + 1
        self._envelope = None
        self._rows_memo.clear()
        self._start_memo.clear()
        self._shares.pop(spec.tenant, None)
        reason = self._reason(hardware, runtime, candidates, arm) + notes
        decision = Decision(
            decision_id=decision_id,
            stimulus_id=self.stimulus_id,
            task_id=spec.task_id,
            attempt=rec.attempt,
            policy=arm.name,
            policy_version=arm.version,
            model_version=core.forecaster.version,
            decided_at_s=self.now,
            chosen_node_id=c.node_ids[row],
            chosen_hardware=hardware,
            predicted_runtime_s=runtime,
            reason=reason,
            candidates=tuple(candidates),
        )
        core.transition(rec, S.ASSIGNED, f"{decision_id}: {reason}", self.now)
        core.emit(
            Assign(
                stimulus_id=self.stimulus_id,
                task_id=spec.task_id,
                attempt=rec.attempt,
                node_id=c.node_ids[row],
                hardware=hardware,
                gpu_indices=gpus,
                gpu_milli=spec.gpu_milli if spec.is_gpu_share else (GPU_MILLI if spec.gpus else 0),
                predicted_runtime_s=runtime,
                resume_progress=rec.progress,
                decision=decision,
                sequence=core.next_assignment(rec, c.node_ids[row]),
            )
        )
        core.check_deadline(rec, self.now, self.now + runtime)

    def _reason(
        self,
        hardware: str,
        runtime: float,
        candidates: list[Candidate],
        arm: Policy | None = None,
    ) -> str:
        arm = arm or self.policy
        scorers = "+".join(s.name for s in arm.scorers)
        others = ", ".join(
            f"{cand.hardware} {cand.expected_wait_s + cand.predicted_runtime_s:.0f}s"
            for cand in candidates
            if cand.hardware != hardware
        )
        text = f"{arm.name} ({scorers}): {hardware}, predicted {runtime:.0f}s"
        return f"{text}; alternatives: {others}" if others else text

    # ------------------------------------------------------------------ risk, deferral
    def _risk_penalty(self, arm: Policy) -> FloatArray | None:
        """Per row, the failure-risk penalty of a load-aware ``arm`` (once per cycle;
        None when no node is riskier than the fleet or ``risk_weight`` is 0)."""
        if not arm.load_aware:
            return None
        weight = arm.params.risk_weight
        if self._risk is None or self._risk[0] != weight:
            self._risk = (weight, self.core.risk_penalty(self.now, weight))
        return self._risk[1]

    def _load_notes(self, rec: TaskRecord, row: int, arm: Policy) -> str:
        """Audit notes for an assignment: the chosen node's failure risk when it was
        penalised, and an earlier deferral of the task."""
        notes = ""
        penalty = self._risk_penalty(arm)
        if penalty is not None and penalty[row] > 0:
            node_id = self.cluster.node_ids[row]
            risk = self.core.node_risk.risk(node_id, self.now)
            notes += (
                f"; node {node_id} failure risk {risk:.2f} "
                f"(+{penalty[row]:.0%} on predicted completion)"
            )
        deferral = self.core.deferred.get(rec.spec.task_id)
        if deferral is not None:
            notes += f"; was {deferral[1]} for {self.now - deferral[0]:.0f}s"
        return notes

    def _may_defer(self, rec: TaskRecord, arm: Policy) -> bool:
        """Whether ``rec`` is low-priority GPU work a load-aware ``arm`` may still defer:
        its deferrals so far are shorter than ``defer_max_s``, and some attempt is running
        (its end will bring another cycle, so a deferred task is never left waiting for an
        event that cannot come: with an idle fleet nothing is deferred)."""
        p, spec = arm.params, rec.spec
        if not (arm.load_aware and p.defer_low_priority and self.core.load is not None):
            return False
        if spec.gpus == 0 or spec.priority.rank <= PriorityClass.NORMAL.rank:
            return False
        first = self.core.deferred.get(spec.task_id)
        if first is not None and self.now - first[0] >= p.defer_max_s:
            return False
        return any(self.core.on_row.values())

    def _defer_peaks(
        self, rec: TaskRecord, rows: IntArray, classes: IntArray, arm: Policy
    ) -> tuple[IntArray, IntArray, set[int]]:
        """``rows`` and ``classes`` without the hardware classes under a predicted peak
        (see :meth:`_peak`), and those classes. When nothing is left the task is deferred
        with the reason (``core.deferred``, written at the end of the cycle)."""
        peaks = [(h, d) for h in classes.tolist() if (d := self._peak(h, rec.spec)) is not None]
        if not peaks:
            return rows, classes, set()
        peaked = {h for h, _ in peaks}
        rows = rows[~np.isin(self.cluster.hw[rows], sorted(peaked))]
        if rows.size == 0:
            minutes = arm.params.load_bucket_s / 60.0
            names = self.cluster.hardware_names
            where = ", ".join(
                f"{names[h]} ({round(d, 1):g} GPUs in the next {minutes:g} min)" for h, d in peaks
            )
            earlier = self.core.deferred.get(rec.spec.task_id)
            since = self.now if earlier is None else earlier[0]
            self._deferrals[rec.spec.task_id] = (since, f"deferred: predicted peak on {where}")
        return rows, self._classes(rows), peaked

    def _peak(self, h: int, spec: TaskSpec) -> float | None:
        """The GPU demand predicted on class ``h`` for the load bucket in progress, when
        starting ``spec`` there would leave fewer free GPUs than the headroom; else None.
        The headroom is that demand in whole GPUs, at most :data:`MAX_HEADROOM_FRACTION`
        of the class's GPUs (rounded down): a forecast below one GPU, or a class of one
        GPU, never defers anything."""
        c, load = self.cluster, self.core.load
        assert load is not None
        demand = self._demand.get(h)
        if demand is None:
            demand = self._demand[h] = load.forecast(c.hardware_names[h], self.now)
        if demand < 1.0:
            return None
        class_rows = c.class_rows(h)
        cap = self._class_gpus.get(h)
        if cap is None:
            cap = self._class_gpus[h] = float(c.gpu_cap[class_rows].sum())
        headroom = math.floor(min(demand, MAX_HEADROOM_FRACTION * cap))
        if headroom < 1:
            return None
        free = float(c.gpu_free_milli[class_rows].sum()) / GPU_MILLI
        return demand if free - spec.gpu_demand_milli / GPU_MILLI < headroom else None

    def _wait_candidate(self, wait: WaitOption, rec: TaskRecord) -> Candidate:
        c = self.cluster
        return Candidate(
            node_id=c.node_ids[wait.row],
            hardware=c.hardware_names[wait.hardware_index],
            score=-wait.completion_s,
            predicted_runtime_s=wait.completion_s - wait.start_s,
            expected_wait_s=wait.start_s - self.now,
        )

    # ------------------------------------------------------------------ waiting
    def _block(
        self, rec: TaskRecord, runtimes: FloatArray, wait: WaitOption | None, shape: object
    ) -> None:
        self.blocked.append(rec)
        if self.policy.backfill != "reserve":
            return
        if len(self.reservations) >= self.params.max_reservations:
            return
        if wait is None:
            wait = self._best_wait(rec, runtimes, set(), shape)
        if wait is None or not math.isfinite(wait.start_s):
            return
        self.core.check_deadline(rec, self.now, wait.completion_s)
        if wait.row in self.reservations:
            return  # queued behind an earlier reservation: it keeps the row
        spare = self._free_at(rec.spec, wait.row, wait.start_s)
        self.reservations[wait.row] = Reservation(
            rec.spec.task_id,
            wait.row,
            wait.start_s,
            wait.completion_s,
            spare_gpus=spare[0] - rec.spec.gpus,
            spare_cpu=spare[1] - rec.spec.cpu_milli,
            spare_mem=spare[2] - rec.spec.memory_mib,
        )
        self._start_memo.clear()

    def _best_wait(
        self, rec: TaskRecord, runtimes: FloatArray, exclude: set[int], shape: object
    ) -> WaitOption | None:
        best: WaitOption | None = None
        if self._blocked_hw:  # nobody knows when a paused class resumes: never wait for it
            exclude = exclude | set(self._blocked_hw)
        for h, runtime in enumerate(runtimes.tolist()):
            if h in exclude or not math.isfinite(runtime):
                continue
            memo = self._start_memo.get((shape, h))
            if memo is None:
                memo = self._start_memo[(shape, h)] = self._earliest_start(rec.spec, h)
            start, row = memo
            if row >= 0 and (best is None or start + runtime < best.completion_s):
                best = WaitOption(h, row, start, start + runtime)
        return best

    def _earliest_start(self, spec: TaskSpec, hw_index: int) -> tuple[float, int]:
        """Earliest predicted time a node of the class could host ``spec``, from the
        predicted ends of the attempts on it; a node reserved for an earlier task in this
        cycle counts from that task's predicted end, unless the reservation leaves room."""
        c, core = self.cluster, self.core
        rows = c.class_rows(hw_index)
        mask = (c.cpu_cap[rows] >= spec.cpu_milli) & (c.mem_cap[rows] >= spec.memory_mib)
        mask &= c.gpu_cap[rows] >= spec.gpus
        labels = c.label_mask(spec.governance)
        if labels is not None:
            mask &= labels[rows]
        rows = rows[mask]
        if rows.size == 0:
            return math.inf, -1
        bound = core.row_next_end[rows]
        # An estimate: the rows whose attempts end first are the likely winners.
        if bound.shape[0] > EARLIEST_START_ROWS:
            first = np.argpartition(bound, EARLIEST_START_ROWS - 1)[:EARLIEST_START_ROWS]
            order = first[np.lexsort((rows[first], bound[first]))]
        else:
            order = np.lexsort((rows, bound))
        best_t, best_row = math.inf, -1
        for i in order:
            row = int(rows[i])
            if bound[i] >= best_t:
                break
            t = self._row_fit_time(spec, row)
            res = self.reservations.get(row)
            if res is not None and not res.has_room(spec):
                # Reserved for an earlier task: free again once that task is done.
                t = max(t, res.end_s)
            if t < best_t:
                best_t, best_row = t, row
        return best_t, best_row

    def _running_by_end(self, row: int) -> list[tuple[float, TaskRecord]]:
        recs = [self.core.tasks[t] for t in self.core.on_row.get(row, ())]
        return sorted(
            ((r.predicted_end(self.now), r) for r in recs), key=lambda e: (e[0], e[1].spec.task_id)
        )

    def _row_fit_time(self, spec: TaskSpec, row: int) -> float:
        room = _Room(self.cluster, row)
        if room.fits(spec):
            return self.now
        for end, r in self._running_by_end(row):
            room.release(r)
            if room.fits(spec):
                return end
        return math.inf

    def _free_at(self, spec: TaskSpec, row: int, when: float) -> tuple[int, int, int]:
        """(whole GPUs, cpu, memory) free on ``row`` at ``when`` by predicted ends."""
        room = _Room(self.cluster, row)
        for end, r in self._running_by_end(row):
            if end > when:
                break
            room.release(r)
        return room.whole_gpus(), room.cpu, room.mem

    # ------------------------------------------------------------------ step 5
    def _preempt(self) -> None:
        checks = 0
        for rec in self.blocked:
            if checks >= self.params.max_preemption_checks:
                return
            if rec.state is not S.QUEUED or rec.spec.task_id in self.core.pending_preemptions:
                continue
            checks += 1
            self._try_preempt(rec)

    def _try_preempt(self, rec: TaskRecord) -> bool:
        core, c, p, spec = self.core, self.cluster, self.params, rec.spec
        runtimes = core.runtimes(rec)
        # Only rows running preemptible work can make room.
        rows = np.fromiter(sorted(core.preemptible_on_row), np.int64)
        mask = c.alive[rows] & (c.cpu_cap[rows] >= spec.cpu_milli) & (c.gpu_cap[rows] >= spec.gpus)
        mask &= c.mem_cap[rows] >= spec.memory_mib
        if spec.allowed_hardware:
            mask &= c.hardware_mask(spec.allowed_hardware)[rows]
        labels = c.label_mask(spec.governance)
        if labels is not None:
            mask &= labels[rows]
        if self._tripped_hw:
            mask &= ~np.isin(c.hw[rows], self._tripped_hw)
        rows = rows[mask]
        rows = rows[np.argsort(runtimes[c.hw[rows]], kind="stable")][:64]
        overhead = p.restart_overhead_s if rec.progress > 0 else 0.0
        for row in rows.tolist():
            if row in self.reservations and self.reservations[row].task_id != spec.task_id:
                continue
            runtime = float(runtimes[c.hw[row]]) + overhead
            victims = self._victims(rec, row, runtime)
            chosen = self._enough(spec, row, [v for v, _ in victims])
            if chosen:
                motives = {v.spec.task_id: why for v, why in victims}
                self._issue_preemptions(
                    rec, row, runtime, [(v, motives[v.spec.task_id]) for v in chosen]
                )
                return True
        return False

    def _victims(self, rec: TaskRecord, row: int, runtime: float) -> list[tuple[TaskRecord, str]]:
        """Attempts on ``row`` that may be preempted for ``rec`` (predicted to run
        ``runtime`` there), latest predicted end first, each with why it may be."""
        p, now, spec = self.params, self.now, rec.spec
        saves_deadline = (
            spec.deadline_s is not None
            and now + runtime <= spec.deadline_s
            and rec.deadline_flagged
        )
        out = []
        for v in (self.core.tasks[t] for t in self.core.on_row.get(row, ())):
            vs = v.spec
            if not vs.preemptible or v.preempting or v.state is not S.RUNNING:
                continue
            if v.preemptions >= p.max_preemptions or v.started_at is None:
                continue
            if now - v.started_at < p.preempt_min_run_s:
                continue
            remaining = v.predicted_end(now) - now
            higher = spec.priority.rank < vs.priority.rank
            lower_or_same = spec.priority.rank <= vs.priority.rank
            shorter = lower_or_same and remaining > p.preempt_factor * runtime
            deadline = saves_deadline and lower_or_same and vs.deadline_s is None
            if higher:
                why = f"{spec.priority} outranks {vs.priority}"
            elif shorter:
                why = (
                    f"its remaining {remaining:.0f}s exceed {p.preempt_factor:g} x the "
                    f"newcomer's {runtime:.0f}s"
                )
            elif deadline:
                why = f"it saves {spec.task_id}'s deadline"
            else:
                continue
            out.append((v, why))
        out.sort(key=lambda e: (-(e[0].predicted_end(now)), e[0].spec.task_id))
        return out

    def _enough(self, spec: TaskSpec, row: int, victims: list[TaskRecord]) -> list[TaskRecord]:
        room = _Room(self.cluster, row)
        chosen = []
        for v in victims:
            chosen.append(v)
            room.release(v)
            if room.fits(spec):
                return chosen
        return []

    def _issue_preemptions(
        self, rec: TaskRecord, row: int, runtime: float, victims: list[tuple[TaskRecord, str]]
    ) -> None:
        """Ask to stop ``victims`` (each with why) on ``row`` for ``rec``, predicted to run
        ``runtime`` there: one decision id, one ``Preempt`` with its audit per victim."""
        core, spec = self.core, rec.spec
        core.decisions += 1
        decision_id = f"{core.config.decision_prefix}-{core.decisions:08d}"
        core.pending_preemptions[spec.task_id] = {v.spec.task_id for v, _ in victims}
        node_id = self.cluster.node_ids[row]
        hardware = self.cluster.specs[row].hardware
        for v, why in victims:
            v.preempting = True
            v.preempted_for = spec.task_id
            v.stop_requested_at = self.now
            left = v.predicted_end(self.now) - self.now
            reason = (
                f"{self.policy.name}: preempt attempt {v.attempt} of {v.spec.task_id} "
                f"({v.spec.priority}, ~{left:.0f}s left, checkpoint kept) on {node_id} to make "
                f"room for {spec.task_id} ({spec.priority}, predicted {runtime:.0f}s there): {why}"
            )
            decision = self._stop_decision(decision_id, rec, node_id, hardware, runtime, reason)
            core.emit(
                Preempt(
                    stimulus_id=self.stimulus_id,
                    task_id=v.spec.task_id,
                    attempt=v.attempt,
                    node_id=node_id,
                    reason=f"make room for {spec.task_id} ({spec.priority})",
                    for_task_id=spec.task_id,
                    decision_id=decision_id,
                    decision=decision,
                )
            )

    def _stop_decision(
        self,
        decision_id: str,
        rec: TaskRecord,
        node_id: str,
        hardware: str,
        runtime: float,
        reason: str,
    ) -> Decision:
        """The decision behind a stop (preemption or migration): ``rec``'s next attempt,
        predicted to run ``runtime`` on ``node_id`` (``hardware``) once the stop is
        confirmed."""
        return Decision(
            decision_id=decision_id,
            stimulus_id=self.stimulus_id,
            task_id=rec.spec.task_id,
            attempt=rec.attempt + 1,
            policy=self.policy.name,
            policy_version=self.policy.version,
            model_version=self.core.forecaster.version,
            decided_at_s=self.now,
            chosen_node_id=node_id,
            chosen_hardware=hardware,
            predicted_runtime_s=runtime,
            reason=reason,
            candidates=(),
        )

    # ------------------------------------------------------------------ step 6
    def _migrate(self) -> None:
        """Stop up to :data:`MAX_MIGRATIONS_PER_CYCLE` running attempts that would finish
        much sooner on a faster hardware class with room for them now (see
        :meth:`_migration`), largest predicted saving first. Called only when nothing is
        queued, so the room taken is room no waiting task wanted; one migrant per target
        node per cycle, so two migrants never count on the same room."""
        found: list[tuple[float, str, TaskRecord, int, float, float]] = []
        checks = 0
        for row in sorted(self.core.preemptible_on_row):
            for tid in sorted(self.core.on_row.get(row, ())):
                if checks >= MAX_MIGRATION_CHECKS:
                    break
                rec = self.core.tasks[tid]
                if not self._may_migrate_task(rec):
                    continue
                checks += 1
                option = self._migration(rec, set())
                if option is not None:
                    target, cur_left, new_left = option
                    found.append((new_left - cur_left, tid, rec, target, cur_left, new_left))
        found.sort(key=lambda e: (e[0], e[1]))
        claimed: set[int] = set()
        issued = 0
        for _, _, rec, target, cur_left, new_left in found:
            if issued >= MAX_MIGRATIONS_PER_CYCLE:
                break
            if target in claimed:
                option = self._migration(rec, claimed)
                if option is None:
                    continue
                target, cur_left, new_left = option
            claimed.add(target)
            issued += 1
            self._issue_migration(rec, target, cur_left, new_left)

    def _may_migrate_task(self, rec: TaskRecord) -> bool:
        """Whether ``rec``'s attempt may be migrated at all: preemptible, running for at
        least ``preempt_min_run_s``, not being stopped, migrated fewer than
        ``max_migrations`` times."""
        p = self.params
        return (
            rec.spec.preemptible
            and rec.state is S.RUNNING
            and not rec.preempting
            and rec.started_at is not None
            and rec.migrations < p.max_migrations
            and self.now - rec.started_at >= p.preempt_min_run_s
        )

    def _remaining_here(self, rec: TaskRecord, runtimes: FloatArray) -> float | None:
        """Predicted remaining seconds of ``rec``'s attempt where it runs: from its
        reported progress rate when it has reported progress, else the forecaster's
        current estimate (which may have learned since the assignment) minus the time
        run. None when the attempt is overdue by that measure (nothing sound to compare)."""
        assert rec.started_at is not None
        if rec.reported_progress > rec.progress + 0.001:  # predicted_s follows the rate
            left = rec.started_at + rec.predicted_s - self.now
        else:
            left = float(runtimes[self.cluster.hw[rec.row]]) - (self.now - rec.started_at)
        return left if left > 0 and math.isfinite(left) else None

    def _migration(self, rec: TaskRecord, claimed: set[int]) -> tuple[int, float, float] | None:
        """The node ``rec`` should migrate to, with its predicted remaining seconds where
        it runs and on that node (checkpoint restored, restart overhead excluded), or None.

        A node qualifies when it fits ``rec`` now, is not in ``claimed``, is of a class
        predicted faster for the task, is not under a predicted peak that would defer the
        task, and ``remaining here > migrate_factor * (remaining there + restart
        overhead)``. The remaining time there is the remaining time here scaled by the
        ratio of the forecaster's runtimes of the two classes (and inflated by the node's
        failure-risk penalty, as placement does). Among qualifying nodes, the one with the
        least remaining time there, ties by row."""
        c, p, spec = self.cluster, self.params, rec.spec
        runtimes = self.core.runtimes(rec)
        here_full = float(runtimes[c.hw[rec.row]])
        if not (math.isfinite(here_full) and here_full > 0):
            return None
        left = self._remaining_here(rec, runtimes)
        if left is None:
            return None
        fastest = float(runtimes.min())
        if left <= p.migrate_factor * (left * fastest / here_full + p.restart_overhead_s):
            return None  # not even the fastest class would pay: skip the node scan
        shape = (spec.shape, spec.allowed_hardware, tuple(sorted(spec.governance.items())))
        rows = self._fitting_rows(spec, shape)[0]
        if claimed:
            rows = rows[~np.isin(rows, sorted(claimed))]
        if self._tripped_hw:
            rows = rows[~np.isin(c.hw[rows], self._tripped_hw)]
        rows = rows[runtimes[c.hw[rows]] < here_full]
        if rows.size == 0:
            return None
        there = left * runtimes[c.hw[rows]] / here_full
        penalty = self._risk_penalty(self.policy)
        if penalty is not None:
            there = there * (1.0 + penalty[rows])
        order = np.lexsort((rows, there))
        may_defer = self._may_defer(rec, self.policy)
        for i in order.tolist():
            row, new_left = int(rows[i]), float(there[i])
            if left <= p.migrate_factor * (new_left + p.restart_overhead_s):
                return None  # the best remaining node does not pay either
            if may_defer and self._peak(int(c.hw[row]), spec) is not None:
                continue
            return row, left, new_left
        return None

    def _issue_migration(self, rec: TaskRecord, target: int, left: float, new_left: float) -> None:
        """Ask to stop ``rec``'s attempt so that it restarts on ``target``: one decision
        (the audit's ``kind="preempt"``), one ``Preempt`` whose reason says it is a
        migration. The task is its own beneficiary (``for_task_id``) until the stop is
        confirmed, which holds further migrations off (``SchedulerCore.may_migrate``)."""
        core, c, p, spec = self.core, self.cluster, self.params, rec.spec
        core.decisions += 1
        decision_id = f"{core.config.decision_prefix}-{core.decisions:08d}"
        core.pending_preemptions[spec.task_id] = {spec.task_id}
        rec.preempting = True
        rec.preempted_for = spec.task_id
        rec.stop_requested_at = self.now
        rec.migrations += 1
        node_id = c.node_ids[rec.row]
        here, there = rec.hardware, c.hardware_names[c.hw[target]]
        why = (
            f"migrate to {there}: predicted remaining {left:.0f}s on {here} vs "
            f"{new_left:.0f}s on {there} (+ {p.restart_overhead_s:.0f}s restart overhead)"
        )
        reason = (
            f"{self.policy.name}: {why}; preempt attempt {rec.attempt} of {spec.task_id} "
            f"({spec.priority}, checkpoint kept) on {node_id} for {c.node_ids[target]} "
            f"(migration {rec.migrations}/{p.max_migrations})"
        )
        runtime = new_left + p.restart_overhead_s
        decision = self._stop_decision(decision_id, rec, c.node_ids[target], there, runtime, reason)
        core.emit(
            Preempt(
                stimulus_id=self.stimulus_id,
                task_id=spec.task_id,
                attempt=rec.attempt,
                node_id=node_id,
                reason=why,
                for_task_id=spec.task_id,
                decision_id=decision_id,
                decision=decision,
            )
        )


class _Room:
    """A node's free resources as plain numbers, to replay predicted releases cheaply."""

    __slots__ = ("cpu", "gpu", "mem")

    def __init__(self, cluster: Cluster, row: int) -> None:
        self.gpu: list[int] = cluster.gpu_free[row].tolist()
        self.cpu = int(cluster.cpu_free[row])
        self.mem = int(cluster.mem_free[row])

    def release(self, rec: TaskRecord) -> None:
        spec = rec.spec
        self.cpu += spec.cpu_milli
        self.mem += spec.memory_mib
        per = spec.gpu_milli if spec.is_gpu_share else GPU_MILLI
        for g in rec.gpu_indices:
            self.gpu[g] += per

    def whole_gpus(self) -> int:
        return sum(1 for free in self.gpu if free == GPU_MILLI)

    def fits(self, spec: TaskSpec) -> bool:
        if self.cpu < spec.cpu_milli or self.mem < spec.memory_mib:
            return False
        if spec.gpus == 0:
            return True
        if spec.is_gpu_share:
            return any(free >= spec.gpu_milli for free in self.gpu)
        return self.whole_gpus() >= spec.gpus
