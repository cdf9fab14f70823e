"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    """The shared real-trace directory: ``$STREAMSCHED_SHARED_TRACES`` if set, else
    ``<repo root>/../shared/traces``. Tests using it are skipped when it is absent."""
    env = os.environ.get("STREAMSCHED_SHARED_TRACES")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "traces"
    if not path.is_dir():
        pytest.skip(
            f"shared traces not found at {path}; set STREAMSCHED_SHARED_TRACES to the "
            "directory holding gavel-philly/ and alibaba-openb-2023/"
        )
    return path
