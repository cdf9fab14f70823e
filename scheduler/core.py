"""The scheduler core: one entry point, ``handle(*events, now) -> instructions``.

It keeps nodes, the ready queue, running attempts and dependencies. Event handlers are
idempotent (a duplicate or stale event is recorded as :class:`StaleEvent` and changes
nothing); after the events of a call are applied, one scheduling cycle runs
(:mod:`.cycle`). Nothing here does I/O or reads a clock, so a replay of the same events
with the same ``now`` values gives the same instructions.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from . import statemachine
from .breaker import BreakerChange, BreakerSettings, BreakerState, HardwareBreakers
from .cluster import Cluster, FloatArray
from .events import (
    CancelTask,
    Event,
    NodeLost,
    NodeUp,
    TaskCompleted,
    TaskFailed,
    TaskLost,
    TaskPreempted,
    TaskProgress,
    TaskStarted,
    TaskSubmitted,
    Tick,
    UpdatePolicy,
)
from .failure import NodeRiskModel
from .forecasting import DEFAULT_RUNTIME_S, IntervalForecaster, RuntimeForecaster
from .fragmentation import FragmentationCache, WorkloadProfile
from .instructions import (
    BreakerChanged,
    CancelRefused,
    DeadlineInfeasible,
    Instruction,
    Learned,
    PolicyRejected,
    PolicyUpdated,
    Reject,
    StaleEvent,
    StopAttempt,
    TaskTransition,
)
from .model import GPU_MILLI, TaskSpec, TaskState
from .plugins import SortContext
from .policies import Policy, changed_params, policy_for_update, split_fraction
from .queue import ReadyQueue

if TYPE_CHECKING:
    from .load import BucketedDemand

S = TaskState

#: Heartbeat reconciliation: an attempt whose assignment the node has not consumed yet
#: (``NodeUp.assignments_seen``) is on its way, not lost, for up to this many grace
#: periods (then the node's consumer is taken to be stuck).
UNREAD_ASSIGNMENT_GRACES = 30

#: A re-queued attempt resumes at most from here, so it always has some work to do.
MAX_RESUME_PROGRESS = 0.999
#: States in which a task counts against ``CoreConfig.max_queued_per_tenant``.
WAITING = frozenset({S.SUBMITTED, S.QUEUED})


@dataclass(frozen=True, slots=True)
class CoreConfig:
    #: Reject a submission no registered node could ever host (simulation: all nodes are
    #: known up front). Live, such a task waits for capacity instead.
    reject_unplaceable: bool = False
    seed: int = 0
    max_gpus_per_node: int = 8
    #: Prefix of decision ids (distinguishes placement agent instances).
    decision_prefix: str = "d"
    #: A node not heard from (``NodeUp``/heartbeat) for this long is lost: its attempts are
    #: re-queued with new attempt numbers. None: nodes never time out (simulation).
    heartbeat_timeout_s: float | None = None
    #: A task whose attempts were lost (``TaskLost``, its node lost, or missing from its
    #: node's heartbeats) more than this many times fails with reason ``lost N attempts
    #: (more than max_lost_attempts=M); last: ...``, so a poison task that kills every
    #: executor it lands on cannot walk the whole fleet. Losses never use up
    #: ``max_retries``. None: no bound.
    max_lost_attempts: int | None = 5
    #: Heartbeat reconciliation (needs heartbeats that list their running attempts): an
    #: attempt the core placed on a node that the node's heartbeats have not listed for
    #: this long (counted from its assignment, its last listing or a preemption request,
    #: whichever is latest) is lost; a listed attempt the core considers stale gets a
    #: ``StopAttempt`` (asked again only if the node still lists it more than this long
    #: after the last request). None disables reconciliation.
    reconcile_grace_s: float | None = 30.0
    #: A submission may name upstream tasks the core has not seen yet: on a partitioned
    #: topic, a dependent can overtake its upstream. It is accepted and waits this long
    #: for each unknown upstream, and is cancelled with the reason if one never arrives
    #: (or is refused). None: reject it at once (the simulator, whose arrivals are in
    #: order).
    unknown_upstream_grace_s: float | None = None
    #: When a node is lost, also send it a ``StopAttempt(cancel)`` for each attempt it
    #: held (they are re-queued): a node that was only cut off, or an executor that
    #: restarts and reads its old assignments, stops (or never starts) them instead of
    #: running them a second time. False in the simulator (no executors).
    stop_attempts_of_lost_nodes: bool = True
    # --- retries (see docs/policies.md, "Retries, admission and circuit breakers")
    #: A retryable failure with retries left re-enters the ready queue only after a
    #: backoff: ``retry_backoff_s * 2**(retry - 1)`` seconds (retry 1 is the first), at
    #: most ``retry_backoff_max_s``, shortened by up to ``retry_jitter`` of itself by a
    #: stable hash of (seed, task id, retry). It waits in state ``queued`` (not placeable).
    #: 0: re-queued at once (the simulator).
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 300.0
    retry_jitter: float = 0.2
    #: A task whose failed attempts (retryable ``task.failed``) happened on this many
    #: different nodes fails with reason ``failed on N different nodes (a, b, c); last:
    #: ...`` instead of trying the next one. Lost attempts do not count: a loss is the
    #: infrastructure's fault (``max_lost_attempts`` bounds those). A retry avoids the
    #: nodes it failed or was lost on when another node fits. None: no bound (the
    #: simulator).
    max_distinct_failed_nodes: int | None = 3
    # --- admission
    #: A submission whose tenant already has this many tasks waiting (``submitted`` or
    #: ``queued``) is rejected with the reason. None: unbounded.
    max_queued_per_tenant: int | None = None
    #: ``requested_by`` values that may cancel any tenant's task (operators). Everyone
    #: else may cancel only tasks of the tenant it names. (A tuple: the configuration
    #: stays JSON-serialisable.)
    cancel_operators: tuple[str, ...] = ()
    # --- circuit breaker per hardware class (see :mod:`.breaker`)
    #: Open a class's breaker when at least this many different tasks failed there within
    #: ``breaker_window_s`` (at most ``breaker_window`` outcomes kept) and they make at
    #: least ``breaker_failure_ratio`` of failed tasks + successful attempts. None: no
    #: breakers (the simulator).
    breaker_min_failures: int | None = 5
    breaker_failure_ratio: float = 0.5
    breaker_window_s: float = 300.0
    breaker_window: int = 50
    #: How long an open breaker pauses placement before a probe; doubled after each
    #: failed probe, at most ``breaker_max_cooldown_s``.
    breaker_cooldown_s: float = 30.0
    breaker_max_cooldown_s: float = 600.0
    # --- memory (see docs/architecture.md, "Compaction of ended tasks")
    #: A task that ended (succeeded, failed, cancelled) at least this many seconds ago
    #: loses its record: a :class:`Tombstone` (final state, last attempt, tenant) in
    #: ``SchedulerCore.tombstones`` answers for it from then on (duplicate submissions,
    #: dependents submitted later, stale attempt events, heartbeats still listing an
    #: attempt, cancels, ``state_of``). At most ``forget_per_call`` records per ``handle``
    #: call, oldest end first. None: records are kept for ever (the simulator).
    forget_terminal_after_s: float | None = 600.0
    forget_per_call: int = 500

    def __post_init__(self) -> None:
        for name in ("retry_backoff_s", "retry_backoff_max_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.retry_jitter) and 0.0 <= self.retry_jitter < 1.0):
            raise ValueError(f"retry_jitter must be in [0, 1), got {self.retry_jitter}")
        for name in ("max_distinct_failed_nodes", "max_queued_per_tenant"):
            bound = getattr(self, name)
            if bound is not None and bound < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {bound}")
        self.breaker_settings()  # validates the breaker fields
        if self.max_lost_attempts is not None and self.max_lost_attempts < 0:
            raise ValueError(f"max_lost_attempts must be >= 0, got {self.max_lost_attempts}")
        grace = self.reconcile_grace_s
        if grace is not None and not (math.isfinite(grace) and grace >= 0):
            raise ValueError(f"reconcile_grace_s must be a finite number >= 0, got {grace}")
        wait = self.unknown_upstream_grace_s
        if wait is not None and not (math.isfinite(wait) and wait >= 0):
            raise ValueError(f"unknown_upstream_grace_s must be a finite number >= 0, got {wait}")
        after = self.forget_terminal_after_s
        if after is not None and not (math.isfinite(after) and after >= 0):
            raise ValueError(f"forget_terminal_after_s must be a finite number >= 0, got {after}")
        if self.forget_per_call < 1:
            raise ValueError(f"forget_per_call must be >= 1, got {self.forget_per_call}")

    def breaker_settings(self) -> BreakerSettings | None:
        """The breaker fields as :class:`BreakerSettings` (None: breakers off);
        ``ValueError`` for bad values."""
        if self.breaker_min_failures is None:
            return None
        return BreakerSettings(
            min_failures=self.breaker_min_failures,
            failure_ratio=self.breaker_failure_ratio,
            window_s=self.breaker_window_s,
            window=self.breaker_window,
            cooldown_s=self.breaker_cooldown_s,
            max_cooldown_s=self.breaker_max_cooldown_s,
        )

    def retry_delay_s(self, task_id: str, retry: int) -> float:
        """Seconds retry number ``retry`` (1 = the first) of ``task_id`` waits (see
        ``retry_backoff_s``). Deterministic: the jitter is a hash, not a random draw."""
        if self.retry_backoff_s <= 0 or retry < 1:
            return 0.0
        nominal = min(self.retry_backoff_max_s, self.retry_backoff_s * 2.0 ** min(retry - 1, 60))
        if self.retry_jitter <= 0:
            return nominal
        digest = hashlib.blake2b(f"{self.seed}:{task_id}:{retry}".encode(), digest_size=8).digest()
        fraction = int.from_bytes(digest, "big") / 2.0**64
        return nominal * (1.0 - self.retry_jitter * fraction)


@dataclass(slots=True)
class TaskRecord:
    spec: TaskSpec
    submitted_at: float
    state: TaskState | None = None
    #: Number of the latest assignment (0 before the first). The fencing token.
    attempt: int = 0
    row: int = -1
    node_id: str | None = None
    hardware: str | None = None
    gpu_indices: tuple[int, ...] = ()
    assigned_at: float | None = None
    started_at: float | None = None
    #: Fraction of the whole work done before the current attempt (checkpoint).
    progress: float = 0.0
    #: Latest progress an executor reported for the current attempt (whole-task fraction).
    reported_progress: float = 0.0
    #: Predicted runtime of the current attempt (remaining work) on its hardware.
    predicted_s: float = 0.0
    #: Predicted whole-task runtime on the current hardware (for the forecast error).
    predicted_full_s: float = 0.0
    preemptions: int = 0
    #: Times the task was stopped to move it to faster hardware (not in ``preemptions``).
    migrations: int = 0
    preempting: bool = False
    retries: int = 0
    waiting_on: set[str] = field(default_factory=set)
    dependents: list[str] = field(default_factory=list)
    deadline_flagged: bool = False
    finished_at: float | None = None
    decision_id: str | None = None
    reason: str = ""
    runtime_cache: tuple[tuple[str, int, float], FloatArray, FloatArray] | None = None
    #: The blocked task this attempt is being preempted for, until the stop is confirmed.
    preempted_for: str | None = None
    #: Attempts lost so far (bounded by ``CoreConfig.max_lost_attempts``).
    losses: int = 0
    #: When the current attempt was last listed by its node's heartbeat (reconciliation).
    last_listed_at: float | None = None
    #: When the core asked the node to stop the current attempt (preemption), if it did.
    stop_requested_at: float | None = None
    #: The node's sequence number of the current attempt's assignment (see
    #: ``SchedulerCore.next_assignment``).
    assign_seq: int | None = None
    #: Nodes its failed attempts ran on, in order of first failure (bounded by
    #: ``CoreConfig.max_distinct_failed_nodes``).
    failed_nodes: tuple[str, ...] = ()
    #: Nodes an attempt of the task failed on or was lost on (not by a whole-node loss):
    #: a retry avoids them when another node fits. Only failures count towards
    #: ``max_distinct_failed_nodes``.
    avoid_nodes: tuple[str, ...] = ()

    def predicted_end(self, now: float) -> float:
        """When the current attempt should finish; an overdue attempt is expected soon."""
        start = self.started_at if self.started_at is not None else self.assigned_at
        end = (start if start is not None else now) + self.predicted_s
        return end if end > now else now + max(1.0, 0.1 * self.predicted_s)


class Tombstone(NamedTuple):
    """What the core keeps of a task whose record was compacted (see
    ``CoreConfig.forget_terminal_after_s``); equal tombstones are one shared object."""

    state: TaskState
    #: The task's last attempt number (the ``current_attempt`` of stale events).
    attempt: int
    #: Whose task it was (who may cancel it, to be told it has ended).
    tenant: str


def _identity(policy: Policy | None) -> tuple[str, str, object] | None:
    """What makes two policies the same for a live update: name, version, parameters."""
    return None if policy is None else (policy.name, policy.version, policy.params)


class SchedulerCore:
    """The state machine. See the module docstring."""

    def __init__(
        self,
        policy: Policy,
        forecaster: RuntimeForecaster,
        config: CoreConfig | None = None,
    ) -> None:
        self.policy = policy
        self.forecaster = forecaster
        self.config = config or CoreConfig()
        # A runtime-checkable Protocol check is slow; the forecaster never changes.
        self._has_interval = isinstance(forecaster, IntervalForecaster)
        self.cluster = Cluster(self.config.max_gpus_per_node)
        self.tasks: dict[str, TaskRecord] = {}
        self.queue = ReadyQueue()
        self.on_row: dict[int, set[str]] = {}
        self.occupancy_s: FloatArray = np.zeros(64)
        #: Per row, the earliest raw predicted end of an attempt on it (inf when idle).
        self.row_next_end: FloatArray = np.full(64, math.inf)
        #: Per row, a min-heap of (predicted end, key, task id) behind ``row_next_end``;
        #: an entry is live while its key is the task's current key (lazy deletion).
        self._row_ends: dict[int, list[tuple[float, int, str]]] = {}
        self._end_key: dict[str, int] = {}
        self._end_keys = itertools.count()
        self.tenant_alloc: dict[str, list[int]] = {}
        self.rng = np.random.default_rng(self.config.seed)
        self.round_robin_next = 0
        self.workload = WorkloadProfile()
        self.fragmentation_cache = FragmentationCache()
        self.decisions = 0
        self.last_seen: dict[str, float] = {}
        #: Per node, the sequence number of the latest assignment made to it.
        self.assignments_to: dict[str, int] = {}
        #: Queued task ids by task type, to re-key them when learning changes predictions.
        self.queued_by_type: dict[str, dict[str, None]] = {}
        #: Types whose queued tasks await re-keying (bounded work per call, see handle).
        self.stale_types: dict[str, list[str]] = {}
        #: Rows running preemptible attempts, with how many.
        self.preemptible_on_row: dict[int, int] = {}
        self.learned_types: set[str] = set()
        #: Beneficiary task id -> victims whose stop is not confirmed yet.
        self.pending_preemptions: dict[str, set[str]] = {}
        #: Per node, the stale attempts it listed and when a stop was last asked for each.
        self.orphan_stops: dict[str, dict[tuple[str, int], float]] = {}
        self._out: list[Instruction] = []
        self._stimulus = ""
        self._next_expiry_check = -math.inf
        #: Upstream task ids not submitted yet -> (first named at, dependents waiting).
        self.unknown_upstreams: dict[str, tuple[float, list[str]]] = {}
        # --- retries, admission and breakers (see CoreConfig)
        #: Tasks waiting out a retry backoff (state ``queued``, not in the ready queue):
        #: task id -> when it may be placed again, behind a lazily cleaned min-heap.
        self.retry_wait: dict[str, float] = {}
        self._retry_heap: list[tuple[float, str]] = []
        #: Tasks waiting (``submitted`` or ``queued``) per tenant, for admission control.
        self.waiting_by_tenant: dict[str, int] = {}
        settings = self.config.breaker_settings()
        #: The circuit breaker of each hardware class (None: breakers off).
        self.breakers = HardwareBreakers(settings) if settings is not None else None
        #: Breaker transitions so far (numbers their decision ids).
        self.breaker_changes = 0
        # --- node failure risk and load deferral (see docs/policies.md)
        #: Failure risk per node, fed by heartbeats, attempt ends and node losses.
        self.node_risk = NodeRiskModel()
        #: GPU demand per hardware class per ``load_bucket_s`` and its forecasters; built
        #: when a load-aware policy first needs it (River is imported then).
        self.load: BucketedDemand | None = None
        #: Queued low-priority task id -> (first deferred at, why); rebound, never mutated
        #: in place, by the cycle (a shadow fork shares the dict).
        self.deferred: dict[str, tuple[float, str]] = {}
        #: The ``now`` of the latest ``handle`` call (for metrics read between calls).
        self.last_now = 0.0
        #: A/B split (see :meth:`policy_of`): the candidate policy and its share of tasks.
        self.split_policy: Policy | None = None
        self.split_ratio = 1.0
        #: Shadow mode (see :mod:`.shadow`): the policy evaluated beside the live one, the
        #: shadow decisions made so far, and the attempt each queued task was
        #: shadow-decided for (one shadow decision per attempt).
        self.shadow_policy: Policy | None = None
        self.shadow_decisions = 0
        self.shadow_decided: dict[str, int] = {}
        #: The shadow's queue position per queued task, with the stamp it is valid for
        #: (see ``shadow.fork``); cleared with the shadow.
        self.shadow_keys: dict[str, tuple[object, tuple[float, ...], float | None]] = {}
        # --- compaction of ended tasks (see CoreConfig.forget_terminal_after_s)
        #: Task id -> tombstone, for every task whose record was compacted.
        self.tombstones: dict[str, Tombstone] = {}
        #: One instance per distinct tombstone value (so ``tombstones`` costs a key and a slot
        #: per task; pickling keeps the sharing).
        self._tombstone_pool: dict[Tombstone, Tombstone] = {}
        #: Min-heap of (ended at, task id) of the terminal records not compacted yet.
        self._ending: list[tuple[float, str]] = []
        self._handlers: dict[type, Callable[[Any, float], None]] = {
            NodeUp: self._on_node_up,
            NodeLost: self._on_node_lost,
            TaskSubmitted: self._on_submitted,
            TaskStarted: self._on_started,
            TaskProgress: self._on_progress,
            TaskCompleted: self._on_completed,
            TaskFailed: self._on_failed,
            TaskPreempted: self._on_preempted,
            TaskLost: self._on_lost,
            CancelTask: self._on_cancel,
            UpdatePolicy: self._on_update_policy,
            Tick: lambda ev, now: None,
        }

    # ================================================================== entry point
    def handle(self, *events: Event, now: float) -> list[Instruction]:
        """Apply ``events`` at time ``now``, run one scheduling cycle, return what to do."""
        from .cycle import run_cycle  # local: cycle imports this module's types

        self._out = []
        self.last_now = now
        if self._ending and self.config.forget_terminal_after_s is not None:
            self._compact(now)
        stimulus_id = events[-1].stimulus_id if events else "tick"
        for ev in events:
            self._stimulus = ev.stimulus_id
            self._handlers[type(ev)](ev, now)
        self._stimulus = stimulus_id
        if self.config.heartbeat_timeout_s is not None:
            self._expire_silent_nodes(now)
        if self.unknown_upstreams:
            self._expire_unknown_upstreams(now)
        if self.breakers is not None and self.breakers.due(now):
            self._expire_breakers(now)
        if self._retry_heap:
            self._release_retries(now)
        if self.stale_types:
            self._rekey_stale(self.policy.params.rekey_budget)
        if len(self.queue):
            shadow = self._shadow_cycle(now, stimulus_id) if self.shadow_policy else None
            run_cycle(self, now, stimulus_id)
            if shadow is not None:
                self._emit_shadow(shadow, now)
        elif self.may_migrate():
            run_cycle(self, now, stimulus_id)  # nothing queued: only the migration step
        out, self._out = self._out, []
        return out

    def emit(self, instruction: Instruction) -> None:
        self._out.append(instruction)

    def _shadow_cycle(self, now: float, stimulus_id: str) -> list[Instruction]:
        """The shadow policy's cycle on a copy of the state before the live cycle."""
        from .shadow import shadow_cycle  # local: shadow imports this module

        return shadow_cycle(self, now, stimulus_id)

    def _emit_shadow(self, shadow: list[Instruction], now: float) -> None:
        from .shadow import shadow_assigns  # local: shadow imports this module

        for ins in shadow_assigns(self, shadow, self._out, now):
            self.emit(ins)

    # ================================================================== queries
    def policy_of(self, task_id: str) -> Policy:
        """The policy that places ``task_id``: the split's candidate when the task's stable
        hash (:func:`~.policies.split_fraction`) is below ``split_ratio``, else the live
        policy. Queue order and the cycle's mechanisms are always the live policy's."""
        split = self.split_policy
        if split is None or split_fraction(task_id) >= self.split_ratio:
            return self.policy
        return split

    def may_migrate(self) -> bool:
        """Whether the cycle's migration step may run: the live policy preempts, its
        ``migrate_factor`` is positive, preemptible work runs, and no preemption or
        migration awaits its confirmation (so no room is counted on twice)."""
        return (
            self.policy.preemption
            and self.policy.params.migrate_factor > 0
            and bool(self.preemptible_on_row)
            and not self.pending_preemptions
        )

    def risk_penalty(self, now: float, weight: float) -> FloatArray | None:
        """Per row, ``weight`` times the node's failure risk above the fleet prior (>= 0),
        or None when no node is riskier than the fleet (the usual case: then scores are
        exactly those without risk). O(nodes with bad evidence)."""
        if weight <= 0:
            return None
        risky = self.node_risk.risky_nodes(now)
        rows = [(self.cluster.index.get(nid), excess) for nid, excess in risky.items()]
        rows = [(row, excess) for row, excess in rows if row is not None]
        if not rows:
            return None
        penalty = np.zeros(max(self.cluster.size, 1))
        for row, excess in rows:
            penalty[row] = weight * excess
        return penalty

    def load_forecast(self, hardware: str, now: float) -> float | None:
        """Predicted GPU demand of ``hardware`` in the load bucket holding ``now``, or None
        while no load-aware policy has run."""
        return None if self.load is None else self.load.forecast(hardware, now)

    def failure_risk_by_hardware(self, now: float) -> dict[str, float]:
        """The highest node failure risk per hardware class, over registered nodes."""
        out: dict[str, float] = {}
        prior = self.node_risk.fleet_risk(now)
        risks = self.node_risk.risks(now)
        for nid, row in self.cluster.index.items():
            hardware = self.cluster.specs[row].hardware
            out[hardware] = max(out.get(hardware, 0.0), risks.get(nid, prior))
        return out

    def _record_demand(self, spec: TaskSpec, now: float) -> None:
        """Count ``spec``'s GPUs in the load series, split evenly over the GPU classes it
        may use (a job runs on one of them); only under a load-aware policy."""
        params = self.policy.params
        if not self.policy.load_aware or spec.gpus == 0:
            return
        if self.load is None or self.load.bucket_s != params.load_bucket_s:
            from .load import BucketedDemand  # local: River is slow to import

            self.load = BucketedDemand(params.load_bucket_s)
        c = self.cluster
        names = c.hardware_names
        gpu_classes = {names[int(h)] for h in np.unique(c.hw[: c.size][c.gpu_cap[: c.size] > 0])}
        allowed = spec.allowed_hardware
        classes = sorted(gpu_classes & allowed if allowed else gpu_classes)
        if classes:
            share = spec.gpu_demand_milli / GPU_MILLI / len(classes)
            self.load.record(((h, share) for h in classes), now)

    def state_of(self, task_id: str) -> TaskState | None:
        """The task's state (its final state once compacted), or None if unknown."""
        rec = self.tasks.get(task_id)
        if rec is not None:
            return rec.state
        stone = self.tombstones.get(task_id)
        return stone.state if stone is not None else None

    def last_attempt(self, task_id: str) -> int:
        """The task's latest attempt number (0 before the first, or if unknown)."""
        rec = self.tasks.get(task_id)
        if rec is not None:
            return rec.attempt
        stone = self.tombstones.get(task_id)
        return stone.attempt if stone is not None else 0

    def runtimes(self, rec: TaskRecord) -> FloatArray:
        """Predicted remaining runtime of ``rec`` per hardware index (inf if not allowed)."""
        return self._predictions(rec)[0]

    def _predictions(self, rec: TaskRecord) -> tuple[FloatArray, FloatArray]:
        """(estimates, optimistic lows) of the remaining runtime per hardware index, both
        in one pass over the forecaster and cached until it learns or progress changes."""
        names = self.cluster.hardware_names
        stamp = (self.forecaster.version, len(names), rec.progress)
        cached = rec.runtime_cache
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        allowed = rec.spec.allowed_hardware
        remaining = 1.0 - rec.progress
        estimates = np.full(len(names), math.inf)
        lows = np.full(len(names), math.inf)
        ranged = cast(IntervalForecaster, self.forecaster) if self._has_interval else None
        for i, hw in enumerate(names):
            if allowed and hw not in allowed:
                continue
            if ranged is not None:
                low, estimate, _ = ranged.predict_range(rec.spec, hw)
            else:
                low = estimate = self.forecaster.predict(rec.spec, hw)
            estimates[i] = estimate * remaining
            lows[i] = low * remaining
        rec.runtime_cache = (stamp, estimates, lows)
        return estimates, lows

    def best_runtime(self, rec: TaskRecord) -> float:
        rts = self.runtimes(rec)
        finite = rts[np.isfinite(rts)]
        if finite.size:
            return float(finite.min())
        hw = min(rec.spec.allowed_hardware) if rec.spec.allowed_hardware else "cpu"
        return self.forecaster.predict(rec.spec, hw) * (1.0 - rec.progress) or DEFAULT_RUNTIME_S

    def sort_runtime(self, rec: TaskRecord) -> float:
        """The runtime the queue order uses: the optimistic end of the forecaster's range
        when it has one (see :class:`IntervalForecaster`), else its estimate."""
        lows = self._predictions(rec)[1]
        finite = lows[np.isfinite(lows)]
        return float(finite.min()) if finite.size else self.best_runtime(rec)

    def tenant_share(self, tenant: str) -> float:
        """Dominant resource share of ``tenant`` (0..1): its largest fraction of the
        cluster's CPU, memory or GPU (dominant resource fairness)."""
        alloc = self.tenant_alloc.get(tenant)
        if not alloc:
            return 0.0
        totals = self.cluster.totals()
        return max((a / t for a, t in zip(alloc, totals, strict=True) if t > 0), default=0.0)

    # ================================================================== transitions
    def transition(self, rec: TaskRecord, new: TaskState, reason: str, now: float) -> None:
        statemachine.check(rec.state, new, rec.spec.task_id)
        old, rec.state, rec.reason = rec.state, new, reason
        if (old in WAITING) != (new in WAITING):
            tenant = rec.spec.tenant
            left = self.waiting_by_tenant.get(tenant, 0) + (1 if new in WAITING else -1)
            if left:
                self.waiting_by_tenant[tenant] = left
            else:
                del self.waiting_by_tenant[tenant]
        if new.terminal:
            rec.finished_at = now
            if self.config.forget_terminal_after_s is not None:
                heapq.heappush(self._ending, (now, rec.spec.task_id))
        self.emit(TaskTransition(self._stimulus, rec.spec.task_id, rec.attempt, old, new, reason))

    def _queue_position(self, rec: TaskRecord) -> tuple[tuple[float, ...], float | None, float]:
        """(sort key, latest start for deadline urgency, best predicted runtime)."""
        best = self.best_runtime(rec)
        context = SortContext(
            rec.submitted_at, self.sort_runtime(rec), self.policy.params.sjf_weight
        )
        key = self.policy.queue_sort.key(rec.spec, context)
        deadline = rec.spec.deadline_s
        latest_start = deadline - best if self.policy.deadline_aware and deadline else None
        return key, latest_start, best

    def enqueue(self, rec: TaskRecord, reason: str, now: float) -> None:
        best = self._push_ready(rec)
        self.transition(rec, S.QUEUED, reason, now)
        self.check_deadline(rec, now, now + best)

    def _push_ready(self, rec: TaskRecord) -> float:
        """Put ``rec`` into the ready queue; its best predicted runtime."""
        spec = rec.spec
        key, latest_start, best = self._queue_position(rec)
        group = spec.tenant if self.policy.fair_share else ""
        self.queue.push(spec.task_id, group, key, latest_start)
        self.queued_by_type.setdefault(spec.task_type, {})[spec.task_id] = None
        return best

    def _hold_for_retry(self, rec: TaskRecord, delay: float, reason: str, now: float) -> None:
        """``rec`` is ``queued`` again but placeable only ``delay`` seconds from now (the
        retry backoff); :meth:`_release_retries` moves it into the ready queue then."""
        not_before = now + delay
        self.retry_wait[rec.spec.task_id] = not_before
        heapq.heappush(self._retry_heap, (not_before, rec.spec.task_id))
        self.transition(rec, S.QUEUED, f"{reason} (retry backoff {delay:.1f} s)", now)

    def _release_retries(self, now: float) -> None:
        """Move every task whose retry backoff is over into the ready queue (in order of
        their not-before times, ties by task id)."""
        heap = self._retry_heap
        while heap and heap[0][0] <= now:
            at, tid = heapq.heappop(heap)
            if self.retry_wait.get(tid) != at:
                continue  # cancelled while it waited
            del self.retry_wait[tid]
            rec = self.tasks[tid]
            best = self._push_ready(rec)
            self.check_deadline(rec, now, now + best)

    def next_retry_at(self) -> float | None:
        """When the next task waiting out a retry backoff becomes placeable, or None."""
        heap = self._retry_heap
        while heap and self.retry_wait.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def dequeue(self, task_id: str) -> None:
        self.queue.remove(task_id)
        self.queued_by_type[self.tasks[task_id].spec.task_type].pop(task_id, None)
        if task_id in self.deferred:
            self.deferred = {t: d for t, d in self.deferred.items() if t != task_id}

    def _learn(self, spec: TaskSpec, hardware: str, observed_s: float) -> None:
        """Teach the forecaster, then re-key queued tasks whose predictions moved: the
        learned type, and every queued type never observed yet (their cold-start guesses
        come from the shared statistics this observation just changed)."""
        types = {spec.task_type} | {
            t for t, ids in self.queued_by_type.items() if ids and t not in self.learned_types
        }
        reps = {
            t: self.tasks[next(iter(ids))]
            for t in sorted(types)
            if (ids := self.queued_by_type.get(t))
        }
        before = {t: self.sort_runtime(r) for t, r in reps.items()}
        self.forecaster.learn(spec, hardware, observed_s)
        self.learned_types.add(spec.task_type)
        for t, rep in reps.items():
            if (
                abs(self.sort_runtime(rep) - before[t])
                > self.policy.params.rekey_threshold * before[t]
            ):
                self.stale_types[t] = list(self.queued_by_type[t])

    def _rekey_stale(self, budget: int) -> None:
        """Queue keys are static; when learning moved a type's predictions, its queued
        tasks are re-keyed so the order reflects what the model now believes. At most
        ``budget`` tasks per call, so one observation never stalls a decision."""
        while budget > 0 and self.stale_types:
            task_type, pending = next(iter(self.stale_types.items()))
            while pending and budget > 0:
                tid = pending.pop()
                budget -= 1
                if tid not in self.queue:
                    continue
                key, latest_start, _ = self._queue_position(self.tasks[tid])
                if key != self.queue.key_of(tid):
                    group = self.queue.group_of(tid)
                    self.queue.remove(tid)
                    self.queue.push(tid, group, key, latest_start)
            if not pending:
                del self.stale_types[task_type]

    def check_deadline(self, rec: TaskRecord, now: float, predicted_finish: float) -> None:
        deadline = rec.spec.deadline_s
        if deadline is None or rec.deadline_flagged or predicted_finish <= deadline:
            return
        rec.deadline_flagged = True
        self.emit(DeadlineInfeasible(self._stimulus, rec.spec.task_id, deadline, predicted_finish))

    def hold(self, rec: TaskRecord, row: int, gpu_indices: tuple[int, ...]) -> None:
        """Reserve ``row``'s resources for ``rec``'s new attempt (the "assume" step)."""
        spec = rec.spec
        self.cluster.allocate(row, spec, gpu_indices)
        rec.row, rec.gpu_indices = row, gpu_indices
        rec.node_id = self.cluster.node_ids[row]
        rec.hardware = self.cluster.specs[row].hardware
        self.on_row.setdefault(row, set()).add(spec.task_id)
        self.occupancy_s[row] += rec.predicted_s
        self._end_changed(row, rec, self._end_of(rec))
        if spec.preemptible:
            self.preemptible_on_row[row] = self.preemptible_on_row.get(row, 0) + 1
        alloc = self.tenant_alloc.setdefault(spec.tenant, [0, 0, 0])
        alloc[0] += spec.cpu_milli
        alloc[1] += spec.memory_mib
        alloc[2] += spec.gpu_demand_milli

    def release(self, rec: TaskRecord) -> None:
        if rec.row < 0:
            return
        spec = rec.spec
        if self.breakers is not None:
            self.breakers.released(rec.hardware, spec.task_id, rec.attempt)
        self.cluster.release(rec.row, spec, rec.gpu_indices)
        self.on_row.get(rec.row, set()).discard(spec.task_id)
        self.occupancy_s[rec.row] = max(0.0, self.occupancy_s[rec.row] - rec.predicted_s)
        self._end_changed(rec.row, rec, None)
        if spec.preemptible:
            left = self.preemptible_on_row.pop(rec.row) - 1
            if left:
                self.preemptible_on_row[rec.row] = left
        alloc = self.tenant_alloc[spec.tenant]
        alloc[0] -= spec.cpu_milli
        alloc[1] -= spec.memory_mib
        alloc[2] -= spec.gpu_demand_milli
        if rec.preempted_for is not None:
            victims = self.pending_preemptions.get(rec.preempted_for, set())
            victims.discard(spec.task_id)
            if not victims:
                self.pending_preemptions.pop(rec.preempted_for, None)
        rec.row, rec.gpu_indices, rec.preempting, rec.preempted_for = -1, (), False, None
        rec.last_listed_at = rec.stop_requested_at = None

    @staticmethod
    def _end_of(rec: TaskRecord) -> float:
        """When ``rec``'s attempt is predicted to end (start, else assignment, + runtime)."""
        start = rec.started_at if rec.started_at is not None else rec.assigned_at
        return (start or 0.0) + rec.predicted_s

    def _end_changed(self, row: int, rec: TaskRecord, new_end: float | None) -> None:
        """``rec``'s attempt on ``row`` is now predicted to end at ``new_end`` (None: it
        left the row); keep ``row_next_end[row]`` the earliest predicted end on the row.
        O(log n) per change with a lazily cleaned heap, instead of walking the row."""
        task_id = rec.spec.task_id
        heap = self._row_ends.setdefault(row, [])
        if new_end is None:
            self._end_key.pop(task_id, None)
        else:
            key = next(self._end_keys)
            self._end_key[task_id] = key
            heapq.heappush(heap, (new_end, key, task_id))
        end_key = self._end_key
        while heap and end_key.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
        if len(heap) > 2 * len(self.on_row.get(row, ())) + 16:  # stale entries piled up
            heap[:] = [e for e in heap if end_key.get(e[2]) == e[1]]
            heapq.heapify(heap)
        self.row_next_end[row] = heap[0][0] if heap else math.inf

    def _current(self, rec: TaskRecord | None, task_id: str, attempt: int, event: str) -> bool:
        """True when the event concerns the live attempt; otherwise it is recorded."""
        if rec is not None and attempt == rec.attempt and rec.state in statemachine.HOLDS_RESOURCES:
            return True
        current = rec.attempt if rec is not None else self.last_attempt(task_id)
        self.emit(StaleEvent(self._stimulus, task_id, attempt, current, event))
        return False

    # ================================================================== node events
    def _on_node_up(self, ev: NodeUp, now: float) -> None:
        self.last_seen[ev.node.node_id] = now
        beat = now if ev.reported_at_s is None else ev.reported_at_s
        self.node_risk.observe_heartbeat(ev.node.node_id, beat)
        row, changed = self.cluster.upsert(ev.node)
        size = self.occupancy_s.shape[0]
        if row >= size:
            new_size = max(2 * size, row + 1)
            self.occupancy_s = np.concatenate([self.occupancy_s, np.zeros(new_size - size)])
            self.row_next_end = np.concatenate(
                [self.row_next_end, np.full(new_size - size, math.inf)]
            )
        if changed:
            self.occupancy_s[row] = 0.0
            self.row_next_end[row] = math.inf
        if ev.running is not None and self.config.reconcile_grace_s is not None:
            seen = now if ev.reported_at_s is None else min(now, ev.reported_at_s)
            self._reconcile(ev, row, seen, now)

    def forgive_silence(self, now: float) -> None:
        """The reader could not hear the nodes until ``now`` (it restarted, or is behind on
        their heartbeats): every node's silence counts from ``now`` (a node that really
        died is declared lost one heartbeat timeout later)."""
        seen = self.last_seen
        for node_id, at in seen.items():
            if at < now:
                seen[node_id] = now

    def next_assignment(self, rec: TaskRecord, node_id: str) -> int:
        """Number the assignment of ``rec``'s current attempt to ``node_id`` (1, 2, ... per
        node) and remember it on the task."""
        seq = self.assignments_to.get(node_id, 0) + 1
        self.assignments_to[node_id] = seq
        rec.assign_seq = seq
        return seq

    def _reconcile(self, ev: NodeUp, row: int, seen: float, now: float) -> None:
        """Compare what node ``node_id`` reports it runs (as of ``seen``) with the core's
        view. An attempt placed there but not listed for more than ``reconcile_grace_s``
        is lost (:meth:`_lose`); a listed attempt the core considers stale gets a
        ``StopAttempt(cancel)`` (see :meth:`_stop_orphans`). Idempotent: a repeated
        heartbeat finds nothing new to lose and repeats no stop within the grace period."""
        grace = self.config.reconcile_grace_s
        assert grace is not None
        node_id = ev.node.node_id
        running = ev.running
        assert running is not None
        for tid in sorted(self.on_row.get(row, ())):
            rec = self.tasks[tid]
            if (tid, rec.attempt) in running:
                last = rec.last_listed_at
                rec.last_listed_at = seen if last is None else max(last, seen)
                continue
            if (tid, rec.attempt) in ev.ended or not ev.reconcile_losses:
                continue  # finished there (its terminal event is on its way), or may have
            marks = (rec.assigned_at, rec.last_listed_at, rec.stop_requested_at)
            since = max(t for t in marks if t is not None)
            unread = (
                ev.assignments_seen is not None
                and rec.assign_seq is not None
                and ev.assignments_seen < rec.assign_seq
            )
            if unread and seen - since <= UNREAD_ASSIGNMENT_GRACES * grace:
                continue  # the node has not consumed the assignment yet: on its way
            if seen - since > grace:
                absent = f"not listed by its heartbeats for {seen - since:.0f} s"
                if unread:
                    absent += f", its assignment {rec.assign_seq} never consumed"
                self.node_risk.observe_attempt_end(node_id, "lost", now)
                self._lose(
                    rec,
                    f"attempt {rec.attempt} lost: node {node_id} does not run it ({absent})",
                    now,
                )
        self._stop_orphans(node_id, running, now, grace)

    def _stop_orphans(
        self, node_id: str, running: frozenset[tuple[str, int]], now: float, grace: float
    ) -> None:
        """Ask ``node_id`` to cancel each listed attempt the core considers stale (task
        ended, a newer attempt, re-queued, or placed elsewhere); ask again only if the node
        still lists it more than ``grace`` seconds after the last request. Attempts of tasks
        the core does not know are left alone (they are not its to stop)."""
        before = self.orphan_stops.get(node_id, {})
        after: dict[tuple[str, int], float] = {}
        for tid, attempt in sorted(running):
            why = self._orphan_reason(node_id, tid, attempt)
            if why is None:
                continue
            asked = before.get((tid, attempt))
            if asked is not None and now - asked <= grace:
                after[(tid, attempt)] = asked
                continue
            after[(tid, attempt)] = now
            self.emit(StopAttempt(self._stimulus, tid, attempt, node_id, f"orphan attempt: {why}"))
        if after:
            self.orphan_stops[node_id] = after
        else:
            self.orphan_stops.pop(node_id, None)

    def _orphan_reason(self, node_id: str, task_id: str, attempt: int) -> str | None:
        """Why attempt ``attempt`` of ``task_id`` should not run on ``node_id``, or
        ``None`` when it should (or the task is unknown)."""
        rec = self.tasks.get(task_id)
        if rec is None:
            stone = self.tombstones.get(task_id)
            return None if stone is None else f"task {task_id} already {stone.state}"
        if rec.state is None:
            return None
        if rec.state.terminal:
            return f"task {task_id} already {rec.state}"
        if attempt != rec.attempt:
            return f"task {task_id} is at attempt {rec.attempt}, not {attempt}"
        if rec.state not in statemachine.HOLDS_RESOURCES:
            return f"attempt {attempt} of {task_id} no longer holds a node (task {rec.state})"
        if rec.node_id != node_id:
            return f"attempt {attempt} of {task_id} is placed on node {rec.node_id}"
        return None

    def _expire_silent_nodes(self, now: float) -> None:
        """Declare lost every alive node silent for longer than the heartbeat timeout
        (checked at most once per second of core time)."""
        if now < self._next_expiry_check:
            return
        self._next_expiry_check = now + 1.0
        timeout = self.config.heartbeat_timeout_s
        assert timeout is not None
        silent = sorted(
            node_id
            for node_id, seen in self.last_seen.items()
            if now - seen > timeout and self.cluster.alive[self.cluster.index[node_id]]
        )
        for node_id in silent:
            self._stimulus = f"heartbeat-timeout:{node_id}"
            reason = f"no heartbeat for {now - self.last_seen[node_id]:.0f} s"
            self._on_node_lost(NodeLost(self._stimulus, node_id, reason), now)

    def _on_node_lost(self, ev: NodeLost, now: float) -> None:
        row = self.cluster.index.get(ev.node_id)
        if row is None or not self.cluster.alive[row]:
            return
        self.node_risk.observe_node_lost(ev.node_id, now)
        for tid in sorted(self.on_row.get(row, ())):
            rec = self.tasks[tid]
            if self.config.stop_attempts_of_lost_nodes:
                why = f"{ev.reason}: node {ev.node_id} lost, attempt re-queued"
                self.emit(StopAttempt(self._stimulus, tid, rec.attempt, ev.node_id, why))
            self._lose(rec, f"{ev.reason}: node {ev.node_id}", now, node_lost=True)
        self.on_row.pop(row, None)
        self.occupancy_s[row] = 0.0
        self.row_next_end[row] = math.inf
        self.cluster.mark_dead(row)

    def _lose(self, rec: TaskRecord, reason: str, now: float, node_lost: bool = False) -> None:
        """Re-queue ``rec``'s current attempt (which holds a node) after it was lost: a new
        attempt number comes with the next assignment, no retry is used, and the work
        resumes from the last progress reported. Once the task has lost more than
        ``max_lost_attempts`` attempts it fails instead (and its dependents are
        cancelled). A loss is the infrastructure's fault (a killed or restarted executor, a
        silent node), not the task's, so it never counts towards
        ``max_distinct_failed_nodes``: a poison task that kills every executor it lands on
        is stopped by ``max_lost_attempts``. ``node_lost`` says the whole node was lost."""
        node_id = rec.node_id
        rec.progress = max(rec.progress, min(rec.reported_progress, MAX_RESUME_PROGRESS))
        if not node_lost and node_id is not None and node_id not in rec.avoid_nodes:
            rec.avoid_nodes = (*rec.avoid_nodes, node_id)
        self.release(rec)
        rec.losses += 1
        limit = self.config.max_lost_attempts
        if limit is not None and rec.losses > limit:
            why = (
                f"lost {rec.losses} attempts (more than max_lost_attempts={limit}); last: {reason}"
            )
            self._fail(rec, why, now)
            return
        self.enqueue(rec, reason, now)

    def _fail(self, rec: TaskRecord, reason: str, now: float) -> None:
        """``rec`` fails for good (``reason``); its dependents are cancelled."""
        self.transition(rec, S.FAILED, reason, now)
        self._cancel_dependents(rec, now)

    def _spread(self, rec: TaskRecord, node_id: str | None, last: str) -> str | None:
        """Note that an attempt of ``rec`` failed on ``node_id``; the terminal
        reason when its failures now span ``max_distinct_failed_nodes`` nodes, else None."""
        if node_id is not None and node_id not in rec.failed_nodes:
            rec.failed_nodes = (*rec.failed_nodes, node_id)
        if node_id is not None and node_id not in rec.avoid_nodes:
            rec.avoid_nodes = (*rec.avoid_nodes, node_id)
        limit = self.config.max_distinct_failed_nodes
        if limit is None or len(rec.failed_nodes) < limit:
            return None
        nodes = ", ".join(rec.failed_nodes)
        return (
            f"failed on {len(rec.failed_nodes)} different nodes ({nodes}) "
            f"(max_distinct_failed_nodes={limit}); last: {last}"
        )

    # ================================================================== task events
    def _on_submitted(self, ev: TaskSubmitted, now: float) -> None:
        spec = ev.spec
        if spec.task_id in self.tasks or spec.task_id in self.tombstones:
            self.emit(StaleEvent(ev.stimulus_id, spec.task_id, 0, 0, "duplicate submission"))
            return
        reason = self._rejection(spec)
        if reason:
            self.emit(Reject(ev.stimulus_id, spec.task_id, reason))
            self._settle_awaited(spec.task_id, f"upstream {spec.task_id} was refused", now)
            return
        rec = self.tasks[spec.task_id] = TaskRecord(spec=spec, submitted_at=now)
        self.workload.observe(spec)
        self._record_demand(spec, now)
        self.transition(rec, S.SUBMITTED, "accepted", now)
        for dep in spec.depends_on:
            up = self.tasks.get(dep)
            up_state = up.state if up is not None else self.state_of(dep)  # or compacted
            if up_state is None:  # overtaken by its dependent: wait for it (see CoreConfig)
                rec.waiting_on.add(dep)
                self.unknown_upstreams.setdefault(dep, (now, []))[1].append(spec.task_id)
                continue
            if up_state in (S.FAILED, S.CANCELLED):
                self.transition(rec, S.CANCELLED, f"upstream {dep} {up_state}", now)
                self._settle_awaited(spec.task_id, f"upstream {spec.task_id} {rec.state}", now)
                return
            if up_state is not S.SUCCEEDED:
                assert up is not None  # a compacted task has ended
                rec.waiting_on.add(dep)
                up.dependents.append(spec.task_id)
        self._adopt_awaiting(rec, now)
        if rec.state is S.SUBMITTED and not rec.waiting_on:
            self.enqueue(rec, "ready", now)

    def _adopt_awaiting(self, rec: TaskRecord, now: float) -> None:
        """Link the dependents that arrived before ``rec`` (their upstream). A dependent
        that ``rec`` itself waits on, directly or not, closes a cycle: it is cancelled."""
        entry = self.unknown_upstreams.pop(rec.spec.task_id, None)
        if entry is None:
            return
        upstream_closure = self._upstream_closure(rec)
        for tid in entry[1]:
            child = self.tasks[tid]
            if child.state is None or child.state.terminal:
                continue
            if tid in upstream_closure:
                self._cancel(child, f"dependency cycle through {rec.spec.task_id}", now)
                self._cancel_dependents(child, now)
                continue
            rec.dependents.append(tid)

    def _upstream_closure(self, rec: TaskRecord) -> set[str]:
        """Every task ``rec`` waits on, directly or through other waiting tasks."""
        seen: set[str] = set()
        todo = list(rec.waiting_on)
        while todo:
            tid = todo.pop()
            if tid in seen:
                continue
            seen.add(tid)
            up = self.tasks.get(tid)
            if up is not None:
                todo.extend(up.waiting_on)
        return seen

    def _settle_awaited(self, task_id: str, reason: str, now: float) -> None:
        """Cancel the dependents waiting for ``task_id`` to be submitted (it was refused,
        ended at once or never came)."""
        entry = self.unknown_upstreams.pop(task_id, None)
        for tid in entry[1] if entry else ():
            child = self.tasks[tid]
            if child.state is not None and not child.state.terminal:
                self._cancel(child, reason, now)
                self._cancel_dependents(child, now)

    def _expire_unknown_upstreams(self, now: float) -> None:
        grace = self.config.unknown_upstream_grace_s
        assert grace is not None
        late = sorted(t for t, (since, _) in self.unknown_upstreams.items() if now - since > grace)
        for task_id in late:
            self._settle_awaited(
                task_id, f"upstream {task_id} was never submitted (waited {grace:g} s)", now
            )

    # ================================================================== breakers
    def _breaker_outcome(self, rec: TaskRecord, failed: bool, now: float) -> None:
        """Feed the end of ``rec``'s current attempt (before its release) to the breaker
        of its hardware class, and emit the transition it causes, if any."""
        if self.breakers is None or rec.hardware is None:
            return
        change = self.breakers.record(rec.hardware, rec.spec.task_id, rec.attempt, failed, now)
        if change is not None:
            self._emit_breaker(change, now)

    def _expire_breakers(self, now: float) -> None:
        assert self.breakers is not None
        for change in self.breakers.expire(now):
            self._emit_breaker(change, now)

    def _emit_breaker(self, change: BreakerChange, now: float) -> None:
        self.breaker_changes += 1
        self.emit(
            BreakerChanged(
                self._stimulus,
                f"{self.config.decision_prefix}-breaker-{self.breaker_changes:06d}",
                change.hardware,
                change.previous.value,
                change.state.value,
                change.reason,
                change.failed_tasks,
                change.succeeded,
                change.cooldown_s,
                change.until_s,
                now,
            )
        )

    def breaker_state(self, hardware: str) -> BreakerState:
        """The state of ``hardware``'s circuit breaker (closed when breakers are off)."""
        return BreakerState.CLOSED if self.breakers is None else self.breakers.state(hardware)

    def note_probe(self, hardware: str, task_id: str, attempt: int) -> bool:
        """Called by the cycle for each placement on a class whose breaker is not
        closed: True when the attempt is the half-open breaker's probe (it is recorded;
        nothing else may be placed there until its outcome)."""
        if self.breakers is None or not self.breakers.probing(hardware):
            return False
        self.breakers.placed(hardware, task_id, attempt)
        return True

    def _rejection(self, spec: TaskSpec) -> str:
        if self.config.unknown_upstream_grace_s is None:
            for dep in spec.depends_on:
                if dep not in self.tasks and dep not in self.tombstones:
                    return f"depends_on: unknown task {dep!r} (submit upstream tasks first)"
        if spec.gpus > self.config.max_gpus_per_node:
            return (
                f"needs {spec.gpus} GPUs; a task runs on one node and nodes have at most "
                f"{self.config.max_gpus_per_node}"
            )
        if self.config.reject_unplaceable and not self.cluster.could_ever_fit(spec):
            return (
                f"no registered node can ever host it (gpus={spec.gpus}, "
                f"cpu_milli={spec.cpu_milli}, memory_mib={spec.memory_mib}, "
                f"allowed_hardware={sorted(spec.allowed_hardware) or 'any'})"
            )
        limit = self.config.max_queued_per_tenant
        if limit is not None:
            waiting = self.waiting_by_tenant.get(spec.tenant, 0)
            if waiting >= limit:
                return (
                    f"tenant {spec.tenant!r} has {waiting} queued tasks "
                    f"(max_queued_per_tenant={limit}); submit again once some have started"
                )
        return ""

    def _on_started(self, ev: TaskStarted, now: float) -> None:
        rec = self.tasks.get(ev.task_id)
        if not self._current(rec, ev.task_id, ev.attempt, "started"):
            return
        assert rec is not None
        if self.breakers is not None:
            self.breakers.started(ev.task_id, ev.attempt, rec.hardware, now)
        if rec.state is S.ASSIGNED:
            rec.started_at = now
            self._end_changed(rec.row, rec, self._end_of(rec))
            self.transition(rec, S.RUNNING, f"started on {ev.node_id}", now)

    def _on_progress(self, ev: TaskProgress, now: float) -> None:
        """Progress refines the running attempt's predicted end; the first report of a type
        that has never finished anywhere also bootstraps the forecaster (long jobs would
        otherwise teach it nothing for days)."""
        rec = self.tasks.get(ev.task_id)
        if not self._current(rec, ev.task_id, ev.attempt, "progress"):
            return
        assert rec is not None
        rec.reported_progress = max(rec.reported_progress, min(ev.progress, 1.0))
        done = rec.reported_progress - rec.progress
        if rec.started_at is None or done < 0.001 or now <= rec.started_at:
            return
        full = (now - rec.started_at) / done
        remaining = full * (1.0 - rec.progress)
        self.occupancy_s[rec.row] += remaining - rec.predicted_s
        rec.predicted_s = remaining
        self._end_changed(rec.row, rec, self._end_of(rec))
        if rec.spec.task_type not in self.learned_types and rec.hardware is not None:
            self._learn(rec.spec, rec.hardware, full)

    def _on_completed(self, ev: TaskCompleted, now: float) -> None:
        rec = self.tasks.get(ev.task_id)
        if not self._current(rec, ev.task_id, ev.attempt, "completed"):
            return
        assert rec is not None
        assert rec.hardware is not None
        share = 1.0 - rec.progress
        if share >= 0.05 and ev.runtime_s > 0:
            observed_full = ev.runtime_s / share
            self.emit(
                Learned(
                    self._stimulus,
                    rec.spec.task_id,
                    rec.hardware,
                    rec.predicted_full_s,
                    observed_full,
                )
            )
            self._learn(rec.spec, rec.hardware, observed_full)
        if rec.node_id is not None:
            self.node_risk.observe_attempt_end(rec.node_id, "succeeded", now)
        self._breaker_outcome(rec, False, now)
        self.release(rec)
        rec.progress = 1.0
        self.transition(rec, S.SUCCEEDED, "completed", now)
        for tid in rec.dependents:
            child = self.tasks[tid]
            child.waiting_on.discard(rec.spec.task_id)
            if not child.waiting_on and child.state is S.SUBMITTED:
                self.enqueue(child, "dependencies succeeded", now)

    def _on_failed(self, ev: TaskFailed, now: float) -> None:
        rec = self.tasks.get(ev.task_id)
        if not self._current(rec, ev.task_id, ev.attempt, "failed"):
            return
        assert rec is not None
        node_id = rec.node_id
        if ev.retryable and node_id is not None:  # plausibly the node's (see failure.py)
            self.node_risk.observe_attempt_end(node_id, "failed", now)
        if ev.retryable:
            self._breaker_outcome(rec, True, now)
        self.release(rec)
        if not ev.retryable:
            self._fail(rec, ev.reason, now)
            return
        budget = rec.spec.max_retries
        spread = self._spread(rec, node_id, ev.reason)
        if rec.retries >= budget:
            why = (
                f"retry budget used up ({rec.retries} of max_retries={budget} retries made); "
                f"last failure: {ev.reason}"
            )
            self._fail(rec, why, now)
            return
        if spread is not None:
            self._fail(rec, spread, now)
            return
        rec.retries += 1
        rec.progress = max(rec.progress, min(rec.reported_progress, MAX_RESUME_PROGRESS))
        reason = f"retry {rec.retries}/{budget}: {ev.reason}"
        delay = self.config.retry_delay_s(rec.spec.task_id, rec.retries)
        if delay > 0:
            self._hold_for_retry(rec, delay, reason, now)
        else:
            self.enqueue(rec, reason, now)

    def _on_preempted(self, ev: TaskPreempted, now: float) -> None:
        rec = self.tasks.get(ev.task_id)
        if not self._current(rec, ev.task_id, ev.attempt, "preempted"):
            return
        assert rec is not None
        migrating = rec.preempted_for == rec.spec.task_id
        self.release(rec)
        rec.progress = max(rec.progress, min(ev.progress, MAX_RESUME_PROGRESS))
        if not migrating:  # a migration is bounded by ``max_migrations`` instead
            rec.preemptions += 1
        what = "migrated" if migrating else "preempted"
        self.enqueue(rec, f"{what} (progress {rec.progress:.0%} kept)", now)

    def _on_lost(self, ev: TaskLost, now: float) -> None:
        rec = self.tasks.get(ev.task_id)
        if not self._current(rec, ev.task_id, ev.attempt, "lost"):
            return
        assert rec is not None
        if rec.node_id is not None:
            self.node_risk.observe_attempt_end(rec.node_id, "lost", now)
        self._lose(rec, f"attempt {ev.attempt} lost: {ev.reason}", now)

    def _on_cancel(self, ev: CancelTask, now: float) -> None:
        rec = self.tasks.get(ev.task_id)
        stone = self.tombstones.get(ev.task_id) if rec is None else None
        tenant = rec.spec.tenant if rec is not None else stone.tenant if stone else None
        who = ev.requested_by
        if tenant is not None and who is not None and not self._may_cancel(tenant, who):
            # Checked before anything else, terminal tasks too: a refusal tells another
            # tenant nothing about the task's state.
            outcome = (
                f"refused: {who!r} does not own this task (a tenant may cancel only its "
                "own tasks; operators are listed in cancel_operators)"
            )
            attempt = self.last_attempt(ev.task_id)
            refusal = CancelRefused(ev.stimulus_id, ev.task_id, attempt, who, ev.reason, outcome)
            self.emit(refusal)
            return
        if rec is None or rec.state is None or rec.state.terminal:
            current = self.last_attempt(ev.task_id)
            self.emit(StaleEvent(ev.stimulus_id, ev.task_id, current, current, "cancel"))
            return
        self._cancel(rec, ev.reason, now)
        self._cancel_dependents(rec, now)

    def _may_cancel(self, tenant: str, requested_by: str) -> bool:
        """Whether ``requested_by`` may cancel a task of ``tenant``: that tenant, or an
        operator."""
        return requested_by == tenant or requested_by in self.config.cancel_operators

    def _cancel(self, rec: TaskRecord, reason: str, now: float) -> None:
        if rec.spec.task_id in self.queue:
            self.dequeue(rec.spec.task_id)
        self.retry_wait.pop(rec.spec.task_id, None)  # its heap entry is dropped lazily
        if rec.state in statemachine.HOLDS_RESOURCES and rec.node_id is not None:
            self.emit(
                StopAttempt(self._stimulus, rec.spec.task_id, rec.attempt, rec.node_id, reason)
            )
            self.release(rec)
        self.transition(rec, S.CANCELLED, reason, now)

    def _cancel_dependents(self, rec: TaskRecord, now: float) -> None:
        todo = list(rec.dependents)
        while todo:
            child = self.tasks[todo.pop()]
            if child.state is not None and not child.state.terminal:
                self._cancel(child, f"upstream {rec.spec.task_id} {rec.state}", now)
                todo.extend(child.dependents)

    # ================================================================== policy
    def _on_update_policy(self, ev: UpdatePolicy, now: float) -> None:
        """Apply a policy update (switch, A/B split, shadow), or answer
        :class:`PolicyRejected` and change nothing. Declarative: the update states the whole
        configuration (see :class:`~.events.UpdatePolicy`). When the live policy changes,
        queued tasks are re-keyed under it (its queue order, fair-share grouping and
        deadline urgency), keeping their arrival order among equal keys; a split or shadow
        change alone re-keys nothing (queue order is always the live policy's)."""
        try:
            live, split, ratio, shadow = self._configuration_for(ev)
        except ValueError as exc:
            self.emit(PolicyRejected(ev.stimulus_id, ev.policy, str(exc)))
            return
        old = self.policy
        live_changed = _identity(live) != _identity(old)
        changed = live_changed or (
            _identity(split),
            ratio,
            _identity(shadow),
        ) != (_identity(self.split_policy), self.split_ratio, _identity(self.shadow_policy))
        self.emit(
            PolicyUpdated(
                ev.stimulus_id,
                live.name,
                live.version,
                old.name,
                old.version,
                changed_params(live.params),
                changed,
                split_policy=split.name if split else None,
                split_version=split.version if split else None,
                split_ratio=ratio,
                shadow_policy=shadow.name if shadow else None,
                shadow_version=shadow.version if shadow else None,
            )
        )
        if not changed:
            return
        self.policy, self.split_policy, self.split_ratio = live, split, ratio
        if _identity(shadow) != _identity(self.shadow_policy):
            self.shadow_decided.clear()  # a new shadow decides every attempt afresh
            self.shadow_keys.clear()
        self.shadow_policy = shadow
        if live_changed:
            self._rekey_all()

    def _configuration_for(
        self, ev: UpdatePolicy
    ) -> tuple[Policy, Policy | None, float, Policy | None]:
        """(live policy, split candidate or None, split ratio, shadow or None) after ``ev``;
        ``ValueError`` naming what is wrong otherwise."""
        ratio = ev.split_ratio
        if not (math.isfinite(ratio) and 0.0 <= ratio <= 1.0):
            raise ValueError(f"split_ratio must be a number in 0..1, got {ratio}")
        target = self._policy_for(ev)
        live, split = (target, None) if ratio >= 1.0 else (self.policy, target)
        if split is not None and (ratio <= 0.0 or _identity(split) == _identity(live)):
            split = None  # no task would go to another policy: no split
        shadow = None
        if ev.shadow_policy is not None:
            shadow = self._shadow_for(ev.shadow_policy, live)
        return live, split, (1.0 if split is None else ratio), shadow

    def _policy_for(self, ev: UpdatePolicy) -> Policy:
        """The policy ``ev`` asks for; ``ValueError`` naming what is wrong otherwise."""
        return policy_for_update(
            ev.policy,
            dict(ev.parameters),
            allow_simulation_only=self.forecaster.name == "oracle",
        )

    def _shadow_for(self, name: str, live: Policy) -> Policy:
        """The built-in policy ``name`` (default parameters) as a shadow of ``live``;
        ``ValueError`` for an unknown or simulation-only policy, or the live one itself."""
        try:
            shadow = policy_for_update(
                name, {}, allow_simulation_only=self.forecaster.name == "oracle"
            )
        except ValueError as exc:
            raise ValueError(f"shadow_policy: {exc}") from None
        if _identity(shadow) == _identity(live):
            raise ValueError(
                f"shadow_policy {name!r} is the live policy ({live.version}): a shadow must "
                "differ from the policy it is compared with"
            )
        return shadow

    def _rekey_all(self) -> None:
        """Recompute every queued task's key, group and deadline entry under the current
        policy, in arrival order (so ties keep their order)."""
        for tid in self.queue.task_ids_by_arrival():
            key, latest_start, _ = self._queue_position(self.tasks[tid])
            group = self.tasks[tid].spec.tenant if self.policy.fair_share else ""
            self.queue.remove(tid)
            self.queue.push(tid, group, key, latest_start)

    # ================================================================== compaction
    def _compact(self, now: float) -> None:
        """Replace by tombstones the records of tasks that ended at least
        ``forget_terminal_after_s`` before ``now``: at most ``forget_per_call`` of them, in
        order of their ends (ties by task id). Runs before the call's events, so every
        task an instruction names still has its record when the call returns."""
        after = self.config.forget_terminal_after_s
        assert after is not None
        cutoff = now - after
        heap, budget = self._ending, self.config.forget_per_call
        while heap and heap[0][0] <= cutoff and budget > 0:
            _, task_id = heapq.heappop(heap)
            budget -= 1
            rec = self.tasks.get(task_id)
            if rec is not None and rec.state is not None and rec.state.terminal:
                self._forget(rec)

    def _forget(self, rec: TaskRecord) -> None:
        """Drop ended ``rec`` for its tombstone. Nothing else needs the record: a task
        still waiting has no ended upstream in ``waiting_on`` (a success is discarded
        from it, a failure or cancel cancels the dependents, see ``validate_state``), and
        every task attempt that holds resources is not terminal. Only the lists that name
        ``rec`` as a dependent of a task that has not ended (``rec`` was cancelled first)
        or of an upstream not submitted yet are cleaned, in O(their length)."""
        spec = rec.spec
        task_id = spec.task_id
        for dep in spec.depends_on:
            up = self.tasks.get(dep)
            if up is not None and task_id in up.dependents:
                up.dependents.remove(task_id)
            awaited = self.unknown_upstreams.get(dep)
            if awaited is not None and task_id in awaited[1]:
                awaited[1].remove(task_id)
                if not awaited[1]:
                    del self.unknown_upstreams[dep]  # nobody left to settle
        self.shadow_decided.pop(task_id, None)
        self.shadow_keys.pop(task_id, None)
        del self.tasks[task_id]
        assert rec.state is not None
        stone = Tombstone(rec.state, rec.attempt, spec.tenant)
        self.tombstones[task_id] = self._tombstone_pool.setdefault(stone, stone)

    # ================================================================== checks
    def validate_state(self) -> None:
        """Check the core's invariants (for tests; O(tasks + nodes))."""
        c = self.cluster
        n = c.size
        cpu = c.cpu_cap[:n].copy()
        mem = c.mem_cap[:n].copy()
        gpu = np.where(c.gpu_free[:n] >= 0, GPU_MILLI, -1)
        for row, ids in self.on_row.items():
            for tid in ids:
                rec = self.tasks[tid]
                assert rec.state in statemachine.HOLDS_RESOURCES, (tid, rec.state)
                assert rec.row == row, (tid, rec.row, row)
                cpu[row] -= rec.spec.cpu_milli
                mem[row] -= rec.spec.memory_mib
                per = rec.spec.gpu_milli if rec.spec.is_gpu_share else GPU_MILLI
                for g in rec.gpu_indices:
                    gpu[row, g] -= per
        alive = c.alive[:n]
        assert (cpu[alive] == c.cpu_free[:n][alive]).all(), "cpu accounting drifted"
        whole = (c.gpu_free[:n] == GPU_MILLI).sum(axis=1)
        assert (whole[alive] == c.whole_free[:n][alive]).all(), "whole-GPU index drifted"
        assert (c.gpu_free[:n].max(axis=1)[alive] == c.share_free[:n][alive]).all()
        total = np.where(c.gpu_free[:n] > 0, c.gpu_free[:n], 0).sum(axis=1)
        assert (total[alive] == c.gpu_free_milli[:n][alive]).all(), "free-GPU total drifted"
        assert (mem[alive] == c.mem_free[:n][alive]).all(), "memory accounting drifted"
        assert (gpu[alive] == c.gpu_free[:n][alive]).all(), "gpu accounting drifted"
        assert (c.cpu_free[:n] >= 0).all()
        assert (c.mem_free[:n] >= 0).all()
        assert (c.gpu_free[:n] >= -1).all()
        queued = {t for t, r in self.tasks.items() if r.state is S.QUEUED}
        ready = set(self.queue.task_ids())
        assert not ready & set(self.retry_wait), "a task is both ready and in retry backoff"
        assert queued == ready | set(self.retry_wait), "queue and task states disagree"
        waiting: dict[str, int] = {}
        for rec in self.tasks.values():
            if rec.state in WAITING:
                waiting[rec.spec.tenant] = waiting.get(rec.spec.tenant, 0) + 1
        assert waiting == self.waiting_by_tenant, "waiting-per-tenant counts drifted"
        for tid, rec in self.tasks.items():
            if rec.state in statemachine.HOLDS_RESOURCES:
                assert rec.row >= 0, tid
                assert tid in self.on_row.get(rec.row, ()), tid
            else:
                assert rec.row < 0, tid
            if rec.state in (S.QUEUED, S.ASSIGNED, S.RUNNING, S.SUCCEEDED):
                for dep in rec.spec.depends_on:
                    assert self.state_of(dep) is S.SUCCEEDED, (tid, dep)
            if rec.state is not None and not rec.state.terminal:
                # What a task that has not ended names must stay a record (see _forget).
                for dep in rec.waiting_on:
                    up = self.tasks.get(dep)
                    if up is None:
                        assert tid in self.unknown_upstreams[dep][1], (tid, dep)
                    else:
                        assert up.state is not None, (tid, dep)
                        assert not up.state.terminal, (tid, dep)
                for child in rec.dependents:
                    assert child in self.tasks, (tid, child)
        for dep, (_, awaiting) in self.unknown_upstreams.items():
            assert dep not in self.tasks, dep
            assert dep not in self.tombstones, dep
            assert all(t in self.tasks for t in awaiting), dep
        assert all(t in self.tasks for t in self.shadow_decided), "shadow of a forgotten task"
        self._validate_compaction()

    def _validate_compaction(self) -> None:
        """Tombstones: terminal, never beside a record, shared by value; every terminal
        record is scheduled for compaction (when compaction is on)."""
        assert not self.tasks.keys() & self.tombstones.keys(), "a task is both record and tombstone"
        for tid, stone in self.tombstones.items():
            assert stone.state.terminal, (tid, stone)
            assert stone.attempt >= 0, (tid, stone)
            assert self._tombstone_pool[stone] is stone, (tid, stone)
        assert self.config.forget_terminal_after_s is not None or not self._ending
        scheduled = {tid for _, tid in self._ending}
        for tid, rec in self.tasks.items():
            if self.config.forget_terminal_after_s is not None and rec.state is not None:
                assert not rec.state.terminal or tid in scheduled, f"{tid} never compacted"
