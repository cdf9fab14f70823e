"""Hardware classes: the names used for placement, constraints and assignment topics.

A hardware class is ``cpu`` or ``gpu-<model>`` in lower case (``gpu-v100``, ``gpu-t4``).
Each class has its own assignment topic, ``sched.assignments.<class>``, so the name must be
a valid Kafka topic suffix. :data:`KNOWN_HARDWARE_CLASSES` lists the classes streamsched
knows; deployments add their own through configuration (``extra_hardware_classes``).
"""

from __future__ import annotations

import json
import re

HARDWARE_CLASS_PATTERN = r"^(cpu|gpu-[a-z0-9][a-z0-9-]{0,30})$"
_HARDWARE_RE = re.compile(HARDWARE_CLASS_PATTERN)

KNOWN_HARDWARE_CLASSES: frozenset[str] = frozenset(
    {
        "cpu",
        # Gavel / Philly
        "gpu-k80",
        "gpu-p100",
        "gpu-v100",
        # Alibaba openb 2023
        "gpu-t4",
        "gpu-a10",
        "gpu-g1",
        "gpu-g2",
        "gpu-g3",
        "gpu-v100m16",
        "gpu-v100m32",
        # current data-centre parts
        "gpu-a100",
        "gpu-h100",
        "gpu-l4",
        "gpu-l40s",
    }
)


def is_valid_hardware_name(name: str) -> bool:
    """True when ``name`` has the form of a hardware class (known or not)."""
    return bool(_HARDWARE_RE.match(name))


def normalize_hardware(raw: str) -> str:
    """Map a trace or CLI spelling to a hardware class: ``V100M16`` -> ``gpu-v100m16``,
    ``v100`` -> ``gpu-v100``, an empty model or ``cpu`` -> ``cpu``.

    Raises ValueError naming the input when it cannot be a hardware class.
    """
    name = raw.strip().lower()
    if name in ("", "cpu"):
        return "cpu"
    if not name.startswith("gpu-"):
        name = "gpu-" + name
    if not is_valid_hardware_name(name):
        raise ValueError(
            f"{raw!r} is not a hardware class name (expected 'cpu' or 'gpu-<model>', "
            "lower-case letters, digits and '-')"
        )
    return name


def assignment_topic(hardware: str) -> str:
    """The Kafka topic an assignment for ``hardware`` is published to."""
    return f"sched.assignments.{hardware}"


def hardware_named_in(raw: bytes | str) -> str | None:
    """The valid hardware class a raw JSON event (e.g. a heartbeat) names in its
    ``hardware`` field, or None. Consumers use it to accept a new class from the heartbeat
    that introduces it, before decoding the heartbeat itself."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    hardware = data.get("hardware") if isinstance(data, dict) else None
    return hardware if isinstance(hardware, str) and is_valid_hardware_name(hardware) else None
