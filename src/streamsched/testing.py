"""Builders and a driver for testing code that uses the scheduler core.

Shipped with the package (as Temporal ships its test environment) so that users who write
plugins, policies or agents can build tasks, nodes and cores in one line each and drive the
pure core with events::

    >>> from streamsched.testing import assigns, drive, gpu_cluster, new_core, submitted, task, up
    >>> core = new_core("fifo")
    >>> _ = drive(core, [up(n) for n in gpu_cluster(v100=1)], now=0.0)
    >>> out = drive(core, submitted(task("t1", gpus=1)), now=1.0)
    >>> [(a.task_id, a.node_id, a.attempt) for a in assigns(out)]
    [('t1', 'gpu-v100-0', 1)]

Every builder gives sensible defaults, so a test states only what it is about. Stimulus ids
of the event builders are derived from their arguments, so the same calls always build
equal events (the core is deterministic given its events and ``now``).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np

from streamsched.scheduler.core import CoreConfig, SchedulerCore
from streamsched.scheduler.events import (
    CancelTask,
    Event,
    NodeLost,
    NodeUp,
    TaskCompleted,
    TaskFailed,
    TaskPreempted,
    TaskProgress,
    TaskStarted,
    TaskSubmitted,
    Tick,
)
from streamsched.scheduler.forecasting import (
    OracleForecaster,
    RuntimeForecaster,
)
from streamsched.scheduler.instructions import (
    Assign,
    Instruction,
    Preempt,
    StopAttempt,
    TaskTransition,
)
from streamsched.scheduler.model import GPU_MILLI, NodeSpec, PriorityClass, TaskSpec
from streamsched.scheduler.policies import get_policy
from streamsched.scheduler.simulator import forecaster_for
from streamsched.schemas.tasks import TaskSubmitted as WireTaskSubmitted

__all__ = [
    "assigns",
    "cancel",
    "check_capacity",
    "completed",
    "drive",
    "failed",
    "gpu_cluster",
    "lost",
    "new_core",
    "node",
    "of_type",
    "preempted",
    "progress",
    "run_world",
    "started",
    "submitted",
    "task",
    "tick",
    "transitions",
    "up",
]

I = TypeVar("I", bound=Instruction)  # noqa: E741

#: CPU and memory of a CPU-only node built by :func:`node`.
CPU_NODE_CPU_MILLI = 16000
CPU_NODE_MEMORY_MIB = 65536


# ---------------------------------------------------------------------- specs
def task(
    task_id: str,
    task_type: str = "train",
    *,
    gpus: int = 0,
    share: int | None = None,
    cpu_milli: int = 1000,
    memory_mib: int = 1024,
    hardware: str | Iterable[str] = (),
    tenant: str = "default",
    priority: PriorityClass | str = PriorityClass.NORMAL,
    deadline_s: float | None = None,
    preemptible: bool = False,
    depends_on: Iterable[str] = (),
    governance: Mapping[str, str] | None = None,
    work: float = 0.0,
    runtime_s: float | None = None,
    dataset_bytes: int = 0,
    max_retries: int = 2,
) -> TaskSpec:
    """A :class:`TaskSpec` with defaults: one CPU, 1 GiB, no GPU, normal priority.

    ``gpus=n`` asks for n whole GPUs; ``share=500`` asks for half of one GPU (and implies
    ``gpus=1``). ``hardware`` is one allowed class or several; ``work`` is the declared
    work and ``runtime_s`` the user's runtime estimate.
    """
    if share is not None:
        if not 0 < share < GPU_MILLI:
            raise ValueError(f"share must be in 1..{GPU_MILLI - 1} milli-GPU, got {share}")
        if gpus not in (0, 1):
            raise ValueError("a GPU share is a share of one GPU; do not combine it with gpus>1")
        gpus, gpu_milli = 1, share
    else:
        gpu_milli = GPU_MILLI if gpus else 0
    allowed = frozenset([hardware] if isinstance(hardware, str) else hardware)
    return TaskSpec(
        task_id=task_id,
        task_type=task_type,
        tenant=tenant,
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        gpus=gpus,
        gpu_milli=gpu_milli,
        allowed_hardware=allowed,
        priority=PriorityClass(priority),
        deadline_s=deadline_s,
        preemptible=preemptible,
        depends_on=tuple(depends_on),
        governance=MappingProxyType(dict(governance or {})),
        declared_work=work,
        declared_runtime_s=runtime_s,
        dataset_bytes=dataset_bytes,
        max_retries=max_retries,
    )


def node(
    node_id: str,
    hardware: str | None = None,
    *,
    gpus: int = 0,
    cpu_milli: int | None = None,
    memory_mib: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> NodeSpec:
    """A :class:`NodeSpec`. Without ``hardware`` a node is ``cpu`` (no GPUs) or
    ``gpu-v100``. GPU nodes get ``8000 * gpus + 8000`` milli-CPU and ``65536 * gpus`` MiB,
    as the CLI's ``--cluster`` flag builds them, so that GPUs are what binds; CPU nodes get
    16 cores and 64 GiB."""
    if hardware is None:
        hardware = "gpu-v100" if gpus else "cpu"
    if cpu_milli is None:
        cpu_milli = 8000 * gpus + 8000 if gpus else CPU_NODE_CPU_MILLI
    if memory_mib is None:
        memory_mib = 65536 * gpus if gpus else CPU_NODE_MEMORY_MIB
    return NodeSpec(
        node_id=node_id,
        hardware=hardware,
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        gpus=gpus,
        labels=MappingProxyType(dict(labels or {})),
    )


def gpu_cluster(
    *, gpus_per_node: int = 4, labels: Mapping[str, str] | None = None, **nodes_per_class: int
) -> tuple[NodeSpec, ...]:
    """Nodes of several GPU classes: ``gpu_cluster(v100=2, k80=1)`` is two ``gpu-v100``
    nodes and one ``gpu-k80`` node of ``gpus_per_node`` GPUs each, named
    ``gpu-v100-0``, ``gpu-v100-1``, ``gpu-k80-0`` (in argument order). ``cpu=n`` adds n
    CPU-only nodes."""
    out: list[NodeSpec] = []
    for name, count in nodes_per_class.items():
        hardware = "cpu" if name == "cpu" else f"gpu-{name.lower()}"
        gpus = 0 if name == "cpu" else gpus_per_node
        out += [node(f"{hardware}-{i}", hardware, gpus=gpus, labels=labels) for i in range(count)]
    return tuple(out)


# ---------------------------------------------------------------------- events
def up(spec: NodeSpec) -> NodeUp:
    return NodeUp(f"up:{spec.node_id}", spec)


def lost(node_id: str, reason: str = "node lost") -> NodeLost:
    return NodeLost(f"lost:{node_id}", node_id, reason)


def submitted(spec: TaskSpec) -> TaskSubmitted:
    return TaskSubmitted(f"submit:{spec.task_id}", spec)


def started(task_id: str, attempt: int, node_id: str) -> TaskStarted:
    return TaskStarted(f"start:{task_id}:{attempt}", task_id, attempt, node_id)


def progress(task_id: str, attempt: int, fraction: float) -> TaskProgress:
    return TaskProgress(f"progress:{task_id}:{attempt}:{fraction}", task_id, attempt, fraction)


def completed(task_id: str, attempt: int, runtime_s: float = 1.0) -> TaskCompleted:
    return TaskCompleted(f"done:{task_id}:{attempt}", task_id, attempt, runtime_s)


def failed(
    task_id: str, attempt: int, reason: str = "exit 1", *, retryable: bool = True
) -> TaskFailed:
    return TaskFailed(f"fail:{task_id}:{attempt}", task_id, attempt, reason, 1, retryable)


def preempted(task_id: str, attempt: int, fraction: float) -> TaskPreempted:
    return TaskPreempted(f"preempted:{task_id}:{attempt}", task_id, attempt, fraction)


def cancel(task_id: str, reason: str = "cancelled by user") -> CancelTask:
    return CancelTask(f"cancel:{task_id}", task_id, reason)


def tick(now: float) -> Tick:
    return Tick(f"tick:{now}")


# ---------------------------------------------------------------------- core
def new_core(
    policy: str = "fifo",
    forecaster: RuntimeForecaster | None = None,
    *,
    nodes: Iterable[NodeSpec] = (),
    params: Mapping[str, float] | None = None,
    seed: int = 0,
    reject_unplaceable: bool = False,
    max_gpus_per_node: int = 8,
    heartbeat_timeout_s: float | None = None,
) -> SchedulerCore:
    """A fresh core running the named policy; ``params`` override its
    :class:`~streamsched.scheduler.policies.PolicyParams` (e.g. ``{"sjf_weight": 2.0}``).

    Without ``forecaster`` it gets the policy's own kind, fresh: running mean, Dask-like,
    the learned model, or an oracle that knows nothing (pass an
    :class:`OracleForecaster` with the truth).
    ``nodes`` are registered at time 0.
    """
    pol = get_policy(policy, **(params or {}))
    if forecaster is None:
        forecaster = OracleForecaster({}) if pol.forecaster == "oracle" else forecaster_for(pol)
    config = CoreConfig(
        reject_unplaceable=reject_unplaceable,
        seed=seed,
        max_gpus_per_node=max_gpus_per_node,
        heartbeat_timeout_s=heartbeat_timeout_s,
    )
    core = SchedulerCore(pol, forecaster, config)
    specs = tuple(nodes)
    if specs:
        drive(core, [up(n) for n in specs], now=0.0)
    return core


def drive(core: SchedulerCore, events: Event | Iterable[Event], now: float) -> list[Instruction]:
    """Hand ``events`` to ``core`` at ``now`` (one ``handle`` call), check the core's
    invariants, and return its instructions.

    Besides :meth:`SchedulerCore.validate_state` it checks that no free CPU, memory or GPU
    count of any node went negative (GPU slots a node does not have hold -1).
    """
    batch = (events,) if isinstance(events, Event) else tuple(events)
    out = core.handle(*batch, now=now)
    core.validate_state()
    check_capacity(core)
    return out


def check_capacity(core: SchedulerCore) -> None:
    """Assert that no alive node is allocated beyond its capacity on any resource."""
    c, n = core.cluster, core.cluster.size
    alive = c.alive[:n]
    assert (c.cpu_free[:n][alive] >= 0).all(), "cpu over capacity"
    assert (c.mem_free[:n][alive] >= 0).all(), "memory over capacity"
    gpus = c.gpu_free[:n][alive]
    real = np.arange(c.max_gpus_per_node)[None, :] < c.gpu_cap[:n][alive][:, None]
    assert (gpus[real] >= 0).all(), "gpu over capacity"
    assert (gpus[real] <= GPU_MILLI).all(), "gpu released twice"
    assert (gpus[~real] == -1).all(), "a GPU slot the node does not have was used"


# ---------------------------------------------------------------------- instructions
def of_type(out: Iterable[Instruction], kind: type[I]) -> list[I]:
    """The instructions of one kind, in order."""
    return [i for i in out if isinstance(i, kind)]


def assigns(out: Iterable[Instruction]) -> list[Assign]:
    return of_type(out, Assign)


def transitions(out: Iterable[Instruction], task_id: str | None = None) -> list[TaskTransition]:
    """State transitions, of one task or of all."""
    return [t for t in of_type(out, TaskTransition) if task_id is None or t.task_id == task_id]


# ---------------------------------------------------------------------- a tiny world
def run_world(
    core: SchedulerCore,
    arrivals: Iterable[tuple[float, Event]],
    runtime_s: Callable[[Assign], float],
    *,
    max_steps: int = 100_000,
) -> list[Instruction]:
    """Play obedient executors around ``core`` on a virtual clock and return every
    instruction the core gave, in order.

    ``arrivals`` are (time, event) pairs fed to the core at their time. Each assignment
    starts at once and completes ``runtime_s(assign)`` seconds later (the time the attempt
    needs for its remaining work); a preemption is confirmed at once with the progress made;
    a stopped attempt never reports again. Events at the same instant go to the core in one
    :func:`drive` call, so invariants are checked after every step. Raises AssertionError if
    the world does not go quiet within ``max_steps`` steps.
    """
    seq = itertools.count()
    heap: list[tuple[float, int, Event]] = [(t, next(seq), ev) for t, ev in arrivals]
    heapq.heapify(heap)
    live: dict[tuple[str, int], tuple[float, float, float]] = {}  # start, duration, resume
    log: list[Instruction] = []
    for _ in range(max_steps):
        if not heap:
            return log
        now = heap[0][0]
        batch = []
        while heap and heap[0][0] == now:
            batch.append(heapq.heappop(heap)[2])
        out = drive(core, batch, now)
        log += out
        for ins in out:
            if isinstance(ins, Assign):
                duration = runtime_s(ins)
                live[(ins.task_id, ins.attempt)] = (now, duration, ins.resume_progress)
                heapq.heappush(
                    heap, (now, next(seq), started(ins.task_id, ins.attempt, ins.node_id))
                )
                heapq.heappush(
                    heap, (now + duration, next(seq), completed(ins.task_id, ins.attempt, duration))
                )
            elif isinstance(ins, Preempt) and (ins.task_id, ins.attempt) in live:
                begin, duration, resume = live.pop((ins.task_id, ins.attempt))
                done = (now - begin) / duration if duration > 0 else 0.0
                fraction = min(resume + (1.0 - resume) * done, 0.999)
                heapq.heappush(
                    heap, (now, next(seq), preempted(ins.task_id, ins.attempt, fraction))
                )
            elif isinstance(ins, StopAttempt):
                live.pop((ins.task_id, ins.attempt), None)
        # Completions of preempted or stopped attempts are not delivered.
        heap = [e for e in heap if not _orphan(e[2], live)]
        heapq.heapify(heap)
    raise AssertionError(f"the world did not go quiet within {max_steps} steps")


def _orphan(event: Event, live: Mapping[tuple[str, int], object]) -> bool:
    if isinstance(event, TaskCompleted | TaskStarted):
        return (event.task_id, event.attempt) not in live
    return False


# ---------------------------------------------------------------------- agents
@contextlib.contextmanager
def running_in_thread(
    run: Callable[[threading.Event], None], join_timeout_s: float = 15.0
) -> Iterator[threading.Event]:
    """Run an agent's ``run(stop)`` in a background thread for the ``with`` block, then
    set ``stop`` and check that the agent really stopped."""
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(join_timeout_s)
        if thread.is_alive():
            raise AssertionError(f"the agent did not stop within {join_timeout_s:g} s")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


class TopicReader:
    """Reads a whole Kafka topic (every partition, from the beginning) for tests: the raw
    records with their headers, and the events among them, decoded."""

    def __init__(self, config: Mapping[str, Any], topic: str, timeout_s: float = 20.0) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
        from confluent_kafka.admin import AdminClient

        self.timeout_s = timeout_s
        self.records: list[tuple[bytes, dict[str, str]]] = []
        self._decoded: list[Any] = []
        group = f"reader-{uuid.uuid4().hex}"
        self._consumer = Consumer({**config, "group.id": group, "enable.auto.commit": False})
        deadline = time.monotonic() + timeout_s
        while True:  # an agent may still be creating the topic
            meta = AdminClient(dict(config)).list_topics(topic, timeout=10).topics[topic]
            if meta.error is None and meta.partitions:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} never appeared")
            time.sleep(0.1)
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])

    def wait_for(
        self, predicate: Callable[[list[tuple[bytes, dict[str, str]]]], bool]
    ) -> list[tuple[bytes, dict[str, str]]]:
        """Read until ``predicate(records)`` holds (AssertionError after the timeout)."""
        deadline = time.monotonic() + self.timeout_s
        while not predicate(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {len(self.records)} records")
            msg = self._consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            headers = {str(k): _text(v) for k, v in list(msg.headers() or [])}
            self.records.append((msg.value() or b"", headers))
        return self.records

    def drain(self, seconds: float) -> None:
        """Keep reading for ``seconds`` (records of other partitions may lag)."""
        deadline = time.monotonic() + seconds
        self.wait_for(lambda _: time.monotonic() >= deadline)

    def events(self, kind: type[Any] | None = None, task_id: str | None = None) -> list[Any]:
        """Decoded events read so far (records that do not decode are left out)."""
        from streamsched.schemas import codec

        for value, _ in self.records[len(self._decoded) :]:
            try:
                self._decoded.append(codec.decode(value))
            except ValueError:
                self._decoded.append(None)
        return [
            e
            for e in self._decoded
            if e is not None
            and (kind is None or isinstance(e, kind))
            and (task_id is None or getattr(e, "task_id", None) == task_id)
        ]

    def wait_events(self, predicate: Callable[[list[Any]], bool]) -> list[Any]:
        """Read until ``predicate(decoded events)`` holds; return the decoded events."""
        self.wait_for(lambda _: predicate(self.events()))
        return self.events()

    def wait_event(self, kind: type[Any], task_id: str) -> Any:
        """The first event of ``kind`` for ``task_id``, waiting for it."""
        self.wait_events(lambda _: bool(self.events(kind, task_id)))
        return self.events(kind, task_id)[0]

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wire_submission(
    task_id: str,
    *,
    governance: Mapping[str, str] | None = None,
    command: Iterable[str] | None = None,
    hardware: str = "gpu-v100",
) -> WireTaskSubmitted:
    """A valid wire ``task.submitted`` for live tests: one GPU of ``hardware``, tenant
    ``team-a``, type ``smoke``, the given governance tags (a test's own label keeps other
    tests' nodes away), running ``command`` (default: a Python one-liner that prints)."""
    return WireTaskSubmitted.model_validate(
        {
            "occurred_at": datetime.now(UTC),
            "source": "test",
            "task_id": task_id,
            "idempotency_key": f"key-{task_id}",
            "tenant": "team-a",
            "task_type": "smoke",
            "resources": {"gpus": 1, "allowed_hardware": [hardware]},
            "governance": dict(governance or {}),
            "command": list(command or (sys.executable, "-c", "print('ok')")),
        }
    )


def spawn_cli(args: Iterable[str], servers: str, log: Path, **env: str) -> subprocess.Popen[str]:
    """Run ``streamsched ARGS`` as a real subprocess against ``servers`` (its
    ``KAFKA_BOOTSTRAP_SERVERS``), stdout and stderr to the file ``log`` (never a pipe
    that could fill up); ``env`` adds variables (e.g. ``PYTHONHASHSEED``)."""
    script = Path(sys.executable).with_name("streamsched")
    with log.open("w") as out:
        return subprocess.Popen(
            [str(script), *args],
            env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": servers, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )


def cli_executor(
    node_id: str, label: str, servers: str, tmp: Path, gpus: int = 1
) -> subprocess.Popen[str]:
    """A ``streamsched executor`` subprocess: a v100 node with ``gpus`` GPUs, labelled
    ``test_run=<label>`` (a test's tasks name that label, so other tests' nodes never take
    them), heartbeating every 0.5 s, its log in ``tmp/<node_id>.log``."""
    args = ["executor", "--node-id", node_id, "--hardware", "v100", "--gpus", str(gpus),
            "--cpus", "16", "--memory", "64GiB", "--log-dir", str(tmp / node_id),
            "--heartbeat-s", "0.5", "--label", f"test_run={label}"]  # fmt: skip
    return spawn_cli(args, servers, tmp / f"{node_id}.log")


def stop_process(proc: subprocess.Popen[str], timeout_s: float = 20.0) -> None:
    """SIGTERM ``proc`` (resuming it first if it was stopped), SIGKILL it after
    ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_T = TypeVar("_T")


def wait_until(
    what: str,
    probe: Callable[[], _T | None],
    timeout_s: float = 60.0,
    *,
    retry_on: tuple[type[BaseException], ...] = (OSError,),
    interval_s: float = 0.2,
    seen: Callable[[], object] | None = None,
) -> _T:
    """Call ``probe`` until it returns something other than None (an exception of
    ``retry_on`` counts as None); AssertionError naming ``what`` (and ``seen()``, if given)
    after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = probe()
        except retry_on:
            value = None
        if value is not None:
            return value
        if time.monotonic() > deadline:
            last = f"; last seen: {seen()}" if seen is not None else ""
            raise AssertionError(f"timed out waiting for {what}{last}")
        time.sleep(interval_s)
