"""JSON Schema export, so producers in any language (kcat, Java, Go) can validate events.

``export_json_schemas(Path("schemas-json"))`` writes ``task.submitted.schema.json`` and one
file per other event type. The output is deterministic (sorted keys, fixed layout), so the
files can be committed and diffed.

The wire format is stricter than the Python constructors in one respect: ``type``,
``schema_version`` and ``event_id`` are required on the wire (the decoder insists on them),
so the exported schemas list them as required. Rules that depend on the deployment or the
clock (extra hardware classes, "deadline in the future") or that relate two fields
(``gpu_milli`` and ``gpus``) are not expressed in JSON Schema; the decoder enforces them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .codec import EVENT_TYPES
from .envelope import SCHEMA_VERSION, SUPPORTED_SCHEMA_VERSIONS, WIRE_REQUIRED_FIELDS, EventEnvelope

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_id(event_type: str) -> str:
    """The ``$id`` of an event type's schema: a URN naming the type and schema version."""
    return f"urn:streamsched:schema:v{SCHEMA_VERSION}:{event_type}"


def event_json_schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema of one event type, with ``$schema``, ``$id`` and ``title``."""
    model: type[EventEnvelope] = EVENT_TYPES[event_type]
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", ())) | set(WIRE_REQUIRED_FIELDS)
    schema["required"] = [name for name in schema["properties"] if name in required]
    schema["properties"]["schema_version"]["enum"] = sorted(SUPPORTED_SCHEMA_VERSIONS)
    _close_maps(schema)
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$id"] = schema_id(event_type)
    schema["title"] = f"{model.__name__} ({event_type}, schema version {SCHEMA_VERSION})"
    return schema


def _close_maps(node: Any) -> None:
    """Pydantic describes ``dict[Pattern, V]`` with ``patternProperties``, which lets keys
    that do not match through. Turn it into ``propertyNames`` + ``additionalProperties``,
    which rejects them, as the decoder does."""
    if isinstance(node, dict):
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and len(patterns) == 1:
            ((pattern, value_schema),) = patterns.items()
            del node["patternProperties"]
            node["propertyNames"] = {**node.get("propertyNames", {}), "pattern": pattern}
            node["additionalProperties"] = value_schema
        for child in node.values():
            _close_maps(child)
    elif isinstance(node, list):
        for child in node:
            _close_maps(child)


def export_json_schemas(out_dir: Path) -> list[Path]:
    """Write ``<type>.schema.json`` for every event type into ``out_dir`` (created if
    needed); return the paths written, sorted. Other files in ``out_dir`` are left alone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type in sorted(EVENT_TYPES):
        path = out_dir / f"{event_type}.schema.json"
        text = json.dumps(event_json_schema(event_type), indent=2, sort_keys=True)
        path.write_text(text + "\n", encoding="utf-8")
        written.append(path)
    return written
