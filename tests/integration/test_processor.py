"""The stream processor as a real process (``streamsched processor``) on a real broker:
it builds task status from published events, serves it to the Client and to
``streamsched status``, fires trigger rules and dead-letters bad data.ingested records.

The broker is shared with the other tests of the session: every test uses fresh ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from confluent_kafka import Message, Producer

from streamsched.broker import client_config, free_port
from streamsched.client import (
    AccessDenied,
    Client,
    ClientError,
    TaskNotFoundError,
    submission_event,
)
from streamsched.schemas import codec, topics
from streamsched.schemas.decisions import DecisionAudit
from streamsched.schemas.lifecycle import TaskCompleted, TaskFailed, TaskStarted
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.schemas.tenancy import TENANT_HEADER, AccessRefused
from streamsched.testing import TopicReader, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

CLI = Path(sys.executable).parent / "streamsched"
UID = uuid.uuid4().hex[:8]
DATASET = f"clicks-{UID}"
DEBOUNCED = f"debounced-{UID}"
EXCLUSIVE = f"exclusive-{UID}"
T = TypeVar("T")


def _wait(what: str, probe: Callable[[], T | None], timeout_s: float = 30.0) -> T:
    return wait_until(what, probe, timeout_s, retry_on=(ClientError,))


@pytest.fixture(scope="module")
def processor(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """A processor subprocess with two rules on DATASET; (bootstrap servers, status URL)."""
    rules = tmp_path_factory.mktemp("processor") / "triggers.toml"
    template = '{ tenant = "ads", task_type = "retrain", governance = { pool = "none" } }'
    rules.write_text(
        f'[[rules]]\nname = "{DEBOUNCED}"\ndataset = "{DATASET}"\nmin_rows = 100\n'
        f"debounce_s = 3600\nallow_concurrent = true\ntemplate = {template}\n\n"
        f'[[rules]]\nname = "{EXCLUSIVE}"\ndataset = "{DATASET}"\nmin_bytes = 1000\n'
        f"template = {template}\n"
    )
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    # Output to files, not pipes: a processor that logs a line per bad record in the
    # shared topics' history (other tests write plenty) must never block on a full pipe.
    out_path, err_path = rules.with_name("out.log"), rules.with_name("err.log")
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        proc = subprocess.Popen(
            [str(CLI), "processor", "--web-port", str(port), "--metrics-port", "0",
             "--triggers", str(rules), "--app-id", f"processor-test-{UID}",
             "--loglevel", "warning"],
            env=env, stdout=out_file, stderr=err_file, text=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        client = Client(kafka_bootstrap, url, timeout_s=2)
        _wait("the status view", client.summary, timeout_s=60)
        yield kafka_bootstrap, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out, err = out_path.read_text(), err_path.read_text()
    assert f"status view on {url}" in out, err[-2000:]
    assert proc.returncode == 0, err[-2000:]


def _envelope() -> dict[str, Any]:
    return {"occurred_at": datetime.now(UTC), "source": "test"}


def test_status_is_built_from_events_and_read_by_client_and_cli(
    processor: tuple[str, str],
) -> None:
    servers, url = processor
    task_id = f"t-{UID}"
    with Client(servers, url) as client:
        client.submit(
            task_id=task_id,
            tenant="vision",
            task_type="train",
            resources={"gpus": 1},
            governance={"pool": f"nowhere-{UID}"},  # no placement agent may run it
        )
        client.send(
            topics.DECISIONS,
            task_id,
            DecisionAudit(
                **_envelope(), decision_id=f"d-{UID}", stimulus_id="s-1", task_id=task_id,
                attempt=1, policy="forecast", policy_version="1", model_version="m1",
                decided_at_s=1.0, chosen_node_id="v100-7", chosen_hardware="gpu-v100",
                predicted_runtime_s=10.0, reason="forecast: gpu-v100, predicted 10s",
            ),
        )  # fmt: skip
        attempt = {"task_id": task_id, "attempt": 1, "node_id": "v100-7"}
        client.send(topics.TASK_EVENTS, task_id, TaskStarted(**_envelope(), **attempt))
        client.send(
            topics.TASK_EVENTS, task_id, TaskCompleted(**_envelope(), **attempt, runtime_s=12.5)
        )
        late = TaskFailed(**_envelope(), **attempt, reason="late report of a dead executor")
        client.send(topics.TASK_EVENTS, task_id, late)

        status = _wait(
            "the task to succeed with its submission, decision and the stale failure",
            lambda: (
                (
                    (s := client.query(task_id)).state == "succeeded"
                    and s.decision_id is not None
                    and s.stale_count == 1
                    # the topics are read independently: the submission may come last
                    and s.tenant is not None
                    and s
                )
                or None
            ),
        )
        assert (status.tenant, status.node, status.hardware) == ("vision", "v100-7", "gpu-v100")
        assert (status.attempt, status.predicted_runtime_s, status.actual_runtime_s) == (
            1, 10.0, 12.5,
        )  # fmt: skip
        assert status.decision_reason == "forecast: gpu-v100, predicted 10s"
        assert status.stale_events[0].type == "task.failed"
        with pytest.raises(TaskNotFoundError, match="not known"):
            client.query(f"missing-{UID}")
        assert any(t.task_id == task_id for t in client.tasks(state="succeeded", limit=1000))

    env = {**os.environ, "STREAMSCHED_STATUS_URL": url}
    shown = subprocess.run(
        [str(CLI), "status", task_id], env=env, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    for text in ("succeeded", "v100-7", "10.0 s", "12.5 s", f"d-{UID}", "predicted 10s"):
        assert text in shown.stdout
    as_json = subprocess.run(
        [str(CLI), "status", task_id, "--json"], env=env, capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert json.loads(as_json.stdout)["state"] == "succeeded"
    overview = subprocess.run(
        [str(CLI), "status"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert overview.returncode == 0, overview.stderr
    assert task_id in overview.stdout
    assert "succeeded" in overview.stdout
    unknown = subprocess.run(
        [str(CLI), "status", f"missing-{UID}"], env=env, capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: task")
    assert "Traceback" not in unknown.stderr


def test_an_ingest_burst_fires_each_rule_exactly_once(processor: tuple[str, str]) -> None:
    servers, url = processor
    with Client(servers, url) as client:
        for i in range(10):  # 500 rows, 5000 bytes: both thresholds crossed many times
            client.ingest(DATASET, rows=50, bytes=500, location=f"s3://bucket/{DATASET}/{i}")
        config = client_config(servers)
        with TopicReader(config, topics.TASKS_SUBMITTED, timeout_s=30) as reader:

            def ours() -> list[TaskSubmitted]:
                return [
                    e
                    for e in reader.events(TaskSubmitted)
                    if e.task_id.startswith((DEBOUNCED, EXCLUSIVE))
                ]

            reader.wait_events(lambda _: len(ours()) >= 2)
            reader.drain(3.0)  # debounce (3600 s) and concurrency hold back any second fire
            fired = sorted(e.task_id for e in ours())
        assert fired == [f"{DEBOUNCED}-1", f"{EXCLUSIVE}-1"]
        first = next(e for e in ours() if e.task_id == f"{DEBOUNCED}-1")
        assert first.idempotency_key == f"trigger-{DEBOUNCED}-1"
        assert (first.tenant, first.task_type, first.dataset) == ("ads", "retrain", DATASET)
        status = _wait("the triggered task's status", lambda: client.query(f"{EXCLUSIVE}-1"))
        assert status.state == "queued"
        assert client.summary()["triggers"] == {DEBOUNCED: 1, EXCLUSIVE: 1}


def test_bad_ingest_records_are_dead_lettered_and_good_ones_counted(
    processor: tuple[str, str],
) -> None:
    servers, url = processor
    dataset = f"logs-{UID}"
    config = client_config(servers)
    good = {
        "type": "data.ingested", "schema_version": 1, "source": "test",
        "occurred_at": datetime.now(UTC).isoformat(), "dataset": dataset,
        "location": f"file:///data/{dataset}",
    }  # fmt: skip
    values = [
        f"not json {UID}".encode(),
        json.dumps({**good, "event_id": f"a-{UID}", "rows": 7, "bytes": 70}).encode(),
        json.dumps({**good, "event_id": f"b-{UID}", "rows": -1, "bytes": 1}).encode(),
        json.dumps({**good, "event_id": f"c-{UID}", "rows": 5, "bytes": 50}).encode(),
        json.dumps({**good, "event_id": f"c-{UID}", "rows": 5, "bytes": 50}).encode(),  # dup
    ]
    delivered: list[Message] = []
    producer = Producer(config)
    for value in values:
        producer.produce(
            topics.DATA_INGESTED, value, key=dataset.encode(),
            on_delivery=lambda _e, m: delivered.append(m),
        )  # fmt: skip
    assert producer.flush(10) == 0
    where = {m.value(): (str(m.partition()), str(m.offset())) for m in delivered}

    with TopicReader(config, topics.DEAD_LETTER, timeout_s=30) as reader:
        mine = [values[0], values[2]]
        records = reader.wait_for(lambda recs: sum(v in mine for v, _ in recs) == 2)
        headers = {v: h for v, h in records if v in mine}
    assert headers[values[0]]["error.field"] == "(payload)"
    assert "not valid JSON" in headers[values[0]]["error.reason"]
    assert headers[values[2]]["error.field"] == "rows"
    for value in mine:
        assert headers[value]["source.topic"] == topics.DATA_INGESTED
        partition, offset = where[value]
        assert (headers[value]["source.partition"], headers[value]["source.offset"]) == (
            partition, offset,
        )  # fmt: skip

    def counted() -> dict[str, Any] | None:
        with Client(servers, url) as client:
            found = client._get("/datasets")["datasets"]
        row = next((d for d in found if d["dataset"] == dataset), None)
        return row if row is not None and row["ingestions"] == 2 else None

    row = _wait("both good ingestions to be counted", counted)
    assert (row["rows_total"], row["bytes_total"]) == (12, 120)
    time.sleep(1.0)  # the redelivered duplicate came last: it must not have been counted
    assert counted() == row


def test_a_tenant_sees_only_its_tasks_and_a_refusal_is_audited(
    processor: tuple[str, str],
) -> None:
    servers, url = processor
    own, other = f"tn-own-{UID}", f"tn-other-{UID}"
    mine, theirs = f"tenant-a-{UID}", f"tenant-b-{UID}"
    with Client(servers, url, tenant=mine) as a, Client(servers, url, tenant=theirs) as b:
        a.submit(task_id=own, task_type="train", governance={"pool": f"nowhere-{UID}"})
        b.submit(task_id=other, task_type="train", governance={"pool": f"nowhere-{UID}"})
        _wait("both tasks", lambda: a.query(own) and b.query(other))
        assert a.query(own).tenant == mine
        assert [t.task_id for t in a.tasks(limit=1000)] == [own]
        assert a.summary()["tasks"] == 1
        with pytest.raises(AccessDenied, match="may not see a task of another tenant"):
            a.query(other)
        with pytest.raises(AccessDenied, match="may not list the tasks of tenant"):
            a.tasks(tenant=theirs)
        with pytest.raises(TaskNotFoundError):
            a.query(f"missing-{UID}")
    with Client(servers, url) as operator:  # no tenant: operator mode, every task
        assert {own, other} <= {t.task_id for t in operator.tasks(limit=1000)}

    with TopicReader(client_config(servers), topics.DECISIONS, timeout_s=30) as reader:

        def refusals(_: list[Any]) -> list[AccessRefused]:
            found = []
            for value, headers in reader.records:
                if headers.get("type") == "access.refused":
                    record = codec.decode_as(AccessRefused, value)
                    if record.requested_by == mine:
                        found.append(record)
            return found

        reader.wait_for(lambda recs: len(refusals(recs)) >= 2)
        by_action = {r.action: r for r in refusals([])}
    assert (by_action["query"].task_id, by_action["query"].tenant) == (other, theirs)
    assert (by_action["list"].task_id, by_action["list"].tenant) == (None, theirs)
    assert "another tenant" in by_action["query"].reason

    env = {**os.environ, "STREAMSCHED_STATUS_URL": url, "STREAMSCHED_TENANT": mine}
    refused = subprocess.run(
        [str(CLI), "status", other], env=env, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "may not see a task of another tenant" in refused.stderr
    listed = subprocess.run(
        [str(CLI), "status", "--json"], env=env, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [t["task_id"] for t in json.loads(listed.stdout)["tasks"]] == [own]


def test_a_record_whose_tenant_header_contradicts_its_body_is_not_folded(
    processor: tuple[str, str],
) -> None:
    servers, url = processor
    forged, honest = f"forged-{UID}", f"honest-{UID}"
    producer = Producer(client_config(servers))
    for task_id, header in ((forged, b"vision"), (honest, b"ads")):
        event = submission_event(task_id=task_id, tenant="ads", task_type="train",
                                 governance={"pool": f"nowhere-{UID}"})  # fmt: skip
        producer.produce(
            topics.TASKS_SUBMITTED, codec.encode(event), key=task_id.encode(), partition=0,
            headers=[("type", b"task.submitted"), (TENANT_HEADER, header)],
        )  # fmt: skip
        assert producer.flush(10) == 0  # one partition, forged first: read in this order
    with Client(servers, url) as client:
        assert _wait("the honest submission", lambda: client.query(honest)).tenant == "ads"
        with pytest.raises(TaskNotFoundError):  # read before the honest one, and skipped
            client.query(forged)
        assert client.summary()["skipped_records"].get(topics.TASKS_SUBMITTED, 0) >= 1
