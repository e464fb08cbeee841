"""The node-wide keep-alive timer: one task watches the deadline of every open connection.

A connection that has said ``hello`` must be heard from (a frame or a WebSocket ping) at
least every ``2 * heartbeat_s``; otherwise it is closed with 4408. Instead of a sleeping
watchdog task per connection (a task, its cancel scope and its stack: ~2 KiB of memory each),
the node keeps one heap of ``(deadline, conn_id)`` entries and one task that sleeps until the
earliest of them. An entry is only a lower bound: the connection's real deadline moves later
with every frame it receives, so a popped entry is checked against the real deadline and
pushed again when it moved. Each watched connection has exactly one entry, so the heap stays
as large as the number of connections and a connection costs O(log n) once per heartbeat
period, not per frame.

Timing is that of the old per-connection watchdog: the check runs just past the deadline
(the session expires strictly after it), with trio's clock, so the simulator's virtual time
governs it.
"""

from __future__ import annotations

import heapq
import math
from typing import Protocol

import trio

#: How far past a deadline the check runs (a session expires strictly after its deadline).
DEADLINE_SLACK_S = 0.001


class Watched(Protocol):
    """What the timer needs of a connection."""

    def keepalive_deadline(self) -> float:
        """The absolute trio time by which the peer must be heard from (inf: never)."""
        ...

    def keepalive_check(self, now: float) -> bool:
        """Close the connection if it expired at ``now``; True if it did (stop watching)."""
        ...


class KeepAlive:
    """See the module docstring. :meth:`run` in the node's nursery; connections
    :meth:`watch` themselves after ``welcome`` and :meth:`unwatch` when they end."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._watched: dict[int, Watched] = {}
        self._scope: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, conn_id: int, connection: Watched) -> None:
        """Start watching ``connection`` (its ``conn_id`` is unique in the node)."""
        self._watched[conn_id] = connection
        self._push(connection.keepalive_deadline(), conn_id)

    def unwatch(self, conn_id: int) -> None:
        """Stop watching (its heap entry is dropped lazily when it comes up)."""
        self._watched.pop(conn_id, None)

    def _push(self, deadline: float, conn_id: int) -> None:
        if deadline == math.inf:
            return
        heapq.heappush(self._heap, (deadline, conn_id))
        wake = deadline + DEADLINE_SLACK_S
        if self._scope is not None and wake < self._scope.deadline:
            self._scope.deadline = wake

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check deadlines as they come, until cancelled."""
        task_status.started()
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] + DEADLINE_SLACK_S <= now:
                _stale, conn_id = heapq.heappop(heap)
                connection = self._watched.get(conn_id)
                if connection is None:
                    continue  # gone; or re-watched, and then it has an entry of its own
                deadline = connection.keepalive_deadline()
                if deadline + DEADLINE_SLACK_S > now:
                    self._push(deadline, conn_id)  # heard from since: not due yet
                elif connection.keepalive_check(now):
                    self._watched.pop(conn_id, None)
                else:  # not expired after all: look again a little later (never spin)
                    self._push(max(deadline, now), conn_id)
            wake = heap[0][0] + DEADLINE_SLACK_S if heap else math.inf
            with trio.CancelScope(deadline=wake) as self._scope:
                await trio.sleep_forever()
            self._scope = None
