"""Data-ingestion events: a dataset received new rows/bytes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt, StringConstraints

from .envelope import EventEnvelope
from .types import MAX_URI_CHARS, Identifier

#: A URI with a scheme, e.g. ``s3://bucket/key``, ``gs://...``, ``file:///data/x``.
Uri = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=MAX_URI_CHARS, pattern=r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$"
    ),
]


class DataIngested(EventEnvelope):
    """New data landed in a dataset. Published to ``sched.data.ingested``.

    ``rows`` and ``bytes`` are what this ingestion added (not the dataset's total);
    consumers deduplicate on ``event_id`` before adding them up.
    """

    type: Literal["data.ingested"] = "data.ingested"
    dataset: Identifier
    rows: StrictInt = Field(ge=0, description="Rows added by this ingestion.")
    bytes: StrictInt = Field(ge=0, description="Bytes added by this ingestion.")
    location: Uri = Field(description="Where the new data is, as a URI (s3://, gs://, file:).")
