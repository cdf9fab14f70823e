"""A durable journal of the attempts one executor node started and ended.

It lets a restarted executor learn which attempts it was running when it died (their
processes are gone or orphaned), so that it can report them as ``task.lost``: the
committed consumer offset means their assignments are not redelivered, so without the
journal the scheduler would never hear of them again.

File format: JSON Lines, one object per line, appended with one ``write`` and ``fsync``
each (a crash can tear at most the last line)::

    {"v": 1, "event": "started", "task_id": "t1", "attempt": 2, "hardware": "gpu-v100",
     "resume_progress": 0.25, "started_at": "2024-05-01T12:00:00+00:00",
     "progress_file": "/logs/t1.2.progress"}
    {"v": 1, "event": "process", "task_id": "t1", "attempt": 2, "pid": 4242,
     "pid_start": 81234, "boot_id": "6c1f..."}
    {"v": 1, "event": "ended", "task_id": "t1", "attempt": 2, "outcome": "completed"}
    {"v": 1, "event": "assignments_seen", "sequence": 17}

``started`` is written before the attempt's process is spawned, ``process`` once it runs
(``pid_start`` is the kernel's start time of that pid, so a reused pid is never mistaken
for the task), ``ended`` once the attempt's terminal event was handed over for good.
An attempt with ``started`` but no ``ended`` is *unfinished*. ``assignments_seen`` records
a new highest ``Assignment.sequence`` consumed (the heartbeats' ``assignments_seen``); the
highest of these lines counts, so a restarted executor reports what it had consumed before.

On open the journal is read (a line that is not such an object is logged as
``<file>:<line>: skipping corrupt journal line (...)`` and skipped, never fatal) and then
rewritten atomically (temporary file, ``fsync``, ``rename``) holding only the unfinished
attempts, the last ``keep_ended`` ended ones and the highest assignment sequence, which
also drops a torn last line. It is
compacted the same way whenever it grows past ``4 * keep_ended`` lines.

One journal belongs to one running executor: :class:`AttemptJournal` holds an exclusive
``flock`` on ``<file>.lock`` while open, and opening a journal another process holds
raises :class:`JournalBusyError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeAlias

logger = logging.getLogger(__name__)

#: (task id, attempt): identifies one attempt.
AttemptKey: TypeAlias = tuple[str, int]

JOURNAL_VERSION = 1
#: Ended attempts kept by compaction (to recognise redelivered assignments).
KEEP_ENDED = 10_000
_EVENTS = ("started", "process", "ended", "assignments_seen")


class JournalBusyError(ValueError):
    """Another process has this journal open (an executor with the same node id runs)."""


class CorruptLineError(ValueError):
    """A journal line that is not a valid record."""


@dataclass(frozen=True)
class JournalEntry:
    """An attempt the journal shows as started (and what is known of its process)."""

    task_id: str
    attempt: int
    hardware: str = ""
    resume_progress: float = 0.0
    started_at: str = ""
    progress_file: str | None = None
    pid: int | None = None
    pid_start: int | None = None
    boot_id: str | None = None

    @property
    def key(self) -> AttemptKey:
        return (self.task_id, self.attempt)


def journal_path(log_dir: Path | str, node_id: str) -> Path:
    """Where the executor of ``node_id`` keeps its journal inside ``log_dir``."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in node_id)
    return Path(log_dir) / f"executor-{safe}.journal.jsonl"


class AttemptJournal:
    """The journal at ``path`` (created with its directory if missing), open and locked.

    Thread-safe. Writes that fail (disk full, permissions) are logged and return False:
    the executor keeps running its attempts, it only loses the ability to reconcile them
    after a crash. Raises :class:`JournalBusyError` when another process holds the journal,
    OSError when the file cannot be opened at all.
    """

    def __init__(self, path: Path | str, keep_ended: int = KEEP_ENDED) -> None:
        if keep_ended < 1:
            raise ValueError(f"keep_ended must be at least 1, got {keep_ended}")
        self.path = Path(path)
        self.keep_ended = keep_ended
        self._lock = threading.Lock()
        self._unfinished: dict[AttemptKey, JournalEntry] = {}
        self._ended: OrderedDict[AttemptKey, str] = OrderedDict()
        self._assignments_seen: int | None = None
        self._lines = 0
        self._fd: int | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = _lock_exclusively(self.path.with_name(self.path.name + ".lock"))
        try:
            self._load()
            self._compact()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ reading

    def unfinished(self) -> list[JournalEntry]:
        """Attempts started but not ended, oldest first."""
        with self._lock:
            return list(self._unfinished.values())

    def ended_keys(self) -> list[AttemptKey]:
        """Ended attempts remembered (at most ``keep_ended``), oldest first."""
        with self._lock:
            return list(self._ended)

    @property
    def assignments_seen(self) -> int | None:
        """The highest assignment sequence recorded (by this run or an earlier one), None
        if none was."""
        with self._lock:
            return self._assignments_seen

    # ------------------------------------------------------------------ writing

    def saw_assignment(self, sequence: int) -> bool:
        """Record that an assignment with ``sequence`` was consumed; only a sequence higher
        than :attr:`assignments_seen` is written. False when the write failed."""
        if sequence < 0:
            raise ValueError(f"an assignment sequence is not negative, got {sequence}")
        with self._lock:
            if self._assignments_seen is not None and sequence <= self._assignments_seen:
                return True
            self._assignments_seen = sequence
            ok = self._append({"event": "assignments_seen", "sequence": sequence})
            if ok:
                self._compact_if_long()
            return ok

    def started(self, entry: JournalEntry) -> bool:
        """Record that an attempt is about to start (before its process is spawned)."""
        with self._lock:
            self._unfinished[entry.key] = entry
            return self._append({"event": "started", **_fields(entry, _STARTED_FIELDS)})

    def process(
        self, key: AttemptKey, pid: int, pid_start: int | None, boot_id: str | None
    ) -> bool:
        """Record the process that runs a started attempt."""
        with self._lock:
            entry = self._unfinished.get(key)
            if entry is not None:
                self._unfinished[key] = replace(
                    entry, pid=pid, pid_start=pid_start, boot_id=boot_id
                )
            record = {"task_id": key[0], "attempt": key[1], "pid": pid}
            return self._append(
                {"event": "process", **record, "pid_start": pid_start, "boot_id": boot_id}
            )

    def ended(self, key: AttemptKey, outcome: str) -> bool:
        """Record that an attempt ended and its terminal event (``outcome``) was reported."""
        with self._lock:
            self._unfinished.pop(key, None)
            self._remember_ended(key, outcome)
            ok = self._append(
                {"event": "ended", "task_id": key[0], "attempt": key[1], "outcome": outcome}
            )
            if ok:
                self._compact_if_long()
            return ok

    def close(self) -> None:
        """Close the file and release the lock (idempotent)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    # ------------------------------------------------------------------ internals

    def _append(self, record: dict[str, Any]) -> bool:
        """Append one line and fsync it. Call with the lock held."""
        if self._fd is None:
            logger.warning("journal %s is closed: not recording %s", self.path, record)
            return False
        line = json.dumps({"v": JOURNAL_VERSION, **record}, separators=(",", ":")) + "\n"
        try:
            os.write(self._fd, line.encode("utf-8"))
            os.fsync(self._fd)
        except OSError as exc:
            logger.error("journal %s: cannot record %s: %s", self.path, record, exc)
            return False
        self._lines += 1
        return True

    def _compact_if_long(self) -> None:
        """Compact once the file grew past ``4 * keep_ended`` lines. Call with the lock
        held."""
        if self._lines <= 4 * self.keep_ended:
            return
        try:
            self._compact()
        except OSError as exc:
            logger.error("journal %s: compaction failed: %s", self.path, exc)

    def _remember_ended(self, key: AttemptKey, outcome: str) -> None:
        self._ended[key] = outcome
        self._ended.move_to_end(key)
        while len(self._ended) > self.keep_ended:
            self._ended.popitem(last=False)

    def _load(self) -> None:
        """Read the existing file into memory, skipping corrupt lines with a warning."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                self._apply(_parse_line(line))
            except CorruptLineError as exc:
                logger.warning("%s:%d: skipping corrupt journal line (%s)", self.path, number, exc)

    def _apply(self, record: dict[str, Any]) -> None:
        event = record["event"]
        if event == "assignments_seen":
            self._assignments_seen = max(record["sequence"], self._assignments_seen or 0)
            return
        key: AttemptKey = (record["task_id"], record["attempt"])
        if event == "started":
            self._ended.pop(key, None)
            self._unfinished[key] = JournalEntry(**_fields(record, _STARTED_FIELDS))
        elif event == "process":
            entry = self._unfinished.get(key)
            if entry is None:
                raise CorruptLineError(f"process of {key[0]} attempt {key[1]} never started")
            fields = _fields(record, ("pid", "pid_start", "boot_id"))
            self._unfinished[key] = replace(entry, **fields)
        else:
            self._unfinished.pop(key, None)
            self._remember_ended(key, str(record.get("outcome", "")))

    def _compact(self) -> None:
        """Rewrite the file atomically with the current state. Call with the lock held
        (or from ``__init__``)."""
        lines: list[dict[str, Any]] = []
        if self._assignments_seen is not None:
            lines.append({"event": "assignments_seen", "sequence": self._assignments_seen})
        lines += [
            {"event": "ended", "task_id": k[0], "attempt": k[1], "outcome": outcome}
            for k, outcome in self._ended.items()
        ]
        for entry in self._unfinished.values():
            lines.append({"event": "started", **_fields(entry, _STARTED_FIELDS)})
            if entry.pid is not None:
                process = _fields(entry, ("task_id", "attempt", "pid", "pid_start", "boot_id"))
                lines.append({"event": "process", **process})
        text = "".join(
            json.dumps({"v": JOURNAL_VERSION, **line}, separators=(",", ":")) + "\n"
            for line in lines
        )
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as out:
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lines = len(lines)


_STARTED_FIELDS = (
    "task_id",
    "attempt",
    "hardware",
    "resume_progress",
    "started_at",
    "progress_file",
)
_TYPES: dict[str, tuple[type, ...]] = {
    "task_id": (str,),
    "attempt": (int,),
    "hardware": (str,),
    "resume_progress": (int, float),
    "started_at": (str,),
    "progress_file": (str, type(None)),
    "pid": (int,),
    "pid_start": (int, type(None)),
    "boot_id": (str, type(None)),
    "outcome": (str,),
    "sequence": (int,),
}
_REQUIRED = {
    "started": ("task_id", "attempt"),
    "process": ("task_id", "attempt", "pid"),
    "ended": ("task_id", "attempt"),
    "assignments_seen": ("sequence",),
}


def _parse_line(line: bytes) -> dict[str, Any]:
    """One journal record, checked; raises CorruptLineError saying what is wrong."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptLineError(f"not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise CorruptLineError("not a JSON object")
    event = record.get("event")
    if event not in _EVENTS:
        raise CorruptLineError(f"unknown event {event!r}")
    for name in _REQUIRED[event]:
        if name not in record:
            raise CorruptLineError(f"{event} without {name!r}")
    for name, kinds in _TYPES.items():
        value = record.get(name)
        if name in record and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise CorruptLineError(f"{name} is {value!r}")
    if event == "assignments_seen":
        if record["sequence"] < 0:
            raise CorruptLineError(f"sequence is {record['sequence']!r}")
        return record
    if record["attempt"] < 1 or not record["task_id"]:
        raise CorruptLineError(f"no such attempt: {record['task_id']!r} {record['attempt']}")
    return record


def _fields(source: JournalEntry | dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    data = asdict(source) if isinstance(source, JournalEntry) else source
    return {name: data[name] for name in names if name in data}


def _lock_exclusively(path: Path) -> int:
    """Open ``path`` and take an exclusive non-blocking flock on it; return the fd."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalBusyError(
            f"{path}: another executor process holds this attempt journal; is an executor "
            "with the same --node-id and --log-dir already running?"
        ) from None
    return fd


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = [
    "KEEP_ENDED",
    "AttemptJournal",
    "AttemptKey",
    "JournalBusyError",
    "JournalEntry",
    "journal_path",
]
