"""Prometheus metrics of every streamsched process, in one place.

Names follow the Prometheus conventions: the ``streamsched_`` prefix, base units in the
name (``_seconds``, ``_bytes``), ``_total`` on counters. Label sets are bounded: hardware
classes come from the fleet (a handful), topics from the fixed topic list plus one
assignment topic per hardware class, components and outcomes from fixed vocabularies.
Task ids, node ids, tenants and error texts are never labels.

Each process serves its own metrics with :func:`serve` on 127.0.0.1 (port 0 picks a free
port). The metrics are module-level objects in the default registry, so a process that
runs several components (a test, ``streamsched up`` helpers) exposes them once; the
``component`` label tells them apart where it matters.

docs/metrics.md lists every metric with its meaning; keep the two in step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client import start_http_server as _start_http_server

from streamsched import __version__

logger = logging.getLogger(__name__)

#: Components (values of the ``component`` label).
COMPONENTS = ("placement", "executor", "processor", "client", "up")

#: Latency buckets (seconds) for pipeline latencies: 0.5 ms .. 60 s.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip
#: Buckets for the relative forecast error |predicted - actual| / actual.
RATIO_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

BUILD = Info("streamsched_build", "Version of the streamsched process.")
BUILD.info({"version": __version__})

# --------------------------------------------------------------------- placement agent
SUBMISSIONS = Counter(
    "streamsched_submissions_total",
    "Task submissions read by the placement agent, by outcome (accepted, rejected, duplicate).",
    ["outcome"],
)
DECISIONS = Counter(
    "streamsched_decisions_total",
    "Scheduling decisions published, by kind (assign, reject, preempt, stop) and hardware "
    "class ('' when none applies, e.g. a rejection).",
    ["kind", "hardware"],
)
ASSIGNMENTS = Counter(
    "streamsched_assignments_total",
    "Assignments published to sched.assignments.<hardware>, by hardware class.",
    ["hardware"],
)
REASSIGNMENTS = Counter(
    "streamsched_reassignments_total",
    "Assignments of a task's second or later attempt (after a preemption, a lost node or a "
    "retry): placement churn, by hardware class of the new attempt.",
    ["hardware"],
)
QUEUE_DEPTH = Gauge(
    "streamsched_queue_depth",
    "Queued (eligible, unplaced) tasks that may run on each hardware class; a task allowed "
    "on several classes counts in each.",
    ["hardware"],
)
QUEUED_TASKS = Gauge("streamsched_queued_tasks", "Queued tasks (each counted once).")
RUNNING_TASKS = Gauge(
    "streamsched_running_tasks", "Tasks assigned or running, by hardware class.", ["hardware"]
)
DECISION_LATENCY = Histogram(
    "streamsched_decision_latency_seconds",
    "Time the scheduler core took to handle one batch of input events (all decisions it "
    "made for that batch).",
    buckets=LATENCY_BUCKETS,
)
SUBMIT_TO_ASSIGNED = Histogram(
    "streamsched_submit_to_assigned_seconds",
    "From a submission's occurred_at to the publication of its first assignment, by "
    "hardware class (wall clock; includes queueing for capacity).",
    ["hardware"],
    buckets=LATENCY_BUCKETS,
)

# --------------------------------------------------------------------- executor agent
ASSIGNED_TO_STARTED = Histogram(
    "streamsched_assigned_to_started_seconds",
    "From an assignment's occurred_at to the start of its attempt on the executor, by "
    "hardware class.",
    ["hardware"],
    buckets=LATENCY_BUCKETS,
)
ATTEMPTS = Counter(
    "streamsched_attempt_outcomes_total",
    "Attempts ended on executors, by outcome (completed, failed, preempted, cancelled, "
    "lost) and hardware class.",
    ["outcome", "hardware"],
)
EXECUTOR_RUNNING = Gauge(
    "streamsched_executor_running_attempts", "Attempts this executor runs now.", ["hardware"]
)
HEARTBEATS = Counter(
    "streamsched_heartbeats_sent_total", "Heartbeats published by this executor.", ["hardware"]
)

# --------------------------------------------------------------------- stream processor
TASK_OUTCOMES = Counter(
    "streamsched_task_outcomes_total",
    "Tasks that reached a terminal state, by state (succeeded, failed, cancelled, "
    "rejected) and hardware class of the last attempt ('' if it never ran).",
    ["state", "hardware"],
)
FORECAST_ERROR = Histogram(
    "streamsched_forecast_error_seconds",
    "Absolute runtime forecast error |predicted - actual| of completed attempts, by "
    "hardware class.",
    ["hardware"],
    buckets=(1, 10, 60, 300, 900, 1800, 3600, 7200, 21600, 86400, 259200),
)
FORECAST_RELATIVE_ERROR = Histogram(
    "streamsched_forecast_relative_error_ratio",
    "Relative runtime forecast error |predicted - actual| / actual of completed attempts.",
    ["hardware"],
    buckets=RATIO_BUCKETS,
)
TRIGGERS_FIRED = Counter(
    "streamsched_triggers_fired_total",
    "Submissions made by data-ingested trigger rules.",
    ["rule"],
)
DATA_INGESTED_BYTES = Counter(
    "streamsched_data_ingested_bytes_total", "Bytes announced by data.ingested events."
)

# --------------------------------------------------------------------- every consumer
CONSUMER_LAG = Gauge(
    "streamsched_consumer_lag_messages",
    "Records between a consumer's position and the partition's high watermark, summed over "
    "the partitions it reads, by component and topic. On the embedded broker the high "
    "watermark of batched writes is understated, so lag reads low there.",
    ["component", "topic"],
)
EVENTS_CONSUMED = Counter(
    "streamsched_events_consumed_total",
    "Records read, by component and topic.",
    ["component", "topic"],
)
DEAD_LETTERED = Counter(
    "streamsched_dead_lettered_total",
    "Records copied to sched.deadletter because they could not be decoded, by component "
    "and source topic.",
    ["component", "topic"],
)


# --------------------------------------------------------------------- processor: learned models
# (streams/models.py: runtime model learning, drift, load forecasts, checkpoints)
MODEL_PREQUENTIAL_LOG_ERROR = Histogram(
    "streamsched_model_prequential_log_error",
    "Delayed progressive validation of the processor's runtime model: |log(predicted / "
    "actual)| of each completion it learns from, predicted just before learning it, by "
    "hardware class.",
    ["hardware"],
    buckets=(0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0),
)
MODEL_PREQUENTIAL_ERROR = Histogram(
    "streamsched_model_prequential_error_seconds",
    "Delayed progressive validation of the processor's runtime model: |predicted - actual| "
    "seconds of each completion it learns from, by hardware class.",
    ["hardware"],
    buckets=(1, 10, 60, 300, 900, 1800, 3600, 7200, 21600, 86400, 259200),
)
MODEL_DRIFT = Counter(
    "streamsched_model_drift_total",
    "Drifts detected in a learned model's forecast errors, by model name and key (the "
    "hardware class for the runtime model).",
    ["model", "key"],
)
MODEL_CHECKPOINTS = Counter(
    "streamsched_model_checkpoints_total",
    "Model checkpoints published to sched.models, by model name.",
    ["model"],
)
MODEL_CHECKPOINTS_SKIPPED = Counter(
    "streamsched_model_checkpoints_skipped_total",
    "Checkpoints on sched.models not restored because they failed a check, by model name "
    "('unknown' when unreadable) and reason (truncated, checksum, format, format-version, "
    "not-a-checkpoint, wrong-model, wrong-type, unpickle, corrupt).",
    ["model", "reason"],
)
LOAD_FORECAST = Gauge(
    "streamsched_load_forecast_tasks",
    "Predicted task arrivals in the next load bucket (10 minutes by default), by hardware "
    "class named by the submissions ('any' when they name none).",
    ["hardware"],
)


# --------------------------------------------------------------------- placement: shadow mode
# (scheduler/shadow.py; counted by agents/placement.py from ShadowAssign instructions)
SHADOW_DECISIONS = Counter(
    "streamsched_shadow_decisions_total",
    "Would-be placements of the shadow policy (decision.audit kind=shadow, never executed), "
    "by shadow policy name.",
    ["policy"],
)
SHADOW_AGREEMENT = Counter(
    "streamsched_shadow_agreement_total",
    "Shadow decisions by how they compare with the live decision of the same cycle: "
    "same_node, same_hardware (another node of the same class), different, live_waited (the "
    "live policy did not place the task in that cycle).",
    ["agree"],
)


# --------------------------------------------------------------------- placement: risk, load
# (scheduler/failure.py and the core's load forecasters; set by agents/placement.py's gauge
# refresh. Per-node risk stays out of labels: it is in the decision audit.)
PLACEMENT_LOAD_FORECAST_GPUS = Gauge(
    "streamsched_load_forecast_gpus",
    "The placement core's predicted GPU demand of the load bucket in progress (10 minutes "
    "by default), by hardware class: what low-priority deferral compares with free GPUs.",
    ["hardware"],
)
BREAKER_STATE = Gauge(
    "streamsched_breaker_state",
    "State of the placement core's circuit breaker per hardware class: 0 closed, 1 "
    "half-open (one probe attempt allowed), 2 open (placement there paused).",
    ["hardware"],
)
RETRY_BACKOFF_TASKS = Gauge(
    "streamsched_retry_backoff_tasks",
    "Queued tasks waiting out a retry backoff (not placeable yet).",
)
PLACEMENT_RESTORE_SECONDS = Gauge(
    "streamsched_placement_restore_seconds",
    "How long the placement agent's last start took to replay its journal (0: nothing to replay).",
)
PLACEMENT_SNAPSHOT_BYTES = Gauge(
    "streamsched_placement_snapshot_bytes",
    "Size of the placement agent's last state snapshot in its journal.",
)
PLACEMENT_REPLAY_DIVERGENCES = Counter(
    "streamsched_placement_replay_divergences_total",
    "Journal entries whose replayed decisions differed from the journaled ones (a code "
    "or configuration change, or a nondeterminism bug).",
)
NODE_FAILURE_RISK_MAX = Gauge(
    "streamsched_node_failure_risk_max",
    "Highest node failure risk (0..1, learned from heartbeat gaps, lost and failed "
    "attempts) among the registered nodes of each hardware class.",
    ["hardware"],
)


def serve(port: int = 0, addr: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> int:
    """Serve ``registry`` at ``http://addr:port/metrics`` from a daemon thread; return the
    port actually bound (``port=0`` picks a free one). Raises OSError if it is taken."""
    server, _thread = _start_http_server(port, addr=addr, registry=registry)
    bound = int(server.server_port)
    logger.info("metrics on http://%s:%d/metrics", addr, bound)
    return bound


def set_consumer_lag(component: str, lags: Iterable[tuple[str, int]]) -> None:
    """Set :data:`CONSUMER_LAG` from ``(topic, lag)`` pairs, summing per topic."""
    per_topic: dict[str, int] = {}
    for topic, lag in lags:
        per_topic[topic] = per_topic.get(topic, 0) + max(0, lag)
    for topic, lag in per_topic.items():
        CONSUMER_LAG.labels(component, topic).set(lag)


__all__ = [
    "ASSIGNED_TO_STARTED",
    "ASSIGNMENTS",
    "ATTEMPTS",
    "BUILD",
    "COMPONENTS",
    "CONSUMER_LAG",
    "DATA_INGESTED_BYTES",
    "DEAD_LETTERED",
    "DECISIONS",
    "DECISION_LATENCY",
    "EVENTS_CONSUMED",
    "EXECUTOR_RUNNING",
    "FORECAST_ERROR",
    "FORECAST_RELATIVE_ERROR",
    "HEARTBEATS",
    "LOAD_FORECAST",
    "MODEL_CHECKPOINTS",
    "MODEL_CHECKPOINTS_SKIPPED",
    "MODEL_DRIFT",
    "MODEL_PREQUENTIAL_ERROR",
    "MODEL_PREQUENTIAL_LOG_ERROR",
    "NODE_FAILURE_RISK_MAX",
    "PLACEMENT_LOAD_FORECAST_GPUS",
    "QUEUED_TASKS",
    "QUEUE_DEPTH",
    "REASSIGNMENTS",
    "RUNNING_TASKS",
    "SHADOW_AGREEMENT",
    "SHADOW_DECISIONS",
    "SUBMISSIONS",
    "SUBMIT_TO_ASSIGNED",
    "TASK_OUTCOMES",
    "TRIGGERS_FIRED",
    "serve",
    "set_consumer_lag",
]

# --------------------------------------------------------------------- executor guard
# Assignments an executor refused to start (agents/executor.py ExecutionGuard): the
# executable is not on --allow-exec, or a governance tag does not match this node's labels.
EXECUTOR_REFUSALS = Counter(
    "streamsched_executor_refusals_total",
    "Assignments the executor refused to start, by reason (executable, governance); each "
    "is reported as a non-retryable task.failed.",
    ["reason"],
)
__all__ += ["EXECUTOR_REFUSALS"]
