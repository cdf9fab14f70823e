"""The child processes of ``streamsched up``: each component runs as its own
``streamsched`` command, as it would on a real cluster.

Children start in their own session (a terminal's Ctrl-C reaches only ``up``, which then
stops them in order) and die with ``up`` if it is killed (Linux parent-death signal).
Their output goes to one log file each in the run directory.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from streamsched.broker import die_with_parent

logger = logging.getLogger(__name__)


def streamsched_argv(*args: str) -> list[str]:
    """argv running ``streamsched ARGS`` with this interpreter (works from a venv
    without the console script on PATH)."""
    return [sys.executable, "-m", "streamsched.cli", *args]


class Child:
    """One component process; ``name`` names its log file ``<run_dir>/<name>.log``."""

    def __init__(
        self, name: str, argv: Sequence[str], run_dir: Path, env: Mapping[str, str]
    ) -> None:
        self.name = name
        self.log_path = run_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
            preexec_fn=die_with_parent,  # only sets the death signal, then execs
        )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, limit: int = 1200) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return text[-limit:].strip()

    def terminate(self) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> int | None:
        """Wait until ``deadline`` (monotonic); SIGKILL if still alive then. The exit code,
        or None if it had to be killed."""
        try:
            return self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in time; killing it", self.name)
            self.process.kill()
            self.process.wait()
            return None
        finally:
            self._log.close()


def stop_all(children: Sequence[Child], grace_s: float) -> dict[str, int | None]:
    """SIGTERM every child, wait up to ``grace_s`` for all, SIGKILL the rest."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace_s
    return {child.name: child.wait(deadline) for child in children}


__all__ = ["Child", "stop_all", "streamsched_argv"]
