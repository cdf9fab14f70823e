"""Wire formats: frozen, versioned pydantic models for every event streamsched carries."""

from .codec import (
    DEFAULT_MAX_BYTES,
    EVENT_TYPES,
    Event,
    decode,
    decode_as,
    encode,
    validate_as,
)
from .commands import CancelTask, PolicyUpdate, StopAttempt
from .data import DataIngested
from .decisions import (
    Assignment,
    BreakerChanged,
    CancelOutcome,
    DecisionAudit,
    DecisionCandidate,
    PolicyChanged,
    TaskEnded,
    TaskRequeued,
)
from .envelope import (
    SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    EventEnvelope,
    WireModel,
    event_type_of,
    new_event_id,
)
from .errors import FieldError, InvalidEvent
from .export import event_json_schema, export_json_schemas
from .hardware import (
    KNOWN_HARDWARE_CLASSES,
    assignment_topic,
    is_valid_hardware_name,
    normalize_hardware,
)
from .lifecycle import (
    AttemptEvent,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskLost,
    TaskPreempted,
    TaskProgress,
    TaskStarted,
)
from .models import ModelDrift
from .nodes import NodeHeartbeat, NodeResources, RunningAttempt
from .tasks import DeclaredWork, Priority, TaskRejected, TaskResources, TaskSubmitted
from .tenancy import AccessRefused
from .types import CONTEXT_KNOWN_HARDWARE, CONTEXT_NOW

__all__ = [
    "CONTEXT_KNOWN_HARDWARE",
    "CONTEXT_NOW",
    "DEFAULT_MAX_BYTES",
    "EVENT_TYPES",
    "KNOWN_HARDWARE_CLASSES",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "AccessRefused",
    "Assignment",
    "AttemptEvent",
    "BreakerChanged",
    "CancelOutcome",
    "CancelTask",
    "DataIngested",
    "DecisionAudit",
    "DecisionCandidate",
    "DeclaredWork",
    "Event",
    "EventEnvelope",
    "FieldError",
    "InvalidEvent",
    "ModelDrift",
    "NodeHeartbeat",
    "NodeResources",
    "PolicyChanged",
    "PolicyUpdate",
    "Priority",
    "RunningAttempt",
    "StopAttempt",
    "TaskCancelled",
    "TaskCompleted",
    "TaskEnded",
    "TaskFailed",
    "TaskLost",
    "TaskPreempted",
    "TaskProgress",
    "TaskRejected",
    "TaskRequeued",
    "TaskResources",
    "TaskStarted",
    "TaskSubmitted",
    "WireModel",
    "assignment_topic",
    "decode",
    "decode_as",
    "encode",
    "event_json_schema",
    "event_type_of",
    "export_json_schemas",
    "is_valid_hardware_name",
    "new_event_id",
    "normalize_hardware",
    "validate_as",
]
