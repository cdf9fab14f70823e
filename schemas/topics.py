"""Kafka topic names: part of the wire contract, like the event schemas.

Producers in any language write to these topics; see docs/topics.md. Assignments go to
one topic per hardware class, so an executor reads only the work for its own hardware.
"""

from __future__ import annotations

from .hardware import assignment_topic

TASKS_SUBMITTED = "sched.tasks.submitted"
DATA_INGESTED = "sched.data.ingested"
NODE_HEARTBEATS = "sched.nodes.heartbeats"
TASK_EVENTS = "sched.tasks.events"
DECISIONS = "sched.decisions"
COMMANDS = "sched.commands"
DEAD_LETTER = "sched.deadletter"
#: Learned-model checkpoints and model events (drift), one partition, keyed by model name.
MODELS = "sched.models"

#: Topics that exist from the start (assignment topics appear with their hardware class).
CORE_TOPICS: tuple[str, ...] = (
    TASKS_SUBMITTED,
    DATA_INGESTED,
    NODE_HEARTBEATS,
    TASK_EVENTS,
    DECISIONS,
    COMMANDS,
    DEAD_LETTER,
    MODELS,
)

#: Partitions of the core topics when streamsched creates them (the dead-letter topic has
#: one: it is an ordered record of bad input, not a work queue; so has the models topic:
#: a reader reads it whole, in order, to find the newest checkpoint).
CORE_TOPIC_PARTITIONS: dict[str, int] = {
    t: 1 if t in (DEAD_LETTER, MODELS) else 4 for t in CORE_TOPICS
}

__all__ = [
    "COMMANDS",
    "CORE_TOPICS",
    "CORE_TOPIC_PARTITIONS",
    "DATA_INGESTED",
    "DEAD_LETTER",
    "DECISIONS",
    "MODELS",
    "NODE_HEARTBEATS",
    "TASKS_SUBMITTED",
    "TASK_EVENTS",
    "assignment_topic",
]
