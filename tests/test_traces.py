"""Trace loaders against the real shared traces, the packaged sample and malformed files."""

from __future__ import annotations

import csv
import json
import math
import pickle
import time
from pathlib import Path

import pytest

from streamsched.scheduler.model import PriorityClass
from streamsched.traces import TraceFormatError, load_gavel, load_openb, load_trace
from streamsched.traces.gavel import load_throughputs

Throughputs = dict[str, dict[str, dict[str, float]]]

README_COUNTS = {
    "0e4a51": 1181,
    "103959": 986,
    "2869ce": 533,
    "7f04ca": 972,
    "e13805": 607,
    "23dbec": 9,
    "51b7ef": 18,
}
GAVEL_HW = ("k80", "p100", "v100")
DATA = Path(__file__).resolve().parent.parent / "src" / "streamsched" / "data"


@pytest.fixture(scope="module")
def gavel_dir(shared_traces: Path) -> Path:
    return shared_traces / "gavel-philly"


@pytest.fixture(scope="module")
def throughputs(gavel_dir: Path) -> Throughputs:
    with open(gavel_dir / "simulation_throughputs.json") as f:
        data: Throughputs = json.load(f)
    return data


def _lines(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def _tput(data: Throughputs, hw: str, job: str, n: int) -> float:
    entry = data[hw].get(str((job, n)))
    return entry["null"] if entry else 0.0


# --- Gavel: real traces ---------------------------------------------------------------


@pytest.mark.parametrize(("stem", "count"), README_COUNTS.items())
def test_gavel_loads_every_line_as_job_or_skip(
    stem: str, count: int, gavel_dir: Path, throughputs: Throughputs
) -> None:
    path = gavel_dir / f"{stem}.trace"
    trace = load_gavel(path, gavel_dir / "simulation_throughputs.json", wide_jobs="reject")
    assert trace.name == stem
    assert len(trace.jobs) + len(trace.skipped) == count == len(_lines(path))
    # Independent expectation: a line loads iff some class has a positive throughput.
    loadable = {
        i
        for i, f in enumerate(_lines(path), start=1)
        if any(_tput(throughputs, hw, f[0], int(f[6])) > 0 for hw in GAVEL_HW)
    }
    assert {int(j.source_ref.split(":")[1]) for j in trace.jobs} == loadable
    assert len({j.spec.task_id for j in trace.jobs}) == len(trace.jobs)
    lines = _lines(path)
    for job in trace.jobs:
        f = lines[int(job.source_ref.split(":")[1]) - 1]
        assert job.spec.task_type == f[0]
        assert job.spec.gpus == int(f[6])
        assert job.spec.preemptible
        assert job.arrival_s == float(f[5])
        for hw in GAVEL_HW:
            t = _tput(throughputs, hw, f[0], int(f[6]))
            if t > 0:
                assert job.true_runtime_s[f"gpu-{hw}"] == pytest.approx(int(f[4]) / t)
            else:
                assert f"gpu-{hw}" not in job.true_runtime_s
    assert trace.notes[0] == f"{stem}.trace: loaded {len(trace.jobs)} of {count} jobs"


def test_gavel_first_job_of_0e4a51(gavel_dir: Path, throughputs: Throughputs) -> None:
    trace = load_gavel(gavel_dir / "0e4a51.trace", gavel_dir / "simulation_throughputs.json")
    job = trace.jobs[0]
    v100 = throughputs["v100"]["('Transformer (batch size 128)', 1)"]["null"]
    assert job.true_runtime_s["gpu-v100"] == pytest.approx(95121 / v100)
    assert job.spec.task_id == "0e4a51-00001"
    assert job.source_ref == "0e4a51.trace:1"
    assert job.spec.task_type == "Transformer (batch size 128)"
    assert (job.spec.gpus, job.spec.gpu_milli) == (1, 1000)
    assert (job.spec.cpu_milli, job.spec.memory_mib) == (4000, 16384)
    assert job.spec.declared_work == 95121
    assert job.arrival_s == 0.0
    assert set(job.true_runtime_s) == {"gpu-k80", "gpu-p100", "gpu-v100"}
    assert job.spec.allowed_hardware == set(job.true_runtime_s)


def test_gavel_infeasible_hardware_is_a_constraint(gavel_dir: Path) -> None:
    trace = load_gavel(gavel_dir / "0e4a51.trace", gavel_dir / "simulation_throughputs.json")
    resnet50 = [j for j in trace.jobs if j.spec.task_type == "ResNet-50 (batch size 128)"]
    wide = [j for j in resnet50 if j.spec.gpus >= 2]
    narrow = [j for j in resnet50 if j.spec.gpus == 1]
    assert wide
    assert narrow
    for job in wide:
        assert set(job.true_runtime_s) == {"gpu-p100", "gpu-v100"}
        assert job.spec.allowed_hardware == {"gpu-p100", "gpu-v100"}
    for job in narrow:
        assert "gpu-k80" in job.true_runtime_s
        assert job.spec.allowed_hardware == {"gpu-k80", "gpu-p100", "gpu-v100"}
    assert all(math.isfinite(t) and t > 0 for j in trace.jobs for t in j.true_runtime_s.values())


def test_gavel_jobs_wider_than_8_are_skipped_with_reason(gavel_dir: Path) -> None:
    path = gavel_dir / "2869ce.trace"
    trace = load_gavel(path, gavel_dir / "simulation_throughputs.json", wide_jobs="reject")
    reasons = {int(s.source_ref.split(":")[1]): s.reason for s in trace.skipped}
    wide = [(i, f) for i, f in enumerate(_lines(path), start=1) if int(f[6]) in (16, 32)]
    assert len(wide) == 72
    for i, f in wide:
        prefix = f"no throughput data for {(f[0], int(f[6]))!r} in simulation_throughputs.json"
        assert reasons[i].startswith(prefix)
    assert "skipped 70 jobs: no throughput data (scale factor 32)" in trace.notes


def test_gavel_wide_jobs_reject(gavel_dir: Path) -> None:
    path = gavel_dir / "0e4a51.trace"
    trace = load_gavel(
        path, gavel_dir / "simulation_throughputs.json", wide_jobs="reject", max_gpus_per_job=4
    )
    reasons = {int(s.source_ref.split(":")[1]): s.reason for s in trace.skipped}
    eights = [i for i, f in enumerate(_lines(path), start=1) if f[6] == "8"]
    assert eights
    for i in eights:
        assert reasons[i] == "needs 8 GPUs; the largest node has 4"
    assert max(j.spec.gpus for j in trace.jobs) <= 4
    assert len(trace.jobs) + len(trace.skipped) == 1181


def test_gavel_wide_jobs_clamp(gavel_dir: Path, throughputs: Throughputs) -> None:
    path = gavel_dir / "0e4a51.trace"
    tput_path = gavel_dir / "simulation_throughputs.json"
    trace = load_gavel(path, tput_path, wide_jobs="clamp", max_gpus_per_job=4)
    by_line = {int(j.source_ref.split(":")[1]): j for j in trace.jobs}
    lines = _lines(path)
    eights = [i for i, f in enumerate(lines, start=1) if f[6] == "8"]
    for i in eights:
        job_type, steps = lines[i - 1][0], int(lines[i - 1][4])
        job = by_line[i]
        width = 4 if _tput(throughputs, "v100", job_type, 4) > 0 else 1
        assert job.spec.gpus == width
        assert job.spec.cpu_milli == 4000 * width
        v100 = _tput(throughputs, "v100", job_type, width)
        assert job.true_runtime_s["gpu-v100"] == pytest.approx(steps / v100)
    assert any(n.startswith("clamped 45 jobs from 8 to 4 GPUs") for n in trace.notes)
    assert len(trace.jobs) + len(trace.skipped) == 1181


def test_gavel_clamp_rescues_jobs_wider_than_the_data(gavel_dir: Path) -> None:
    tput_path = gavel_dir / "simulation_throughputs.json"
    plain = load_gavel(gavel_dir / "7f04ca.trace", tput_path, wide_jobs="reject")
    clamped = load_gavel(
        gavel_dir / "7f04ca.trace", tput_path, wide_jobs="clamp", max_gpus_per_job=8
    )
    assert len(clamped.jobs) > len(plain.jobs)
    assert max(j.spec.gpus for j in clamped.jobs) == 8
    assert not any("scale factor 16" in n for n in clamped.notes)


def test_gavel_bad_arguments(gavel_dir: Path) -> None:
    args = (gavel_dir / "23dbec.trace", gavel_dir / "simulation_throughputs.json")
    with pytest.raises(ValueError, match="wide_jobs"):
        load_gavel(*args, wide_jobs="squeeze")
    with pytest.raises(ValueError, match="max_gpus_per_job"):
        load_gavel(*args, max_gpus_per_job=0)


def test_gavel_throughputs_parsed_once_and_fast(gavel_dir: Path) -> None:
    tput_path = gavel_dir / "simulation_throughputs.json"
    assert load_throughputs(tput_path) is load_throughputs(tput_path)
    start = time.perf_counter()
    load_gavel(gavel_dir / "0e4a51.trace", tput_path)
    assert time.perf_counter() - start < 1.0


# --- Gavel: packaged sample -----------------------------------------------------------


def test_packaged_sample_loads() -> None:
    trace = load_trace("gavel:sample", wide_jobs="reject")
    assert trace.name == "gavel-sample"
    assert len(trace.jobs) + len(trace.skipped) == 140
    assert trace.jobs[0].arrival_s == 0.0
    arrivals = [j.arrival_s for j in trace.jobs]
    assert arrivals == sorted(arrivals)
    assert len(trace.skipped) == 7
    assert {j.spec.gpus for j in trace.jobs} == {1, 2, 4}
    clamped = load_trace("gavel:sample", wide_jobs="clamp", max_gpus_per_job=2)
    assert max(j.spec.gpus for j in clamped.jobs) == 2
    assert any(n.startswith("clamped 13 jobs from 4 to 2 GPUs") for n in clamped.notes)


def test_packaged_sample_matches_its_provenance(gavel_dir: Path, throughputs: Throughputs) -> None:
    source = _lines(gavel_dir / "0e4a51.trace")[284:424]
    sample = _lines(DATA / "gavel-sample.trace")
    shift = float(source[0][5])
    assert len(sample) == 140
    for ours, theirs in zip(sample, source, strict=True):
        assert ours[:5] + ours[6:] == theirs[:5] + theirs[6:]
        assert float(ours[5]) == float(theirs[5]) - shift
    reduced = json.loads((DATA / "gavel-throughputs.json").read_text())
    assert set(reduced) == set(GAVEL_HW)
    for hw in GAVEL_HW:
        assert reduced[hw] == {k: {"null": v["null"]} for k, v in throughputs[hw].items()}
    full = load_gavel(DATA / "gavel-sample.trace", gavel_dir / "simulation_throughputs.json")
    assert full.jobs == load_trace("gavel:sample").jobs
    shared = str(gavel_dir / "simulation_throughputs.json")
    assert load_trace("gavel:sample", throughputs=shared).jobs == full.jobs


# --- openb ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openb_dir(shared_traces: Path) -> Path:
    return shared_traces / "alibaba-openb-2023"


@pytest.fixture(scope="module")
def pod_rows(openb_dir: Path) -> list[dict[str, str]]:
    with open(openb_dir / "openb_pod_list_default.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_openb_with_departures(openb_dir: Path, pod_rows: list[dict[str, str]]) -> None:
    pods = openb_dir / "openb_pod_list_default.csv"
    trace = load_openb(pods, openb_dir / "openb_node_list_all_node.csv")
    never = {r["name"] for r in pod_rows if not r["scheduled_time"]}
    assert len(pod_rows) == 8152
    assert len(never) == 897
    assert len(trace.jobs) == 8152 - len(never)
    assert len(trace.skipped) == len(never)
    assert {s.reason for s in trace.skipped} == {"pod never scheduled in the trace: no runtime"}
    assert len(trace.nodes) == 1523
    assert sum(n.gpus for n in trace.nodes) == 6212
    rows = {r["name"]: r for r in pod_rows}
    for job in trace.jobs:
        row = rows[job.spec.task_id]
        expected = float(row["deletion_time"]) - float(row["scheduled_time"])
        assert job.true_runtime_s == {"*": expected}
        assert job.arrival_s == float(row["creation_time"])


def test_openb_without_departures_keeps_unscheduled_pods(openb_dir: Path) -> None:
    pods = openb_dir / "openb_pod_list_default.csv"
    nodes = openb_dir / "openb_node_list_all_node.csv"
    trace = load_openb(pods, nodes, departures=False)
    assert len(trace.jobs) == 8152
    assert not trace.skipped
    assert sum(1 for j in trace.jobs if j.true_runtime_s["*"] == math.inf) == 897


def test_openb_pod_and_node_mapping(openb_dir: Path) -> None:
    trace = load_trace(f"openb:{openb_dir / 'openb_pod_list_default.csv'}", departures=False)
    jobs = {j.spec.task_id: j for j in trace.jobs}
    share = jobs["openb-pod-0001"]  # 6000,12288,1,460,,LS,Running,427061,12902960,427061
    assert share.spec.task_type == "openb-ls-share"
    assert (share.spec.gpus, share.spec.gpu_milli) == (1, 460)
    assert share.spec.is_gpu_share
    assert (share.spec.cpu_milli, share.spec.memory_mib) == (6000, 12288)
    assert share.spec.priority is PriorityClass.HIGH
    assert not share.spec.preemptible
    assert share.true_runtime_s == {"*": 12902960 - 427061}
    whole = jobs["openb-pod-0000"]
    assert (whole.spec.task_type, whole.spec.gpu_milli) == ("openb-ls-1gpu", 1000)
    assert not whole.spec.is_gpu_share
    by_type = {j.spec.task_type: j.spec for j in trace.jobs}
    assert by_type["openb-ls-8gpu"].gpu_milli == 1000
    assert by_type["openb-be-0gpu"].gpu_milli == 0
    assert by_type["openb-be-0gpu"].priority is PriorityClass.LOW
    assert by_type["openb-be-0gpu"].preemptible
    assert by_type["openb-burstable-0gpu"].priority is PriorityClass.NORMAL
    assert by_type["openb-guaranteed-0gpu"].priority is PriorityClass.HIGH
    hardware = {n.hardware for n in trace.nodes}
    assert {"cpu", "gpu-g2", "gpu-t4", "gpu-v100m16", "gpu-v100m32", "gpu-p100"} <= hardware
    assert all(n.gpus == 0 for n in trace.nodes if n.hardware == "cpu")
    assert trace.nodes[0].node_id == "openb-node-0000"


POD_HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
    "creation_time,deletion_time,scheduled_time\n"
)
NODE_CSV = "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,262144,0,\nn1,64000,262144,8,V100M16\n"


def test_openb_gpu_spec(tmp_path: Path) -> None:
    pods = tmp_path / "pods.csv"
    pods.write_text(POD_HEADER + "p0,1000,1024,1,500,V100M16|G2,BE,Running,5,20,10\n")
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(NODE_CSV)
    trace = load_openb(pods, nodes)
    assert trace.jobs[0].spec.allowed_hardware == {"gpu-v100m16", "gpu-g2"}
    assert trace.jobs[0].true_runtime_s == {"*": 10.0}
    assert [n.hardware for n in trace.nodes] == ["cpu", "gpu-v100m16"]


def test_openb_pods_without_runtime(tmp_path: Path) -> None:
    pods = tmp_path / "pods.csv"
    pods.write_text(
        POD_HEADER
        + "p0,1000,1024,0,0,,BE,Pending,5,9,\n"
        + "p1,1000,1024,0,0,,BE,Running,5,,7\n"
        + "p2,1000,1024,0,0,,BE,Running,5,8,7\n"
    )
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(NODE_CSV)
    trace = load_openb(pods, nodes)
    assert [(s.source_ref, s.reason) for s in trace.skipped] == [
        ("pods.csv:2", "pod never scheduled in the trace: no runtime"),
        ("pods.csv:3", "pod has no deletion_time in the trace: no runtime"),
    ]
    assert [j.true_runtime_s for j in trace.jobs] == [{"*": 1.0}]
    kept = load_openb(pods, nodes, departures=False)
    assert [j.true_runtime_s["*"] for j in kept.jobs] == [math.inf, math.inf, 1.0]
    note = "1 pods kept with an infinite runtime: pod has no deletion_time"
    assert any(n.startswith(note) for n in kept.notes)


# --- load_trace -----------------------------------------------------------------------


def test_load_trace_finds_companion_files(gavel_dir: Path, openb_dir: Path) -> None:
    assert len(load_trace(f"gavel:{gavel_dir / '23dbec.trace'}", wide_jobs="reject").jobs) == 8
    trace = load_trace(f"openb:{openb_dir / 'openb_pod_list_default.csv'}")
    assert len(trace.nodes) == 1523


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("gavel", "expected gavel:PATH"),
        ("csv:/x.csv", "expected gavel:PATH"),
        ("gavel:", "expected gavel:PATH"),
        ("gavel:/no/such/file.trace", "/no/such/file.trace"),
        ("openb:/no/such/pods.csv", "/no/such/pods.csv"),
        ("jsonl:/no/such/trace.jsonl", "/no/such/trace.jsonl"),
    ],
)
def test_load_trace_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_trace(spec)


def test_load_trace_missing_companions(tmp_path: Path) -> None:
    trace = tmp_path / "x.trace"
    trace.write_text("")
    with pytest.raises(ValueError, match="--throughputs"):
        load_trace(f"gavel:{trace}")
    with pytest.raises(ValueError, match=r"nope\.json"):
        load_trace(f"gavel:{trace}", throughputs=tmp_path / "nope.json")
    with pytest.raises(ValueError, match="--nodes"):
        load_trace(f"openb:{trace}")


# --- malformed input ------------------------------------------------------------------

GOOD_LINE = "A3C\tcmd\t-n\t1\t1000\t0.000000\t1"


def _gavel_line(**fields: str) -> str:
    parts = GOOD_LINE.split("\t")
    for index, value in fields.items():
        parts[int(index[1:])] = value
    return "\t".join(parts)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("A3C\tcmd\t-n\t1\t1000\t0.0", "expected 7 tab-separated fields, got 6"),
        (GOOD_LINE + "\textra", "expected 7 tab-separated fields, got 8"),
        (_gavel_line(f4="lots"), "total_steps must be an integer"),
        (_gavel_line(f4="12.5"), "total_steps must be an integer"),
        (_gavel_line(f4="-3"), "total_steps must be >= 1"),
        (_gavel_line(f5="soon"), "arrival_time_s must be a number"),
        (_gavel_line(f5="-1.0"), "arrival_time_s must be >= 0"),
        (_gavel_line(f5="nan"), "arrival_time_s must be finite"),
        (_gavel_line(f6="0"), "scale_factor must be >= 1"),
        (_gavel_line(f0=" "), "job_type"),
    ],
)
def test_gavel_malformed_trace(tmp_path: Path, bad_line: str, message: str) -> None:
    trace = tmp_path / "bad.trace"
    trace.write_text(f"{GOOD_LINE}\n{GOOD_LINE}\n{bad_line}\n")
    with pytest.raises(TraceFormatError) as info:
        load_gavel(trace, DATA / "gavel-throughputs.json")
    assert str(info.value).startswith(f"{trace}:3: ")
    assert message in str(info.value)
    assert (info.value.path, info.value.line) == (trace, 3)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('{\n "k80": {\n  "(\'A3C\', 1)": {"null": 1.0,}\n }\n}\n', 3, "invalid JSON"),
        ('{\n "k80": {\n  "(\'A3C\', 1)": {"null": 1.0}\n }\n', 5, "invalid JSON"),
        ("[1, 2]\n", 1, "expected a JSON object"),
        ('{\n "k80": {},\n "K 80!": {}\n}\n', 3, "bad hardware name"),
        ('{\n "k80": {\n  "(\'A3C\', 1)": {"null": -2.0}\n }\n}\n', 3, "number >= 0"),
        ('{\n "k80": {\n  "(\'A3C\', 1)": {"null": "fast"}\n }\n}\n', 3, "number >= 0"),
        ('{\n "k80": {\n  "(\'A3C\', 1)": {"other": 1.0}\n }\n}\n', 3, "number >= 0"),
        ('{\n "k80": {\n  "A3C": {"null": 1.0}\n }\n}\n', 3, "is not a ('job type'"),
        ('{\n "k80": []\n}\n', 2, "must map job keys"),
    ],
)
def test_gavel_malformed_throughputs(tmp_path: Path, text: str, line: int, message: str) -> None:
    tput = tmp_path / "bad_tput.json"
    tput.write_text(text)
    trace = tmp_path / "ok.trace"
    trace.write_text(GOOD_LINE + "\n")
    with pytest.raises(TraceFormatError) as info:
        load_gavel(trace, tput)
    assert str(info.value).startswith(f"{tput}:{line}: ")
    assert message in str(info.value)


GOOD_POD = "p0,1000,1024,1,500,,LS,Running,5,20,10"


@pytest.mark.parametrize(
    ("header", "row", "line", "message"),
    [
        (POD_HEADER.replace(",qos", ""), GOOD_POD, 1, "missing columns ['qos']"),
        (POD_HEADER.replace("\n", ",extra\n"), GOOD_POD + ",x", 1, "unknown columns ['extra']"),
        (POD_HEADER, GOOD_POD + ",x", 3, "expected 11 fields, got 12"),
        (POD_HEADER, GOOD_POD.replace("1000,", "many,", 1), 3, "cpu_milli must be an integer"),
        (POD_HEADER, GOOD_POD.replace("1024", "-1"), 3, "memory_mib must be >= 0"),
        (POD_HEADER, GOOD_POD.replace(",500,", ",1500,"), 3, "gpu_milli 1500"),
        (POD_HEADER, GOOD_POD.replace(",LS,", ",VIP,"), 3, "unknown qos 'VIP'"),
        (POD_HEADER, GOOD_POD.replace(",20,10", ",20,30"), 3, "times out of order"),
        (POD_HEADER, GOOD_POD.replace(",5,", ",yesterday,"), 3, "creation_time must be"),
        (POD_HEADER, GOOD_POD.replace(",,", ",V100 M16,"), 3, "bad gpu_spec"),
        (POD_HEADER, GOOD_POD.replace("p0", "p1"), 3, "repeated"),
    ],
)
def test_openb_malformed_pods(
    tmp_path: Path, header: str, row: str, line: int, message: str
) -> None:
    pods = tmp_path / "pods.csv"
    pods.write_text(header + GOOD_POD.replace("p0", "p1") + "\n" + row + "\n")
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(NODE_CSV)
    with pytest.raises(TraceFormatError) as info:
        load_openb(pods, nodes)
    assert str(info.value).startswith(f"{pods}:{line}: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("n2,1000,1024,2,V100 M16", "bad GPU model"),
        ("n2,1000,1024,2,", "2 GPUs but no GPU model"),
        ("n2,1000,1024,two,G2", "gpu must be an integer"),
        ("n2,1000,1024", "expected 5 fields, got 3"),
        ("n1,1000,1024,0,", "repeated"),
    ],
)
def test_openb_malformed_nodes(tmp_path: Path, row: str, message: str) -> None:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text(NODE_CSV + row + "\n")
    pods = tmp_path / "pods.csv"
    pods.write_text(POD_HEADER)
    with pytest.raises(TraceFormatError) as info:
        load_openb(pods, nodes)
    assert str(info.value).startswith(f"{nodes}:4: ")
    assert message in str(info.value)


def test_trace_format_error_without_line_and_pickling(tmp_path: Path) -> None:
    error = TraceFormatError(tmp_path / "f.json", None, "empty")
    assert str(error) == f"{tmp_path / 'f.json'}: empty"
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(TraceFormatError("a.trace", 7, "bad")))
    assert (str(copy), copy.line, copy.message) == ("a.trace:7: bad", 7, "bad")


def test_non_utf8_trace_names_the_line(tmp_path: Path) -> None:
    trace = tmp_path / "latin.trace"
    trace.write_bytes(GOOD_LINE.encode() + b"\n\xff\xfe\n")
    with pytest.raises(TraceFormatError, match=r"latin\.trace:2: not UTF-8"):
        load_gavel(trace, DATA / "gavel-throughputs.json")
