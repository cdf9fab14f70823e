"""``streamsched schemas``: export the wire formats as JSON Schema; validate event files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streamsched.schemas.codec import decode
from streamsched.schemas.errors import InvalidEvent
from streamsched.schemas.export import export_json_schemas

from ._common import cli_errors, fail, stdout_console

__all__ = ["app"]

app = typer.Typer(help="JSON Schemas of the wire events.", no_args_is_help=True)


@app.command("export")
def export(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the schema files into.")],
) -> None:
    """Write one <type>.schema.json per event type into OUT_DIR."""
    with cli_errors():
        written = export_json_schemas(out_dir)
    out = stdout_console()
    for path in written:
        out.print(str(path), markup=False, soft_wrap=True)
    out.print(f"wrote {len(written)} schemas to {out_dir}", markup=False, soft_wrap=True)


@app.command("validate")
def validate(
    file: Annotated[
        Path,
        typer.Argument(help="A JSON file holding one event, or JSON Lines (one per line)."),
    ],
) -> None:
    """Decode FILE with the wire decoder: print OK and the event type, or what is wrong."""
    with cli_errors():
        raw = file.read_bytes()
    out = stdout_console()
    try:
        event = decode(raw)
    except InvalidEvent as exc:
        lines = [(i, line) for i, line in enumerate(raw.splitlines(), 1) if line.strip()]
        if not (exc.field == "(payload)" and "not valid JSON" in exc.reason and len(lines) > 1):
            fail(f"{file}: {exc}")
        _validate_lines(file, lines)
        return
    out.print(f"OK {file}: {event.type} ({type(event).__name__})", markup=False, soft_wrap=True)


def _validate_lines(file: Path, lines: list[tuple[int, bytes]]) -> None:
    """JSON Lines: every non-blank line must be a valid event; report the first bad one."""
    counts: dict[str, int] = {}
    for number, line in lines:
        try:
            event = decode(line)
        except InvalidEvent as exc:
            fail(f"{file}:{number}: {exc}")
        counts[event.type] = counts.get(event.type, 0) + 1
    summary = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
    stdout_console().print(
        f"OK {file}: {len(lines)} events ({summary})", markup=False, soft_wrap=True
    )
