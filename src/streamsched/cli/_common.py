"""What every command shares: the error edge, consoles and small option parsers.

Every bad input ends as one line on stderr, ``error: <what is wrong, where>``, and exit
code 2 (as a usage error), never a traceback: :func:`cli_errors` catches the error types
the library raises for bad input (ValueError, which covers ``TraceFormatError`` and
``InvalidEvent``; OSError) at the command's edge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from streamsched.scheduler.policies import PolicyParams

#: Exit code for bad input (what click uses for usage errors).
EXIT_BAD_INPUT = 2
#: Width used when stdout is not a terminal (pipes, CI logs, tests), so tables stay whole.
PIPE_WIDTH = 200


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on one line of stderr and exit with code 2."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


@contextmanager
def cli_errors(where: str = "") -> Iterator[None]:
    """Turn bad-input exceptions raised inside the block into :func:`fail`; ``where``
    prefixes the message (e.g. ``--cluster``) when the exception does not say it."""
    try:
        yield
    except (ValueError, OSError) as exc:
        fail(f"{where}: {_describe(exc)}" if where else _describe(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def stdout_console() -> Console:
    """A console on stdout; wide when stdout is not a terminal."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, PIPE_WIDTH)
    return console


def stderr_console() -> Console:
    """A console on stderr, for progress bars and notes."""
    return Console(stderr=True, highlight=False)


def _param_types() -> dict[str, type]:
    return {f.name: type(f.default) for f in fields(PolicyParams)}


def parse_params(items: list[str] | None) -> dict[str, float]:
    """``--param KEY=VALUE`` items as keyword arguments for ``get_policy``.

    Keys must be :class:`PolicyParams` fields; values numbers (integral for int fields).
    """
    known = _param_types()
    out: dict[str, float] = {}
    for item in items or []:
        key, eq, raw = (s.strip() for s in item.partition("="))
        if not eq or not key:
            fail(f"--param {item!r}: expected KEY=VALUE, e.g. 'sjf_weight=2'")
        if key not in known:
            fail(f"--param {item!r}: unknown key {key!r}; valid keys: {', '.join(known)}")
        try:
            value = float(raw)
        except ValueError:
            fail(f"--param {item!r}: value must be a number, got {raw!r}")
        if not math.isfinite(value):
            fail(f"--param {item!r}: value must be finite, got {raw!r}")
        if known[key] is int:
            if not value.is_integer():
                fail(f"--param {item!r}: {key} must be an integer, got {raw!r}")
            out[key] = int(value)
        else:
            out[key] = value
    return out


def parse_int_list(text: str, option: str) -> list[int]:
    """``100,1000`` -> ``[100, 1000]``; every item a positive integer."""
    values = []
    for part in text.split(","):
        item = part.strip().replace("_", "")
        if not item.isdigit() or int(item) < 1:
            fail(f"{option} {text!r}: expected comma-separated positive integers, got {part!r}")
        values.append(int(item))
    return values


def json_safe(value: Any) -> Any:
    """``value`` with inf and nan (which JSON lacks) replaced by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def finish_run(
    out: Console, lines: Iterable[str], result: Any, ok: bool, json_out: Path | None
) -> None:
    """End a benchmark or chaos command: print ``lines`` then PASS or FAIL, write
    ``result.to_dict()`` as JSON to ``json_out`` if given, and exit 1 unless ``ok``."""
    import json

    for line in (*lines, "PASS" if ok else "FAIL"):
        out.print(line, markup=False, soft_wrap=True)
    if json_out is not None:
        with cli_errors("--json"):
            json_out.write_text(json.dumps(json_safe(result.to_dict()), indent=2) + "\n", "utf-8")
        out.print(f"wrote {json_out}", markup=False, soft_wrap=True)
    if not ok:
        raise typer.Exit(1)


def machine_line(machine: dict[str, Any]) -> str:
    """One line naming the machine a run measured on."""
    m = machine
    return f"machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['platform']}, Python {m['python']}"
