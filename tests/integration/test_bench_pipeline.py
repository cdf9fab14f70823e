"""``streamsched bench pipeline`` end to end with a tiny configuration: the figures it
writes, not the speed targets (the machine running the tests decides those)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamsched.cli import app

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


def test_bench_pipeline_writes_sane_figures(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    args = ["bench", "pipeline", "--rates", "200", "--duration-s", "2", "--pings", "100"]
    args += ["--nodes", "4", "--json", str(out)]
    result = CliRunner().invoke(app, args, env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    assert result.exit_code == 0, result.output
    assert "pipeline p99 / raw p99" in result.output
    data = json.loads(out.read_text())
    assert {"machine", "config", "raw_round_trip", "points", "ratio", "sustained_per_s"} <= set(
        data
    )
    assert data["machine"]["cpu_count"] >= 1
    assert data["machine"]["broker"].startswith("external")  # the fixture's broker was used
    raw = data["raw_round_trip"]
    assert raw["count"] == 100
    assert 0 < raw["p50_ms"] <= raw["p99_ms"] <= raw["max_ms"]
    (point,) = data["points"]
    assert point["offered_per_s"] == 200
    assert point["submitted"] == 400
    assert point["assigned"] == 400  # every submission was placed once, none lost
    latency = point["latency"]
    assert latency["count"] == 400
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert 0 < point["achieved_per_s"] <= 200 * 1.01
    agent = point["agent"]
    assert agent["batches"] >= 1
    assert agent["records"] >= 400  # the submissions, plus completions and heartbeats
    for part in ("decode", "core", "publish", "flush", "commit"):
        assert agent[f"{part}_ms_per_batch"] >= 0
    assert point["cpu"]["agent_cores"] > 0
    ratio = data["ratio"]
    assert ratio["rate_per_s"] == 200
    assert math.isclose(
        ratio["pipeline_p99_over_raw_p99"], latency["p99_ms"] / raw["p99_ms"], rel_tol=1e-9
    )


def test_bench_pipeline_refuses_bad_rates() -> None:
    result = CliRunner().invoke(app, ["bench", "pipeline", "--rates", "0"])
    assert result.exit_code == 2
    assert "--rates" in result.output or "rates" in result.output
