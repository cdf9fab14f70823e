"""The ready queue: tasks eligible to run, kept sorted by a static key.

One sorted list per group (a tenant when fair share is on, else a single group), plus a
deadline index ordered by latest start time. Keys never depend on ``now`` (aging lives in
the key itself), so insertion and removal are O(log n) and the queue never needs a re-sort
as time passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sortedcontainers import SortedList

Entry = tuple[tuple[float, ...], int, str]


@dataclass(slots=True)
class _Where:
    group: str
    entry: Entry
    deadline_entry: tuple[float, int, str] | None


class ReadyQueue:
    def __init__(self) -> None:
        self._groups: dict[str, SortedList] = {}
        self._where: dict[str, _Where] = {}
        self._deadlines = SortedList()
        self._seq = 0

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._where

    def push(
        self, task_id: str, group: str, key: tuple[float, ...], latest_start_s: float | None
    ) -> None:
        if task_id in self._where:
            raise ValueError(f"task {task_id} is already queued")
        self._seq += 1
        entry: Entry = (key, self._seq, task_id)
        self._groups.setdefault(group, SortedList()).add(entry)
        deadline_entry = None
        if latest_start_s is not None:
            deadline_entry = (latest_start_s, self._seq, task_id)
            self._deadlines.add(deadline_entry)
        self._where[task_id] = _Where(group, entry, deadline_entry)

    def remove(self, task_id: str) -> None:
        where = self._where.pop(task_id)
        group = self._groups[where.group]
        group.remove(where.entry)
        if not group:
            del self._groups[where.group]
        if where.deadline_entry is not None:
            self._deadlines.remove(where.deadline_entry)

    def key_of(self, task_id: str) -> tuple[float, ...]:
        return self._where[task_id].entry[0]

    def group_of(self, task_id: str) -> str:
        return self._where[task_id].group

    def groups(self) -> dict[str, SortedList]:
        return self._groups

    def urgent(self, latest_start_before_s: float) -> Iterator[str]:
        """Deadline tasks whose latest start is before the bound, least slack first."""
        for latest, _, task_id in self._deadlines:
            if latest > latest_start_before_s:
                return
            yield task_id

    def task_ids(self) -> Iterator[str]:
        return iter(self._where)

    def task_ids_by_arrival(self) -> list[str]:
        """Queued task ids in the order they were (last) pushed."""
        return sorted(self._where, key=lambda tid: self._where[tid].entry[1])
