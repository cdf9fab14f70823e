"""Node failure risk, learned online from heartbeat gaps and attempt outcomes.

The model: a Beta-Bernoulli estimate per node of "an attempt placed here goes wrong",
with exponentially forgotten evidence and a learned fleet prior.

- **Evidence.** Each observation adds a weight to a node's *bad* or *good* count:
  an attempt that ``succeeded`` adds ``success_weight`` good; a ``failed`` attempt adds
  ``failed_weight`` bad (a failure is only plausibly the node's: the core reports only
  retryable failures here, see ``SchedulerCore``); a ``lost`` attempt adds
  ``lost_weight`` bad; a lost node adds ``node_lost_weight`` bad; a late heartbeat (its
  gap more than ``gap_tolerance`` times the node's usual interval) adds up to
  ``gap_weight`` bad, growing with the gap (``min(1, (ratio - tol) / tol)`` of it).
  On-time heartbeats add nothing: they are frequent, and counting them as good evidence
  would drown the few attempts that went wrong.
- **Forgetting.** Counts decay with a half-life of ``halflife_s`` seconds of core time, so
  a node that stops misbehaving drifts back to the prior ("time since the last loss" is
  this decay).
- **Fleet prior.** An unknown node, and every node before its own evidence dominates,
  takes the fleet's pooled (also decayed) bad/good counts, shrunk towards ``base_rate``
  with ``fleet_strength`` pseudo-observations; a node's estimate is shrunk towards that
  fleet prior with ``node_strength`` pseudo-observations:

      fleet = (fleet_strength * base_rate + BAD) / (fleet_strength + BAD + GOOD)
      risk  = (node_strength * fleet + bad) / (node_strength + bad + good)

Why Beta and not a River logistic regression: the events are few and per node (a handful
of losses a week), the features are additive evidence anyway, and a conjugate estimate is
exact, deterministic, needs no training schedule, and says "unknown" honestly.

Contracts: pure (no I/O, no clock: every time is core seconds passed in), deterministic,
picklable. ``risk`` is in [0, 1]. An observation older than the node's latest one is
applied without decaying what came later (time never runs backwards in the model). A
repeated heartbeat with the same time adds nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

__all__ = ["NodeRiskModel", "RiskParams"]

#: Attempt outcomes :meth:`NodeRiskModel.observe_attempt_end` accepts.
OUTCOMES = ("succeeded", "failed", "lost")


@dataclass(frozen=True, slots=True)
class RiskParams:
    """Settings of a :class:`NodeRiskModel` (see the module docstring)."""

    base_rate: float = 0.01
    fleet_strength: float = 20.0
    node_strength: float = 4.0
    halflife_s: float = 6 * 3600.0
    success_weight: float = 1.0
    failed_weight: float = 0.5
    lost_weight: float = 1.0
    node_lost_weight: float = 2.0
    gap_weight: float = 0.5
    gap_tolerance: float = 3.0
    #: Expected heartbeat interval; None learns it per node (a mean of on-time gaps).
    heartbeat_interval_s: float | None = None

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if not 0.0 <= self.base_rate <= 1.0:
            raise ValueError(f"node risk: base_rate must be in [0, 1], got {self.base_rate}")
        for name in ("fleet_strength", "node_strength", "halflife_s", "gap_tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"node risk: {name} must be a finite number > 0, got {value}")
        for name in ("success_weight", "failed_weight", "lost_weight", "node_lost_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"node risk: {name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.gap_weight) and self.gap_weight >= 0):
            raise ValueError(f"node risk: gap_weight must be >= 0, got {self.gap_weight}")
        interval = self.heartbeat_interval_s
        if interval is not None and not (math.isfinite(interval) and interval > 0):
            raise ValueError(f"node risk: heartbeat_interval_s must be > 0, got {interval}")


@dataclass(slots=True)
class _Counts:
    """Decayed bad/good evidence as of time ``at``."""

    bad: float = 0.0
    good: float = 0.0
    at: float = -math.inf

    def decayed(self, now: float, halflife: float) -> tuple[float, float]:
        if now <= self.at or not math.isfinite(self.at):
            return self.bad, self.good
        f = 0.5 ** ((now - self.at) / halflife)
        return self.bad * f, self.good * f

    def add(self, bad: float, good: float, now: float, halflife: float) -> None:
        if now > self.at:
            self.bad, self.good = self.decayed(now, halflife)
            self.at = now
        self.bad += bad
        self.good += good


@dataclass(slots=True)
class _Node:
    counts: _Counts = field(default_factory=_Counts)
    last_beat: float | None = None
    interval: float | None = None
    beats: int = 0


class NodeRiskModel:
    """Online node failure risk, learned from heartbeat gaps and attempt outcomes."""

    name = "node-risk"

    def __init__(self, params: RiskParams | None = None) -> None:
        self.params = params or RiskParams()
        self.params.check()
        self._nodes: dict[str, _Node] = {}
        self._fleet = _Counts()
        #: Nodes that ever had bad evidence (the only ones that can be riskier than the
        #: fleet).
        self._suspects: set[str] = set()

    # ------------------------------------------------------------------ observations
    def observe_heartbeat(self, node_id: str, at_s: float) -> None:
        """A heartbeat of ``node_id`` made at ``at_s``. A gap longer than
        ``gap_tolerance`` times the node's usual interval is evidence of trouble."""
        node = self._node(node_id)
        last = node.last_beat
        if last is not None and at_s <= last:
            return  # duplicate or reordered: nothing new
        node.last_beat = at_s
        if last is None:
            return
        gap = at_s - last
        p = self.params
        expected = p.heartbeat_interval_s or node.interval
        if expected is None:  # first gap: learn the interval from it
            node.interval, node.beats = gap, 1
            return
        ratio = gap / expected
        if ratio > p.gap_tolerance:
            severity = min(1.0, (ratio - p.gap_tolerance) / p.gap_tolerance)
            self._add(node_id, p.gap_weight * severity, 0.0, at_s)
        elif p.heartbeat_interval_s is None:
            node.beats = min(node.beats + 1, 100)
            assert node.interval is not None
            node.interval += (gap - node.interval) / node.beats

    def observe_attempt_end(self, node_id: str, outcome: str, at_s: float) -> None:
        """An attempt on ``node_id`` ended at ``at_s``: ``"succeeded"``, ``"failed"`` or
        ``"lost"``. Raises ValueError for another outcome."""
        p = self.params
        if outcome == "succeeded":
            self._add(node_id, 0.0, p.success_weight, at_s)
        elif outcome == "failed":
            self._add(node_id, p.failed_weight, 0.0, at_s)
        elif outcome == "lost":
            self._add(node_id, p.lost_weight, 0.0, at_s)
        else:
            raise ValueError(
                f"node risk: unknown attempt outcome {outcome!r} for node {node_id!r}; "
                f"expected one of {', '.join(OUTCOMES)}"
            )

    def observe_node_lost(self, node_id: str, at_s: float) -> None:
        """``node_id`` was lost (crash, heartbeat timeout) at ``at_s``."""
        self._add(node_id, self.params.node_lost_weight, 0.0, at_s)
        self._node(node_id).last_beat = None  # a returning node starts a new gap series

    # ------------------------------------------------------------------ answers
    def fleet_risk(self, now_s: float) -> float:
        """The prior risk of a node with no evidence of its own (an unknown node)."""
        p = self.params
        bad, good = self._fleet.decayed(now_s, p.halflife_s)
        return (p.fleet_strength * p.base_rate + bad) / (p.fleet_strength + bad + good)

    def risk(self, node_id: str, now_s: float) -> float:
        """Probability-like risk in [0, 1] that an attempt on ``node_id`` goes wrong."""
        return self._risk(self._nodes.get(node_id), self.fleet_risk(now_s), now_s)

    def risks(self, now_s: float) -> dict[str, float]:
        """The risk of every node observed so far, by node id (sorted)."""
        prior = self.fleet_risk(now_s)
        return {nid: self._risk(self._nodes[nid], prior, now_s) for nid in sorted(self._nodes)}

    def risky_nodes(self, now_s: float) -> dict[str, float]:
        """Nodes riskier than the fleet prior, with their excess risk (> 0), sorted by id.
        Only a node with bad evidence can be (good evidence only lowers risk), so this is
        O(nodes with bad evidence), not O(fleet)."""
        prior = self.fleet_risk(now_s)
        out: dict[str, float] = {}
        for nid in sorted(self._suspects):
            excess = self._risk(self._nodes[nid], prior, now_s) - prior
            if excess > 1e-12:
                out[nid] = excess
        return out

    def clone(self) -> NodeRiskModel:
        """An unfitted copy with the same settings."""
        return NodeRiskModel(replace(self.params))

    # ------------------------------------------------------------------ internals
    def _node(self, node_id: str) -> _Node:
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = _Node()
        return node

    def _add(self, node_id: str, bad: float, good: float, at_s: float) -> None:
        half = self.params.halflife_s
        if bad > 0:
            self._suspects.add(node_id)
        self._node(node_id).counts.add(bad, good, at_s, half)
        self._fleet.add(bad, good, at_s, half)

    def _risk(self, node: _Node | None, prior: float, now_s: float) -> float:
        if node is None:
            return prior
        s = self.params.node_strength
        bad, good = node.counts.decayed(now_s, self.params.halflife_s)
        return min(1.0, max(0.0, (s * prior + bad) / (s + bad + good)))
