"""The executor's own checks before an attempt runs: the executable allow-list and the
governance re-check (agents/runner.py ``ExecutionGuard``), and the runner executing the
file the guard resolved."""

from __future__ import annotations

import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamsched.agents.runner import (
    MAX_REASON_CHARS,
    AttemptRunner,
    ExecAllowList,
    ExecutionGuard,
    LifecycleEvent,
    governance_mismatches,
    governance_refusal,
    resolve_executable,
)
from streamsched.cli import app
from streamsched.cli.executor_cmd import allow_list_from_options
from streamsched.schemas.decisions import Assignment
from streamsched.schemas.lifecycle import TaskCompleted, TaskFailed, TaskStarted

pytestmark = pytest.mark.timeout(10)

NODE = "v100-3"


def _exe(path: Path, body: str = "#!/bin/sh\necho hi\n") -> Path:
    """An executable script at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


def _assignment(
    command: tuple[str, ...],
    *,
    env: dict[str, str] | None = None,
    governance: dict[str, str] | None = None,
    task_id: str = "t1",
) -> Assignment:
    return Assignment(
        occurred_at=datetime.now(UTC),
        source="test",
        decision_id="d1",
        task_id=task_id,
        attempt=1,
        node_id=NODE,
        hardware="gpu-v100",
        predicted_runtime_s=1.0,
        command=command,
        env=env or {},
        tenant="team-a",
        task_type="train",
        governance=governance or {},
    )


# ------------------------------------------------------------------- resolving argv[0]


def test_resolve_looks_up_a_bare_name_in_the_given_path_first_match_wins(tmp_path: Path) -> None:
    first = _exe(tmp_path / "a" / "train")
    _exe(tmp_path / "b" / "train")
    (tmp_path / "c").mkdir()
    not_executable = tmp_path / "c" / "train"
    not_executable.write_text("data")
    path = os.pathsep.join(str(tmp_path / d) for d in ("c", "missing", "a", "b"))
    assert resolve_executable("train", {"PATH": path}) == str(first.resolve())
    assert resolve_executable("nope", {"PATH": path}) is None


def test_resolve_takes_a_name_with_a_slash_relative_to_cwd_and_resolves_symlinks(
    tmp_path: Path,
) -> None:
    real = _exe(tmp_path / "real" / "tool")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").symlink_to(real)
    resolved = resolve_executable("./bin/tool", {"PATH": ""}, cwd=str(tmp_path))
    assert resolved == str(real.resolve())
    assert resolve_executable("./bin/absent", {}, cwd=str(tmp_path)) is None


# ------------------------------------------------------------------- allow-list matching


def test_exact_entry_allows_that_file_only(tmp_path: Path) -> None:
    tool = _exe(tmp_path / "bin" / "tool")
    other = _exe(tmp_path / "bin" / "other")
    allow = ExecAllowList([str(tool)])
    assert allow.allows(str(tool.resolve()))
    assert not allow.allows(str(other.resolve()))


def test_glob_matches_within_one_path_component(tmp_path: Path) -> None:
    train = _exe(tmp_path / "bin" / "train")
    nested = _exe(tmp_path / "bin" / "sub" / "train")
    outside = _exe(tmp_path / "elsewhere" / "train")
    allow = ExecAllowList([f"{tmp_path}/bin/*"])
    assert allow.allows(str(train.resolve()))
    assert not allow.allows(str(nested.resolve()))
    assert not allow.allows(str(outside.resolve()))
    assert ExecAllowList([f"{tmp_path}/bin/tr?in"]).allows(str(train.resolve()))


def test_entries_have_their_symlinks_resolved(tmp_path: Path) -> None:
    real = _exe(tmp_path / "opt" / "python3.11")
    (tmp_path / "usr").mkdir()
    (tmp_path / "usr" / "python3").symlink_to(real)
    (tmp_path / "linkdir").symlink_to(tmp_path / "opt")
    # an exact entry that is a symlink allows the file it points to
    assert ExecAllowList([str(tmp_path / "usr" / "python3")]).allows(str(real.resolve()))
    # a glob under a symlinked directory matches files of the real directory
    assert ExecAllowList([f"{tmp_path}/linkdir/*"]).allows(str(real.resolve()))


def test_bad_entries_are_refused_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'bin/tool': expected an absolute path or glob"):
        ExecAllowList(["bin/tool"])
    with pytest.raises(ValueError, match="absolute"):
        ExecAllowList([" "])


def test_allow_list_file_skips_comments_and_names_a_bad_line(tmp_path: Path) -> None:
    good = tmp_path / "allow.txt"
    good.write_text("# ML tools\n/opt/ml/bin/*\n\n  /usr/bin/env  \n")
    assert ExecAllowList.read(good) == ["/opt/ml/bin/*", "/usr/bin/env"]
    bad = tmp_path / "bad.txt"
    bad.write_text("/usr/bin/env\npython3\n")
    with pytest.raises(ValueError, match=rf"{bad}:2: allow-list entry 'python3'"):
        ExecAllowList.read(bad)


def test_cli_options_build_one_list_and_errors_name_the_option(tmp_path: Path) -> None:
    assert allow_list_from_options(None, None) is None
    listed = tmp_path / "allow.txt"
    listed.write_text("/usr/bin/env\n")
    allow = allow_list_from_options(["/opt/ml/bin/*"], [listed])
    assert allow is not None
    assert allow.patterns == ("/opt/ml/bin/*", "/usr/bin/env")
    with pytest.raises(ValueError, match=r"^--allow-exec: allow-list entry 'train'"):
        allow_list_from_options(["train"], None)
    with pytest.raises(ValueError, match=r"^--allow-exec-file .*missing\.txt"):
        allow_list_from_options(None, [tmp_path / "missing.txt"])


def test_cli_rejects_a_relative_entry_without_a_traceback() -> None:
    result = CliRunner().invoke(
        app,
        [
            "executor",
            "--node-id",
            "n1",
            "--hardware",
            "cpu",
            "--cpus",
            "1",
            "--memory",
            "1GiB",
            "--allow-exec",
            "python3",
        ],
    )
    assert result.exit_code != 0
    assert "--allow-exec: allow-list entry 'python3'" in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------- guard verdicts


def test_allowed_executable_is_resolved_through_the_attempts_path(tmp_path: Path) -> None:
    train = _exe(tmp_path / "bin" / "train")
    guard = ExecutionGuard(NODE, {}, ExecAllowList([f"{tmp_path}/bin/*"]))
    assignment = _assignment(("train", "--epochs", "3"), env={"PATH": str(tmp_path / "bin")})
    verdict = guard.check(assignment, runs_command=True)
    assert verdict.refusal is None
    assert verdict.executable == str(train.resolve())


def test_a_path_set_by_the_assignment_cannot_smuggle_in_another_binary(tmp_path: Path) -> None:
    _exe(tmp_path / "bin" / "python3")
    evil = _exe(tmp_path / "evil" / "python3")
    guard = ExecutionGuard(NODE, {}, ExecAllowList([f"{tmp_path}/bin/*"]))
    assignment = _assignment(("python3",), env={"PATH": str(tmp_path / "evil")})
    verdict = guard.check(assignment, runs_command=True)
    assert verdict.refusal is not None
    assert verdict.refusal.kind == "executable"
    assert str(evil.resolve()) in verdict.refusal.reason


def test_symlink_in_an_allowed_directory_pointing_outside_is_refused(tmp_path: Path) -> None:
    outside = _exe(tmp_path / "home" / "payload")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "train").symlink_to(outside)
    guard = ExecutionGuard(NODE, {}, ExecAllowList([f"{tmp_path}/bin/*"]))
    verdict = guard.check(_assignment((str(tmp_path / "bin" / "train"),)), runs_command=True)
    assert verdict.refusal is not None
    assert str(outside.resolve()) in verdict.refusal.reason


def test_refusal_names_the_executable_the_node_and_the_allow_list(tmp_path: Path) -> None:
    tool = _exe(tmp_path / "bin" / "tool")
    guard = ExecutionGuard(NODE, {}, ExecAllowList(["/opt/ml/bin/*", "/usr/bin/env"]))
    verdict = guard.check(_assignment((str(tool),)), runs_command=True)
    assert verdict.refusal is not None
    assert verdict.refusal.reason == (
        f"executable {str(tool)!r} is not allowed on node {NODE}; "
        "allow-list: /opt/ml/bin/*, /usr/bin/env"
    )
    missing = guard.check(_assignment(("no-such-tool",), env={"PATH": "/nonexistent"}), True)
    assert missing.refusal is not None
    assert missing.refusal.reason == (
        "executable 'no-such-tool' not found on PATH '/nonexistent'; "
        "allow-list: /opt/ml/bin/*, /usr/bin/env"
    )


def test_without_allow_list_or_command_or_in_replay_nothing_is_resolved(tmp_path: Path) -> None:
    tool = str(_exe(tmp_path / "tool"))
    assert ExecutionGuard(NODE).check(_assignment((tool,)), runs_command=True).executable is None
    strict = ExecutionGuard(NODE, {}, ExecAllowList([]))
    assert strict.check(_assignment((tool,)), runs_command=False).refusal is None  # replay
    assert strict.check(_assignment(()), runs_command=True).refusal is None  # no command
    refused = strict.check(_assignment((tool,)), runs_command=True).refusal
    assert refused is not None
    assert "allow-list: (empty: nothing may run)" in refused.reason


# ------------------------------------------------------------------- governance


def test_governance_matches_when_every_tag_is_an_equal_label() -> None:
    labels = {"data_region": "eu", "pool": "a", "extra": "x"}
    assert governance_mismatches({"data_region": "eu", "pool": "a"}, labels) == []
    assert governance_refusal({"data_region": "eu"}, labels, NODE) is None


def test_governance_mismatch_and_missing_label_are_named() -> None:
    labels = {"data_region": "us"}
    assert governance_refusal({"data_region": "eu"}, labels, NODE) == (
        "governance: task requires data_region=eu, node v100-3 has data_region=us"
    )
    assert governance_refusal({"pool": "a", "data_region": "eu"}, labels, NODE) == (
        "governance: task requires data_region=eu, node v100-3 has data_region=us; "
        "task requires pool=a, node v100-3 has no pool label"
    )
    assert governance_mismatches({"pool": "a"}, {}) == [("pool", "a", None)]


def test_empty_governance_runs_anywhere() -> None:
    assert governance_refusal({}, {}, NODE) is None
    assert ExecutionGuard(NODE, {}).check(_assignment(("x",)), runs_command=True).refusal is None


def test_governance_is_checked_in_replay_mode_and_before_the_executable() -> None:
    guard = ExecutionGuard(NODE, {"data_region": "us"}, ExecAllowList([]))
    assignment = _assignment(("anything",), governance={"data_region": "eu"})
    for runs_command in (True, False):
        refusal = guard.check(assignment, runs_command=runs_command).refusal
        assert refusal is not None
        assert refusal.kind == "governance"


# ------------------------------------------------------------------- runner


class _Reports:
    def __init__(self) -> None:
        self.events: list[LifecycleEvent] = []
        self.done = threading.Event()

    def __call__(self, event: LifecycleEvent) -> None:
        self.events.append(event)
        if not isinstance(event, TaskStarted):
            self.done.set()


def test_runner_executes_the_resolved_file_keeping_argv(tmp_path: Path) -> None:
    reports = _Reports()
    runner = AttemptRunner(tmp_path, NODE, reports)
    code = "print('argv0=' + open('/proc/self/cmdline').read().split(chr(0))[0])"
    # argv[0] names no file at all: only the resolved executable makes it run
    runner.start(_assignment(("renamed-python", "-c", code)), executable=sys.executable)
    assert reports.done.wait(5.0)
    assert isinstance(reports.events[-1], TaskCompleted)
    assert "argv0=renamed-python" in runner.log_path("t1", 1).read_text()


def test_fail_unstarted_reports_once_and_cuts_long_reasons(tmp_path: Path) -> None:
    reports = _Reports()
    runner = AttemptRunner(tmp_path, NODE, reports)
    assignment = _assignment(("x",))
    assert runner.fail_unstarted(assignment, "r" * (MAX_REASON_CHARS + 10)) is True
    assert runner.fail_unstarted(assignment, "again") is False  # redelivered: ignored
    runner.start(assignment)  # an ended attempt never starts
    (event,) = reports.events
    assert isinstance(event, TaskFailed)
    assert event.retryable is False
    assert len(event.reason) == MAX_REASON_CHARS
    assert not runner.log_path("t1", 1).exists()
