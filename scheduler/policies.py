"""Policies: a queue order, a list of scorers and a few mechanism switches, by name.

================== ===================================================================
``fifo``           strict first-in first-out: the head blocks the queue; first fitting node
``random``         FIFO order, skip what does not fit, a random fitting node (seeded)
``round-robin``    FIFO order, skip what does not fit, the next fitting node in turn
``least-loaded``   FIFO order, skip, the node with most free capacity left (spread)
``best-fit``       FIFO order, skip, the node with least free capacity left (Kubernetes'
                   MostAllocated packing)
``dask-like``      FIFO order, skip, the node with least predicted work per slot, runtimes
                   from Dask's per-type ``0.5*new + 0.5*old`` average
``forecast``       ours: aged shortest-predicted-first with priority classes, deadline slack,
                   tenant fair share (DRF), heterogeneity-aware placement by predicted
                   completion (waits for faster hardware when it pays), EASY backfilling
                   with reservations for blocked jobs, FGD packing for GPU shares,
                   checkpoint-restart preemption and migration to faster hardware
                   (``migrate_factor``), a soft penalty for nodes likely to fail
                   (``risk_weight``) and bounded deferral of low-priority work ahead of
                   predicted peaks of GPU demand (``defer_low_priority``)
``forecast-river`` ``forecast`` with the learned forecaster ``river-linear``
                   (:mod:`.learned`: River's Bayesian linear regression on log runtime)
``oracle``         ``forecast`` with the true runtimes (simulation only): the limit
================== ===================================================================
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from .plugins import (
    AgedShortestFirst,
    FirstFit,
    LeastAllocated,
    LeastFragmentation,
    LeastOccupancy,
    MostAllocated,
    PredictedCompletion,
    PriorityFifo,
    QueueSort,
    RandomScore,
    RoundRobin,
    Scorer,
)

Backfill = Literal["none", "greedy", "reserve"]


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """Tunables of the mechanism (the ``forecast`` family uses all of them)."""

    #: Aged shortest-first: seconds of waiting worth one second of predicted runtime.
    #: Larger favours short jobs (lower mean JCT); smaller ages faster (lower tail). 100
    #: was best on the Gavel/Philly traces at 4:4:4 GPUs (docs/policies.md).
    sjf_weight: float = 100.0
    #: Tasks examined per scheduling cycle (like Slurm's bf_max_job_test).
    max_scan: int = 128
    #: Blocked tasks per cycle that get a reservation (EASY backfilling uses 1 per class).
    max_reservations: int = 4
    #: Wait for faster hardware only if it finishes at least this much sooner (fraction).
    wait_margin: float = 0.1
    #: Deadline tasks whose latest start is within this horizon go before everything else.
    urgency_horizon_s: float = 3600.0
    #: Preempt a victim only if its remaining time exceeds the newcomer's runtime times this.
    preempt_factor: float = 2.0
    #: A victim must have run this long in its current attempt (no thrashing).
    preempt_min_run_s: float = 300.0
    #: A task is preempted at most this many times.
    max_preemptions: int = 2
    #: Seconds a restarted attempt spends restoring its checkpoint (assumed by the policy).
    restart_overhead_s: float = 30.0
    #: Tenant fair share: a tenant holding the whole cluster is pushed back this long.
    fair_share_s: float = 86400.0
    #: Re-key a type's queued tasks when learning moved its prediction by this fraction.
    rekey_threshold: float = 0.2
    #: Queued tasks re-keyed per call after learning moved their predictions.
    rekey_budget: int = 8
    #: Blocked tasks per cycle that may trigger preemption.
    max_preemption_checks: int = 4
    #: Migration (checkpoint-restart onto a faster class with free room while nothing is
    #: queued): only when the predicted remaining time where the attempt runs exceeds this
    #: times its remaining time on the faster class plus ``restart_overhead_s``. 0 disables.
    #: 3 did a little better than 2 on the Gavel traces (docs/policies.md, "Migration").
    migrate_factor: float = 3.0
    #: A task is migrated at most this many times.
    max_migrations: int = 2
    # --- node failure risk and load deferral (load-aware policies: the forecast family)
    #: Soft penalty of node failure risk: predicted completion on a node is inflated by
    #: ``1 + risk_weight * excess risk`` (its risk above the fleet prior). 0 disables.
    risk_weight: float = 1.0
    #: Defer low-priority tasks (below ``normal``) ahead of a predicted peak of GPU
    #: demand on a hardware class (0 or 1 in a live update).
    defer_low_priority: bool = True
    #: A task is deferred for at most this long in all (then placed normally).
    defer_max_s: float = 1800.0
    #: Bucket of the GPU demand series the load forecasters learn, in seconds.
    load_bucket_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    version: str
    queue_sort: QueueSort
    scorers: tuple[Scorer, ...]
    backfill: Backfill
    hardware_aware: bool = False
    preemption: bool = False
    fair_share: bool = False
    deadline_aware: bool = False
    #: Uses node failure risk (``risk_weight``) and load deferral (``defer_low_priority``).
    load_aware: bool = False
    #: Which built-in forecaster the policy uses by default.
    forecaster: Literal["running-mean", "dask-like", "oracle", "river-linear"] = "running-mean"
    params: PolicyParams = field(default_factory=PolicyParams)


def _baseline(name: str, scorer: Scorer, forecaster: str = "running-mean") -> Policy:
    return Policy(
        name=name,
        version=f"{name}/1",
        queue_sort=PriorityFifo(),
        scorers=(scorer,),
        backfill="greedy",
        forecaster=forecaster,  # type: ignore[arg-type]
    )


def _forecast(name: str = "forecast", forecaster: str = "running-mean") -> Policy:
    return Policy(
        name=name,
        version=f"{name}/1",
        queue_sort=AgedShortestFirst(),
        scorers=(PredictedCompletion(), LeastFragmentation(), MostAllocated()),
        backfill="reserve",
        hardware_aware=True,
        preemption=True,
        fair_share=True,
        deadline_aware=True,
        load_aware=True,
        forecaster=forecaster,  # type: ignore[arg-type]
    )


_REGISTRY: dict[str, Policy] = {
    "fifo": Policy(
        name="fifo",
        version="fifo/1",
        queue_sort=PriorityFifo(),
        scorers=(FirstFit(),),
        backfill="none",
    ),
    "random": _baseline("random", RandomScore()),
    "round-robin": _baseline("round-robin", RoundRobin()),
    "least-loaded": _baseline("least-loaded", LeastAllocated()),
    "best-fit": _baseline("best-fit", MostAllocated()),
    "dask-like": _baseline("dask-like", LeastOccupancy(), forecaster="dask-like"),
    "forecast": _forecast(),
    "forecast-river": _forecast("forecast-river", forecaster="river-linear"),
    "oracle": _forecast("oracle", forecaster="oracle"),
}

POLICY_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_policy(name: str, **params: Any) -> Policy:
    """The policy called ``name``, with ``params`` overriding :class:`PolicyParams`."""
    try:
        policy = _REGISTRY[name]
    except KeyError:
        known = ", ".join(POLICY_NAMES)
        raise ValueError(f"unknown policy {name!r}; known policies: {known}") from None
    if params:
        policy = replace(policy, params=replace(policy.params, **params))
    return policy


# ---------------------------------------------------------------------- live updates
#: Smallest accepted value of each parameter in a live update (all must be finite).
PARAM_MINIMUM: dict[str, float] = {f.name: 0.0 for f in fields(PolicyParams)} | {
    "max_scan": 1,
    "load_bucket_s": 60.0,
}
#: Largest accepted value, where there is one.
PARAM_MAXIMUM: dict[str, float] = {"wait_margin": 1.0, "defer_low_priority": 1}
#: Policies that only make sense with a forecaster the live system does not have.
SIMULATION_ONLY = {"oracle": "needs the true runtimes of every job, so exists only in simulation"}
#: A policy version longer than this names its parameters by a digest instead.
_MAX_READABLE_VERSION = 128

_DEFAULTS = PolicyParams()


def validated_params(parameters: Mapping[str, object]) -> dict[str, int | float]:
    """``parameters`` checked against :class:`PolicyParams`: known names, numbers (not
    booleans or strings), finite, within :data:`PARAM_MINIMUM`/:data:`PARAM_MAXIMUM`;
    integer parameters accept integral floats (``64.0``). Raises ``ValueError`` naming the
    parameter and what is wrong with it."""
    known = {f.name for f in fields(PolicyParams)}
    out: dict[str, int | float] = {}
    for name, value in sorted(parameters.items()):
        if name not in known:
            raise ValueError(
                f"unknown policy parameter {name!r}; known parameters: {', '.join(sorted(known))}"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(
                f"policy parameter {name!r} must be a number, got {type(value).__name__} {value!r}"
            )
        if not math.isfinite(value):
            raise ValueError(f"policy parameter {name!r} must be finite, got {value}")
        if isinstance(getattr(_DEFAULTS, name), int):
            if not float(value).is_integer():
                raise ValueError(f"policy parameter {name!r} must be an integer, got {value}")
            value = int(value)
        else:
            value = float(value)
        low, high = PARAM_MINIMUM[name], PARAM_MAXIMUM.get(name, math.inf)
        if not low <= value <= high:
            bound = f">= {low:g}" if high == math.inf else f"in {low:g}..{high:g}"
            raise ValueError(f"policy parameter {name!r} must be {bound}, got {value}")
        out[name] = value
    return out


def changed_params(params: PolicyParams) -> tuple[tuple[str, float], ...]:
    """The parameters of ``params`` that differ from the defaults, as sorted pairs."""
    return tuple(
        (f.name, getattr(params, f.name))
        for f in sorted(fields(PolicyParams), key=lambda f: f.name)
        if getattr(params, f.name) != getattr(_DEFAULTS, f.name)
    )


def params_version(base_version: str, params: PolicyParams) -> str:
    """The version a policy carries with ``params``: ``base_version`` when they are the
    defaults, else ``base_version+name=value,...`` (sorted, only the changed ones), or
    ``base_version+p<12 hex digits>`` (a digest of that list) when that would be longer
    than 128 characters. Deterministic, so a replay makes the same decisions records."""
    changed = changed_params(params)
    if not changed:
        return base_version
    listed = ",".join(f"{name}={value:g}" for name, value in changed)
    readable = f"{base_version}+{listed}"
    if len(readable) <= _MAX_READABLE_VERSION:
        return readable
    return f"{base_version}+p{hashlib.sha256(listed.encode()).hexdigest()[:12]}"


def policy_for_update(
    name: str, parameters: Mapping[str, object], *, allow_simulation_only: bool = False
) -> Policy:
    """The built-in policy ``name`` with ``parameters`` overriding its defaults, versioned
    by :func:`params_version` (a live policy update). Raises ``ValueError`` for an unknown
    policy, a simulation-only one (unless allowed), or a bad parameter (see
    :func:`validated_params`)."""
    if name in SIMULATION_ONLY and not allow_simulation_only:
        raise ValueError(f"policy {name!r} {SIMULATION_ONLY[name]}")
    policy = get_policy(name, **validated_params(parameters))
    return replace(policy, version=params_version(_REGISTRY[name].version, policy.params))


# ---------------------------------------------------------------------- A/B splits
def split_fraction(task_id: str) -> float:
    """A stable number in [0, 1) for ``task_id``: the first 8 bytes of its SHA-256 over
    2**64. The same on every machine, process and Python version (unlike ``hash``), so a
    task stays in its arm of an A/B split across restarts and replays, and raising the
    ratio only moves tasks into the candidate arm, never out of it."""
    digest = hashlib.sha256(task_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
