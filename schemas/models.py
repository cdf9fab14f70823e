"""Events about the stream processor's learned models. Published to ``sched.models``.

The same topic carries the models' checkpoints (binary records keyed by model name, see
``docs/models.md``); the events here are the JSON records among them, told apart by the
``type`` header (``model.drift``) or by their first byte (``{``; a checkpoint starts with
its magic bytes).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt

from .envelope import EventEnvelope
from .types import Identifier

_Error = Annotated[StrictFloat, Field(ge=0)]


class ModelDrift(EventEnvelope):
    """ADWIN found that the forecast errors of ``model`` on ``key`` changed.

    ``key`` is the error stream that drifted (a hardware class for the runtime model);
    ``error_before`` / ``error_after`` are the mean errors (``|log(predicted / actual)|``
    for runtimes) over the detector's window before and after the change;
    ``observations`` is the errors seen for ``key`` so far (with ``model`` and ``key``, a
    deterministic id of the detection); ``window`` the errors kept after it. ``adapted``
    tells whether the model was refitted (it is when errors went up);
    ``model_version`` is the model's version after that.
    """

    type: Literal["model.drift"] = "model.drift"
    model: Identifier
    key: Identifier
    model_version: Identifier
    error_before: _Error
    error_after: _Error
    observations: StrictInt = Field(ge=1)
    window: StrictInt = Field(ge=0)
    adapted: StrictBool
