"""The attempt journal and restart reconciliation (AttemptRunner.recover), with real files
and real processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streamsched.agents.journal import (
    AttemptJournal,
    JournalBusyError,
    JournalEntry,
    journal_path,
)
from streamsched.agents.runner import (
    RESTART_REASON,
    AttemptRunner,
    LifecycleEvent,
    boot_id,
    process_start_ticks,
)
from streamsched.schemas.decisions import Assignment
from streamsched.schemas.lifecycle import (
    TaskCompleted,
    TaskFailed,
    TaskLost,
    TaskProgress,
    TaskStarted,
)

pytestmark = pytest.mark.timeout(20)

NODE = "node-7"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
WAIT_S = 5.0


def entry(task_id: str = "t1", attempt: int = 1, **more: object) -> JournalEntry:
    return JournalEntry(task_id=task_id, attempt=attempt, hardware="cpu", **more)  # type: ignore[arg-type]


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return journal_path(tmp_path, NODE)


@pytest.fixture
def journal(path: Path) -> Iterator[AttemptJournal]:
    journal = AttemptJournal(path)
    yield journal
    journal.close()


def test_the_journal_path_is_per_node(tmp_path: Path) -> None:
    assert journal_path(tmp_path, "v100-0") == tmp_path / "executor-v100-0.journal.jsonl"
    assert journal_path(tmp_path, "rack/1").parent == tmp_path  # no directory escape


def test_started_and_ended_survive_a_reopen(path: Path) -> None:
    journal = AttemptJournal(path)
    assert journal.started(entry("a", resume_progress=0.25, progress_file="/x/a.1.progress"))
    assert journal.process(("a", 1), pid=4242, pid_start=99, boot_id="boot")
    assert journal.started(entry("b"))
    assert journal.ended(("b", 1), "completed")
    journal.close()
    reopened = AttemptJournal(path)
    try:
        (unfinished,) = reopened.unfinished()
        assert unfinished == entry(
            "a",
            resume_progress=0.25,
            progress_file="/x/a.1.progress",
            pid=4242,
            pid_start=99,
            boot_id="boot",
        )
        assert reopened.ended_keys() == [("b", 1)]
    finally:
        reopened.close()


def test_corrupt_lines_are_reported_with_file_and_line_and_skipped(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = {"v": 1, "event": "started", "task_id": "t1", "attempt": 1, "hardware": "cpu"}
    path.write_text(
        "\n".join(
            [
                json.dumps(good),
                "not json at all",
                json.dumps([1, 2]),
                json.dumps({"event": "exploded", "task_id": "t2", "attempt": 1}),
                json.dumps({"event": "started", "task_id": "t3", "attempt": "one"}),
                json.dumps({"event": "process", "task_id": "ghost", "attempt": 1, "pid": 5}),
                json.dumps({"event": "ended", "task_id": "t4", "attempt": 2}),
                '{"v": 1, "event": "started", "task_id": "torn", "att',  # crash mid-write
            ]
        )
    )
    with caplog.at_level(logging.WARNING):
        journal = AttemptJournal(path)
    try:
        assert [e.key for e in journal.unfinished()] == [("t1", 1)]
        assert journal.ended_keys() == [("t4", 2)]
        warnings = [
            r.getMessage() for r in caplog.records if "corrupt journal line" in r.getMessage()
        ]
        assert [w.split(": skipping")[0] for w in warnings] == [
            f"{path}:{n}" for n in (2, 3, 4, 5, 6, 8)
        ]
        assert "not JSON" in warnings[0]
        assert "unknown event 'exploded'" in warnings[2]
        assert "attempt is 'one'" in warnings[3]
        assert "never started" in warnings[4]
        # The file was rewritten without the bad lines, torn tail included: appends are safe.
        assert journal.ended(("t1", 1), "completed")
    finally:
        journal.close()
    assert [(r["event"], r["task_id"]) for r in lines(path)] == [
        ("ended", "t4"),
        ("started", "t1"),
        ("ended", "t1"),
    ]


def test_compaction_keeps_the_unfinished_and_the_last_ended(path: Path) -> None:
    journal = AttemptJournal(path, keep_ended=3)
    try:
        journal.started(entry("running"))
        for attempt in range(1, 21):
            journal.started(entry("done", attempt))
            journal.ended(("done", attempt), "completed")
        assert journal.ended_keys() == [("done", 18), ("done", 19), ("done", 20)]
        assert len(lines(path)) <= 4 * 3 + 1  # compacted as it grew
    finally:
        journal.close()
    reopened = AttemptJournal(path, keep_ended=3)
    try:
        assert [e.key for e in reopened.unfinished()] == [("running", 1)]
        assert reopened.ended_keys() == [("done", 18), ("done", 19), ("done", 20)]
        assert len(lines(path)) == 4
    finally:
        reopened.close()


def test_assignments_seen_survives_a_reopen_and_only_grows(path: Path) -> None:
    journal = AttemptJournal(path)
    try:
        assert journal.assignments_seen is None
        assert journal.saw_assignment(4)
        assert journal.saw_assignment(2)  # lower: nothing written
        assert journal.saw_assignment(9)
        assert journal.assignments_seen == 9
        assert [r["sequence"] for r in lines(path)] == [4, 9]
    finally:
        journal.close()
    reopened = AttemptJournal(path)
    try:
        assert reopened.assignments_seen == 9
        assert lines(reopened.path) == [{"v": 1, "event": "assignments_seen", "sequence": 9}]
        with pytest.raises(ValueError, match="not negative"):
            reopened.saw_assignment(-1)
    finally:
        reopened.close()


def test_compaction_keeps_assignments_seen(path: Path) -> None:
    journal = AttemptJournal(path, keep_ended=2)
    try:
        journal.saw_assignment(3)
        for attempt in range(1, 11):  # ended lines alone trigger compaction
            journal.started(entry("done", attempt))
            journal.ended(("done", attempt), "completed")
        assert {"v": 1, "event": "assignments_seen", "sequence": 3} in lines(path)
        for sequence in range(4, 30):  # so do sequence lines
            journal.saw_assignment(sequence)
        assert len(lines(path)) <= 4 * 2 + 1
    finally:
        journal.close()
    reopened = AttemptJournal(path, keep_ended=2)
    try:
        assert reopened.assignments_seen == 29
        assert reopened.ended_keys() == [("done", 9), ("done", 10)]
    finally:
        reopened.close()


def test_a_corrupt_sequence_line_is_skipped(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = [
        {"v": 1, "event": "assignments_seen", "sequence": 5},
        {"v": 1, "event": "assignments_seen", "sequence": "6"},
        {"v": 1, "event": "assignments_seen"},
        {"v": 1, "event": "assignments_seen", "sequence": -2},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with caplog.at_level(logging.WARNING):
        journal = AttemptJournal(path)
    try:
        assert journal.assignments_seen == 5
    finally:
        journal.close()
    skipped = [r.getMessage() for r in caplog.records if "skipping corrupt" in r.getMessage()]
    assert [m.split(":")[1] for m in skipped] == ["2", "3", "4"]


def test_one_executor_per_journal(journal: AttemptJournal, path: Path) -> None:
    code = (
        "import sys\n"
        "from streamsched.agents.journal import AttemptJournal, JournalBusyError\n"
        "try:\n"
        "    AttemptJournal(sys.argv[1])\n"
        "except JournalBusyError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False
    )
    assert other.returncode == 3, other.stderr
    assert "another executor process holds this attempt journal" in other.stdout
    assert "--node-id" in other.stdout
    journal.close()
    AttemptJournal(path).close()  # free again


def test_busy_error_is_a_value_error() -> None:
    assert issubclass(JournalBusyError, ValueError)  # the CLI's error edge catches it


# ---------------------------------------------------------------------- reconciliation
def assignment(command: list[str], task_id: str = "t1", resume: float = 0.0) -> Assignment:
    return Assignment(
        occurred_at=NOW,
        source="placement",
        decision_id=f"d-{task_id}",
        task_id=task_id,
        attempt=1,
        node_id=NODE,
        hardware="cpu",
        predicted_runtime_s=1.0,
        resume_progress=resume,
        command=tuple(command),
        tenant="acme",
        task_type="train",
    )


class Collect(list[LifecycleEvent]):
    """Reports collected in a list; ``failing`` event types raise (not delivered)."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.failing = failing

    def __call__(self, event: LifecycleEvent) -> None:
        if event.type in self.failing:
            raise RuntimeError(f"{event.type} not delivered")
        self.append(event)

    def wait(self, kind: type[LifecycleEvent]) -> LifecycleEvent:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            found = [e for e in self if isinstance(e, kind)]
            if found:
                return found[0]
            time.sleep(0.01)
        raise AssertionError(f"no {kind.__name__} in {list(self)}")


def runner_with_journal(tmp_path: Path, report: Collect) -> AttemptRunner:
    runner = AttemptRunner(tmp_path, NODE, report, clock=lambda: NOW, grace_s=1.0)
    runner.open_journal(journal_path(tmp_path, NODE))
    return runner


def alive(pid: int) -> bool:
    return process_start_ticks(pid) is not None


def test_attempts_are_journaled_until_their_end_is_reported(tmp_path: Path) -> None:
    report = Collect()
    runner = runner_with_journal(tmp_path, report)
    runner.start(assignment([sys.executable, "-c", "pass"], task_id="ok"))
    report.wait(TaskCompleted)
    runner.start(assignment([str(tmp_path / "missing")], task_id="bad"))
    runner.close_journal()
    journal = AttemptJournal(journal_path(tmp_path, NODE))
    try:
        assert journal.unfinished() == []
        assert sorted(journal.ended_keys()) == [("bad", 1), ("ok", 1)]
    finally:
        journal.close()
    outcomes = {r["task_id"]: r.get("outcome") for r in lines(journal_path(tmp_path, NODE))}
    assert outcomes == {"ok": "completed", "bad": "failed"}


def test_an_undelivered_end_leaves_the_attempt_unfinished(tmp_path: Path) -> None:
    report = Collect(failing=("task.completed",))
    runner = runner_with_journal(tmp_path, report)
    runner.start(assignment([sys.executable, "-c", "pass"]))
    deadline = time.monotonic() + WAIT_S
    while runner.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    runner.stop_all()
    runner.close_journal()
    journal = AttemptJournal(journal_path(tmp_path, NODE))
    try:
        assert [e.key for e in journal.unfinished()] == [("t1", 1)]
    finally:
        journal.close()


def test_recover_reports_lost_attempts_and_stops_their_orphans(tmp_path: Path) -> None:
    # A previous executor started t1 (its process still runs: it was in its own session)
    # and ended t2; then it died.
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    progress_file = tmp_path / "t1.1.progress"
    progress_file.write_text("0.5")
    previous = AttemptJournal(journal_path(tmp_path, NODE))
    previous.started(entry("t1", resume_progress=0.2, progress_file=str(progress_file)))
    previous.process(("t1", 1), orphan.pid, process_start_ticks(orphan.pid), boot_id())
    previous.started(entry("t2"))
    previous.ended(("t2", 1), "completed")
    previous.close()
    try:
        report = Collect()
        runner = runner_with_journal(tmp_path, report)
        assert runner.recover() == [("t1", 1)]
        assert orphan.wait(timeout=WAIT_S) == -signal.SIGTERM
        progress, lost = report
        assert isinstance(progress, TaskProgress)
        assert progress.progress == pytest.approx(0.6)  # 0.2 + 0.8 * 0.5
        assert isinstance(lost, TaskLost)
        assert (lost.task_id, lost.attempt, lost.node_id) == ("t1", 1, NODE)
        assert lost.reason == RESTART_REASON
        assert runner.recover() == []  # marked ended
        # Redelivered assignments of the lost and of the ended attempt are ignored.
        runner.start(assignment([sys.executable, "-c", "pass"], task_id="t1"))
        runner.start(assignment([sys.executable, "-c", "pass"], task_id="t2"))
        assert runner.running() == []
        assert len(report) == 2
        runner.close_journal()
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_recover_never_signals_a_process_that_reused_the_pid(tmp_path: Path) -> None:
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        start = process_start_ticks(bystander.pid)
        assert start is not None
        previous = AttemptJournal(journal_path(tmp_path, NODE))
        previous.started(entry("t1"))
        previous.process(("t1", 1), bystander.pid, start - 1, boot_id())  # another process
        previous.close()
        report = Collect()
        runner = runner_with_journal(tmp_path, report)
        assert runner.recover() == [("t1", 1)]
        assert [type(e) for e in report] == [TaskLost]
        time.sleep(0.2)
        assert bystander.poll() is None
        runner.close_journal()
    finally:
        bystander.kill()
        bystander.wait()


def test_an_unreported_loss_is_reported_again_next_time(tmp_path: Path) -> None:
    previous = AttemptJournal(journal_path(tmp_path, NODE))
    previous.started(entry("t1"))
    previous.close()
    failing = Collect(failing=("task.lost",))
    runner = runner_with_journal(tmp_path, failing)
    assert runner.recover() == [("t1", 1)]
    runner.close_journal()
    report = Collect()
    runner = runner_with_journal(tmp_path, report)
    assert runner.recover() == [("t1", 1)]
    assert [type(e) for e in report] == [TaskLost]
    runner.close_journal()


def test_a_real_attempt_is_journaled_with_its_process(tmp_path: Path) -> None:
    report = Collect()
    runner = runner_with_journal(tmp_path, report)
    runner.start(assignment([sys.executable, "-c", "import time; time.sleep(60)"]))
    report.wait(TaskStarted)
    records = lines(journal_path(tmp_path, NODE))
    started, process = records
    assert started["event"] == "started"
    assert started["progress_file"] == str(runner.progress_path("t1", 1))
    assert process["event"] == "process"
    assert isinstance(process["pid"], int)
    assert process["pid_start"] == process_start_ticks(process["pid"])
    assert alive(process["pid"])
    assert os.getpgid(process["pid"]) == process["pid"]
    runner.stop_all()
    assert isinstance(report.wait(TaskLost), TaskLost)
    assert not [e for e in report if isinstance(e, TaskFailed)]
    runner.close_journal()
