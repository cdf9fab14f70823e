"""Tests of the load-forecast evaluation: series derivation, CSV reading, scoring, CLI."""

from __future__ import annotations

import json
import math
import random
from itertools import pairwise
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from streamsched.cli.forecast_load_cmd import load
from streamsched.loadeval import (
    ALL,
    ANY,
    RIVER_MODEL,
    derive_series,
    evaluate_series,
    read_series_csv,
    write_series_csv,
)
from streamsched.scheduler.model import TaskSpec
from streamsched.scheduler.trace import Trace, TraceJob
from streamsched.traces import load_trace

# The lead registers ``load`` as ``streamsched forecast-eval load``; a group of the same
# shape is built here so the command is tested as users will call it.
app = typer.Typer()
forecast_eval = typer.Typer()
forecast_eval.command("load")(load)
app.add_typer(forecast_eval, name="forecast-eval")
runner = CliRunner()


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, ["forecast-eval", "load", *(str(a) for a in args)])


def assert_bad_input(result: Result, *needles: str) -> None:
    """Exit code 2, one ``error:`` line naming what is wrong, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def _job(i: int, arrival_s: float, hardware: frozenset[str]) -> TraceJob:
    spec = TaskSpec(task_id=f"t{i}", task_type="train", allowed_hardware=hardware)
    return TraceJob(spec=spec, arrival_s=arrival_s, true_runtime_s={"cpu": 1.0})


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "series.csv"
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ derivation
def test_derive_counts_per_interval_and_class() -> None:
    jobs = (
        _job(0, 0.0, frozenset({"gpu-v100", "gpu-k80"})),
        _job(1, 599.0, frozenset({"gpu-v100"})),
        _job(2, 1800.0, frozenset()),
    )
    series = derive_series(Trace(name="t", jobs=jobs), 600.0)
    assert series.times == [0.0, 600.0, 1200.0, 1800.0]
    assert series.columns == {
        ALL: [2.0, 0.0, 0.0, 1.0],
        ANY: [0.0, 0.0, 0.0, 1.0],
        "gpu-k80": [1.0, 0.0, 0.0, 0.0],
        "gpu-v100": [2.0, 0.0, 0.0, 0.0],
    }


def test_derive_gavel_sample_and_round_trip_csv(tmp_path: Path) -> None:
    trace = load_trace("gavel:sample")
    series = derive_series(trace, 600.0)
    assert sum(series.columns[ALL]) == len(trace.jobs)
    assert len(series.times) == int(max(j.arrival_s for j in trace.jobs) // 600) + 1
    for name in ("gpu-k80", "gpu-p100", "gpu-v100"):
        allowed = sum(1 for j in trace.jobs if name in j.spec.allowed_hardware)
        assert sum(series.columns[name]) == allowed
    path = tmp_path / "sample.csv"
    write_series_csv(series, path)
    values, step = read_series_csv(path, "time_s", "gpu-k80")
    assert values == series.columns["gpu-k80"]
    assert step == 600.0


def test_derive_rejects_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        derive_series(load_trace("gavel:sample"), 0.0)


# ------------------------------------------------------------------ CSV errors
def test_csv_missing_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "t,v\n0,1\n60,2\n")
    with pytest.raises(ValueError, match=r"series\.csv:1: no column 'count'"):
        read_series_csv(path, "t", "count")


def test_csv_non_numeric_value(tmp_path: Path) -> None:
    path = _csv(tmp_path, "t,v\n0,1\n60,two\n")
    with pytest.raises(ValueError, match=r"series\.csv:3: column 'v': not a number: 'two'"):
        read_series_csv(path, "t", "v")


def test_csv_irregular_timestamps(tmp_path: Path) -> None:
    path = _csv(tmp_path, "t,v\n0,1\n60,2\n120,0\n300,4\n")
    with pytest.raises(ValueError, match=r"series\.csv:5: column 't': irregular timestamps"):
        read_series_csv(path, "t", "v")


def test_csv_iso_times(tmp_path: Path) -> None:
    path = _csv(tmp_path, "t,v\n2024-01-01T00:00:00,1\n2024-01-01T00:10:00,3\n")
    assert read_series_csv(path, "t", "v") == ([1.0, 3.0], 600.0)


# ------------------------------------------------------------------ scoring
def test_evaluate_scores_every_model_on_the_same_steps() -> None:
    rng = random.Random(1)
    values = [float(rng.randint(0, 6)) for _ in range(400)]
    scores, meta = evaluate_series(values, season=24)
    assert set(scores) == {RIVER_MODEL, "naive", "seasonal-naive"}
    assert all(s.scored == 400 - 24 for s in scores.values())
    assert scores[RIVER_MODEL].interval_coverage is not None
    assert scores["naive"].interval_coverage is None
    assert meta["mape_skipped_zeros"] == sum(1 for v in values[24:] if v == 0)
    naive_mae = sum(abs(b - a) for a, b in pairwise(values[23:])) / 376
    assert math.isclose(scores["naive"].mae, naive_mae)


def test_seasonal_naive_is_exact_on_a_pure_season() -> None:
    values = [float(t % 5) for t in range(100)]
    scores, _ = evaluate_series(values, season=5)
    assert scores["seasonal-naive"].mae == 0.0
    assert scores["naive"].mae > 0.0


def test_evaluate_needs_steps_after_warmup() -> None:
    with pytest.raises(ValueError, match="warmup"):
        evaluate_series([1.0, 2.0], season=5)


# ------------------------------------------------------------------ CLI
def test_cli_trace_writes_json_and_series(tmp_path: Path) -> None:
    out, csv_out = tmp_path / "out.json", tmp_path / "series.csv"
    result = invoke("--trace", "gavel:sample", "--json", out, "--derive-out", csv_out)
    assert result.exit_code == 0, result.output
    assert "river-load" in result.stdout
    assert "seasonal-naive" in result.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data) == {RIVER_MODEL, "naive", "seasonal-naive", "meta"}
    assert data["meta"]["season"] == 144
    assert data["meta"]["column"] == ALL
    assert csv_out.read_text(encoding="utf-8").startswith("time_s,all,")


def test_cli_series_csv(tmp_path: Path) -> None:
    rows = "".join(f"{60 * t},{t % 7}\n" for t in range(300))
    path = _csv(tmp_path, "t,n\n" + rows)
    out = tmp_path / "out.json"
    args = ("--series", path, "--time-col", "t", "--value-col", "n", "--season", "7")
    result = invoke(*args, "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["meta"]["interval_s"] == 60.0
    assert data["meta"]["scored"] == 300 - 7
    assert data["seasonal-naive"]["mae"] == 0.0


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ((), ("exactly one of --series",)),
        (("--trace", "gavel:sample", "--series", "x.csv"), ("exactly one of",)),
        (("--trace", "nope:x"), ("trace spec",)),
        (("--trace", "gavel:sample", "--value-col", "tpu"), ("--value-col 'tpu'", "gpu-k80")),
        (("--trace", "gavel:sample", "--interval-s", "-5"), ("--interval-s",)),
        (("--series", "/nonexistent/s.csv"), ("/nonexistent/s.csv",)),
        (("--series", "/nonexistent/s.csv", "--derive-out", "o.csv"), ("--derive-out",)),
    ],
)
def test_cli_bad_input(args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    assert_bad_input(invoke(*args), *needles)


def test_cli_bad_csv_names_line_and_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "time_s,all\n0,1\n600,x\n")
    assert_bad_input(invoke("--series", path), "series.csv:3", "column 'all'")


def test_shared_gavel_trace_series(shared_traces: Path) -> None:
    """A small shared Gavel trace: every job counted once in ``all``, and scored."""
    trace = load_trace(f"gavel:{shared_traces / 'gavel-philly' / '23dbec.trace'}")
    series = derive_series(trace, 600.0)
    assert sum(series.columns[ALL]) == len(trace.jobs)
    scores, meta = evaluate_series(series.columns[ALL], season=144)
    assert meta["scored"] == len(series.times) - 144
    assert all(s.scored == meta["scored"] for s in scores.values())
