"""The placement agent's pipelined commits: inputs are committed only once everything
they caused, and everything before them, is acknowledged by the broker."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamsched.agents.placement import InFlight


class _Msg:
    """What a delivery callback reads from a message (the topic)."""

    def topic(self) -> str:
        return "sched.decisions"


def _batch(flight: InFlight, offsets: dict[tuple[str, int], int], records: int) -> list[Any]:
    with flight.batch(offsets):
        return [flight.track() for _ in range(records)]


def test_offsets_are_committed_in_batch_order_once_delivered() -> None:
    flight = InFlight()
    first = _batch(flight, {("sub", 0): 10}, 2)
    second = _batch(flight, {("sub", 0): 20, ("ev", 1): 5}, 1)
    empty = _batch(flight, {}, 0)  # a batch that produced nothing
    assert flight.delivered() == {}
    second[0](None, _Msg())  # the later batch is acknowledged first: still nothing
    assert flight.delivered() == {}
    first[0](None, _Msg())
    first[1](None, _Msg())
    assert flight.delivered() == {("sub", 0): 20, ("ev", 1): 5}
    assert flight.pending == 0
    assert empty == []


def test_a_batch_still_open_is_not_committed() -> None:
    flight = InFlight()
    with flight.batch({("sub", 0): 3}):
        assert flight.open
        assert flight.delivered() == {}
    assert not flight.open
    assert flight.delivered() == {("sub", 0): 3}


def test_a_failed_delivery_stops_all_commits() -> None:
    flight = InFlight()
    (failed,) = _batch(flight, {("sub", 0): 10}, 1)
    (later,) = _batch(flight, {("sub", 0): 20}, 1)
    failed(KafkaError(KafkaError._MSG_TIMED_OUT), _Msg())
    later(None, _Msg())
    with pytest.raises(KafkaException, match="inputs left uncommitted"):
        flight.delivered()
    assert flight.delivered() == {}  # never past the lost outputs, even on the way out
