"""Event semantics of the core: idempotence, fencing by attempt number, retries, node loss
and cancellation. Events in, instructions compared; ``validate_state`` after every step."""

from __future__ import annotations

import doctest

import pytest

import streamsched.testing
from streamsched.scheduler.core import SchedulerCore
from streamsched.scheduler.events import Event, TaskSubmitted
from streamsched.scheduler.instructions import (
    Assign,
    Instruction,
    Learned,
    Reject,
    StaleEvent,
    StopAttempt,
    TaskTransition,
)
from streamsched.scheduler.model import TaskState
from streamsched.testing import (
    assigns,
    cancel,
    completed,
    drive,
    failed,
    gpu_cluster,
    lost,
    new_core,
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

S = TaskState


def two_node_core(policy: str = "fifo") -> SchedulerCore:
    return new_core(policy, nodes=[node("n0", gpus=2), node("n1", gpus=2)])


def snapshot(core: SchedulerCore) -> tuple[object, ...]:
    """What an event must not change if it is a duplicate or stale."""
    c, n = core.cluster, core.cluster.size
    tasks = tuple(
        (tid, r.state, r.attempt, r.row, r.progress, r.retries, r.preemptions)
        for tid, r in sorted(core.tasks.items())
    )
    return (
        tasks,
        tuple(sorted(core.queue.task_ids())),
        c.cpu_free[:n].tolist(),
        c.mem_free[:n].tolist(),
        c.gpu_free[:n].tolist(),
        c.alive[:n].tolist(),
        core.decisions,
    )


def only_stale(out: list[Instruction]) -> list[StaleEvent]:
    """``out`` must hold nothing but StaleEvent records; returns them."""
    assert all(isinstance(i, StaleEvent) for i in out), out
    return of_type(out, StaleEvent)


def start_on(core: SchedulerCore, spec_task: str, now: float) -> Assign:
    """Submit a task, check it was assigned, deliver its start."""
    (a,) = assigns(drive(core, submitted(task(spec_task, gpus=1)), now))
    drive(core, started(a.task_id, a.attempt, a.node_id), now)
    return a


# ---------------------------------------------------------------------- submission
def test_submission_walks_submitted_queued_assigned() -> None:
    core = two_node_core()
    out = drive(core, submitted(task("t", gpus=1)), 1.0)
    assert [(t.old, t.new) for t in transitions(out)] == [
        (None, S.SUBMITTED),
        (S.SUBMITTED, S.QUEUED),
        (S.QUEUED, S.ASSIGNED),
    ]
    (a,) = assigns(out)
    assert (a.task_id, a.attempt, a.node_id, a.gpu_indices, a.resume_progress) == (
        "t",
        1,
        "n0",
        (0,),
        0.0,
    )
    assert a.stimulus_id == "submit:t"
    assert transitions(out)[-1].reason.startswith(a.decision.decision_id)


@pytest.mark.parametrize("same_spec", [True, False])
def test_duplicate_submission_is_stale_and_changes_nothing(same_spec: bool) -> None:
    core = two_node_core()
    drive(core, submitted(task("t", gpus=1)), 1.0)
    before = snapshot(core)
    again = task("t", gpus=1) if same_spec else task("t", "other", gpus=2, priority="critical")
    out = drive(core, TaskSubmitted("resend", again), 2.0)
    assert only_stale(out) == [StaleEvent("resend", "t", 0, 0, "duplicate submission")]
    assert snapshot(core) == before
    assert core.tasks["t"].spec == task("t", gpus=1)


def test_tick_with_nothing_to_do_returns_nothing() -> None:
    core = two_node_core()
    assert drive(core, tick(1.0), 1.0) == []
    assert drive(core, [], 2.0) == []


# ---------------------------------------------------------------------- fencing
def test_events_from_a_stale_attempt_are_recorded_and_ignored() -> None:
    core = two_node_core()
    first = start_on(core, "t", 1.0)
    assert first.node_id == "n0"
    out = drive(core, lost("n0"), 10.0)
    (second,) = assigns(out)
    assert (second.attempt, second.node_id) == (2, "n1")
    drive(core, started("t", 2, "n1"), 11.0)
    before = snapshot(core)
    stale_events: list[Event] = [
        started("t", 1, "n0"),
        progress("t", 1, 0.9),
        completed("t", 1, 50.0),
        failed("t", 1, "the dead node's executor says so"),
        preempted("t", 1, 0.5),
    ]
    for i, ev in enumerate(stale_events):
        (record,) = only_stale(drive(core, ev, 20.0 + i))
        assert (record.task_id, record.attempt, record.current_attempt) == ("t", 1, 2)
    assert snapshot(core) == before
    assert core.state_of("t") is S.RUNNING
    # The live attempt still decides the outcome.
    out = drive(core, completed("t", 2, 30.0), 40.0)
    assert [t.new for t in transitions(out)] == [S.SUCCEEDED]


def test_events_for_unknown_tasks_are_stale() -> None:
    core = two_node_core()
    for ev in (started("ghost", 1, "n0"), completed("ghost", 1), cancel("ghost")):
        (record,) = only_stale(drive(core, ev, 1.0))
        assert (record.task_id, record.current_attempt) == ("ghost", 0)


def test_a_task_completes_at_most_once() -> None:
    core = two_node_core()
    a = start_on(core, "t", 1.0)
    out = drive(core, completed("t", a.attempt, 100.0), 101.0)
    assert [t.new for t in transitions(out)] == [S.SUCCEEDED]
    assert len(of_type(out, Learned)) == 1
    before = snapshot(core)
    for now in (102.0, 103.0):
        (record,) = only_stale(drive(core, completed("t", a.attempt, 100.0), now))
        assert record.event == "completed"
        assert snapshot(core) == before
    # A late failure report of the same attempt cannot undo the success either.
    only_stale(drive(core, failed("t", a.attempt, "late"), 104.0))
    assert core.state_of("t") is S.SUCCEEDED


def test_completion_may_overtake_the_start_event() -> None:
    core = two_node_core()
    (a,) = assigns(drive(core, submitted(task("t", gpus=1)), 1.0))
    out = drive(core, completed("t", a.attempt, 5.0), 6.0)
    assert [(t.old, t.new) for t in transitions(out)] == [(S.ASSIGNED, S.SUCCEEDED)]
    (record,) = only_stale(drive(core, started("t", a.attempt, a.node_id), 7.0))
    assert record.event == "started"
    assert core.state_of("t") is S.SUCCEEDED


def test_duplicate_start_changes_nothing() -> None:
    core = two_node_core()
    a = start_on(core, "t", 1.0)
    before = snapshot(core)
    assert drive(core, started("t", a.attempt, a.node_id), 2.0) == []
    assert snapshot(core) == before


# ---------------------------------------------------------------------- node loss
def test_node_lost_requeues_its_attempts_with_new_attempt_numbers() -> None:
    core = new_core("fifo", nodes=[node("n0", gpus=2), node("n1", gpus=1)])
    out = drive(core, [submitted(task(f"t{i}", gpus=1)) for i in range(3)], 1.0)
    assert [(a.task_id, a.node_id) for a in assigns(out)] == [
        ("t0", "n0"),
        ("t1", "n0"),
        ("t2", "n1"),
    ]
    drive(core, [started("t0", 1, "n0"), progress("t0", 1, 0.25)], 2.0)  # t1 not yet started
    out = drive(core, lost("n0", "heartbeat timeout"), 10.0)
    requeued = [(t.task_id, t.old, t.new) for t in transitions(out) if t.new is S.QUEUED]
    assert requeued == [("t0", S.RUNNING, S.QUEUED), ("t1", S.ASSIGNED, S.QUEUED)]
    assert "heartbeat timeout" in transitions(out, "t0")[0].reason
    # n1 is full and n0 is dead: nothing can run, the dead node holds nothing.
    assert assigns(out) == []
    row = core.cluster.index["n0"]
    assert not core.cluster.alive[row]
    assert row not in core.on_row
    assert core.state_of("t2") is S.ASSIGNED
    # Losing it again is a no-op.
    assert drive(core, lost("n0"), 11.0) == []
    # When the node comes back it is empty; the re-queued tasks get new attempt numbers
    # and t0 resumes from the progress it reported.
    out = drive(core, up(node("n0", gpus=2)), 20.0)
    got = {a.task_id: (a.attempt, a.node_id, a.resume_progress) for a in assigns(out)}
    assert got == {"t0": (2, "n0", 0.25), "t1": (2, "n0", 0.0)}


def test_node_up_of_a_live_node_only_refreshes_liveness() -> None:
    core = two_node_core()
    start_on(core, "t", 1.0)
    before = snapshot(core)
    assert drive(core, up(node("n0", gpus=2)), 5.0) == []
    assert snapshot(core) == before
    assert core.last_seen["n0"] == 5.0


def test_node_lost_releases_resources_even_for_unstarted_attempts() -> None:
    core = new_core("fifo", nodes=[node("n0", gpus=2)])
    drive(core, submitted(task("t", gpus=2)), 1.0)
    drive(core, lost("n0"), 2.0)
    assert core.state_of("t") is S.QUEUED
    out = drive(core, up(node("n0", gpus=2)), 3.0)
    assert [(a.task_id, a.attempt) for a in assigns(out)] == [("t", 2)]


def test_resumed_attempt_is_predicted_for_the_remaining_work() -> None:
    core = new_core("forecast", nodes=[node("n0", gpus=1), node("n1", gpus=1)])
    spec = task("t", gpus=1, runtime_s=1000)
    (a,) = assigns(drive(core, submitted(spec), 0.0))
    assert (a.node_id, a.predicted_runtime_s) == ("n0", 1000.0)
    drive(core, [started("t", 1, "n0"), progress("t", 1, 0.5)], 1.0)
    (b,) = assigns(drive(core, lost("n0"), 500.0))
    assert (b.attempt, b.node_id, b.resume_progress) == (2, "n1", 0.5)
    assert b.predicted_runtime_s == pytest.approx(500.0)  # actual: 1000.0


def test_returning_node_with_new_labels_is_filtered_by_its_new_labels() -> None:
    core = new_core("fifo", nodes=[node("n", labels={"region": "us"})])
    out = drive(core, submitted(task("a", governance={"region": "us"})), 1.0)
    assert [x.node_id for x in assigns(out)] == ["n"]
    drive(core, lost("n"), 2.0)
    # The node comes back relabelled: the us-only task must not go back onto it.
    out = drive(core, up(node("n", labels={"region": "eu"})), 3.0)
    assert assigns(out) == []  # actual: a is assigned to n (now region=eu)


def test_returning_node_may_change_hardware_class() -> None:
    core = new_core("fifo", nodes=[node("n", "cpu")])
    drive(core, lost("n"), 1.0)
    drive(core, up(node("n", "gpu-a100", gpus=2)), 2.0)
    out = drive(core, submitted(task("g", gpus=1, hardware="gpu-a100")), 3.0)
    assert [(a.node_id, a.hardware) for a in assigns(out)] == [("n", "gpu-a100")]


# ---------------------------------------------------------------------- cancellation
def test_cancel_queued_task() -> None:
    core = new_core("fifo", nodes=[node("n0", gpus=1)])
    start_on(core, "busy", 1.0)
    drive(core, submitted(task("t", gpus=1)), 2.0)
    out = drive(core, cancel("t", "no longer needed"), 3.0)
    assert [(t.old, t.new, t.reason) for t in transitions(out)] == [
        (S.QUEUED, S.CANCELLED, "no longer needed")
    ]
    assert of_type(out, StopAttempt) == []
    assert "t" not in core.queue
    # When the node frees, nothing is assigned for the cancelled task.
    out = drive(core, completed("busy", 1, 5.0), 6.0)
    assert assigns(out) == []


def test_cancel_running_task_stops_its_attempt_and_frees_the_node() -> None:
    core = new_core("fifo", nodes=[node("n0", gpus=1)])
    start_on(core, "t", 1.0)
    drive(core, submitted(task("next", gpus=1)), 2.0)
    out = drive(core, cancel("t"), 3.0)
    assert of_type(out, StopAttempt) == [StopAttempt("cancel:t", "t", 1, "n0", "cancelled by user")]
    assert [(t.task_id, t.new) for t in transitions(out)] == [
        ("t", S.CANCELLED),
        ("next", S.ASSIGNED),
    ]
    # The stopped attempt's late completion does not revive it.
    only_stale(drive(core, completed("t", 1, 3.0), 4.0))
    assert core.state_of("t") is S.CANCELLED


def test_cancel_terminal_task_is_stale() -> None:
    core = two_node_core()
    start_on(core, "t", 1.0)
    drive(core, completed("t", 1), 2.0)
    before = snapshot(core)
    (record,) = only_stale(drive(core, cancel("t"), 3.0))
    assert (record.event, record.attempt, record.current_attempt) == ("cancel", 1, 1)
    assert snapshot(core) == before
    assert core.state_of("t") is S.SUCCEEDED
    # Cancelling twice: the second is stale as well.
    drive(core, submitted(task("u", gpus=1)), 4.0)
    drive(core, cancel("u"), 5.0)
    only_stale(drive(core, cancel("u"), 6.0))


def test_cancel_task_waiting_on_dependencies() -> None:
    core = new_core("fifo", nodes=[node("n0", gpus=1)])
    start_on(core, "up", 1.0)
    drive(core, submitted(task("child", depends_on=["up"])), 2.0)
    drive(core, submitted(task("grandchild", depends_on=["child"])), 2.0)
    out = drive(core, cancel("child"), 3.0)
    assert {t.task_id: (t.old, t.new) for t in transitions(out)} == {
        "child": (S.SUBMITTED, S.CANCELLED),
        "grandchild": (S.SUBMITTED, S.CANCELLED),
    }
    # Upstream completes later: the cancelled children stay cancelled.
    out = drive(core, completed("up", 1), 4.0)
    assert [t.task_id for t in transitions(out)] == ["up"]


# ---------------------------------------------------------------------- failures
def retry_due(core: SchedulerCore, task_id: str) -> list[Instruction]:
    """Tick the core when ``task_id``'s retry backoff is over; what that call returns."""
    due = core.retry_wait[task_id]
    return drive(core, tick(due), due)


def test_retryable_failure_retries_up_to_max_retries_then_fails() -> None:
    core = two_node_core()
    drive(core, submitted(task("t", gpus=1, max_retries=2)), 1.0)
    now = 1.0
    for attempt in (1, 2):
        now += 10.0
        out = drive(core, failed("t", attempt, "oom"), now)
        # Queued again, but placeable only once its retry backoff is over.
        assert [t.new for t in transitions(out)] == [S.QUEUED]
        assert f"retry {attempt}/2: oom" in transitions(out)[0].reason
        assert assigns(out) == []
        out = retry_due(core, "t")
        (a,) = assigns(out)
        assert a.attempt == attempt + 1
        now = a.decision.decided_at_s
    out = drive(core, failed("t", 3, "oom"), now + 10.0)
    assert [(t.old, t.new, t.reason) for t in transitions(out)] == [
        (
            S.ASSIGNED,
            S.FAILED,
            "retry budget used up (2 of max_retries=2 retries made); last failure: oom",
        )
    ]
    assert assigns(out) == []
    assert core.tasks["t"].retries == 2
    only_stale(drive(core, failed("t", 3, "oom"), now + 20.0))


def test_non_retryable_failure_fails_at_once() -> None:
    core = two_node_core()
    a = start_on(core, "t", 1.0)
    out = drive(core, failed("t", a.attempt, "bad command", retryable=False), 2.0)
    assert [(t.old, t.new) for t in transitions(out)] == [(S.RUNNING, S.FAILED)]
    assert core.tasks["t"].retries == 0
    assert core.cluster.gpu_free[core.cluster.index["n0"]].tolist()[:2] == [1000, 1000]


def test_retry_keeps_reported_progress() -> None:
    core = two_node_core()
    a = start_on(core, "t", 1.0)
    drive(core, progress("t", a.attempt, 0.4), 2.0)
    assert assigns(drive(core, failed("t", a.attempt, "flaky"), 3.0)) == []
    (b,) = assigns(retry_due(core, "t"))
    assert b.attempt == 2
    assert b.resume_progress == pytest.approx(0.4)


def test_preempted_attempt_is_requeued_with_its_checkpoint() -> None:
    core = new_core("fifo", nodes=[node("n0", gpus=1)])
    a = start_on(core, "t", 1.0)
    out = drive(core, preempted("t", a.attempt, 0.3), 2.0)
    assert [t.new for t in transitions(out)] == [S.QUEUED, S.ASSIGNED]
    (b,) = assigns(out)
    assert b.attempt == 2
    assert b.resume_progress == pytest.approx(0.3)
    assert core.tasks["t"].preemptions == 1
    # Progress never reaches 1 through preemption (the task still has work to do).
    out = drive(core, [started("t", 2, "n0"), preempted("t", 2, 1.0)], 3.0)
    (c,) = assigns(out)
    assert c.attempt == 3
    assert c.resume_progress < 1.0


# ---------------------------------------------------------------------- learning
def test_completion_teaches_the_forecaster() -> None:
    core = new_core("fifo", nodes=[node("n0", "gpu-v100", gpus=1)])
    (a,) = assigns(drive(core, submitted(task("t1", "bert", gpus=1, runtime_s=50)), 0.0))
    assert a.predicted_runtime_s == 50.0  # the declared estimate, nothing learned yet
    version = a.decision.model_version
    out = drive(core, [started("t1", 1, "n0"), completed("t1", 1, 120.0)], 120.0)
    (learned,) = of_type(out, Learned)
    assert (learned.hardware, learned.predicted_runtime_s, learned.observed_runtime_s) == (
        "gpu-v100",
        50.0,
        120.0,
    )
    (b,) = assigns(drive(core, submitted(task("t2", "bert", gpus=1, runtime_s=50)), 121.0))
    assert b.predicted_runtime_s == 120.0
    assert b.decision.model_version != version


def test_instructions_carry_the_stimulus_that_caused_them() -> None:
    core = two_node_core()
    out = drive(core, [submitted(task("a", gpus=1)), submitted(task("b", gpus=1))], 1.0)
    by_task = {
        t.task_id: {x.stimulus_id for x in transitions(out, t.task_id)} for t in transitions(out)
    }
    # Events' own transitions carry their ids; the scheduling cycle carries the last one.
    assert by_task["a"] == {"submit:a", "submit:b"}
    assert all(a.stimulus_id == "submit:b" for a in assigns(out))
    assert all(a.decision.stimulus_id == "submit:b" for a in assigns(out))


def test_reject_keeps_nothing() -> None:
    core = two_node_core()
    out = drive(core, submitted(task("r", depends_on=["missing"])), 1.0)
    assert [type(i) for i in out] == [Reject]
    assert "r" not in core.tasks
    # Resubmitting after the upstream exists is accepted (nothing about "r" was kept).
    drive(core, submitted(task("missing")), 2.0)
    out = drive(core, submitted(task("r", depends_on=["missing"])), 3.0)
    assert [t.new for t in of_type(out, TaskTransition) if t.task_id == "r"] == [S.SUBMITTED]


# ---------------------------------------------------------------------- the builders
def test_testing_module_examples_run() -> None:
    result = doctest.testmod(streamsched.testing)
    assert result.attempted > 0
    assert result.failed == 0


def test_builders_give_sensible_defaults_and_refuse_nonsense() -> None:
    spec = task("t", share=250, hardware="gpu-t4", governance={"data_region": "eu"})
    assert (spec.gpus, spec.gpu_milli, spec.is_gpu_share) == (1, 250, True)
    assert spec.allowed_hardware == frozenset({"gpu-t4"})
    assert dict(spec.governance) == {"data_region": "eu"}
    assert task("w", gpus=2).gpu_demand_milli == 2000
    assert task("c").gpu_demand_milli == 0
    with pytest.raises(ValueError, match="share"):
        task("bad", share=1000)
    with pytest.raises(ValueError, match="share of one GPU"):
        task("bad", gpus=2, share=500)
    gpu_node = node("g", gpus=4)
    assert (gpu_node.hardware, gpu_node.cpu_milli, gpu_node.memory_mib) == (
        "gpu-v100",
        40000,
        262144,
    )
    assert node("c").hardware == "cpu"
    names = [n.node_id for n in gpu_cluster(v100=2, k80=1, cpu=1)]
    assert names == ["gpu-v100-0", "gpu-v100-1", "gpu-k80-0", "cpu-0"]
    # Same arguments, equal events: replays compare equal.
    assert submitted(task("t")) == submitted(task("t"))


# ---------------------------------------------------------------------- heartbeat timeout
def test_a_silent_node_is_lost_and_its_attempt_requeued_elsewhere() -> None:
    core = new_core(
        "fifo", nodes=[node("n0", gpus=1), node("n1", gpus=1)], heartbeat_timeout_s=15.0
    )
    (a,) = assigns(drive(core, submitted(task("t", gpus=1)), 1.0))
    drive(core, started("t", 1, a.node_id), 1.0)
    other = "n1" if a.node_id == "n0" else "n0"
    # Both registered at 0. The other node keeps heartbeating; the one running the task
    # falls silent.
    drive(core, up(node(other, gpus=1)), 10.0)
    assert not assigns(drive(core, tick(14.5), 14.5))  # 14.5 s of silence is allowed
    assert core.cluster.alive[core.cluster.index[a.node_id]]
    out = drive(core, tick(15.5), 15.5)  # 15.5 s: lost
    (again,) = assigns(out)
    assert (again.task_id, again.attempt, again.node_id) == ("t", 2, other)
    assert not core.cluster.alive[core.cluster.index[a.node_id]]
    requeued = [t for t in transitions(out, "t") if t.new is TaskState.QUEUED]
    assert "no heartbeat" in requeued[0].reason


def test_heartbeats_keep_a_node_alive_and_no_timeout_means_never() -> None:
    kept = new_core("fifo", nodes=[node("n0")], heartbeat_timeout_s=5.0)
    for now in (4.0, 8.0, 12.0):
        drive(kept, up(node("n0")), now)
    drive(kept, tick(14.0), 14.0)
    assert kept.cluster.alive[kept.cluster.index["n0"]]
    forever = new_core("fifo", nodes=[node("n0")])
    drive(forever, tick(1e9), 1e9)
    assert forever.cluster.alive[forever.cluster.index["n0"]]
