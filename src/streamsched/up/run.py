"""``streamsched up``: the whole live system on one machine, replaying a trace.

Steps (docs/cli.md, "up"):

1. Load the trace and the fleet, and simulate them with the same policy: the simulated
   run is the baseline the live one is compared with, and its makespan sets the speed-up
   that makes the replay last about ``duration_s``.
2. Use ``KAFKA_BOOTSTRAP_SERVERS`` or start the embedded broker; create the topics.
3. Start the components as child processes, each a ``streamsched`` command: the stream
   processor, the placement agent (its core on the compressed replay clock) and one
   replaying executor per node.
4. Submit the trace's jobs at their (compressed) arrival times; read decisions and
   lifecycle events back; show progress.
5. When every task is terminal (or on Ctrl-C / timeout), stop the children, then the
   broker, and print the simulator's report table for the simulated and the live run,
   with how far their placements agree.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamsched.broker import client_config, ensure_topics, free_port, kafka
from streamsched.scheduler.instructions import Assign
from streamsched.scheduler.model import NodeSpec, TaskSpec
from streamsched.scheduler.policies import get_policy
from streamsched.scheduler.simulator import SimConfig, SimReport, Simulator
from streamsched.scheduler.trace import Trace
from streamsched.schemas import codec, topics
from streamsched.schemas.tasks import TaskSubmitted
from streamsched.settings import kafka_settings
from streamsched.traces import load_trace
from streamsched.traces.cluster import parse_cluster

from .processes import Child, stop_all, streamsched_argv
from .replay import ReplayClock, replayable, speedup_for, wire_submission
from .tracker import LiveTracker, Snapshot

logger = logging.getLogger(__name__)

#: The default fleet: 2 nodes of 4 GPUs per GPU class, and 2 CPU nodes.
DEFAULT_EXECUTORS = "v100=2x4,p100=2x4,k80=2x4,cpu=2"


@dataclass(frozen=True, slots=True)
class UpConfig:
    trace: str = "gavel:sample"
    throughputs: Path | None = None
    policy: str = "forecast-river"
    executors: str = DEFAULT_EXECUTORS
    duration_s: float = 120.0
    jobs: int | None = None
    warmup_s: float = 10.0
    timeout_s: float | None = None
    run_dir: Path | None = None
    processor: bool = True
    heartbeat_s: float = 1.0
    heartbeat_timeout_s: float = 15.0


@dataclass(slots=True)
class UpResult:
    live: SimReport
    simulated: SimReport
    tracker: LiveTracker
    sim_placements: dict[str, tuple[str, str]]
    speedup: float
    run_dir: Path
    metrics: dict[str, str]
    interrupted: bool
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.tracker.all_terminal and not self.interrupted

    def agreement(self) -> dict[str, Any]:
        """How the live first placements compare with the simulated ones."""
        live = self.tracker.placements()
        common = sorted(set(live) & set(self.sim_placements))
        same_hw = sum(1 for t in common if live[t][1] == self.sim_placements[t][1])
        same_node = sum(1 for t in common if live[t] == self.sim_placements[t])
        n = len(common)
        return {
            "tasks_compared": n,
            "same_hardware": same_hw,
            "same_node": same_node,
            "same_hardware_fraction": same_hw / n if n else None,
            "same_node_fraction": same_node / n if n else None,
            "avg_jct_live_over_simulated": (
                self.live.avg_jct_s / self.simulated.avg_jct_s
                if self.simulated.avg_jct_s > 0 and self.live.jobs
                else None
            ),
        }


class _RecordingSimulator(Simulator):
    """The simulator, run at once, remembering each task's first placement and its report."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.placements: dict[str, tuple[str, str]] = {}
        self.report = self.run()

    def _on_assign(self, ins: Assign, now: float) -> None:
        self.placements.setdefault(ins.task_id, (ins.node_id, ins.hardware))
        super()._on_assign(ins, now)


def load(cfg: UpConfig, id_prefix: str = "") -> tuple[Trace, tuple[NodeSpec, ...]]:
    """The replayable trace (first ``cfg.jobs`` jobs by arrival, task ids prefixed with
    ``id_prefix``) and the fleet. Raises ValueError naming the bad setting."""
    try:
        nodes = parse_cluster(cfg.executors, gpus_per_node=8)
    except ValueError as exc:
        raise ValueError(f"--executors: {exc}") from None
    widest = max((n.gpus for n in nodes), default=0)
    trace = load_trace(
        cfg.trace, throughputs=cfg.throughputs, wide_jobs="clamp", max_gpus_per_job=widest or 1
    )
    trace = replayable(trace)
    jobs = sorted(trace.jobs, key=lambda j: (j.arrival_s, j.spec.task_id))
    if cfg.jobs is not None:
        if cfg.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {cfg.jobs}")
        jobs = jobs[: cfg.jobs]
    if not jobs:
        raise ValueError(f"{cfg.trace}: no jobs to replay")
    origin = jobs[0].arrival_s
    jobs = [
        replace(j, arrival_s=j.arrival_s - origin, spec=_prefixed(j.spec, id_prefix)) for j in jobs
    ]
    now = datetime.now(UTC)
    for job in jobs:
        wire_submission(job, now)  # fails early, naming the job, if one cannot be replayed
    return replace(trace, jobs=tuple(jobs)), nodes


def _prefixed(spec: TaskSpec, prefix: str) -> TaskSpec:
    if not prefix:
        return spec
    return replace(
        spec,
        task_id=prefix + spec.task_id,
        depends_on=tuple(prefix + upstream for upstream in spec.depends_on),
    )


def simulate(trace: Trace, nodes: Sequence[NodeSpec], policy: str) -> _RecordingSimulator:
    return _RecordingSimulator(
        trace, nodes, get_policy(policy), config=SimConfig(), clock=time.perf_counter
    )


def run_up(
    cfg: UpConfig,
    show: Callable[[Snapshot, dict[str, int]], None],
    note: Callable[[str], None],
    stop: threading.Event,
) -> UpResult:
    """Run the live replay; ``show`` receives progress about twice a second (snapshot and
    queue depth per hardware class scraped from the placement agent), ``note`` one-line
    messages. ``stop`` ends the run early (Ctrl-C). Raises ValueError for bad settings and
    RuntimeError when a component dies."""
    if cfg.policy == "oracle":
        raise ValueError("--policy oracle needs true runtimes and cannot run live")
    get_policy(cfg.policy)  # ValueError naming the known policies
    if not (math.isfinite(cfg.duration_s) and cfg.duration_s > 0):
        raise ValueError(f"--duration-s must be a positive number, got {cfg.duration_s}")
    settings = kafka_settings()
    # On a configured cluster, earlier runs' tasks may still be known: this run's task ids
    # get a prefix of their own (the same in the simulated baseline, so ties break alike).
    prefix = (
        f"up{time.time_ns() // 1_000_000_000 % 1_000_000:06d}-"
        if settings.bootstrap_servers
        else ""
    )
    trace, nodes = load(cfg, prefix)
    sim = simulate(trace, nodes, cfg.policy)
    horizon = max(sim.report.makespan_s, max(j.arrival_s for j in trace.jobs), 1.0)
    speedup = speedup_for(horizon, cfg.duration_s)
    note(
        f"{trace.name}: {len(trace.jobs)} jobs over {horizon / 86400:.1f} simulated days, "
        f"replayed {speedup:,.0f}x faster (about {horizon / speedup:.0f} s); "
        f"policy {cfg.policy}; {len(nodes)} executors"
    )
    run_dir = cfg.run_dir or Path(tempfile.mkdtemp(prefix="streamsched-up-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    with kafka(settings) as servers:
        config = client_config(servers, settings)
        note(f"broker: {servers} ({'configured' if settings.bootstrap_servers else 'embedded'})")
        ensure_topics(config, topics.CORE_TOPIC_PARTITIONS)
        return _live(cfg, trace, nodes, sim, speedup, run_dir, config, servers, show, note, stop)


def _live(
    cfg: UpConfig,
    trace: Trace,
    nodes: Sequence[NodeSpec],
    sim: _RecordingSimulator,
    speedup: float,
    run_dir: Path,
    config: dict[str, Any],
    servers: str,
    show: Callable[[Snapshot, dict[str, int]], None],
    note: Callable[[str], None],
    stop: threading.Event,
) -> UpResult:
    clock = ReplayClock(time.time() + cfg.warmup_s, speedup)
    tracker = LiveTracker(trace.jobs, clock)
    lock = threading.Lock()
    reader = _EventReader(config, tracker, lock)
    reader.start()
    env = {"KAFKA_BOOTSTRAP_SERVERS": servers, "PYTHONUNBUFFERED": "1"}
    metrics: dict[str, str] = {}
    children: list[Child] = []
    interrupted = False
    wall0 = time.monotonic()
    try:
        children = _start_children(cfg, nodes, clock, run_dir, env, metrics)
        note(f"logs: {run_dir}")
        _write_scrape_targets(run_dir, metrics)
        note(
            "metrics (Prometheus): "
            + ", ".join(f"{name} {url}" for name, url in metrics.items())
            + f"; scrape targets for Prometheus file_sd: {run_dir / 'prometheus-targets.json'}"
        )
        interrupted = _drive(
            cfg,
            trace,
            len(nodes),
            clock,
            (tracker, lock),
            config,
            children,
            metrics,
            show,
            note,
            stop,
        )
    finally:
        codes = stop_all(children, grace_s=15.0)
        reader.stop()
        for name, code in codes.items():
            if code not in (0, None, -15):
                note(f"{name} exited with code {code}; see {run_dir / (name + '.log')}")
    wall = time.monotonic() - wall0
    total_gpus = sum(n.gpus for n in nodes)
    live = tracker.report(cfg.policy, trace.name, total_gpus, wall)
    # The baseline: the simulation of the same events, nodes registered in the order the
    # live agent saw them (ties between equal nodes go to the first registered).
    order = {node_id: i for i, node_id in enumerate(tracker.registration_order())}
    same_order = sorted(nodes, key=lambda n: order.get(n.node_id, len(order)))
    if [n.node_id for n in same_order] != [n.node_id for n in nodes]:
        sim = simulate(trace, same_order, cfg.policy)
    simulated = sim.report
    return UpResult(
        live=live,
        simulated=simulated,
        tracker=tracker,
        sim_placements=sim.placements,
        speedup=speedup,
        run_dir=run_dir,
        metrics=metrics,
        interrupted=interrupted,
    )


def _start_children(
    cfg: UpConfig,
    nodes: Sequence[NodeSpec],
    clock: ReplayClock,
    run_dir: Path,
    env: dict[str, str],
    metrics: dict[str, str],
) -> list[Child]:
    children: list[Child] = []
    taken: set[int] = set()

    def new_port() -> int:
        """A free port not handed out before in this run: the children bind theirs only
        once started, so the OS may offer one port twice in the meantime."""
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    def metrics_port(name: str) -> str:
        port = new_port()
        metrics[name] = f"http://127.0.0.1:{port}/metrics"
        return str(port)

    if cfg.processor:
        web = new_port()
        children.append(
            Child(
                "processor",
                streamsched_argv(
                    "processor", *_flags(web_port=str(web), metrics_port=metrics_port("processor"))
                ),
                run_dir,
                {**env, "STREAMSCHED_STATUS_URL": f"http://127.0.0.1:{web}"},
            )
        )
    children.append(
        Child(
            "placement",
            streamsched_argv(
                "placement",
                *_flags(
                    policy=cfg.policy,
                    replay_start=repr(clock.start),
                    replay_speedup=repr(clock.speedup),
                    heartbeat_timeout_s=repr(cfg.heartbeat_timeout_s),
                    metrics_port=metrics_port("placement"),
                ),
            ),
            run_dir,
            env,
        )
    )
    for node in nodes:
        children.append(
            Child(
                node.node_id,
                streamsched_argv(
                    "executor",
                    *_flags(
                        node_id=node.node_id,
                        hardware=node.hardware,
                        gpus=str(node.gpus),
                        cpus=f"{node.cpu_milli}m",
                        memory=f"{node.memory_mib}MiB",
                        replay_speedup=repr(clock.speedup),
                        # Progress as the simulator reports it: once, 600 trace s in.
                        replay_progress_after_s=repr(SimConfig().progress_report_s),
                        progress_interval_s="3600",
                        heartbeat_s=repr(cfg.heartbeat_s),
                        log_dir=str(run_dir / "attempts" / node.node_id),
                        metrics_port=metrics_port(node.node_id),
                    ),
                ),
                run_dir,
                env,
            )
        )
    return children


def _flags(**options: str) -> list[str]:
    """``--option-name value`` pairs, in the order given."""
    return [part for name, value in options.items() for part in (_flag(name), value)]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _write_scrape_targets(run_dir: Path, metrics: dict[str, str]) -> None:
    """A Prometheus ``file_sd_configs`` file listing every component of this run."""
    targets = [
        {"targets": [url.split("/")[2]], "labels": {"component": name.split("-")[0], "name": name}}
        for name, url in sorted(metrics.items())
    ]
    (run_dir / "prometheus-targets.json").write_text(json.dumps(targets, indent=2) + "\n")


def _drive(
    cfg: UpConfig,
    trace: Trace,
    nodes: int,
    clock: ReplayClock,
    tracked: tuple[LiveTracker, threading.Lock],
    config: dict[str, Any],
    children: Sequence[Child],
    metrics: dict[str, str],
    show: Callable[[Snapshot, dict[str, int]], None],
    note: Callable[[str], None],
    stop: threading.Event,
) -> bool:
    """Submit every job on time and wait for all to end. True if stopped early."""
    tracker, lock = tracked
    jobs = sorted(trace.jobs, key=lambda j: (j.arrival_s, j.spec.task_id))
    horizon = jobs[-1].arrival_s / clock.speedup + cfg.duration_s
    # Default: ten times the expected run (a long job placed on slow hardware can stretch
    # a replay well past its target; the replay ends when every task has).
    timeout = cfg.timeout_s if cfg.timeout_s is not None else cfg.warmup_s + 10 * horizon + 60
    deadline = time.monotonic() + timeout
    producer = Producer({**config, "acks": "all", "linger.ms": 2})
    queue_url = metrics.get("placement")
    depth: dict[str, int] = {}
    last_show = 0.0
    registered = False
    index = 0
    try:
        while not stop.is_set():
            now = time.time()
            if not registered and len(tracker.nodes) >= nodes:
                registered = True
                note(f"{len(tracker.nodes)} executors registered")
            while index < len(jobs) and clock.wall(jobs[index].arrival_s) <= now:
                job = jobs[index]
                # The event time is the arrival time (the loop may wake a little late).
                arrival = datetime.fromtimestamp(clock.wall(job.arrival_s), tz=UTC)
                event = wire_submission(job, arrival)
                producer.produce(
                    topics.TASKS_SUBMITTED,
                    codec.encode(event),
                    key=event.task_id.encode(),
                    headers=[("type", event.type)],
                )
                with lock:
                    tracker.submitted(job.spec.task_id)
                index += 1
            producer.poll(0)
            if index == len(jobs) and tracker.all_terminal:
                break
            dead = [c for c in children if not c.alive]
            if dead:
                raise RuntimeError(
                    f"{dead[0].name} stopped unexpectedly (exit {dead[0].process.returncode}); "
                    f"last lines of {dead[0].log_path}:\n{dead[0].log_tail()}"
                )
            if time.monotonic() > deadline:
                note(f"timed out after {timeout:.0f} s with {tracker.terminal} of "
                     f"{len(jobs)} tasks terminal")  # fmt: skip
                return True
            if time.monotonic() - last_show >= 0.5:
                last_show = time.monotonic()
                if queue_url is not None:
                    depth = _scrape_gauge(queue_url, "streamsched_queue_depth", "hardware") or depth
                with lock:
                    snapshot = tracker.snapshot(now)
                show(snapshot, depth)
            stop.wait(0.02)
        return stop.is_set()
    finally:
        producer.flush(10)
        with lock:
            snapshot = tracker.snapshot(time.time())
        show(snapshot, depth)


def _scrape_gauge(url: str, name: str, label: str) -> dict[str, int] | None:
    """``{label value: gauge value}`` of metric ``name`` at ``url``, or None if unreachable."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=0.3) as response:
            text = response.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    out: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name == name:
            for sample in family.samples:
                out[sample.labels.get(label, "")] = int(sample.value)
    return out


class _EventReader:
    """Reads decisions, lifecycle events and heartbeats into the tracker, from the end
    offsets at start (a configured cluster may hold older runs)."""

    def __init__(self, config: dict[str, Any], tracker: LiveTracker, lock: threading.Lock) -> None:
        self.tracker = tracker
        self._lock = lock
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                **config,
                "group.id": f"streamsched-up-{time.time_ns()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
            }
        )
        wanted = (topics.DECISIONS, topics.TASK_EVENTS, topics.NODE_HEARTBEATS)
        meta = AdminClient(config).list_topics(timeout=15).topics
        assignment = []
        for topic in wanted:
            for p in meta[topic].partitions:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10
                )
                assignment.append(TopicPartition(topic, p, high))
        self._consumer.assign(assignment)
        self._thread = threading.Thread(target=self._run, name="up-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(num_messages=500, timeout=0.1):
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        logger.warning("reader: %s", error)
                    continue
                try:
                    event = codec.decode(msg.value() or b"")
                except ValueError:
                    continue  # the placement agent dead-letters bad records
                if isinstance(event, TaskSubmitted):
                    continue
                with self._lock:
                    self.tracker.apply(event, event.occurred_at.timestamp())


__all__ = ["DEFAULT_EXECUTORS", "UpConfig", "UpResult", "load", "run_up", "simulate"]
