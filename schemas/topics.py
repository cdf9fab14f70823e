"""Kafka topic names: part of the wire contract, like the event schemas.

Producers in any language write to these topics; see docs/topics.md once the live
pipeline is complete. Assignments go to one topic per hardware class, so an executor reads
only the work for its own hardware.
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

#: Topics that exist from the start (assignment topics appear with their hardware class).
CORE_TOPICS: tuple[str, ...] = (
    TASKS_SUBMITTED,
    DATA_INGESTED,
    NODE_HEARTBEATS,
    TASK_EVENTS,
    DECISIONS,
    COMMANDS,
    DEAD_LETTER,
)

__all__ = [
    "COMMANDS",
    "CORE_TOPICS",
    "DATA_INGESTED",
    "DEAD_LETTER",
    "DECISIONS",
    "NODE_HEARTBEATS",
    "TASKS_SUBMITTED",
    "TASK_EVENTS",
    "assignment_topic",
]
