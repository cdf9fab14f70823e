"""The placement agent's event-time buffer (replay mode): release in time order behind a
watermark, and commit offsets only past records already applied."""

from __future__ import annotations

from streamsched.agents.placement import HeldEvents
from streamsched.testing import tick


def test_events_are_released_in_time_order_grouped_by_equal_time() -> None:
    held = HeldEvents()
    a, b, c, d = tick(1.0), tick(2.0), tick(3.0), tick(4.0)  # any core events will do
    held.add(("sub", 0, 0), a, 30.0)
    held.add(("sub", 1, 0), b, 10.0)
    held.add(("ev", 0, 0), c, 10.0)
    held.add(("ev", 0, 1), d, 50.0)
    assert held.release(5.0) == []
    assert held.release(30.0) == [(10.0, [b, c]), (30.0, [a])]  # ties keep arrival order
    assert held.release(30.0) == []
    assert held.release(100.0) == [(50.0, [d])]


def test_offsets_are_committed_only_past_applied_records() -> None:
    held = HeldEvents()
    held.add(("sub", 0, 7), tick(1.0), 50.0)  # late in time, early in the log
    held.add(("sub", 0, 8), tick(2.0), 10.0)
    held.add(("sub", 0, 9), None, 0.0)  # dead-lettered: nothing to apply
    assert held.committable() == {("sub", 0): 7}
    held.release(20.0)  # offset 8 applied, 7 still held
    assert held.committable() == {}  # nothing moved
    held.release(60.0)
    assert held.committable() == {("sub", 0): 10}
    assert held.committable() == {}
