"""Compaction of ended tasks (``CoreConfig.forget_terminal_after_s``): the record of a task
that ended long enough ago becomes a tombstone, and the core answers every later event
about that task exactly as it did with the record (duplicates, dependents, stale attempt
events, heartbeats, cancels, ``state_of``).

Most tests drive a compacting core and a twin that keeps every record with the same
events and require the same instructions; ``drive`` checks ``validate_state`` (which
covers the tombstones) after every call.
"""

from __future__ import annotations

import copyreg
import io
import pickle
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsched.scheduler.core import CoreConfig, SchedulerCore, Tombstone
from streamsched.scheduler.events import (
    CancelTask,
    Event,
    NodeUp,
    TaskLost,
    TaskSubmitted,
    UpdatePolicy,
)
from streamsched.scheduler.forecasting import RunningMeanForecaster
from streamsched.scheduler.instructions import (
    Assign,
    CancelRefused,
    Instruction,
    ShadowAssign,
    StaleEvent,
    StopAttempt,
)
from streamsched.scheduler.model import TaskSpec, TaskState
from streamsched.scheduler.policies import get_policy
from streamsched.scheduler.simulator import SimConfig, Simulator
from streamsched.testing import (
    assigns,
    completed,
    drive,
    failed,
    node,
    of_type,
    preempted,
    progress,
    started,
    submitted,
    task,
    tick,
    transitions,
    up,
)
from streamsched.traces import load_trace, parse_cluster

S = TaskState
AFTER_S = 600.0
NODES = (node("cpu-0"), node("cpu-1"))


def new(after: float | None = AFTER_S, per_call: int = 500, **config: Any) -> SchedulerCore:
    """A fifo core on two CPU nodes (registered at time 0) that compacts after ``after``."""
    cfg = CoreConfig(forget_terminal_after_s=after, forget_per_call=per_call, **config)
    core = SchedulerCore(get_policy("fifo"), RunningMeanForecaster(), cfg)
    drive(core, [up(n) for n in NODES], now=0.0)
    return core


@dataclass
class Twins:
    """A compacting core and one that keeps every record, fed the same calls."""

    compacting: SchedulerCore
    keeping: SchedulerCore
    outputs: list[list[Instruction]] = field(default_factory=list)

    def step(self, events: Event | list[Event], now: float) -> list[Instruction]:
        out = drive(self.compacting, events, now)
        assert out == drive(self.keeping, events, now), now
        self.outputs.append(out)
        return out

    def run(self, spec: TaskSpec, now: float) -> Assign:
        """Submit ``spec``, start and complete its first attempt, all at ``now``."""
        (a,) = assigns(self.step(submitted(spec), now))
        self.step(started(a.task_id, a.attempt, a.node_id), now)
        self.step(completed(a.task_id, a.attempt), now)
        return a


def twins(**config: Any) -> Twins:
    return Twins(new(**config), new(after=None, **config))


# ---------------------------------------------------------------------- the tombstone
def test_a_record_stays_until_forget_after_then_becomes_a_tombstone() -> None:
    t = twins()
    t.run(task("t1", tenant="team-a"), now=10.0)
    core = t.compacting
    t.step(tick(609.0), 609.0)
    assert core.tasks["t1"].state is S.SUCCEEDED  # ended 599 s ago: kept
    t.step(tick(610.0), 610.0)
    assert "t1" not in core.tasks
    assert core.tombstones == {"t1": Tombstone(S.SUCCEEDED, 1, "team-a")}
    assert core.state_of("t1") is S.SUCCEEDED
    assert core.last_attempt("t1") == 1
    assert "t1" in t.keeping.tasks  # compaction off: kept for ever
    assert not t.keeping.tombstones


def test_equal_tombstones_are_one_shared_object() -> None:
    core = new(after=0.0)
    for tid in ("a", "b"):
        (a,) = assigns(drive(core, submitted(task(tid)), 1.0))
        drive(core, completed(tid, a.attempt), 1.0)
    drive(core, tick(2.0), 2.0)
    assert core.tombstones["a"] == core.tombstones["b"]
    assert core.tombstones["a"] is core.tombstones["b"]


def test_tasks_that_end_in_a_call_keep_their_records_through_it() -> None:
    """Compaction runs before a call's events: what a call's instructions name still has
    its record when the call returns, even with ``forget_terminal_after_s=0``."""
    core = new(after=0.0)
    (a,) = assigns(drive(core, submitted(task("t1")), 1.0))
    out = drive(core, completed("t1", a.attempt), 1.0)
    assert [x.new for x in transitions(out, "t1")] == [S.SUCCEEDED]
    assert core.tasks["t1"].state is S.SUCCEEDED
    drive(core, tick(1.0), 1.0)
    assert "t1" not in core.tasks
    assert core.state_of("t1") is S.SUCCEEDED


# ---------------------------------------------------------------------- duplicates
def test_a_duplicate_submission_of_a_forgotten_task_is_stale_and_never_runs() -> None:
    t = twins()
    spec = task("t1")
    t.run(spec, now=1.0)
    t.step(tick(700.0), 700.0)
    assert "t1" in t.compacting.tombstones
    out = t.step(submitted(spec), 701.0)
    assert out == [StaleEvent("submit:t1", "t1", 0, 0, "duplicate submission")]
    again = TaskSubmitted("submit:t1:again", spec)  # a redelivery under another id
    assert of_type(t.step(again, 702.0), StaleEvent)[0].event == "duplicate submission"
    assert t.compacting.state_of("t1") is S.SUCCEEDED
    assert "t1" not in t.compacting.tasks


# ---------------------------------------------------------------------- dependents
def _end(t: Twins, spec: TaskSpec, outcome: S, now: float) -> None:
    """Bring ``spec`` to ``outcome`` at ``now``."""
    if outcome is S.CANCELLED:
        t.step(submitted(spec), now)
        t.step(CancelTask(f"cancel:{spec.task_id}", spec.task_id), now)
        return
    (a,) = assigns(t.step(submitted(spec), now))
    if outcome is S.SUCCEEDED:
        t.step(completed(a.task_id, a.attempt), now)
    else:
        t.step(failed(a.task_id, a.attempt, retryable=False), now)


@pytest.mark.parametrize("grace", [None, 60.0], ids=["unknown-rejected", "unknown-waits"])
@pytest.mark.parametrize(
    ("outcome", "child_states"),
    [
        (S.SUCCEEDED, [S.SUBMITTED, S.QUEUED, S.ASSIGNED]),
        (S.FAILED, [S.SUBMITTED, S.CANCELLED]),
        (S.CANCELLED, [S.SUBMITTED, S.CANCELLED]),
    ],
)
def test_a_dependent_of_a_forgotten_upstream_sees_its_final_state(
    grace: float | None, outcome: S, child_states: list[S]
) -> None:
    t = twins(unknown_upstream_grace_s=grace)
    _end(t, task("up"), outcome, now=1.0)
    t.step(tick(700.0), 700.0)
    assert t.compacting.state_of("up") is outcome
    assert "up" not in t.compacting.tasks
    out = t.step(submitted(task("child", depends_on=["up"])), 701.0)
    assert [x.new for x in transitions(out, "child")] == child_states
    if outcome is not S.SUCCEEDED:
        assert transitions(out, "child")[-1].reason == f"upstream up {outcome}"
    assert not t.compacting.unknown_upstreams  # never taken for an unknown upstream


def test_a_cancelled_dependent_forgotten_before_its_upstream_ends() -> None:
    """The upstream's list of dependents loses the forgotten one; its success later
    releases the others."""
    t = twins()
    (a,) = assigns(t.step(submitted(task("up")), 1.0))
    t.step(submitted(task("gone", depends_on=["up"])), 1.0)
    t.step(submitted(task("kept", depends_on=["up"])), 1.0)
    t.step(CancelTask("cancel:gone", "gone"), 2.0)
    t.step(tick(700.0), 700.0)
    assert t.compacting.tasks["up"].dependents == ["kept"]
    assert t.compacting.state_of("gone") is S.CANCELLED
    out = t.step(completed("up", a.attempt), 800.0)
    assert [x.new for x in transitions(out, "kept")] == [S.QUEUED, S.ASSIGNED]
    assert not transitions(out, "gone")


def test_a_dependent_forgotten_while_it_awaited_an_unknown_upstream() -> None:
    """A dependent that waited for an upstream not submitted yet, then was cancelled and
    forgotten, leaves that upstream's waiting list; the upstream later runs normally."""
    t = twins(unknown_upstream_grace_s=5000.0)
    t.step(submitted(task("child", depends_on=["late", "other"])), 1.0)
    assert set(t.compacting.unknown_upstreams) == {"late", "other"}
    _end(t, task("other"), S.FAILED, now=2.0)  # cancels child
    t.step(tick(700.0), 700.0)
    assert t.compacting.state_of("child") is S.CANCELLED
    assert "late" not in t.compacting.unknown_upstreams  # nobody waits for it any more
    out = t.step(submitted(task("late")), 800.0)
    assert [x.new for x in transitions(out, "late")] == [S.SUBMITTED, S.QUEUED, S.ASSIGNED]


# ---------------------------------------------------------------------- stale attempts
def test_attempt_events_of_a_forgotten_task_are_stale() -> None:
    t = twins()
    a = t.run(task("t1"), now=1.0)
    t.step(tick(700.0), 700.0)
    late: list[tuple[Event, str]] = [
        (completed("t1", a.attempt), "completed"),
        (failed("t1", a.attempt), "failed"),
        (TaskLost("lost:t1:1", "t1", a.attempt, "vanished"), "lost"),
        (started("t1", a.attempt, a.node_id), "started"),
        (progress("t1", a.attempt, 0.5), "progress"),
        (preempted("t1", a.attempt, 0.5), "preempted"),
    ]
    for i, (ev, kind) in enumerate(late):
        out = t.step(ev, 701.0 + i)
        assert out == [StaleEvent(ev.stimulus_id, "t1", a.attempt, a.attempt, kind)]
    out = t.step(completed("t1", 7), 710.0)  # an attempt that never was
    assert out == [StaleEvent("done:t1:7", "t1", 7, a.attempt, "completed")]
    assert t.compacting.state_of("t1") is S.SUCCEEDED


def test_a_heartbeat_listing_an_attempt_of_a_forgotten_task_stops_it() -> None:
    t = twins()
    a = t.run(task("t1"), now=1.0)
    t.step(tick(700.0), 700.0)
    spec = NODES[0] if a.node_id == NODES[0].node_id else NODES[1]
    listing = frozenset({("t1", a.attempt)})
    out = t.step(NodeUp("hb:1", spec, listing), 701.0)
    why = "orphan attempt: task t1 already succeeded"
    assert of_type(out, StopAttempt) == [StopAttempt("hb:1", "t1", a.attempt, spec.node_id, why)]
    assert not of_type(t.step(NodeUp("hb:2", spec, listing), 702.0), StopAttempt)  # asked
    assert of_type(t.step(NodeUp("hb:3", spec, listing), 740.0), StopAttempt)  # still runs


# ---------------------------------------------------------------------- cancels
def test_a_cancel_of_a_forgotten_task_is_answered_as_for_an_ended_one() -> None:
    t = twins(cancel_operators=("ops",))
    a = t.run(task("t1", tenant="team-a"), now=1.0)
    t.step(tick(700.0), 700.0)
    assert t.compacting.tombstones["t1"].tenant == "team-a"
    owner = CancelTask("c1", "t1", "no longer needed", requested_by="team-a")
    assert t.step(owner, 701.0) == [StaleEvent("c1", "t1", a.attempt, a.attempt, "cancel")]
    operator = CancelTask("c2", "t1", "cleanup", requested_by="ops")
    assert t.step(operator, 702.0) == [StaleEvent("c2", "t1", a.attempt, a.attempt, "cancel")]
    stranger = CancelTask("c3", "t1", "mine now", requested_by="team-b")
    (refusal,) = t.step(stranger, 703.0)
    assert isinstance(refusal, CancelRefused)
    assert (refusal.task_id, refusal.attempt, refusal.requested_by) == ("t1", 1, "team-b")
    assert refusal.outcome.startswith("refused: 'team-b' does not own this task")
    unchecked = CancelTask("c4", "t1")
    assert t.step(unchecked, 704.0) == [StaleEvent("c4", "t1", a.attempt, a.attempt, "cancel")]


# ---------------------------------------------------------------------- bounded work
def test_compaction_is_bounded_per_call_and_goes_in_order_of_ends() -> None:
    core = new(per_call=2)
    ends = {"e": 12.0, "d": 12.0, "c": 11.0, "b": 10.0, "a": 10.0}
    for tid, at in ends.items():
        (a,) = assigns(drive(core, submitted(task(tid)), at))
        drive(core, completed(tid, a.attempt), at)
    for now, expected in [(1000.0, "ab"), (1001.0, "abcd"), (1002.0, "abcde")]:
        drive(core, tick(now), now)
        assert list(core.tombstones) == list(expected)
        assert set(core.tasks) == set(ends) - set(expected)


def test_a_record_is_forgotten_only_once_it_is_old_enough_whatever_the_backlog() -> None:
    core = new(per_call=1)
    for tid, at in (("old", 1.0), ("new", 500.0)):
        (a,) = assigns(drive(core, submitted(task(tid)), at))
        drive(core, completed(tid, a.attempt), at)
    for now in (700.0, 701.0, 702.0):
        drive(core, tick(now), now)
    assert list(core.tombstones) == ["old"]  # "new" ended 202 s ago
    drive(core, tick(1100.0), 1100.0)
    assert list(core.tombstones) == ["old", "new"]


# ---------------------------------------------------------------------- shadow state
def test_shadow_decisions_of_forgotten_tasks_are_dropped() -> None:
    """A task a shadow decided for, then cancelled while nothing else was queued, leaves
    ``shadow_decided`` when forgotten (the next shadow cycle would look it up)."""
    t = twins()
    t.step(UpdatePolicy("pol:shadow", "fifo", shadow_policy="best-fit"), 1.0)
    t.step(submitted(task("huge", cpu_milli=40_000)), 2.0)  # blocks strict fifo
    out = t.step(submitted(task("small")), 3.0)
    assert [x.task_id for x in of_type(out, ShadowAssign)] == ["small"]
    assert not assigns(out)
    t.step([CancelTask("c:huge", "huge"), CancelTask("c:small", "small")], 4.0)
    assert "small" in t.compacting.shadow_decided  # no shadow cycle since: kept
    t.step(tick(700.0), 700.0)
    assert "small" not in t.compacting.shadow_decided
    out = t.step(submitted(task("next")), 701.0)
    assert [x.task_id for x in assigns(out)] == ["next"]


# ---------------------------------------------------------------------- snapshots
def _proxy(mapping: dict[str, str]) -> MappingProxyType[str, str]:
    return MappingProxyType(mapping)


def _dump(core: SchedulerCore) -> bytes:
    """The core's state as the placement agent snapshots it (minus ``_handlers``)."""
    state = {k: v for k, v in vars(core).items() if k != "_handlers"}
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = {
        **copyreg.dispatch_table,
        MappingProxyType: lambda m: (_proxy, (dict(m),)),
    }
    pickler.dump(state)
    return buffer.getvalue()


def test_a_core_restored_from_a_snapshot_compacts_and_answers_the_same() -> None:
    t = twins(per_call=1)
    for i in range(3):
        t.run(task(f"t{i}"), now=1.0 + i)
    t.step(tick(650.0), 650.0)  # t0 forgotten; t1, t2 scheduled
    restored = SchedulerCore(get_policy("fifo"), RunningMeanForecaster(), t.compacting.config)
    for name, value in pickle.loads(_dump(t.compacting)).items():
        setattr(restored, name, value)
    assert list(restored.tombstones) == ["t0"]
    later: list[tuple[Event, float]] = [
        (tick(651.0), 651.0),
        (submitted(task("t0")), 652.0),
        (submitted(task("t1")), 653.0),
        (submitted(task("t3", depends_on=["t0", "t1", "t2"])), 654.0),
    ]
    for ev, now in later:
        assert drive(restored, ev, now) == t.step(ev, now)
    assert list(restored.tombstones) == list(t.compacting.tombstones) == ["t0", "t1", "t2"]
    assert restored.tombstones["t0"] is restored.tombstones["t2"]  # sharing survives


# ---------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "bad",
    [
        {"forget_terminal_after_s": -1.0},
        {"forget_terminal_after_s": float("inf")},
        {"forget_per_call": 0},
    ],
)
def test_bad_compaction_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        CoreConfig(**bad)  # type: ignore[arg-type]


def test_the_simulator_keeps_records_and_compaction_would_change_no_figure() -> None:
    trace = load_trace("gavel:sample")
    nodes = parse_cluster("v100=4,p100=4,k80=4")
    policy = get_policy("forecast")  # preempts and migrates: the most paths
    plain = Simulator(trace, nodes, policy, config=SimConfig(seed=7))
    assert plain.core.config.forget_terminal_after_s is None
    compacting = Simulator(
        trace,
        nodes,
        policy,
        config=SimConfig(seed=7, core_overrides=(("forget_terminal_after_s", 0.0),)),
    )
    a, b = plain.run().to_dict(), compacting.run().to_dict()
    assert compacting.core.tombstones  # it did compact
    assert a == b


# ---------------------------------------------------------------------- property
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TENANTS = ("team-a", "team-b")
#: Who asks for a cancel: nobody checked, the two tenants, an operator.
REQUESTERS = (None, "team-a", "team-b", "ops")
Op = tuple[str, int, int, float]  # kind, index, seed, seconds to advance before it


@st.composite
def task_sets(draw: st.DrawFn) -> list[TaskSpec]:
    """Up to 8 tasks; each may depend on any other (a later one: an unknown upstream that
    arrives later, or a cycle)."""
    count = draw(st.integers(2, 8))
    out = []
    for i in range(count):
        others = [f"t{j}" for j in range(count) if j != i]
        deps = draw(st.lists(st.sampled_from(others), max_size=2, unique=True))
        out.append(
            task(
                f"t{i}",
                cpu_milli=draw(st.sampled_from([1000, 8000, 16000])),
                tenant=draw(st.sampled_from(TENANTS)),
                depends_on=deps if draw(st.integers(0, 2)) == 0 else (),
                max_retries=1,
            )
        )
    return out


KINDS = (
    *("submit", "submit", "dup", "start", "complete", "complete", "fail", "lost"),
    *("heartbeat", "cancel", "tick"),
)
OPS = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 30),
    st.integers(0, 255),
    st.sampled_from([0.0, 1.0, 300.0, 700.0]),
)


def event_for(op: Op, specs: list[TaskSpec], sent: list[TaskSpec], made: list[Assign]) -> Event:
    kind, i, seed, _ = op
    if kind == "submit" and len(sent) < len(specs):
        sent.append(specs[len(sent)])
        return submitted(sent[-1])
    if kind == "dup" and sent:
        return submitted(sent[i % len(sent)])
    if kind in ("start", "complete", "fail", "lost") and made:
        a = made[-1 - i % len(made)]  # recent ones mostly, stale ones too
        if kind == "start":
            return started(a.task_id, a.attempt, a.node_id)
        if kind == "complete":
            return completed(a.task_id, a.attempt)
        if kind == "fail":
            return failed(a.task_id, a.attempt, retryable=bool(seed & 1))
        return TaskLost(f"lost:{a.task_id}:{a.attempt}", a.task_id, a.attempt, "vanished")
    if kind == "heartbeat":
        spec = NODES[i % len(NODES)]
        mine = sorted({(a.task_id, a.attempt) for a in made if a.node_id == spec.node_id})
        listed = frozenset(x for k, x in enumerate(mine) if seed >> (k % 8) & 1)
        return NodeUp(f"hb:{spec.node_id}:{seed}", spec, listed)
    if kind == "cancel" and sent:
        tid = sent[i % len(sent)].task_id
        return CancelTask(f"cancel:{tid}:{seed}", tid, requested_by=REQUESTERS[seed % 4])
    return tick(float(i))


@SETTINGS
@given(specs=task_sets(), steps=st.lists(OPS, min_size=10, max_size=50))
def test_compaction_never_changes_an_answer(specs: list[TaskSpec], steps: list[Op]) -> None:
    """Whatever the events, a core that compacts (at once and one record per call, or
    after ``AFTER_S`` a few per call) answers exactly as one that keeps every record, and
    knows the same state of every task."""
    config: dict[str, Any] = {"unknown_upstream_grace_s": 1000.0, "cancel_operators": ("ops",)}
    keeping = new(after=None, **config)
    compacting = [new(after=0.0, per_call=1, **config), new(after=AFTER_S, per_call=3, **config)]
    sent: list[TaskSpec] = []
    made: list[Assign] = []
    now = 0.0
    for op in steps:
        ev = event_for(op, specs, sent, made)
        now += op[3]
        out = drive(keeping, ev, now)
        for core in compacting:
            assert drive(core, ev, now) == out, (ev, now)
        made += assigns(out)
    for spec in specs:
        states = {core.state_of(spec.task_id) for core in compacting}
        assert states == {keeping.state_of(spec.task_id)}, spec.task_id
