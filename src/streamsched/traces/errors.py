"""The one error type trace loaders raise for malformed input."""

from __future__ import annotations

import math
import os
from pathlib import Path


class TraceFormatError(ValueError):
    """A trace, node list or throughputs file is malformed.

    ``str()`` reads ``PATH:LINE: message`` (or ``PATH: message`` when no line applies), so
    the user can jump straight to the offending line.
    """

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[type[TraceFormatError], tuple[Path, int | None, str]]:
        return (type(self), (self.path, self.line, self.message))


def parse_int(text: str, *, path: Path, line: int, field: str, minimum: int = 0) -> int:
    """Parse one integer field, raising :class:`TraceFormatError` (never a bare ValueError).

    Integral floats written as ``12.0`` are accepted; values below ``minimum`` are rejected.
    """
    raw = text.strip()
    try:
        value = int(raw)
    except ValueError:
        try:
            as_float = float(raw)
        except ValueError:
            as_float = math.nan
        if not (math.isfinite(as_float) and as_float.is_integer()):
            raise TraceFormatError(
                path, line, f"{field} must be an integer, got {text!r}"
            ) from None
        value = int(as_float)
    if value < minimum:
        raise TraceFormatError(path, line, f"{field} must be >= {minimum}, got {value}")
    return value


def parse_float(text: str, *, path: Path, line: int, field: str, minimum: float = 0.0) -> float:
    """Parse one finite number field >= ``minimum``, raising :class:`TraceFormatError`."""
    try:
        value = float(text.strip())
    except ValueError:
        raise TraceFormatError(path, line, f"{field} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise TraceFormatError(path, line, f"{field} must be finite, got {text!r}")
    if value < minimum:
        raise TraceFormatError(path, line, f"{field} must be >= {minimum:g}, got {value:g}")
    return value


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; undecodable bytes raise :class:`TraceFormatError`."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TraceFormatError(path, line, "not UTF-8 text") from None
