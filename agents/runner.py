"""Run attempts of tasks on an executor node and report their lifecycle through a callback.

This is the part of the executor agent that owns processes; it knows nothing of Kafka. The
agent hands it :class:`~streamsched.schemas.decisions.Assignment` objects and forwards the
lifecycle events it reports (``TaskStarted``, then exactly one of ``TaskCompleted``,
``TaskFailed``, ``TaskPreempted`` or ``TaskCancelled``) to ``sched.tasks.events``.

Two modes:

- **real**: ``assignment.command`` is run directly (never through a shell) in its own
  session, so the whole process group can be signalled; stdout and stderr go to one log file
  per attempt, ``<log_dir>/<task_id>.<attempt>.log``.
- **replay**: no process; the attempt "runs" for ``replay_runtime_s / speedup`` wall seconds
  (an empty command without a replay runtime runs for ``predicted_runtime_s / speedup``).

One thread per attempt reports ``TaskStarted``, waits for the end and reports the single
terminal event, so "exactly one terminal report per attempt" holds by construction. A stop
(:meth:`AttemptRunner.preempt`, :meth:`AttemptRunner.cancel`) only records why and signals;
the attempt's thread reports the stop once the process is gone.

Assignments are delivered at least once: starting an attempt that is running, or that this
runner already finished, is ignored.

Progress: ``TaskPreempted.progress`` is the assignment's ``resume_progress`` (what earlier
attempts achieved). Reading checkpoint progress from the task's own reports (e.g. a
``STREAMSCHED_PROGRESS 0.42`` line on stdout) and emitting ``TaskProgress`` is left to a
later piece.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeAlias, TypeVar

from streamsched.schemas.decisions import Assignment
from streamsched.schemas.lifecycle import (
    AttemptEvent,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskLost,
    TaskPreempted,
    TaskProgress,
    TaskStarted,
)

logger = logging.getLogger(__name__)

#: Every event this runner may report (a subset of the wire ``Event`` union).
LifecycleEvent: TypeAlias = (
    TaskStarted
    | TaskProgress
    | TaskCompleted
    | TaskFailed
    | TaskPreempted
    | TaskCancelled
    | TaskLost
)
#: (task id, attempt): identifies one attempt.
AttemptKey: TypeAlias = tuple[str, int]
StopReason: TypeAlias = Literal["preempt", "cancel"]
_E = TypeVar("_E", bound=AttemptEvent)

#: How many finished attempts are remembered to ignore redelivered assignments.
FINISHED_MEMORY = 10_000
#: Extra seconds :meth:`AttemptRunner.stop_all` waits for each thread beyond the grace.
JOIN_SLACK_S = 5.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Attempt:
    """One attempt this runner owns. Mutable fields are guarded by the runner's lock."""

    assignment: Assignment
    process: subprocess.Popen[bytes] | None  # None in replay mode
    replay_wall_s: float = 0.0
    speedup: float = 1.0
    started_s: float = field(default_factory=time.monotonic)  # monotonic start time
    stop_reason: StopReason | None = None
    stop_detail: str | None = None
    exited: bool = False  # the process is gone (a zombie at most): no more signals
    stopped: threading.Event = field(default_factory=threading.Event)  # wakes replay
    kill_timer: threading.Timer | None = None
    thread: threading.Thread | None = None


def attempt_env(assignment: Assignment, node_id: str) -> dict[str, str]:
    """The environment of an attempt's process: the executor's own environment, then the
    assignment's ``env``, then the runner's variables (which the assignment cannot override).
    """
    env = dict(os.environ)
    env.update(assignment.env)
    env.update(
        {
            "STREAMSCHED_TASK_ID": assignment.task_id,
            "STREAMSCHED_ATTEMPT": str(assignment.attempt),
            "STREAMSCHED_NODE_ID": node_id,
            "STREAMSCHED_RESUME_PROGRESS": repr(assignment.resume_progress),
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in assignment.gpu_indices),
        }
    )
    return env


class AttemptRunner:
    """Runs attempts of tasks on node ``node_id`` and reports their lifecycle to ``report``.

    ``report`` is called from the runner's threads (and from :meth:`start` when a command
    cannot be started); it must be thread-safe. ``clock`` stamps ``occurred_at``; durations
    are measured with a monotonic clock. ``grace_s`` is how long a stopped process may take
    to exit after SIGTERM before its process group gets SIGKILL.
    """

    def __init__(
        self,
        log_dir: Path,
        node_id: str,
        report: Callable[[LifecycleEvent], None],
        clock: Callable[[], datetime] = _utc_now,
        grace_s: float = 10.0,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.node_id = node_id
        self.source = f"executor:{node_id}"
        self.grace_s = grace_s
        self._report = report
        self._clock = clock
        self._lock = threading.Lock()
        self._attempts: dict[AttemptKey, _Attempt] = {}
        self._finished: OrderedDict[AttemptKey, None] = OrderedDict()

    # ------------------------------------------------------------------ public API

    def start(
        self,
        assignment: Assignment,
        *,
        replay_runtime_s: float | None = None,
        speedup: float = 1.0,
    ) -> None:
        """Start the attempt of ``assignment``; ignored if it is running or already finished.

        Replay mode when ``replay_runtime_s`` is given or the command is empty. A command
        that cannot be started is reported as a non-retryable ``TaskFailed`` (no
        ``TaskStarted``) before this returns.
        """
        if speedup <= 0:
            raise ValueError(f"speedup must be positive, got {speedup}")
        key = (assignment.task_id, assignment.attempt)
        with self._lock:
            if key in self._attempts or key in self._finished:
                logger.info("ignoring duplicate assignment of %s attempt %d", *key)
                return
            record = self._new_attempt(assignment, replay_runtime_s, speedup)
            if isinstance(record, TaskFailed):
                self._remember_finished(key)
            else:
                self._attempts[key] = record
                record.thread = threading.Thread(
                    target=self._run_attempt, args=(record,), name=f"attempt-{key}", daemon=True
                )
                record.thread.start()
        if isinstance(record, TaskFailed):
            self._emit(record)

    def preempt(self, task_id: str, attempt: int) -> bool:
        """Stop the attempt to free its resources; it reports ``TaskPreempted``.

        Returns False if the attempt is not running here. Does not block: the process gets
        SIGTERM now and SIGKILL after ``grace_s`` if it is still alive.
        """
        return self._stop((task_id, attempt), "preempt", None)

    def cancel(self, task_id: str, attempt: int, reason: str | None = None) -> bool:
        """Stop the attempt because its task was cancelled; it reports ``TaskCancelled``.

        Returns False if the attempt is not running here. Does not block.
        """
        return self._stop((task_id, attempt), "cancel", reason)

    def running(self) -> list[AttemptKey]:
        """The attempts running here (stopping ones included), for heartbeats."""
        with self._lock:
            return sorted(self._attempts)

    def stop_all(self, reason: str = "executor shutting down") -> None:
        """Cancel every running attempt and wait until each has reported.

        On return every attempt's process has been reaped and its process group sent
        SIGKILL; orphaned grandchildren die asynchronously and are reaped by init.
        """
        with self._lock:
            keys = list(self._attempts)
        for key in keys:
            self._stop(key, "cancel", reason)
        with self._lock:
            threads = [r.thread for r in self._attempts.values() if r.thread is not None]
        for thread in threads:
            thread.join(self.grace_s + JOIN_SLACK_S)

    # ------------------------------------------------------------------ starting

    def log_path(self, task_id: str, attempt: int) -> Path:
        """The log file of an attempt (stdout and stderr together)."""
        return self.log_dir / f"{task_id}.{attempt}.log"

    def _new_attempt(
        self, assignment: Assignment, replay_runtime_s: float | None, speedup: float
    ) -> _Attempt | TaskFailed:
        """A replay attempt, or a real one with its process started (or why it could not)."""
        if replay_runtime_s is None and assignment.command:
            process = self._spawn(assignment)
            if isinstance(process, TaskFailed):
                return process
            return _Attempt(assignment, process)
        runtime_s = assignment.predicted_runtime_s if replay_runtime_s is None else replay_runtime_s
        return _Attempt(assignment, None, max(runtime_s, 0.0) / speedup, speedup)

    def _spawn(self, assignment: Assignment) -> subprocess.Popen[bytes] | TaskFailed:
        """Start the command in its own session, output to the attempt's log file; a
        ``TaskFailed`` (not retryable) if it cannot be started."""
        path = self.log_path(assignment.task_id, assignment.attempt)
        executable = assignment.command[0]
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as log:
                try:
                    return subprocess.Popen(
                        list(assignment.command),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=attempt_env(assignment, self.node_id),
                        start_new_session=True,
                    )
                except OSError as exc:
                    reason = f"cannot start {executable!r}: {exc.strerror or exc}"
                    log.write(f"streamsched: {reason}\n".encode())
        except OSError as exc:  # the log itself cannot be written
            reason = f"cannot open log file {path}: {exc.strerror or exc}"
        logger.warning("%s attempt %d: %s", assignment.task_id, assignment.attempt, reason)
        return self._event(TaskFailed, assignment, reason=reason, retryable=False)

    # ------------------------------------------------------------------ running

    def _run_attempt(self, record: _Attempt) -> None:
        """The attempt's thread: report started, wait for the end, report the outcome."""
        self._emit(self._event(TaskStarted, record.assignment))
        if record.process is None:
            record.stopped.wait(record.started_s + record.replay_wall_s - time.monotonic())
            exit_code = 0
        else:
            exit_code = self._wait_process(record)
        elapsed_s = (time.monotonic() - record.started_s) * record.speedup
        self._emit(self._finish(record, exit_code, elapsed_s))

    def _wait_process(self, record: _Attempt) -> int:
        """Wait for the process to exit, kill what is left of its group, reap it."""
        process = record.process
        assert process is not None
        # Wait without reaping, so the process group id cannot be reused while we kill it.
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        with self._lock:
            record.exited = True
            if record.kill_timer is not None:
                record.kill_timer.cancel()
            _signal_group(process.pid, signal.SIGKILL)  # stragglers of the task
        return process.wait()

    def _finish(self, record: _Attempt, exit_code: int, runtime_s: float) -> LifecycleEvent:
        """Forget the attempt and build its single terminal event."""
        assignment = record.assignment
        key = (assignment.task_id, assignment.attempt)
        with self._lock:
            self._attempts.pop(key, None)
            self._remember_finished(key)
            reason, detail = record.stop_reason, record.stop_detail
        if reason == "preempt":
            return self._event(TaskPreempted, assignment, progress=assignment.resume_progress)
        if reason == "cancel":
            return self._event(TaskCancelled, assignment, reason=detail or None)
        if exit_code == 0:
            return self._event(TaskCompleted, assignment, runtime_s=runtime_s)
        return self._event(
            TaskFailed,
            assignment,
            reason=_describe_exit(exit_code),
            exit_code=exit_code,
            retryable=True,
        )

    # ------------------------------------------------------------------ stopping

    def _stop(self, key: AttemptKey, reason: StopReason, detail: str | None) -> bool:
        """Record why the attempt stops (the first reason wins) and signal it."""
        with self._lock:
            record = self._attempts.get(key)
            if record is None:
                return False
            if record.stop_reason is not None:
                return True  # already stopping
            record.stop_reason, record.stop_detail = reason, detail
            record.stopped.set()
            process = record.process
            if process is None or record.exited:
                return True
            _signal_group(process.pid, signal.SIGTERM)
            record.kill_timer = threading.Timer(self.grace_s, self._kill, args=(record,))
            record.kill_timer.daemon = True
            record.kill_timer.start()
        logger.info("stopping %s attempt %d (%s)", key[0], key[1], reason)
        return True

    def _kill(self, record: _Attempt) -> None:
        """SIGKILL the process group of a stopped attempt that outlived its grace."""
        with self._lock:
            if record.exited or record.process is None:
                return
            _signal_group(record.process.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ helpers

    def _remember_finished(self, key: AttemptKey) -> None:
        """Remember a finished attempt (bounded), to ignore its redelivered assignment.
        Call with the lock held."""
        self._finished[key] = None
        while len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)

    def _event(self, kind: type[_E], assignment: Assignment, **fields: object) -> _E:
        """A lifecycle event about ``assignment``'s attempt on this node, stamped now."""
        return kind.model_validate(
            {
                "occurred_at": self._clock(),
                "source": self.source,
                "task_id": assignment.task_id,
                "attempt": assignment.attempt,
                "node_id": self.node_id,
                **fields,
            }
        )

    def _emit(self, event: LifecycleEvent) -> None:
        """Hand ``event`` to the report callback; a failing callback is logged, not raised."""
        try:
            self._report(event)
        except Exception:
            logger.exception("report callback failed for %s", event.type)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    """Send ``signum`` to a process group; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _describe_exit(exit_code: int) -> str:
    """A failure reason for a process exit code (negative: killed by a signal)."""
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"exit code {exit_code} (killed by {name})"
    return f"exit code {exit_code}"
