"""End-to-end tests of the ``streamsched`` command line, in-process (CliRunner) and as a
real subprocess of the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from streamsched import __version__
from streamsched.cli import app
from streamsched.scheduler.policies import POLICY_NAMES

SAMPLE_CLUSTER = "v100=4,p100=4,k80=4"
#: For the packaged JSONL sample: V100s and a CPU node, classes every job lists in its
#: ``runtime_s`` or may not use (with P100/K80/T4 nodes, unconstrained jobs can be placed
#: where the sample gives no true runtime, which the simulator refuses).
JSONL_CLUSTER = "v100=4,cpu=1"
REPORT_KEYS = {
    "jobs",
    "avg_jct_s",
    "p50_jct_s",
    "p95_jct_s",
    "p99_jct_s",
    "makespan_s",
    "avg_queue_s",
    "gpu_utilization",
    "deadline_misses",
    "unallocated_gpu_fraction",
    "runtime_mae_s",
    "wall_s",
    "meta",
}
SCRIPT = Path(sys.executable).parent / "streamsched"

runner = CliRunner()


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def assert_bad_input(result: Result, *needles: str) -> None:
    """Exit code 2, one ``error:`` line naming what is wrong, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture
def sample_jsonl() -> Iterator[Path]:
    with as_file(files("streamsched") / "data" / "sample-submissions.jsonl") as path:
        yield path


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


# ---------------------------------------------------------------------- simulate
def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"streamsched {__version__}"


def test_simulate_sample_fifo_writes_json_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    plots = tmp_path / "plots"
    result = invoke(
        "simulate", "--trace", "gavel:sample", "--cluster", SAMPLE_CLUSTER,
        "--policy", "fifo", "--json", out, "--plot", plots, "--param", "sjf_weight=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "clamped 7 jobs from 2 to 1 GPUs" in result.stdout  # the loader's notes come first
    assert "fifo" in result.stdout
    data = read_json(out)
    assert list(data) == ["fifo"]
    report = data["fifo"]
    assert set(report) >= REPORT_KEYS
    assert report["jobs"] > 0
    assert report["unallocated_gpu_fraction"] is None  # only with --no-departures
    meta = report["meta"]
    assert meta["trace"] == "gavel-sample"
    assert meta["cluster"] == SAMPLE_CLUSTER
    assert meta["skipped_by_loader"] == 0  # clamped instead (see the loader notes)
    assert meta["params"] == {"sjf_weight": 2.0}
    assert any("clamped 7 jobs" in note for note in meta["loader_notes"])
    assert {p.name for p in plots.iterdir()} == {"jct_cdf.png", "gpu_utilization.png"}


def test_simulate_all_policies_on_jsonl(tmp_path: Path, sample_jsonl: Path) -> None:
    trace = tmp_path / "tiny.jsonl"
    trace.write_bytes(sample_jsonl.read_bytes())
    out = tmp_path / "all.json"
    result = invoke(
        "simulate", "--trace", f"jsonl:{trace}", "--cluster", JSONL_CLUSTER,
        "--policy", "all", "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = read_json(out)
    assert list(data) == list(POLICY_NAMES)
    for report in data.values():
        assert report["jobs"] > 0
        assert report["meta"]["trace"] == "tiny"
    assert "speed-up vs fifo" in result.stdout
    assert "vs oracle" in result.stdout
    for name in POLICY_NAMES:
        assert name in result.stdout


def test_simulate_no_departures_on_openb_slice(shared_traces: Path, tmp_path: Path) -> None:
    openb = shared_traces / "alibaba-openb-2023"
    pods = tmp_path / "pods.csv"
    nodes = tmp_path / "nodes.csv"
    pod_lines = (openb / "openb_pod_list_default.csv").read_text(encoding="utf-8").splitlines()
    node_lines = (openb / "openb_node_list_gpu_node.csv").read_text(encoding="utf-8").splitlines()
    pods.write_text("\n".join(pod_lines[:301]) + "\n", encoding="utf-8")
    nodes.write_text("\n".join(node_lines[:41]) + "\n", encoding="utf-8")
    out = tmp_path / "packing.json"
    plots = tmp_path / "plots"
    result = invoke(
        "simulate", "--trace", f"openb:{pods}", "--nodes", nodes, "--no-departures",
        "--policy", "fifo,best-fit,forecast", "--json", out, "--plot", plots,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "unalloc GPU" in result.stdout
    data = read_json(out)
    assert list(data) == ["fifo", "best-fit", "forecast"]
    for report in data.values():
        assert 0.0 <= report["unallocated_gpu_fraction"] <= 1.0
        assert report["meta"]["departures"] is False
        assert report["meta"]["nodes"] == 40
    assert [p.name for p in plots.iterdir()] == ["unallocated_gpu.png"]


def test_demo_runs_every_policy() -> None:
    result = invoke("demo")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("demo:")
    for name in POLICY_NAMES:
        assert name in result.stdout


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--policy", "nope"], ["--policy", "unknown policy 'nope'", "forecast"]),
        (["--cluster", "v100=abc"], ["--cluster", "v100=abc"]),
        (["--cluster", "v100=4,,k80=4"], ["--cluster", "empty entry"]),
        (["--param", "bogus=1"], ["--param", "bogus", "sjf_weight"]),
        (["--param", "sjf_weight=fast"], ["--param", "must be a number"]),
        (["--fill", "0"], ["--fill"]),
        (["--json", "/no/such/dir/out.json"], ["--json", "/no/such/dir"]),
    ],
)
def test_simulate_bad_options(args: list[str], needles: list[str]) -> None:
    base = ["simulate", "--trace", "gavel:sample", "--cluster", SAMPLE_CLUSTER]
    assert_bad_input(invoke(*base, *args), *needles)


def test_simulate_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.trace"
    result = invoke("simulate", "--trace", f"gavel:{missing}", "--cluster", SAMPLE_CLUSTER)
    assert_bad_input(result, str(missing), "not found")


def test_simulate_needs_a_cluster_for_gavel() -> None:
    assert_bad_input(invoke("simulate", "--trace", "gavel:sample"), "--cluster is required")


def test_simulate_bad_trace_spec() -> None:
    result = invoke("simulate", "--trace", "csv:x", "--cluster", SAMPLE_CLUSTER)
    assert_bad_input(result, "csv:x", "gavel:PATH")


def test_simulate_malformed_trace_line(tmp_path: Path, sample_jsonl: Path) -> None:
    lines = sample_jsonl.read_text(encoding="utf-8").splitlines()
    lines[4] = '{"at_s": 1.0, "runtime_s": {"cpu": 5.0}, "event": '  # truncated JSON
    trace = tmp_path / "broken.jsonl"
    trace.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = invoke("simulate", "--trace", f"jsonl:{trace}", "--cluster", JSONL_CLUSTER)
    assert_bad_input(result, f"{trace}:5")


# ---------------------------------------------------------------------- subprocess
def test_console_script_runs_simulate(tmp_path: Path) -> None:
    out = tmp_path / "fifo.json"
    proc = subprocess.run(
        [SCRIPT, "simulate", "--trace", "gavel:sample", "--cluster", SAMPLE_CLUSTER,
         "--policy", "fifo", "--json", out],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "fifo" in proc.stdout
    assert read_json(out)["fifo"]["jobs"] > 0


def test_console_script_bad_trace_line_exits_2(tmp_path: Path) -> None:
    trace = tmp_path / "bad.gavel.trace"
    trace.write_text("not\ta\tgavel\tline\n", encoding="utf-8")
    with as_file(files("streamsched") / "data" / "gavel-throughputs.json") as tput:
        proc = subprocess.run(
            [SCRIPT, "simulate", "--trace", f"gavel:{trace}", "--throughputs", tput,
             "--cluster", SAMPLE_CLUSTER],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith(f"error: {trace}:1:"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------- schemas
def test_schemas_export_and_validate(tmp_path: Path, sample_jsonl: Path) -> None:
    out_dir = tmp_path / "schemas"
    result = invoke("schemas", "export", out_dir)
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out_dir.iterdir())
    assert "task.submitted.schema.json" in written
    assert all(name in result.stdout for name in written)
    for name in written:
        assert read_json(out_dir / name)["$schema"].startswith("https://json-schema.org/")

    first = next(
        json.loads(line)
        for line in sample_jsonl.read_text(encoding="utf-8").splitlines()
        if line.startswith("{")
    )
    good = tmp_path / "event.json"
    good.write_text(json.dumps(first["event"]), encoding="utf-8")
    result = invoke("schemas", "validate", good)
    assert result.exit_code == 0, result.output
    assert "OK" in result.stdout
    assert "task.submitted" in result.stdout

    bad = tmp_path / "bad-event.json"
    bad.write_text(json.dumps({**first["event"], "tenant": ""}), encoding="utf-8")
    assert_bad_input(invoke("schemas", "validate", bad), str(bad), "tenant")
    assert_bad_input(invoke("schemas", "validate", tmp_path / "absent.json"), "absent.json")


# ---------------------------------------------------------------------- bench
def test_bench_core_tiny(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = invoke(
        "bench", "core", "--nodes", "50", "--queued", "200", "--decisions", "20", "--json", out
    )
    assert result.exit_code == 0, result.output
    assert "p50 us" in result.stdout
    assert "p99 us" in result.stdout
    data = read_json(out)
    assert set(data["machine"]) >= {"platform", "python", "cpu_count"}
    (point,) = data["points"]
    assert (point["nodes"], point["queued_target"]) == (50, 200)
    assert 0 < point["decisions"] <= 20
    assert point["queued_at_start"] >= 150  # the backlog stayed queued
    assert point["p50_us"] > 0
    assert point["p99_us"] >= point["p50_us"]


def test_bench_core_bad_sizes() -> None:
    assert_bad_input(invoke("bench", "core", "--nodes", "10,abc"), "--nodes", "abc")
    assert_bad_input(invoke("bench", "core", "--policy", "oracle"), "oracle")


def test_chaos_help_names_the_faults_and_the_json() -> None:
    result = invoke("chaos", "--help")
    assert result.exit_code == 0, result.output
    for option in ("--tasks", "--kills", "--restarts", "--placement-restarts", "--json"):
        assert option in result.stdout


def test_chaos_bad_settings_exit_2_before_starting_anything() -> None:
    assert_bad_input(invoke("chaos", "--rate", "0"), "--rate")
    assert_bad_input(invoke("chaos", "--task-s", "inf"), "--task-s")


def test_bench_burst_help_names_the_count_and_the_json() -> None:
    result = invoke("bench", "burst", "--help")
    assert result.exit_code == 0, result.output
    for option in ("--count", "--executors", "--slots", "--json"):
        assert option in result.stdout
