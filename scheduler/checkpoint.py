"""Versioned model checkpoints: a checked header plus the pickled model, as bytes.

Layout (``docs/models.md``)::

    MAGIC (10 bytes, b"SSCHKPT\\x00\\r\\n")
    header length (4 bytes, big-endian unsigned)
    header (UTF-8 JSON object):
        format          "streamsched-model"
        format_version  1
        model_name      the model's ``name``, e.g. "river-linear"
        model_version   the model's ``version`` when saved, e.g. "river-linear@1200"
        created_at_s    seconds since the epoch, supplied by the caller (this module has
                        no clock)
        payload_bytes   length of the payload
        payload_sha256  hex SHA-256 of the payload
    payload (pickle of the model)

:func:`encode` builds one; :func:`decode` checks everything it can *before* unpickling
(magic, header, format and version, model name, length, checksum) and raises
:class:`CheckpointError` naming the first thing wrong; a reader skips that record and
reports it. :func:`newest_valid` picks the checkpoint to warm-start from among many.

Security: unpickling runs code chosen by whoever wrote the bytes. The SHA-256 only catches
corruption (truncation, bit flips), not tampering: anyone who can write a checkpoint can
compute its checksum. A checkpoint topic (e.g. ``sched.models``) must therefore be writable
only by the scheduler's own principal (Kafka ACLs), and checkpoints must never be read from
a source other users can write to.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAGIC",
    "Checkpoint",
    "CheckpointError",
    "CheckpointHeader",
    "decode",
    "decode_checkpoint",
    "encode",
    "newest_valid",
    "read_header",
]

MAGIC = b"SSCHKPT\x00\r\n"
FORMAT = "streamsched-model"
FORMAT_VERSION = 1
#: A header longer than this is not one of ours (guards against reading garbage as JSON).
MAX_HEADER_BYTES = 64 * 1024
_LEN = struct.Struct(">I")
_PICKLE_PROTOCOL = 5


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class CheckpointHeader:
    """What a checkpoint says about itself (readable without unpickling)."""

    model_name: str
    model_version: str
    created_at_s: float
    payload_bytes: int
    payload_sha256: str
    format: str = FORMAT
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A decoded checkpoint: its header and the model."""

    header: CheckpointHeader
    model: Any


def encode(model: Any, *, created_at_s: float) -> bytes:
    """The checkpoint of ``model`` (which must have ``name`` and ``version`` and pickle).

    Raises CheckpointError if the model has no string ``name``/``version`` or does not
    pickle (e.g. it holds a lambda)."""
    name, version = getattr(model, "name", None), getattr(model, "version", None)
    if not isinstance(name, str) or not isinstance(version, str):
        raise CheckpointError(
            f"cannot checkpoint {type(model).__name__}: it needs string 'name' and 'version' "
            f"attributes, got name={name!r}, version={version!r}"
        )
    try:
        payload = pickle.dumps(model, protocol=_PICKLE_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"cannot checkpoint model {name!r}: it does not pickle ({exc})"
        ) from exc
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": name,
        "model_version": version,
        "created_at_s": float(created_at_s),
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + _LEN.pack(len(head)) + head + payload


def read_header(raw: bytes, *, expect_name: str | None = None) -> CheckpointHeader:
    """The header of ``raw``, checked (magic, JSON, format, version, name) without
    touching the payload. Raises CheckpointError."""
    return _split(raw, expect_name)[0]


def decode_checkpoint(
    raw: bytes, *, expect_name: str | None = None, expect_type: type | None = None
) -> Checkpoint:
    """The checkpoint in ``raw``, fully checked; raises CheckpointError naming what is
    wrong: bad magic, truncated, bad header, unsupported format or format version, model
    name mismatch (with ``expect_name``), checksum mismatch, trailing bytes, unpickling
    failure, or a payload whose type or name disagrees with ``expect_type`` or the header.

    Only call this on bytes from a source only the scheduler can write (see the module
    docstring): unpickling runs code."""
    header, payload = _split(raw, expect_name)
    try:
        model = pickle.loads(payload)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint of model {header.model_name!r} ({header.model_version}): payload "
            f"does not unpickle: {type(exc).__name__}: {exc}"
        ) from None
    if expect_type is not None and not isinstance(model, expect_type):
        raise CheckpointError(
            f"checkpoint of model {header.model_name!r}: payload is a "
            f"{type(model).__name__}, expected a {expect_type.__name__}"
        )
    if getattr(model, "name", None) != header.model_name:
        raise CheckpointError(
            f"checkpoint of model {header.model_name!r}: payload's name is "
            f"{getattr(model, 'name', None)!r}"
        )
    return Checkpoint(header, model)


def decode(raw: bytes, *, expect_name: str | None = None, expect_type: type | None = None) -> Any:
    """The model in ``raw`` (see :func:`decode_checkpoint` for the checks and errors)."""
    return decode_checkpoint(raw, expect_name=expect_name, expect_type=expect_type).model


def newest_valid(
    records: Iterable[bytes], *, expect_name: str, expect_type: type | None = None
) -> tuple[Checkpoint | None, list[tuple[int, CheckpointError]]]:
    """The checkpoint to warm-start from, and the records that were skipped.

    ``records`` are raw checkpoints in log order. The newest valid one wins: the highest
    ``created_at_s``, ties going to the later record. Only the winner candidates are
    unpickled, newest first, so a corrupt newest record falls back to the next. Every
    record that fails a check is returned as (its index, the error) for the caller to
    report; records of other models (name mismatch) are reported too."""
    skipped: list[tuple[int, CheckpointError]] = []
    candidates: list[tuple[float, int, bytes]] = []
    for index, raw in enumerate(records):
        try:
            header = read_header(raw, expect_name=expect_name)
        except CheckpointError as exc:
            skipped.append((index, exc))
            continue
        candidates.append((header.created_at_s, index, raw))
    for _, index, raw in sorted(candidates, reverse=True):
        try:
            found = decode_checkpoint(raw, expect_name=expect_name, expect_type=expect_type)
        except CheckpointError as exc:
            skipped.append((index, exc))
            continue
        return found, sorted(skipped, key=lambda item: item[0])
    return None, sorted(skipped, key=lambda item: item[0])


def _split(raw: bytes, expect_name: str | None) -> tuple[CheckpointHeader, bytes]:
    """Check everything but the pickle; the header and the payload."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise CheckpointError(f"checkpoint must be bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) < len(MAGIC):
        if MAGIC.startswith(raw):
            raise CheckpointError(f"checkpoint truncated: {len(raw)} bytes, inside the magic")
        raise CheckpointError(f"not a checkpoint: bad magic {raw[: len(MAGIC)]!r}")
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"not a checkpoint: bad magic {raw[: len(MAGIC)]!r}")
    start = len(MAGIC) + _LEN.size
    if len(raw) < start:
        raise CheckpointError(f"checkpoint truncated: {len(raw)} bytes, inside the header length")
    (head_len,) = _LEN.unpack_from(raw, len(MAGIC))
    if head_len > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"checkpoint header claims {head_len} bytes (max {MAX_HEADER_BYTES}): corrupt"
        )
    if len(raw) < start + head_len:
        raise CheckpointError(
            f"checkpoint truncated: header needs {head_len} bytes, {len(raw) - start} present"
        )
    header = _parse_header(raw[start : start + head_len])
    if expect_name is not None and header.model_name != expect_name:
        raise CheckpointError(
            f"checkpoint is of model {header.model_name!r} ({header.model_version}), "
            f"expected {expect_name!r}"
        )
    payload = raw[start + head_len :]
    if len(payload) < header.payload_bytes:
        raise CheckpointError(
            f"checkpoint of model {header.model_name!r} truncated: payload has "
            f"{len(payload)} of {header.payload_bytes} bytes"
        )
    if len(payload) > header.payload_bytes:
        raise CheckpointError(
            f"checkpoint of model {header.model_name!r}: {len(payload) - header.payload_bytes}"
            " unexpected bytes after the payload"
        )
    digest = hashlib.sha256(payload).hexdigest()
    if digest != header.payload_sha256:
        raise CheckpointError(
            f"checkpoint of model {header.model_name!r} ({header.model_version}): checksum "
            f"mismatch (header {header.payload_sha256[:12]}..., payload {digest[:12]}...)"
        )
    return header, payload


_HEADER_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "model_name": str,
    "model_version": str,
    "created_at_s": (int, float),
    "payload_bytes": int,
    "payload_sha256": str,
}


def _parse_header(head: bytes) -> CheckpointHeader:
    try:
        fields = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint header is not UTF-8 JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise CheckpointError(f"checkpoint header is not a JSON object: {type(fields).__name__}")
    if fields.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint format is {fields.get('format')!r}, expected {FORMAT!r}")
    if fields.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"unsupported checkpoint format version {fields.get('format_version')!r} "
            f"(this reader supports {FORMAT_VERSION})"
        )
    for key, kind in _HEADER_TYPES.items():
        value = fields.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"checkpoint header field {key!r} is missing or wrong: {value!r}")
    return CheckpointHeader(
        model_name=fields["model_name"],
        model_version=fields["model_version"],
        created_at_s=float(fields["created_at_s"]),
        payload_bytes=fields["payload_bytes"],
        payload_sha256=fields["payload_sha256"],
    )
