"""AttemptRunner: real subprocesses and replay attempts, reported through a callback."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streamsched.agents.runner import (
    REPLAY_RESTART_OVERHEAD_ENV,
    REPLAY_RUNTIMES_ENV,
    SHUTDOWN_REASON,
    AttemptRunner,
    LifecycleEvent,
    replay_runtime_s,
)
from streamsched.schemas.decisions import Assignment
from streamsched.schemas.lifecycle import (
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskLost,
    TaskPreempted,
    TaskProgress,
    TaskStarted,
)

pytestmark = pytest.mark.timeout(10)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NODE = "node-7"
TERMINAL = (TaskCompleted, TaskFailed, TaskPreempted, TaskCancelled, TaskLost)
WAIT_S = 5.0

# A child that prints a ready line, then ignores SIGTERM and sleeps.
STUBBORN = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)
# A child that prints a ready line, then sleeps; SIGTERM ends it (default action).
SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"


class Reports:
    """Thread-safe collector of reported events, with waiting on a condition."""

    def __init__(self) -> None:
        self.events: list[LifecycleEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: LifecycleEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[LifecycleEvent]], bool]) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.events), WAIT_S), self.events

    def terminal(self, task_id: str = "t1", attempt: int = 1) -> LifecycleEvent:
        """Wait for and return the (single) terminal event of an attempt."""

        def ends(events: list[LifecycleEvent]) -> list[LifecycleEvent]:
            return [
                e
                for e in events
                if isinstance(e, TERMINAL) and (e.task_id, e.attempt) == (task_id, attempt)
            ]

        self.wait_for(lambda events: bool(ends(events)))
        with self._cond:
            (event,) = ends(self.events)
        return event

    def of(self, task_id: str = "t1") -> list[LifecycleEvent]:
        with self._cond:
            return [e for e in self.events if e.task_id == task_id]


def assignment(
    command: Sequence[str] = (),
    *,
    task_id: str = "t1",
    attempt: int = 1,
    gpu_indices: tuple[int, ...] = (),
    env: dict[str, str] | None = None,
    resume_progress: float = 0.0,
    occurred_at: datetime = NOW,
) -> Assignment:
    return Assignment(
        occurred_at=occurred_at,
        source="placement",
        decision_id=f"d-{task_id}-{attempt}",
        task_id=task_id,
        attempt=attempt,
        node_id=NODE,
        hardware="gpu-v100" if gpu_indices else "cpu",
        gpu_indices=gpu_indices,
        gpu_milli=1000 if gpu_indices else 0,
        predicted_runtime_s=1.0,
        resume_progress=resume_progress,
        command=tuple(command),
        env=env or {},
        tenant="acme",
        task_type="train",
    )


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_for_log(path: Path, pattern: str) -> re.Match[str]:
    """Wait (short polls) until the log file matches the regex ``pattern``."""
    deadline = time.monotonic() + WAIT_S
    log = ""
    while time.monotonic() < deadline:
        if path.exists() and (match := re.search(pattern, log := path.read_text())):
            return match
        time.sleep(0.01)
    raise AssertionError(f"{pattern!r} never appeared in {path}: {log!r}")


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def make_runner(tmp_path: Path, reports: Reports) -> Iterator[Callable[..., AttemptRunner]]:
    runners: list[AttemptRunner] = []

    def make(grace_s: float = 2.0, **settings: float) -> AttemptRunner:
        runner = AttemptRunner(
            tmp_path / "logs", NODE, reports, clock=lambda: NOW, grace_s=grace_s, **settings
        )
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.stop_all()


@pytest.fixture
def runner(make_runner: Callable[..., AttemptRunner]) -> AttemptRunner:
    return make_runner()


def test_success_reports_started_then_completed(runner: AttemptRunner, reports: Reports) -> None:
    runner.start(assignment(py("import time; time.sleep(0.05)")))
    done = reports.terminal()
    started, completed = reports.of("t1")
    assert isinstance(started, TaskStarted)
    assert isinstance(completed, TaskCompleted)
    assert completed is done
    assert completed.exit_code == 0
    assert completed.runtime_s >= 0.05
    for event in (started, completed):
        assert (event.task_id, event.attempt, event.node_id) == ("t1", 1, NODE)
        assert event.source == f"executor:{NODE}"
        assert event.occurred_at == NOW
    assert runner.running() == []


def test_nonzero_exit_fails_retryable_with_code(runner: AttemptRunner, reports: Reports) -> None:
    runner.start(assignment(py("import sys; sys.exit(3)")))
    failed = reports.terminal()
    assert isinstance(failed, TaskFailed)
    assert failed.exit_code == 3
    assert failed.retryable is True
    assert failed.reason == "exit code 3"


def test_missing_executable_fails_not_retryable(
    runner: AttemptRunner, reports: Reports, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-program")
    runner.start(assignment([missing, "--flag"]))
    # Reported before start() returns, without a TaskStarted.
    (failed,) = reports.of("t1")
    assert isinstance(failed, TaskFailed)
    assert failed.retryable is False
    assert failed.exit_code is None
    assert missing in failed.reason
    assert "Traceback" not in failed.reason
    assert runner.running() == []
    assert missing in runner.log_path("t1", 1).read_text()


def test_non_executable_file_fails_not_retryable(
    runner: AttemptRunner, reports: Reports, tmp_path: Path
) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    runner.start(assignment([str(script)]))
    (failed,) = reports.of("t1")
    assert isinstance(failed, TaskFailed)
    assert failed.retryable is False
    assert str(script) in failed.reason


def test_environment_of_the_attempt(runner: AttemptRunner, reports: Reports) -> None:
    names = [
        "CUDA_VISIBLE_DEVICES",
        "STREAMSCHED_TASK_ID",
        "STREAMSCHED_ATTEMPT",
        "STREAMSCHED_NODE_ID",
        "STREAMSCHED_RESUME_PROGRESS",
        "MY_SETTING",
        "PATH",
    ]
    code = f"import json, os; print(json.dumps({{n: os.environ.get(n) for n in {names!r}}}))"
    job = assignment(
        py(code),
        attempt=2,
        gpu_indices=(0, 2),
        env={"MY_SETTING": "fast", "CUDA_VISIBLE_DEVICES": "5"},
        resume_progress=0.25,
    )
    runner.start(job)
    assert isinstance(reports.terminal(attempt=2), TaskCompleted)
    seen = json.loads(runner.log_path("t1", 2).read_text())
    assert seen == {
        "CUDA_VISIBLE_DEVICES": "0,2",  # the runner's GPU binding wins over the task's env
        "STREAMSCHED_TASK_ID": "t1",
        "STREAMSCHED_ATTEMPT": "2",
        "STREAMSCHED_NODE_ID": NODE,
        "STREAMSCHED_RESUME_PROGRESS": "0.25",
        "MY_SETTING": "fast",
        "PATH": os.environ.get("PATH"),
    }


def test_no_gpus_means_empty_cuda_visible_devices(runner: AttemptRunner, reports: Reports) -> None:
    code = "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))"
    runner.start(assignment(py(code)))
    reports.terminal()
    assert runner.log_path("t1", 1).read_text().strip() == "''"


def test_one_log_file_per_attempt_with_stdout_and_stderr(
    runner: AttemptRunner, reports: Reports
) -> None:
    code = "import sys; print('to-stdout', flush=True); print('to-stderr', file=sys.stderr)"
    runner.start(assignment(py(code), attempt=1))
    runner.start(assignment(py(code), attempt=2))
    reports.terminal(attempt=1)
    reports.terminal(attempt=2)
    for attempt in (1, 2):
        log = runner.log_path("t1", attempt)
        assert log.name == f"t1.{attempt}.log"
        assert "to-stdout" in log.read_text()
        assert "to-stderr" in log.read_text()


def test_preempt_kills_a_child_that_ignores_sigterm(
    make_runner: Callable[..., AttemptRunner], reports: Reports
) -> None:
    runner = make_runner(grace_s=0.5)
    runner.start(assignment(py(STUBBORN), resume_progress=0.4))
    wait_for_log(runner.log_path("t1", 1), "ready")
    begun = time.monotonic()
    assert runner.preempt("t1", 1) is True
    preempted = reports.terminal()
    assert time.monotonic() - begun >= 0.5  # it outlived SIGTERM until the SIGKILL
    assert isinstance(preempted, TaskPreempted)
    assert preempted.progress == 0.4
    runner.stop_all()  # joins the attempt's thread: nothing more can be reported
    assert [type(e) for e in reports.of("t1")] == [TaskStarted, TaskPreempted]
    assert runner.preempt("t1", 1) is False


def test_preempt_a_child_that_exits_on_sigterm(runner: AttemptRunner, reports: Reports) -> None:
    runner.start(assignment(py(SLEEPER)))
    wait_for_log(runner.log_path("t1", 1), "ready")
    begun = time.monotonic()
    assert runner.preempt("t1", 1) is True
    assert isinstance(reports.terminal(), TaskPreempted)
    assert time.monotonic() - begun < runner.grace_s
    runner.stop_all()
    assert [type(e) for e in reports.of("t1")] == [TaskStarted, TaskPreempted]


def test_first_stop_reason_wins(
    make_runner: Callable[..., AttemptRunner], reports: Reports
) -> None:
    runner = make_runner(grace_s=1.0)
    runner.start(assignment(py(STUBBORN)))  # outlives SIGTERM until the SIGKILL
    wait_for_log(runner.log_path("t1", 1), "ready")
    assert runner.preempt("t1", 1) is True
    assert runner.cancel("t1", 1) is True  # already stopping: no second report
    assert runner.preempt("t1", 1) is True
    assert isinstance(reports.terminal(), TaskPreempted)
    runner.stop_all()
    assert [type(e) for e in reports.of("t1")] == [TaskStarted, TaskPreempted]


def test_cancel_reports_cancelled(runner: AttemptRunner, reports: Reports) -> None:
    runner.start(assignment(py(SLEEPER)))
    wait_for_log(runner.log_path("t1", 1), "ready")
    assert runner.cancel("t1", 1, reason="user asked") is True
    cancelled = reports.terminal()
    assert isinstance(cancelled, TaskCancelled)
    assert cancelled.reason == "user asked"
    runner.stop_all()
    assert [type(e) for e in reports.of("t1")] == [TaskStarted, TaskCancelled]


def test_stop_of_unknown_attempt_is_a_no_op(runner: AttemptRunner, reports: Reports) -> None:
    assert runner.preempt("nope", 1) is False
    assert runner.cancel("nope", 1) is False
    assert reports.events == []


def test_replay_mode_runs_scaled_wall_time(runner: AttemptRunner, reports: Reports) -> None:
    begun = time.monotonic()
    published = assignment(py("raise SystemExit(1)"), occurred_at=datetime.now(UTC))
    runner.start(published, replay_runtime_s=2.0, speedup=20.0)
    completed = reports.terminal()
    wall_s = time.monotonic() - begun
    assert isinstance(completed, TaskCompleted)
    assert 0.09 <= wall_s < 1.0
    assert completed.runtime_s == pytest.approx(2.0, abs=0.5)  # in task time, not wall time
    assert [type(e) for e in reports.of("t1")] == [TaskStarted, TaskCompleted]
    assert not runner.log_path("t1", 1).exists()  # no process was run


def test_a_replay_attempt_runs_from_the_assignment_s_publication(
    runner: AttemptRunner, reports: Reports
) -> None:
    """Delivery delay counts as run time (the simulator starts attempts when decided), up
    to MAX_REPLAY_CATCH_UP_S: 0.4 s of a 0.6 s attempt were spent in delivery."""
    published = datetime.now(UTC) - timedelta(seconds=0.4)
    begun = time.monotonic()
    runner.start(assignment((), occurred_at=published), replay_runtime_s=6.0, speedup=10.0)
    completed = reports.terminal()
    assert isinstance(completed, TaskCompleted)
    assert time.monotonic() - begun < 0.45
    assert completed.runtime_s == pytest.approx(6.0, abs=0.5)  # trace seconds, delay included


def test_empty_command_is_replayed(runner: AttemptRunner, reports: Reports) -> None:
    runner.start(assignment(()), speedup=100.0)  # predicted_runtime_s=1.0 -> 0.01 s
    assert isinstance(reports.terminal(), TaskCompleted)


def test_replay_can_be_preempted(runner: AttemptRunner, reports: Reports) -> None:
    runner.start(assignment(()), replay_runtime_s=60.0)
    reports.wait_for(lambda events: len(events) == 1)
    assert runner.running() == [("t1", 1)]
    assert runner.preempt("t1", 1) is True
    assert isinstance(reports.terminal(), TaskPreempted)
    assert runner.running() == []


def test_duplicate_start_is_ignored(runner: AttemptRunner, reports: Reports) -> None:
    job = assignment(py("import time; time.sleep(0.2)"))
    runner.start(job)
    runner.start(job)  # redelivered while running
    assert runner.running() == [("t1", 1)]
    reports.terminal()
    runner.start(job)  # redelivered after it finished
    runner.stop_all()
    assert [type(e) for e in reports.of("t1")] == [TaskStarted, TaskCompleted]


def test_running_lists_attempts(runner: AttemptRunner, reports: Reports) -> None:
    runner.start(assignment(py(SLEEPER), task_id="b"))
    runner.start(assignment(py(SLEEPER), task_id="a", attempt=3))
    assert runner.running() == [("a", 3), ("b", 1)]


def test_stop_all_leaves_no_processes(
    make_runner: Callable[..., AttemptRunner], reports: Reports
) -> None:
    runner = make_runner(grace_s=0.5)
    # Each child starts a grandchild that ignores SIGTERM, then prints both pids.
    code = (
        "import os, subprocess, sys, time; "
        f"g = subprocess.Popen([sys.executable, '-c', {STUBBORN!r}], stdout=subprocess.DEVNULL); "
        "print('pids', os.getpid(), g.pid, 'end', flush=True); time.sleep(60)"
    )
    for task_id in ("x", "y"):
        runner.start(assignment(py(code), task_id=task_id))
    runner.start(assignment(()), replay_runtime_s=60.0)
    children, grandchildren = [], []
    for task_id in ("x", "y"):
        match = wait_for_log(runner.log_path(task_id, 1), r"pids (\d+) (\d+) end")
        children.append(int(match[1]))
        grandchildren.append(int(match[2]))
    assert all(pid_alive(pid) for pid in children + grandchildren)
    runner.stop_all()
    assert runner.running() == []
    assert [pid for pid in children if pid_alive(pid)] == []  # killed and reaped
    # Grandchildren got SIGKILL with their group; they die asynchronously and init reaps them.
    deadline = time.monotonic() + WAIT_S
    while any(pid_alive(pid) for pid in grandchildren) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [pid for pid in grandchildren if pid_alive(pid)] == []
    ends = [e for e in reports.events if isinstance(e, TERMINAL)]
    assert sorted(e.task_id for e in ends) == ["t1", "x", "y"]
    # A shutdown is not a cancel: the scheduler must re-queue the tasks.
    assert all(isinstance(e, TaskLost) and e.reason == SHUTDOWN_REASON for e in ends)


def test_failing_report_callback_does_not_break_the_runner(tmp_path: Path) -> None:
    done = threading.Event()

    def report(event: LifecycleEvent) -> None:
        if isinstance(event, TaskStarted):
            raise RuntimeError("sink down")
        done.set()

    runner = AttemptRunner(tmp_path, NODE, report, grace_s=0.5)
    runner.start(assignment(py("pass")))
    assert done.wait(WAIT_S)
    assert runner.running() == []


# ---------------------------------------------------------------------- progress
# A child that writes its own fraction into the progress file (atomically), then waits; on
# SIGTERM it writes a checkpoint fraction, if it has one, and exits.
PROGRESS_THEN_WAIT = (
    "import os, signal, sys, time\n"
    "path = os.environ['STREAMSCHED_PROGRESS_FILE']\n"
    "def write(text):\n"
    "    tmp = path + '.tmp'\n"
    "    open(tmp, 'w').write(text)\n"
    "    os.replace(tmp, path)\n"
    "def on_term(*_):\n"
    "    if {on_term!r}:\n"
    "        write({on_term!r})\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, on_term)\n"
    "for text in {values!r}:\n"
    "    write(text)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def progress_task(values: Sequence[str], on_term: str = "") -> list[str]:
    return py(PROGRESS_THEN_WAIT.format(values=list(values), on_term=on_term))


def progress_of(reports: Reports, task_id: str = "t1") -> list[float]:
    return [e.progress for e in reports.of(task_id) if isinstance(e, TaskProgress)]


def test_progress_file_is_reported_as_whole_task_progress(
    make_runner: Callable[..., AttemptRunner], reports: Reports
) -> None:
    runner = make_runner(progress_poll_s=0.02, progress_interval_s=0.02)
    runner.start(assignment(progress_task(["0.5"]), resume_progress=0.2))
    reports.wait_for(lambda events: any(isinstance(e, TaskProgress) for e in events))
    assert progress_of(reports) == [pytest.approx(0.6)]  # 0.2 + 0.8 * 0.5
    (progress,) = [e for e in reports.of("t1") if isinstance(e, TaskProgress)]
    assert (progress.task_id, progress.attempt, progress.node_id) == ("t1", 1, NODE)
    assert runner.preempt("t1", 1) is True
    preempted = reports.terminal()
    assert isinstance(preempted, TaskPreempted)
    assert preempted.progress == pytest.approx(0.6)


def test_preemption_reports_the_value_written_on_sigterm(
    make_runner: Callable[..., AttemptRunner], reports: Reports
) -> None:
    runner = make_runner(progress_poll_s=60.0)  # only the read after the exit counts
    runner.start(assignment(progress_task(["0.1"], on_term="0.75"), resume_progress=0.2))
    wait_for_log(runner.log_path("t1", 1), "ready")
    assert runner.preempt("t1", 1) is True
    preempted = reports.terminal()
    assert isinstance(preempted, TaskPreempted)
    assert preempted.progress == pytest.approx(0.8)  # 0.2 + 0.8 * 0.75
    assert progress_of(reports) == []


def test_progress_reports_are_rate_limited(
    make_runner: Callable[..., AttemptRunner], reports: Reports
) -> None:
    runner = make_runner(progress_poll_s=0.02, progress_interval_s=60.0)
    code = (
        "import os, time\n"
        "path = os.environ['STREAMSCHED_PROGRESS_FILE']\n"
        "for i in range(1, 6):\n"
        "    open(path + '.t', 'w').write(str(i / 10)); os.replace(path + '.t', path)\n"
        "    time.sleep(0.1)\n"
        "print('written', flush=True); time.sleep(60)\n"
    )
    runner.start(assignment(py(code)))
    wait_for_log(runner.log_path("t1", 1), "written")
    assert runner.preempt("t1", 1) is True
    preempted = reports.terminal()
    assert len(progress_of(reports)) == 1  # five changes, one report per 60 s at most
    assert isinstance(preempted, TaskPreempted)
    assert preempted.progress == pytest.approx(0.5)  # the latest value, not the reported one


def test_garbage_in_the_progress_file_is_ignored_with_one_warning(
    make_runner: Callable[..., AttemptRunner], reports: Reports
) -> None:
    runner = make_runner(progress_poll_s=0.02, progress_interval_s=0.02)
    code = (
        "import os, time\n"
        "path = os.environ['STREAMSCHED_PROGRESS_FILE']\n"
        "for text in ['0.3', 'half done', '1.5', 'nan']:\n"
        "    open(path + '.t', 'w').write(text); os.replace(path + '.t', path)\n"
        "    time.sleep(0.2)\n"
        "open(path + '.t', 'w').write('0.9'); os.replace(path + '.t', path)\n"
        "print('written', flush=True); time.sleep(60)\n"
    )
    runner.start(assignment(py(code)))
    reports.wait_for(lambda events: pytest.approx(0.9) in progress_of(reports))
    log = runner.log_path("t1", 1).read_text()
    for garbage in ("'half done'", "'1.5'", "'nan'"):
        assert log.count(f"streamsched: ignoring progress {garbage}") == 1, log
    assert "expected one number in [0, 1]" in log
    assert {round(p, 6) for p in progress_of(reports)} <= {0.3, 0.9}
    assert runner.preempt("t1", 1) is True
    preempted = reports.terminal()
    assert isinstance(preempted, TaskPreempted)
    assert preempted.progress == pytest.approx(0.9)


def test_a_task_without_progress_is_preempted_at_its_resume_progress(
    runner: AttemptRunner, reports: Reports
) -> None:
    runner.start(assignment(py(SLEEPER), resume_progress=0.4))
    wait_for_log(runner.log_path("t1", 1), "ready")
    assert runner.preempt("t1", 1) is True
    preempted = reports.terminal()
    assert isinstance(preempted, TaskPreempted)
    assert preempted.progress == pytest.approx(0.4)


def test_the_progress_file_is_named_in_the_environment(
    runner: AttemptRunner, reports: Reports
) -> None:
    runner.start(assignment(py("import os; print(os.environ['STREAMSCHED_PROGRESS_FILE'])")))
    reports.terminal()
    named = runner.log_path("t1", 1).read_text().strip()
    assert named == str(runner.progress_path("t1", 1))
    assert Path(named).parent == runner.log_dir


def test_shutdown_reports_the_latest_progress_then_lost(
    make_runner: Callable[..., AttemptRunner], reports: Reports
) -> None:
    runner = make_runner(progress_poll_s=60.0)
    runner.start(assignment(progress_task(["0.5"]), resume_progress=0.5))
    wait_for_log(runner.log_path("t1", 1), "ready")
    runner.stop_all()
    started, progress, lost = reports.of("t1")
    assert isinstance(started, TaskStarted)
    assert isinstance(progress, TaskProgress)
    assert progress.progress == pytest.approx(0.75)
    assert isinstance(lost, TaskLost)
    assert lost.reason == SHUTDOWN_REASON


def test_replay_reports_elapsed_progress_and_preempts_with_it(
    make_runner: Callable[..., AttemptRunner], reports: Reports
) -> None:
    runner = make_runner(progress_interval_s=0.05)
    runner.start(assignment(()), replay_runtime_s=100.0, speedup=20.0)  # 5 wall seconds
    reports.wait_for(lambda events: len(progress_of(reports)) >= 3)
    assert runner.preempt("t1", 1) is True
    preempted = reports.terminal()
    seen = progress_of(reports)
    assert seen == sorted(seen)
    assert 0.0 < seen[0] < 0.5
    assert isinstance(preempted, TaskPreempted)
    assert seen[-1] <= preempted.progress < 0.9


def test_replay_progress_counts_earlier_attempts(
    make_runner: Callable[..., AttemptRunner], reports: Reports
) -> None:
    runner = make_runner(progress_interval_s=0.05)
    runner.start(assignment((), resume_progress=0.5), replay_runtime_s=100.0, speedup=20.0)
    reports.wait_for(lambda events: len(progress_of(reports)) >= 1)
    assert runner.preempt("t1", 1) is True
    preempted = reports.terminal()
    assert isinstance(preempted, TaskPreempted)
    assert 0.5 < progress_of(reports)[0] <= preempted.progress < 0.95


def test_replay_reports_progress_once_after_a_trace_time_like_the_simulator(
    make_runner: Callable[..., AttemptRunner], reports: Reports
) -> None:
    """With replay_progress_after_s=30 (trace s) and no periodic report within the run,
    a 1-second replay (100 trace s at 100x) reports progress exactly once, about 0.3 in."""
    runner = make_runner(progress_interval_s=3600.0, replay_progress_after_s=30.0)
    runner.start(
        assignment((), occurred_at=datetime.now(UTC)), replay_runtime_s=100.0, speedup=100.0
    )
    completed = reports.terminal()
    assert isinstance(completed, TaskCompleted)
    (progress,) = progress_of(reports)
    assert 0.25 <= progress <= 0.6


# ---------------------------------------------------------------------- replay runtimes
def replay_job(
    runtimes: object = None, resume: float = 0.0, overhead: str | None = None
) -> Assignment:
    env: dict[str, str] = {}
    if runtimes is not None:
        env[REPLAY_RUNTIMES_ENV] = runtimes if isinstance(runtimes, str) else json.dumps(runtimes)
    if overhead is not None:
        env[REPLAY_RESTART_OVERHEAD_ENV] = overhead
    return assignment((), env=env, resume_progress=resume)  # predicted_runtime_s=1.0


@pytest.mark.parametrize(
    ("runtimes", "hardware", "expected"),
    [
        ({"gpu-v100": 3600.0, "gpu-k80": 9000, "*": 5000.0}, "gpu-k80", 9000.0),
        ({"gpu-v100": 3600.0, "*": 5000.0}, "gpu-k80", 5000.0),
        ({"gpu-v100": 3600.0}, "gpu-k80", 1.0),  # the prediction
        (None, "gpu-v100", 1.0),
    ],
)
def test_replay_runtime_is_the_true_runtime_on_this_hardware(
    runtimes: object, hardware: str, expected: float
) -> None:
    assert replay_runtime_s(replay_job(runtimes), hardware) == expected


def test_replay_runtime_of_a_resumed_attempt() -> None:
    job = replay_job({"cpu": 1000.0}, resume=0.25)
    assert replay_runtime_s(job, "cpu") == 750.0  # no restart overhead unless asked
    job = replay_job({"cpu": 1000.0}, resume=0.25, overhead="30")
    assert replay_runtime_s(job, "cpu") == 780.0
    # The prediction already covers only the remaining work.
    assert replay_runtime_s(replay_job(None, resume=0.25, overhead="30"), "cpu") == 31.0
    # A first attempt pays no restart overhead.
    assert replay_runtime_s(replay_job({"cpu": 1000.0}, overhead="30"), "cpu") == 1000.0


@pytest.mark.parametrize(
    ("runtimes", "overhead", "message"),
    [
        ("{not json", None, "STREAMSCHED_REPLAY_RUNTIMES is not valid JSON"),
        ("[3600]", None, "STREAMSCHED_REPLAY_RUNTIMES must be a JSON object"),
        ({"cpu": "3600"}, None, "STREAMSCHED_REPLAY_RUNTIMES['cpu'] = '3600'"),
        ({"cpu": -1}, None, "must be a positive number of seconds"),
        ({"cpu": True}, None, "STREAMSCHED_REPLAY_RUNTIMES['cpu'] = True"),
        ({"cpu": 10.0}, "soon", "STREAMSCHED_REPLAY_RESTART_OVERHEAD_S='soon'"),
        ({"cpu": 10.0}, "-5", "must be a number of seconds >= 0"),
    ],
)
def test_malformed_replay_settings_name_the_variable(
    runtimes: object, overhead: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        replay_runtime_s(replay_job(runtimes, resume=0.5, overhead=overhead), "cpu")


def test_fail_unstarted_reports_a_final_failure_once(
    runner: AttemptRunner, reports: Reports
) -> None:
    job = assignment(())
    runner.fail_unstarted(job, "STREAMSCHED_REPLAY_RUNTIMES is not valid JSON")
    runner.fail_unstarted(job, "again")  # a redelivery
    runner.start(job)  # ignored too: the attempt is finished
    (failed,) = reports.of("t1")
    assert isinstance(failed, TaskFailed)
    assert failed.retryable is False
    assert failed.reason == "STREAMSCHED_REPLAY_RUNTIMES is not valid JSON"


def test_a_task_id_cannot_escape_the_log_directory(runner: AttemptRunner) -> None:
    path = runner.log_path("../../etc/x", 1)
    assert path.parent == runner.log_dir
    assert path.name == "..%2F..%2Fetc%2Fx.1.log"
