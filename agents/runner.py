"""Run attempts of tasks on an executor node and report their lifecycle through a callback.

This is the part of the executor agent that owns processes; it knows nothing of Kafka. The
agent hands it :class:`~streamsched.schemas.decisions.Assignment` objects and forwards the
lifecycle events it reports (``TaskStarted``, any number of ``TaskProgress``, then exactly
one of ``TaskCompleted``, ``TaskFailed``, ``TaskPreempted``, ``TaskCancelled`` or
``TaskLost``) to ``sched.tasks.events``. docs/executor.md is the user-facing contract.

Two modes:

- **real**: ``assignment.command`` is run directly (never through a shell) in its own
  session, so the whole process group can be signalled; stdout and stderr go to one log file
  per attempt, ``<log_dir>/<task_id>.<attempt>.log``.
- **replay**: no process; the attempt "runs" for ``replay_runtime_s / speedup`` wall seconds
  (an empty command without a replay runtime runs for ``predicted_runtime_s / speedup``).
  :func:`replay_runtime_s` computes the trace seconds an attempt lasts from the
  assignment's ``STREAMSCHED_REPLAY_RUNTIMES``.

One thread per attempt reports ``TaskStarted``, waits for the end and reports the single
terminal event, so "exactly one terminal report per attempt" holds by construction. A stop
(:meth:`AttemptRunner.preempt`, :meth:`AttemptRunner.cancel`,
:meth:`AttemptRunner.stop_all`) only records why and signals; the attempt's thread reports
the stop once the process is gone. :meth:`AttemptRunner.stop_all` (the executor shutting
down) ends each attempt with ``TaskLost``, so the scheduler re-queues the task.

Progress (whole-task fractions: ``resume + (1 - resume) * fraction of this attempt``):

- real mode: the task may write its own fraction done, a number in [0, 1], into the file
  named by ``STREAMSCHED_PROGRESS_FILE`` (``<log_dir>/<task_id>.<attempt>.progress``). A
  watcher thread reads it every ``progress_poll_s`` and reports a changed value at most
  once per ``progress_interval_s``; anything else in the file is ignored with one warning
  line in the attempt log per distinct content.
- replay mode: the fraction is elapsed / duration, reported every ``progress_interval_s``.

``TaskPreempted.progress`` is the latest whole-task progress (read once more after the
process exited, so a value written on SIGTERM counts); a shutdown reports the latest
progress as ``TaskProgress`` before ``TaskLost`` (the scheduler keeps reported progress).

Restart reconciliation: with :meth:`AttemptRunner.open_journal` the runner records every
attempt in an :class:`~streamsched.agents.journal.AttemptJournal` (``started`` before the
process is spawned, its pid once it runs, ``ended`` once the terminal event was reported
without error). :meth:`AttemptRunner.recover` reports each attempt a previous run left
unfinished as ``TaskLost`` (after its last progress, and after killing its orphaned process
group if that still runs) and marks it ended. Attempts the journal shows as ended are
remembered, so their redelivered assignments are ignored after a restart too.

Assignments are delivered at least once: starting an attempt that is running, or that this
runner already finished, is ignored.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import os
import signal
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeAlias, TypeVar
from urllib.parse import quote

from streamsched.agents.journal import AttemptJournal, AttemptKey, JournalEntry
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
StopReason: TypeAlias = Literal["preempt", "cancel", "shutdown"]
_E = TypeVar("_E", bound=AttemptEvent)

#: How many finished attempts are remembered to ignore redelivered assignments.
FINISHED_MEMORY = 10_000
#: Extra seconds :meth:`AttemptRunner.stop_all` waits for each thread beyond the grace.
JOIN_SLACK_S = 5.0
#: Environment variable naming the attempt's progress file.
PROGRESS_FILE_ENV = "STREAMSCHED_PROGRESS_FILE"
#: Submission env: true runtimes per hardware class for replay mode (JSON object).
REPLAY_RUNTIMES_ENV = "STREAMSCHED_REPLAY_RUNTIMES"
#: Submission env: trace seconds a resumed replay attempt pays before resuming.
REPLAY_RESTART_OVERHEAD_ENV = "STREAMSCHED_REPLAY_RESTART_OVERHEAD_S"
#: A progress file longer than this is not a number.
MAX_PROGRESS_BYTES = 64
#: Reason of the ``TaskLost`` a shutdown reports.
SHUTDOWN_REASON = "executor shutting down; the attempt was stopped and must run again"
#: Reason of the ``TaskLost`` that :meth:`AttemptRunner.recover` reports.
RESTART_REASON = "executor restarted; the attempt's process was lost"
#: Longest reason a ``TaskFailed`` carries (the wire's text limit).
MAX_REASON_CHARS = 4096
#: How often :meth:`AttemptRunner.recover` checks whether orphaned processes exited.
_ORPHAN_POLL_S = 0.05


def _utc_now() -> datetime:
    return datetime.now(UTC)


#: Longest delivery delay a replay attempt's clock absorbs (see _delivery_delay_s).
MAX_REPLAY_CATCH_UP_S = 1.0


def _delivery_delay_s(assignment: Assignment) -> float:
    """Wall seconds since ``assignment`` was published, at most MAX_REPLAY_CATCH_UP_S.

    A replay attempt's clock starts when the assignment was published, not when it reached
    the executor: in a compressed replay a few milliseconds of delivery are minutes of
    trace time, and the simulator the replay is compared with starts attempts at the
    instant they are decided. Bounded, so a backlog read after a restart does not finish
    its attempts at once."""
    delay = time.time() - assignment.occurred_at.timestamp()
    return min(max(delay, 0.0), MAX_REPLAY_CATCH_UP_S)


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
    done: threading.Event = field(default_factory=threading.Event)  # the process exited
    kill_timer: threading.Timer | None = None
    thread: threading.Thread | None = None
    progress_file: Path | None = None
    fraction: float | None = None  # this attempt's own fraction done, latest known
    reported: float | None = None  # last whole-task progress reported
    reported_s: float = -math.inf  # monotonic time of that report
    bad_progress: str | None = None  # last garbage seen in the progress file
    ending: bool = False  # its terminal event is built (being reported): no more stops

    @property
    def key(self) -> AttemptKey:
        return (self.assignment.task_id, self.assignment.attempt)

    def whole_progress(self) -> float:
        """Fraction of the whole task done: earlier attempts plus this one's share."""
        return whole_progress(self.assignment.resume_progress, self.fraction or 0.0)


def whole_progress(resume_progress: float, fraction: float) -> float:
    """``resume + (1 - resume) * fraction``, clamped to [0, 1]."""
    value = resume_progress + (1.0 - resume_progress) * fraction
    return float(min(1.0, max(0.0, value)))


def attempt_env(
    assignment: Assignment, node_id: str, progress_file: Path | None = None
) -> dict[str, str]:
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
    if progress_file is not None:
        env[PROGRESS_FILE_ENV] = str(progress_file)
    return env


def replay_runtime_s(assignment: Assignment, hardware: str) -> float:
    """Trace seconds the attempt of ``assignment`` lasts in replay mode on ``hardware``.

    The whole task's true runtime is the entry for ``hardware`` in the assignment env's
    ``STREAMSCHED_REPLAY_RUNTIMES`` (a JSON object ``{hardware class: seconds}``), else its
    ``"*"`` entry; the attempt does the remaining ``1 - resume_progress`` of it, plus
    ``STREAMSCHED_REPLAY_RESTART_OVERHEAD_S`` when resuming (default 0). Without a
    matching entry it lasts ``predicted_runtime_s`` (which already covers only the
    remaining work). Raises ValueError naming the variable when either is malformed.
    """
    env = assignment.env
    resume = assignment.resume_progress
    overhead = _restart_overhead_s(env.get(REPLAY_RESTART_OVERHEAD_ENV)) if resume > 0 else 0.0
    runtimes = _replay_runtimes(env.get(REPLAY_RUNTIMES_ENV))
    true_s = runtimes.get(hardware, runtimes.get("*"))
    if true_s is None:
        return assignment.predicted_runtime_s + overhead
    return (1.0 - resume) * true_s + overhead


def _replay_runtimes(raw: str | None) -> dict[str, float]:
    """The parsed ``STREAMSCHED_REPLAY_RUNTIMES`` (empty when unset); ValueError if bad."""
    if raw is None:
        return {}
    example = '{"gpu-v100": 3600.0, "gpu-k80": 9000.0, "*": 5000.0}'
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(
            f"{REPLAY_RUNTIMES_ENV} is not valid JSON ({exc}); e.g. {example}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{REPLAY_RUNTIMES_ENV} must be a JSON object of hardware class -> seconds, "
            f"e.g. {example}; got {raw[:80]!r}"
        )
    out: dict[str, float] = {}
    for name, value in data.items():
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"{REPLAY_RUNTIMES_ENV}[{name!r}] = {value!r}: must be a positive number of seconds"
            )
        out[name] = float(value)
    return out


def _restart_overhead_s(raw: str | None) -> float:
    """The parsed ``STREAMSCHED_REPLAY_RESTART_OVERHEAD_S`` (0 when unset)."""
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{REPLAY_RESTART_OVERHEAD_ENV}={raw[:80]!r}: must be a number of seconds >= 0"
        )
    return value


class AttemptRunner:
    """Runs attempts of tasks on node ``node_id`` and reports their lifecycle to ``report``.

    ``report`` is called from the runner's threads (and from :meth:`start` when a command
    cannot be started); it must be thread-safe. It may raise to say the event was not
    delivered: a terminal event that raised leaves the attempt unfinished in the journal,
    so a restarted executor reports it lost. ``clock`` stamps ``occurred_at``; durations
    are measured with a monotonic clock. ``grace_s`` is how long a stopped process may take
    to exit after SIGTERM before its process group gets SIGKILL. ``progress_poll_s`` is how
    often a progress file is read, ``progress_interval_s`` the least time between two
    progress reports of one attempt (and the replay reporting period).
    ``replay_progress_after_s`` (trace seconds) makes a replayed attempt also report its
    progress once when it has run that long, as the simulator's executors do.
    """

    def __init__(
        self,
        log_dir: Path,
        node_id: str,
        report: Callable[[LifecycleEvent], None],
        clock: Callable[[], datetime] = _utc_now,
        grace_s: float = 10.0,
        progress_poll_s: float = 1.0,
        progress_interval_s: float = 5.0,
        replay_progress_after_s: float | None = None,
    ) -> None:
        if replay_progress_after_s is not None and not replay_progress_after_s > 0:
            raise ValueError(
                f"replay progress time must be positive, got {replay_progress_after_s}"
            )
        if not progress_poll_s > 0 or not progress_interval_s > 0:
            raise ValueError(
                "progress poll and report intervals must be positive, got "
                f"{progress_poll_s} and {progress_interval_s}"
            )
        self.log_dir = Path(log_dir)
        self.node_id = node_id
        self.source = f"executor:{node_id}"
        self.grace_s = grace_s
        self.progress_poll_s = progress_poll_s
        self.progress_interval_s = progress_interval_s
        self.replay_progress_after_s = replay_progress_after_s
        self._report = report
        self._clock = clock
        self._lock = threading.Lock()
        self._attempts: dict[AttemptKey, _Attempt] = {}
        self._finished: OrderedDict[AttemptKey, None] = OrderedDict()
        self.journal: AttemptJournal | None = None

    # ------------------------------------------------------------------ journal

    def open_journal(self, path: Path) -> AttemptJournal:
        """Open (and lock) the journal at ``path`` and record every attempt in it from now
        on; its ended attempts count as finished here. Raises
        :class:`~streamsched.agents.journal.JournalBusyError` or OSError."""
        journal = AttemptJournal(path)
        with self._lock:
            self.journal = journal
            for key in journal.ended_keys():
                self._remember_finished(key)
        return journal

    def close_journal(self) -> None:
        """Close the journal (releasing its lock); later attempts are not recorded."""
        with self._lock:
            journal, self.journal = self.journal, None
        if journal is not None:
            journal.close()

    def recover(self, reason: str = RESTART_REASON) -> list[AttemptKey]:
        """Report every attempt the journal shows unfinished as ``TaskLost(reason)`` and
        mark it ended; return their keys.

        Their orphaned process groups (a verified pid only) get SIGTERM, then SIGKILL after
        ``grace_s``; a value in the progress file is reported as ``TaskProgress`` first.
        An attempt whose report raised stays unfinished (reported again next time).
        """
        journal = self.journal
        if journal is None:
            return []
        entries = journal.unfinished()
        _stop_orphans(entries, self.grace_s)
        for entry in entries:
            with self._lock:
                self._remember_finished(entry.key)
            fraction = self._read_fraction(entry.key, entry.progress_file, None)
            if fraction:
                progress = whole_progress(entry.resume_progress, fraction)
                self._emit(self._event(TaskProgress, entry.key, progress=progress))
            logger.warning("%s attempt %d: reporting it lost (%s)", *entry.key, reason)
            if self._emit(self._event(TaskLost, entry.key, reason=reason)):
                journal.ended(entry.key, "lost")
        return [entry.key for entry in entries]

    # ------------------------------------------------------------------ public API

    def start(
        self,
        assignment: Assignment,
        *,
        replay_runtime_s: float | None = None,
        speedup: float = 1.0,
        executable: str | None = None,
    ) -> None:
        """Start the attempt of ``assignment``; ignored if it is running or already finished.

        Replay mode when ``replay_runtime_s`` (trace seconds this attempt lasts) is given
        or the command is empty. A command that cannot be started is reported as a
        non-retryable ``TaskFailed`` (no ``TaskStarted``) before this returns.
        ``executable`` (real mode) is the file to execute, with ``command`` as its argv:
        the file :class:`ExecutionGuard` checked; None lets ``Popen`` look up
        ``command[0]``.
        """
        if speedup <= 0:
            raise ValueError(f"speedup must be positive, got {speedup}")
        key = (assignment.task_id, assignment.attempt)
        with self._lock:
            if key in self._attempts or key in self._finished:
                logger.info("ignoring duplicate assignment of %s attempt %d", *key)
                return
            record = self._new_attempt(assignment, replay_runtime_s, speedup, executable)
            if isinstance(record, TaskFailed):
                self._remember_finished(key)
            else:
                self._attempts[key] = record
                record.thread = threading.Thread(
                    target=self._run_attempt, args=(record,), name=f"attempt-{key}", daemon=True
                )
                record.thread.start()
        if isinstance(record, TaskFailed):
            self._emit_terminal(key, record)

    def fail_unstarted(self, assignment: Assignment, reason: str) -> bool:
        """Report a non-retryable ``TaskFailed`` for an attempt that must not or cannot
        start (a refusal of :class:`ExecutionGuard`, a malformed replay setting); nothing
        is run. Ignored (returns False) if the attempt is running or finished; True when
        the failure was handed to the report callback. ``reason`` is cut to the wire's
        4096 characters."""
        key = (assignment.task_id, assignment.attempt)
        with self._lock:
            if key in self._attempts or key in self._finished:
                return False
            self._remember_finished(key)
        logger.warning("%s attempt %d cannot start: %s", *key, reason)
        text = reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."
        self._emit_terminal(key, self._event(TaskFailed, key, reason=text, retryable=False))
        return True

    def preempt(self, task_id: str, attempt: int) -> bool:
        """Stop the attempt to free its resources; it reports ``TaskPreempted`` with the
        latest progress.

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
        """The attempts running here, for heartbeats: stopping ones included, and ended
        ones until their terminal event was reported (delivered or given up on)."""
        with self._lock:
            return sorted(self._attempts)

    def stop_all(self, reason: str = SHUTDOWN_REASON) -> None:
        """Stop every running attempt and wait until each has reported: its latest
        progress, then ``TaskLost(reason)`` (the scheduler re-queues the task).

        On return every attempt's process has been reaped and its process group sent
        SIGKILL; orphaned grandchildren die asynchronously and are reaped by init.
        """
        with self._lock:
            keys = list(self._attempts)
        for key in keys:
            self._stop(key, "shutdown", reason)
        with self._lock:
            threads = [r.thread for r in self._attempts.values() if r.thread is not None]
        for thread in threads:
            thread.join(self.grace_s + JOIN_SLACK_S)

    # ------------------------------------------------------------------ starting

    def log_path(self, task_id: str, attempt: int) -> Path:
        """The log file of an attempt (stdout and stderr together). Characters of the
        task id that cannot be in a file name (``/``) are %-escaped."""
        return self.log_dir / f"{quote(task_id, safe='')}.{attempt}.log"

    def progress_path(self, task_id: str, attempt: int) -> Path:
        """The progress file of an attempt (``STREAMSCHED_PROGRESS_FILE``)."""
        return self.log_dir / f"{quote(task_id, safe='')}.{attempt}.progress"

    def _new_attempt(
        self,
        assignment: Assignment,
        replay_runtime_s: float | None,
        speedup: float,
        executable: str | None = None,
    ) -> _Attempt | TaskFailed:
        """A replay attempt, or a real one with its process started (or why it could not).
        Call with the lock held: it journals the start."""
        real = replay_runtime_s is None and bool(assignment.command)
        progress_file = self.progress_path(assignment.task_id, assignment.attempt)
        self._journal_started(assignment, progress_file if real else None)
        if real:
            process = self._spawn(assignment, progress_file, executable)
            if isinstance(process, TaskFailed):
                return process
            if self.journal is not None:
                self.journal.process(
                    (assignment.task_id, assignment.attempt),
                    process.pid,
                    process_start_ticks(process.pid),
                    boot_id(),
                )
            return _Attempt(assignment, process, progress_file=progress_file)
        runtime_s = assignment.predicted_runtime_s if replay_runtime_s is None else replay_runtime_s
        return _Attempt(
            assignment,
            None,
            max(runtime_s, 0.0) / speedup,
            speedup,
            started_s=time.monotonic() - _delivery_delay_s(assignment),
        )

    def _journal_started(self, assignment: Assignment, progress_file: Path | None) -> None:
        if self.journal is None:
            return
        entry = JournalEntry(
            task_id=assignment.task_id,
            attempt=assignment.attempt,
            hardware=assignment.hardware,
            resume_progress=assignment.resume_progress,
            started_at=self._clock().isoformat(),
            progress_file=None if progress_file is None else str(progress_file),
        )
        self.journal.started(entry)

    def _spawn(
        self, assignment: Assignment, progress_file: Path, executable: str | None = None
    ) -> subprocess.Popen[bytes] | TaskFailed:
        """Start the command (executing ``executable`` if given) in its own session,
        output to the attempt's log file; a ``TaskFailed`` (not retryable) if it cannot be
        started."""
        path = self.log_path(assignment.task_id, assignment.attempt)
        shown = assignment.command[0] if executable is None else executable
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            progress_file.unlink(missing_ok=True)  # never read a stale value
            with path.open("ab") as log:
                try:
                    return subprocess.Popen(
                        list(assignment.command),
                        executable=executable,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=attempt_env(assignment, self.node_id, progress_file),
                        start_new_session=True,
                    )
                except OSError as exc:
                    reason = f"cannot start {shown!r}: {exc.strerror or exc}"
                    log.write(f"streamsched: {reason}\n".encode())
        except OSError as exc:  # the log itself cannot be written
            reason = f"cannot open log file {path}: {exc.strerror or exc}"
        logger.warning("%s attempt %d: %s", assignment.task_id, assignment.attempt, reason)
        key = (assignment.task_id, assignment.attempt)
        return self._event(TaskFailed, key, reason=reason, retryable=False)

    # ------------------------------------------------------------------ running

    def _run_attempt(self, record: _Attempt) -> None:
        """The attempt's thread: report started, wait for the end, report the outcome. A
        replay attempt reports the start its clock runs from (see _delivery_delay_s)."""
        started = self._event(TaskStarted, record.key)
        if record.process is None:
            lead = timedelta(seconds=max(0.0, time.monotonic() - record.started_s))
            started = started.model_copy(update={"occurred_at": started.occurred_at - lead})
        self._emit(started)
        if record.process is None:
            self._replay(record)
            exit_code = 0
        else:
            watcher = threading.Thread(
                target=self._watch_progress, args=(record,), name="progress", daemon=True
            )
            watcher.start()
            exit_code = self._wait_process(record)
            watcher.join()
            self._poll_progress(record)  # a value written on the way out counts
        elapsed_s = (time.monotonic() - record.started_s) * record.speedup
        if record.stop_reason == "shutdown":
            self._report_progress(record, force=True)
        # The attempt leaves the running set only once its terminal event was reported:
        # the report callback (ExecutorAgent.report) returns after the broker acknowledged
        # it and lists the attempt as ended first, so heartbeats show it running or ended
        # at every moment, never neither, while the event may still be unread.
        try:
            self._emit_terminal(record.key, self._finish(record, exit_code, elapsed_s))
        finally:
            with self._lock:
                self._attempts.pop(record.key, None)

    def _replay(self, record: _Attempt) -> None:
        """Wait out a replay attempt, reporting progress every ``progress_interval_s`` (and
        once after ``replay_progress_after_s`` trace seconds, if set)."""
        end = record.started_s + record.replay_wall_s
        once = self.replay_progress_after_s
        if once is not None and (at := record.started_s + once / record.speedup) < end:
            if record.stopped.wait(max(0.0, at - time.monotonic())):
                self._replay_fraction(record)
                return
            self._replay_fraction(record)
            self._report_progress(record, force=True)
        while (remaining := end - time.monotonic()) > 0:
            if record.stopped.wait(min(remaining, self.progress_interval_s)):
                break
            if time.monotonic() < end:
                self._replay_fraction(record)
                self._report_progress(record, force=True)
        self._replay_fraction(record)

    def _replay_fraction(self, record: _Attempt) -> None:
        wall = record.replay_wall_s
        elapsed = time.monotonic() - record.started_s
        with self._lock:
            record.fraction = min(1.0, elapsed / wall) if wall > 0 else 1.0

    def _watch_progress(self, record: _Attempt) -> None:
        """Read the progress file every ``progress_poll_s`` until the process exits."""
        while not record.done.wait(self.progress_poll_s):
            self._poll_progress(record)
            self._report_progress(record)

    def _poll_progress(self, record: _Attempt) -> None:
        fraction = self._read_fraction(record.key, record.progress_file, record)
        if fraction is not None:
            with self._lock:
                record.fraction = fraction

    def _read_fraction(
        self, key: AttemptKey, path: Path | str | None, record: _Attempt | None
    ) -> float | None:
        """The number in a progress file, or None when there is none (no file, empty, or
        garbage: warned about once per distinct content, in the attempt log too)."""
        if path is None:
            return None
        try:
            with open(path, "rb") as file:
                raw = file.read(MAX_PROGRESS_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raw = f"<unreadable: {exc.strerror or exc}>".encode()
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return None  # not written yet, or caught between truncate and write
        try:
            value = float(text) if len(raw) <= MAX_PROGRESS_BYTES else math.nan
        except ValueError:
            value = math.nan
        if 0.0 <= value <= 1.0:
            return value
        self._warn_bad_progress(key, path, text, record)
        return None

    def _warn_bad_progress(
        self, key: AttemptKey, path: Path | str, text: str, record: _Attempt | None
    ) -> None:
        if record is not None:
            with self._lock:
                if record.bad_progress == text:
                    return
                record.bad_progress = text
        message = (
            f"ignoring progress {text[:MAX_PROGRESS_BYTES]!r} in {path}: "
            "expected one number in [0, 1] (this attempt's fraction done)"
        )
        logger.warning("%s attempt %d: %s", key[0], key[1], message)
        with contextlib.suppress(OSError), self.log_path(*key).open("a") as log:
            log.write(f"streamsched: {message}\n")

    def _report_progress(self, record: _Attempt, force: bool = False) -> None:
        """Report the attempt's whole-task progress if it changed, at most once per
        ``progress_interval_s`` unless ``force``."""
        now = time.monotonic()
        with self._lock:
            if record.fraction is None:
                return
            progress = record.whole_progress()
            if progress == record.reported:
                return
            if not force and now - record.reported_s < self.progress_interval_s:
                return
            record.reported, record.reported_s = progress, now
        self._emit(self._event(TaskProgress, record.key, progress=progress))

    def _wait_process(self, record: _Attempt) -> int:
        """Wait for the process to exit, kill what is left of its group, reap it."""
        process = record.process
        assert process is not None
        # Wait without reaping, so the process group id cannot be reused while we kill it.
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        with self._lock:
            record.exited = True
            record.done.set()
            if record.kill_timer is not None:
                record.kill_timer.cancel()
            _signal_group(process.pid, signal.SIGKILL)  # stragglers of the task
        return process.wait()

    def _finish(self, record: _Attempt, exit_code: int, runtime_s: float) -> LifecycleEvent:
        """Mark the attempt finished (it stays in the running set until its terminal
        event is reported) and build that single event."""
        key = record.key
        with self._lock:
            record.ending = True
            self._remember_finished(key)
            reason, detail = record.stop_reason, record.stop_detail
            progress = record.whole_progress()
        if reason == "preempt":
            return self._event(TaskPreempted, key, progress=progress)
        if reason == "cancel":
            return self._event(TaskCancelled, key, reason=detail or None)
        if reason == "shutdown":
            return self._event(TaskLost, key, reason=detail or SHUTDOWN_REASON)
        if exit_code == 0:
            return self._event(TaskCompleted, key, runtime_s=runtime_s)
        return self._event(
            TaskFailed,
            key,
            reason=_describe_exit(exit_code),
            exit_code=exit_code,
            retryable=True,
        )

    # ------------------------------------------------------------------ stopping

    def _stop(self, key: AttemptKey, reason: StopReason, detail: str | None) -> bool:
        """Record why the attempt stops (the first reason wins) and signal it."""
        with self._lock:
            record = self._attempts.get(key)
            if record is None or record.ending:
                return False  # not running here (any more: its end is being reported)
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

    def _event(self, kind: type[_E], key: AttemptKey, **fields: object) -> _E:
        """A lifecycle event about attempt ``key`` on this node, stamped now."""
        return kind.model_validate(
            {
                "occurred_at": self._clock(),
                "source": self.source,
                "task_id": key[0],
                "attempt": key[1],
                "node_id": self.node_id,
                **fields,
            }
        )

    def _emit(self, event: LifecycleEvent) -> bool:
        """Hand ``event`` to the report callback; a failing callback is logged, not raised.
        True when the callback returned normally."""
        try:
            self._report(event)
        except Exception:
            logger.exception("report callback failed for %s", event.type)
            return False
        return True

    def _emit_terminal(self, key: AttemptKey, event: LifecycleEvent) -> None:
        """Report an attempt's terminal event; journal it as ended once reported."""
        journal = self.journal
        if self._emit(event) and journal is not None:
            journal.ended(key, event.type.removeprefix("task."))


# ---------------------------------------------------------------------- execution guard
#
# Checks an assignment must pass before anything of it runs. A compromised or buggy
# placement agent can publish any assignment to a node's partition; these checks are the
# executor's own and do not trust it.

#: Longest allow-list text quoted in a refusal (the reason is at most 4096 characters).
_MAX_QUOTED_CHARS = 1000
#: Characters that make an allow-list entry a glob.
_GLOB_CHARS = frozenset("*?[")

RefusalKind: TypeAlias = Literal["executable", "governance"]


@dataclass(frozen=True)
class Refusal:
    """Why an assignment is not started: ``kind`` is the metric label, ``reason`` the text
    of the non-retryable ``TaskFailed``."""

    kind: RefusalKind
    reason: str


def _quote(text: str, limit: int = 200) -> str:
    """``repr(text)``, shortened to about ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def _resolve_pattern(pattern: str) -> str:
    """An allow-list entry with symlinks resolved: the whole path for an exact entry, the
    glob-free leading directories for a glob (``/bin/*`` -> ``/usr/bin/*`` where ``/bin``
    links to ``/usr/bin``)."""
    if not _is_glob(pattern):
        return os.path.realpath(pattern)
    parts = pattern.split("/")
    literal = 0
    while literal < len(parts) and not _is_glob(parts[literal]):
        literal += 1
    head = os.path.realpath("/".join(parts[:literal]) or "/")
    return "/".join([head.rstrip("/"), *parts[literal:]])


class ExecAllowList:
    """The executables an executor may run: absolute paths and globs.

    An entry without ``*``, ``?`` or ``[`` is one file; an entry with them is a glob whose
    wildcards match within one path component (``/opt/ml/bin/*`` matches
    ``/opt/ml/bin/train``, not ``/opt/ml/bin/sub/train``). Entries have their symlinks
    resolved once, here (for a glob, its leading literal directories). :meth:`allows` is
    given an executable with its symlinks resolved (:func:`resolve_executable`), so a
    symlink inside an allowed directory that points elsewhere is refused.

    Raises ValueError naming the entry if one is empty or not absolute.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        given = [p.strip() for p in patterns]
        for pattern in given:
            if not pattern or not pattern.startswith("/"):
                raise ValueError(
                    f"allow-list entry {pattern!r}: expected an absolute path or glob, "
                    "e.g. /usr/bin/python3 or '/opt/ml/bin/*'"
                )
        self.patterns: tuple[str, ...] = tuple(given)
        self._resolved = tuple(dict.fromkeys(_resolve_pattern(p) for p in given))

    @classmethod
    def read(cls, path: Path) -> list[str]:
        """The entries of an allow-list file: one per line; blank lines and lines starting
        with ``#`` are skipped. Raises ValueError naming the file and line of a bad entry,
        OSError if the file cannot be read."""
        entries: list[str] = []
        text = Path(path).read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if not entry.startswith("/"):
                raise ValueError(
                    f"{path}:{number}: allow-list entry {entry!r} is not an absolute path or glob"
                )
            entries.append(entry)
        return entries

    def allows(self, executable: str) -> bool:
        """Whether the resolved absolute path ``executable`` matches an entry."""
        return any(_path_matches(executable, p) for p in self._resolved)

    def describe(self) -> str:
        """The entries as given, comma-separated (shortened if very long)."""
        text = ", ".join(self.patterns) or "(empty: nothing may run)"
        return text if len(text) <= _MAX_QUOTED_CHARS else text[:_MAX_QUOTED_CHARS] + ", ..."


def _path_matches(path: str, pattern: str) -> bool:
    """``path`` equals ``pattern``, or matches it component by component (fnmatch rules
    within each component: a wildcard never matches ``/``)."""
    if not _is_glob(pattern):
        return path == pattern
    parts, wanted = path.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(
        fnmatch.fnmatchcase(part, want) for part, want in zip(parts, wanted, strict=True)
    )


def resolve_executable(argv0: str, env: Mapping[str, str], cwd: str | None = None) -> str | None:
    """The file ``subprocess.Popen([argv0, ...], env=env)`` would run, as an absolute path
    with symlinks resolved; None if there is none.

    ``argv0`` with a ``/`` is taken relative to ``cwd`` (default: this process's working
    directory); without one it is looked up in ``env``'s ``PATH`` (``os.defpath`` when
    unset), the first executable regular file winning, as ``os.execvpe`` does.
    """
    base = os.getcwd() if cwd is None else cwd
    if "/" in argv0:
        candidates = [os.path.join(base, argv0)]
    else:
        candidates = [
            os.path.join(base, directory or ".", argv0) for directory in os.get_exec_path(dict(env))
        ]
    for candidate in candidates:
        if _is_executable_file(candidate):
            return os.path.realpath(candidate)
    return None


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def governance_mismatches(
    governance: Mapping[str, str], labels: Mapping[str, str]
) -> list[tuple[str, str, str | None]]:
    """``(key, required value, node's value or None)`` for every governance tag that
    ``labels`` does not carry with an equal value, sorted by key; empty when all match.

    The placement's rule (``scheduler.cluster.ClusterArrays.label_mask``): a node is
    eligible only if ``labels.get(key) == value`` for every tag. Pure.
    """
    return [
        (key, value, labels.get(key))
        for key, value in sorted(governance.items())
        if labels.get(key) != value
    ]


def governance_refusal(
    governance: Mapping[str, str], labels: Mapping[str, str], node_id: str
) -> str | None:
    """The refusal text when ``labels`` of node ``node_id`` miss a governance tag, e.g.
    ``governance: task requires data_region=eu, node v100-3 has data_region=us``; None when
    every tag matches. Pure."""
    problems = [
        f"task requires {key}={want}, node {node_id} "
        + (f"has {key}={have}" if have is not None else f"has no {key} label")
        for key, want, have in governance_mismatches(governance, labels)
    ]
    return "governance: " + "; ".join(problems) if problems else None


@dataclass(frozen=True)
class GuardVerdict:
    """The outcome of :meth:`ExecutionGuard.check`: a refusal, or the file to execute
    (None: nothing is executed, or no allow-list is set and ``Popen`` looks it up)."""

    refusal: Refusal | None = None
    executable: str | None = None


@dataclass(frozen=True)
class ExecutionGuard:
    """The executor's own checks before an attempt starts, in this order:

    1. governance: every governance tag of the assignment must be a label of this node
       with the same value (:func:`governance_refusal`), in real and replay mode alike;
    2. executable (only when a command will run and ``allow_list`` is set): ``argv[0]``
       resolved as the process would be (:func:`resolve_executable`, with the attempt's
       environment) must be allowed by ``allow_list``. The verdict then names that resolved
       file, and the runner executes exactly it.
    """

    node_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    allow_list: ExecAllowList | None = None

    def check(self, assignment: Assignment, runs_command: bool) -> GuardVerdict:
        """Check ``assignment``; ``runs_command`` is False in replay mode (nothing is
        executed, so the allow-list does not apply)."""
        governance = governance_refusal(assignment.governance, self.labels, self.node_id)
        if governance is not None:
            return GuardVerdict(Refusal("governance", governance))
        if self.allow_list is None or not runs_command or not assignment.command:
            return GuardVerdict()
        argv0 = assignment.command[0]
        env = attempt_env(assignment, self.node_id)
        resolved = resolve_executable(argv0, env)
        allowed = self.allow_list.describe()
        if resolved is None:
            where = "" if "/" in argv0 else f" on PATH {_quote(env.get('PATH', os.defpath))}"
            reason = f"executable {_quote(argv0)} not found{where}; allow-list: {allowed}"
            return GuardVerdict(Refusal("executable", reason))
        if not self.allow_list.allows(resolved):
            shown = _quote(argv0) if resolved == argv0 else f"{_quote(argv0)} ({resolved})"
            reason = (
                f"executable {shown} is not allowed on node {self.node_id}; allow-list: {allowed}"
            )
            return GuardVerdict(Refusal("executable", reason))
        return GuardVerdict(executable=resolved)


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


# ---------------------------------------------------------------------- orphans
def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot, from /proc), or None
    when it is gone or /proc is unavailable. Together with :func:`boot_id` it tells a
    process apart from a later one that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie: already dead
    return int(fields[19])  # field 22 of stat(5); fields here start at field 3


def boot_id() -> str | None:
    """This boot's id (Linux), or None."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _is_same_process(entry: JournalEntry) -> bool:
    """True when the journal's pid still names the process the attempt started."""
    if entry.pid is None or entry.pid_start is None:
        return False
    if entry.boot_id is not None and entry.boot_id != boot_id():
        return False
    return process_start_ticks(entry.pid) == entry.pid_start


def _stop_orphans(entries: Iterable[JournalEntry], grace_s: float) -> None:
    """SIGTERM the process groups of lost attempts that still run, SIGKILL the groups
    once their leaders exited or after ``grace_s``. Only groups whose leader's pid was
    verified by its start time are signalled."""
    orphans = [e for e in entries if _is_same_process(e)]
    for entry in orphans:
        assert entry.pid is not None
        logger.warning(
            "%s attempt %d: stopping its orphaned process group %d", *entry.key, entry.pid
        )
        _signal_group(entry.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    alive = orphans
    while alive and time.monotonic() < deadline:
        time.sleep(_ORPHAN_POLL_S)
        alive = [e for e in alive if _is_same_process(e)]
    for entry in orphans:  # the leaders, and whatever of their groups outlived them
        assert entry.pid is not None
        _signal_group(entry.pid, signal.SIGKILL)
