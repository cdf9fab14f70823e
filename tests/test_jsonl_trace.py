"""The native JSONL trace format and its packaged sample."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import pytest

from streamsched.scheduler.model import PriorityClass
from streamsched.traces import load_trace
from streamsched.traces.errors import TraceFormatError
from streamsched.traces.jsonl import load_jsonl_trace


@contextmanager
def sample_path() -> Iterator[Path]:
    with as_file(files("streamsched") / "data" / "sample-submissions.jsonl") as path:
        yield path


def sample_lines() -> list[dict[str, Any]]:
    with sample_path() as path:
        text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line and not line.startswith("#")]


def test_sample_loads() -> None:
    with sample_path() as path:
        trace = load_jsonl_trace(path)
    assert trace.name == "sample-submissions"
    assert 5 <= len(trace.jobs) <= 10
    arrivals = [job.arrival_s for job in trace.jobs]
    assert arrivals == sorted(arrivals)
    assert trace.jobs[0].source_ref == "sample-submissions.jsonl:3"  # after 2 comment lines
    by_id = {job.spec.task_id: job for job in trace.jobs}

    prep = by_id["prep-imagenet-shards"]
    assert (prep.spec.gpus, prep.spec.allowed_hardware) == (0, frozenset({"cpu"}))
    train = by_id["train-resnet50-r1"]
    assert train.spec.depends_on == ("prep-imagenet-shards",)
    assert train.spec.gpus == 4
    assert set(train.true_runtime_s) == {"gpu-v100", "gpu-p100"}
    assert train.true_runtime_s["gpu-v100"] < train.true_runtime_s["gpu-p100"]
    serve = by_id["serve-embeddings-canary"]
    assert serve.spec.is_gpu_share
    assert serve.spec.gpu_demand_milli == 250
    evaluation = by_id["eval-resnet50-nightly"]
    assert evaluation.spec.deadline_s == 1500.0
    assert evaluation.spec.priority is PriorityClass.CRITICAL
    assert [job.spec.task_id for job in trace.jobs if job.spec.deadline_s is not None] == [
        "eval-resnet50-nightly"
    ]


def test_load_trace_dispatches_jsonl() -> None:
    with sample_path() as path:
        assert load_trace(f"jsonl:{path}") == load_jsonl_trace(path)


def test_comments_blank_lines_and_order(tmp_path: Path) -> None:
    first, second = sample_lines()[:2]
    path = tmp_path / "t.jsonl"
    path.write_text(
        "# header\n\n" + json.dumps({**second, "at_s": 5.0}) + "\n  \n" + json.dumps(first) + "\n"
    )
    trace = load_jsonl_trace(path)
    assert [job.source_ref for job in trace.jobs] == ["t.jsonl:5", "t.jsonl:3"]


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(line: dict[str, Any]) -> None:
        *parents, last = key.split(".")
        node = line
        for part in parents:
            node = node[part]
        node[last] = value

    return mutate


# (mutation of the sample's 2nd job, words expected in the error)
BAD_LINES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("missing at_s", lambda line: line.pop("at_s"), "field 'at_s': Field required"),
    ("negative at_s", _set("at_s", -1), "field 'at_s': Input should be greater than or equal"),
    ("string at_s", _set("at_s", "12"), "field 'at_s': Input should be a valid number"),
    ("unknown field", _set("arrival", 3), "field 'arrival': Extra inputs are not permitted"),
    ("empty runtimes", _set("runtime_s", {}), "field 'runtime_s': Dictionary should have at"),
    ("zero runtime", _set("runtime_s.gpu-v100", 0), "field 'runtime_s.gpu-v100': Input should"),
    ("unknown class", _set("runtime_s", {"gpu-zz": 1.0}), "unknown hardware class 'gpu-zz'"),
    (
        "invalid event",
        _set("event.resources.cpu_milli", -1),
        "in 'event': invalid task.submitted event: field 'resources.cpu_milli'",
    ),
    ("event without id", lambda line: line["event"].pop("event_id"), "field 'event_id'"),
    ("absolute deadline", _set("event.deadline", "2030-01-01T00:00:00Z"), "give deadline_s"),
    ("deadline before arrival", _set("deadline_s", 10.0), "deadline_s 10 is not after at_s 30"),
    ("unknown dependency", _set("event.depends_on", ["nope"]), "not in the trace: nope"),
    (
        "no allowed class has a runtime",
        _set("runtime_s", {"gpu-k80": 1.0}),
        "runtime_s names no hardware class the task allows",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "words"), [c[1:] for c in BAD_LINES], ids=[c[0] for c in BAD_LINES]
)
def test_malformed_line_names_file_and_line(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], words: str
) -> None:
    first, second = sample_lines()[:2]
    mutate(second)
    path = tmp_path / "bad.jsonl"
    path.write_text(f"# comment\n{json.dumps(first)}\n\n{json.dumps(second)}\n")
    with pytest.raises(TraceFormatError) as info:
        load_jsonl_trace(path)
    assert str(info.value).startswith(f"{path}:4: "), str(info.value)
    assert words in str(info.value)
    assert info.value.line == 4


RAW_BAD_LINES: list[tuple[str, bytes, str]] = [
    ("not json", b'{"at_s": 1,', "not valid JSON"),
    ("array", b"[1, 2]", "expected a JSON object, got list"),
    ("not utf-8", b'{"at_s": "\xff"}', "not UTF-8"),
]


@pytest.mark.parametrize(
    ("raw", "words"), [c[1:] for c in RAW_BAD_LINES], ids=[c[0] for c in RAW_BAD_LINES]
)
def test_unreadable_line(tmp_path: Path, raw: bytes, words: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"# one\n# two\n" + raw + b"\n")
    with pytest.raises(TraceFormatError, match=words) as info:
        load_jsonl_trace(path)
    assert str(info.value).startswith(f"{path}:3: ")


def test_duplicate_task_names_both_lines(tmp_path: Path) -> None:
    first = sample_lines()[0]
    path = tmp_path / "dup.jsonl"
    path.write_text(f"{json.dumps(first)}\n{json.dumps({**first, 'at_s': 9.0})}\n")
    with pytest.raises(TraceFormatError) as info:
        load_jsonl_trace(path)
    assert str(info.value) == (
        f"{path}:2: duplicate task_id 'prep-imagenet-shards' (first on line 1)"
    )


def test_extra_hardware_classes(tmp_path: Path) -> None:
    line = sample_lines()[0]
    line["runtime_s"] = {"cpu": 10.0, "gpu-mi300": 5.0}
    path = tmp_path / "extra.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(TraceFormatError, match="unknown hardware class 'gpu-mi300'"):
        load_jsonl_trace(path)
    trace = load_jsonl_trace(path, known_hardware=["gpu-mi300"])
    assert set(trace.jobs[0].true_runtime_s) == {"cpu", "gpu-mi300"}
