"""A short chaos run in CI: ``streamsched chaos`` as a real subprocess (its own embedded
broker, processor, placement agent and four executors running ``sleep``), with two
executors SIGKILLed and restarted, one processor restart and one placement restart; the
invariants are read back from its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(300)]


def test_chaos_run_loses_nothing_and_completes_nothing_twice(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    argv = [
        sys.executable,
        "-m",
        "streamsched.cli",
        *["chaos", "--tasks", "200", "--kills", "2", "--restarts", "1"],
    ]
    argv += ["--run-dir", str(tmp_path / "run"), "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=280, check=False)
    assert out.exists(), done.stderr[-3000:]
    data = json.loads(out.read_text())
    context = (done.stdout[-4000:], data["faults"], data["lost_sample"], data["duplicate_sample"])
    assert data["tasks"] == 200
    assert (data["executor_kills"], data["processor_restarts"], data["placement_restarts"]) == (
        2,
        1,
        1,
    )
    assert sorted(f["kind"] for f in data["faults"]) == [
        "executor",
        "executor",
        "placement",
        "processor",
    ]
    assert data["crashes"] == [], data["crash_logs"]
    assert data["lost"] == 0, context
    assert data["terminal"] == data["tasks"], context
    assert data["unrecovered_faults"] == 0, context
    assert data["max_recovery_s"] > 0
    assert set(data) >= {"wall_s", "states", "peak_rss_mib", "machine", "config"}
    assert {"processor", "placement", "broker"} <= set(data["peak_rss_mib"])
    # One attempt reported twice, or two verdicts, would be a new bug: fail.
    assert data["duplicates"]["same_attempt"] == 0, context
    assert data["duplicates"]["verdicts"] == 0, context
    assert data["duplicate_completions"] == 0, data["duplicate_histories"]
    assert data["ok"] is True
    assert done.returncode == 0, done.stdout[-3000:]
