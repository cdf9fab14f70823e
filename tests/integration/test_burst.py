"""A small burst in CI: ``streamsched bench burst --count 2000`` as a real subprocess (its
own embedded broker, processor, placement agent and two executors running ``true``); every
submission must be accounted for, and every process's peak RSS reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(300)]


def test_burst_of_2000_submissions_loses_none(tmp_path: Path) -> None:
    out = tmp_path / "burst.json"
    argv = [
        sys.executable,
        "-m",
        "streamsched.cli",
        *["bench", "burst", "--count", "2000", "--executors", "2", "--slots", "16"],
    ]
    argv += ["--run-dir", str(tmp_path / "run"), "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=280, check=False)
    assert out.exists(), done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["produced"] == data["count"] == 2000
    assert data["crashes"] == [], data["crash_logs"]
    assert data["unaccounted"] == 0, data["unaccounted_sample"]
    assert data["terminal"] + data["rejected"] == 2000
    assert data["rejected_without_reason"] == 0
    peaks = data["peak_rss_mib"]
    assert {"broker", "processor", "placement", "producer", "burst-cpu-0", "burst-cpu-1"} <= set(
        peaks
    )
    assert all(value > 0 for value in peaks.values()), peaks
    # One attempt reported twice, or two verdicts, would be a new bug: fail.
    assert data["duplicates"]["same_attempt"] == 0, data["duplicate_sample"]
    assert data["duplicates"]["verdicts"] == 0, data["duplicate_sample"]
    assert data["duplicate_completions"] == 0, data["duplicate_sample"]
    assert data["ok"] is True
    assert done.returncode == 0, done.stdout[-3000:]
