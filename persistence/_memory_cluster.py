"""The several-nodes half of MemoryStore: node leases, device sessions and the change feed.

Plain Python like the rest of :mod:`persistence._memory`: no threads, no wall clock. The feed
is a log of ``(origin node, event)`` in the order the operations took effect; each
:class:`ChangeFeed` is an index into it, woken by a trio event. Only the last
``feed_retention`` events are kept: an older position raises :class:`FeedLost`, as MongoDB
does when the oplog rolled past a resume token (:meth:`MemoryCluster.drop_feed_history`
forgets all of it at once, the same way).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

from ._feed import (
    ChangeFeed,
    DeviceSession,
    Ephemeral,
    FeedEvent,
    FeedLost,
    FeedMessages,
    FeedNodeDown,
    FeedSession,
)
from ._rules import check_id
from ._types import StoredMessage


@attrs.define(eq=False)
class _Lease:
    expires: int
    swept: bool = False


class _MemoryFeed(ChangeFeed):
    """A cursor into the MemoryStore's feed log (see :meth:`MemoryCluster.watch`).

    Its token is ``(epoch, position)``: a lost history (the fault) starts a new epoch, so
    every feed and token of the old one is refused with :class:`FeedLost`.
    """

    def __init__(self, store: MemoryCluster, node: str, epoch: int, position: int) -> None:
        self._store = store
        self._node = node
        self._epoch = epoch
        self._position = position
        self._closed = False

    @property
    def token(self) -> object:
        return (self._epoch, self._position)

    async def next(self) -> list[FeedEvent]:
        store = self._store
        await store._enter()
        while not self._closed:
            store._trim_lost_feed()
            if self._epoch != store._feed_epoch or self._position < store._feed_base:
                raise FeedLost(f"feed position {self.token} is no longer retained")
            end = store._feed_base + len(store._feed)
            if self._position < end:
                entries = store._feed[self._position - store._feed_base :]
                self._position = end
                found = [event for origin, event in entries if origin != self._node]
                if found:
                    return found
                continue
            await store._feed_grew.wait()
        raise trio.ClosedResourceError("the feed was closed")

    async def aclose(self) -> None:
        self._closed = True


class MemoryCluster:
    """Leases, sessions and the feed of a MemoryStore (its base class; see the module
    docstring). ``_last_seen`` is shared with the presence half: a sweep sets it."""

    def __init__(self, *, feed_retention: int) -> None:
        self._last_seen: dict[str, int] = {}
        self._leases: dict[str, _Lease] = {}
        self._sessions: dict[tuple[str, str], DeviceSession] = {}
        self._feed_retention = feed_retention
        self._feed: list[tuple[str | None, FeedEvent]] = []
        self._feed_base = 0
        self._feed_epoch = 0
        self._feed_grew = trio.Event()
        self._feed_forgotten = False

    async def _enter(self) -> None:
        # A checkpoint in every operation, so the simulator can interleave store calls.
        await trio.lowlevel.checkpoint()

    # -- the change feed -------------------------------------------------------------------

    def _emit(self, event: FeedEvent, origin: str | None = None) -> None:
        """Append ``event`` to the feed (``origin``: the node whose own feed skips it)."""
        self._feed.append((origin, event))
        if len(self._feed) > self._feed_retention:
            drop = len(self._feed) - self._feed_retention
            del self._feed[:drop]
            self._feed_base += drop
        self._feed_grew.set()
        self._feed_grew = trio.Event()

    def drop_feed_history(self) -> None:
        """Forget the feed's retained history at its next read, as an oplog that rolled over
        does: every open feed and every token then raises :class:`FeedLost` (MongoDB's error
        286), and watchers resync from the Store."""
        self._feed_forgotten = True

    def _trim_lost_feed(self) -> None:
        if self._feed_forgotten:
            self._feed_forgotten = False
            self._feed_base += len(self._feed)
            self._feed.clear()
            self._feed_epoch += 1
            self._feed_grew.set()
            self._feed_grew = trio.Event()

    def _emit_messages(self, conv: str, messages: Sequence[StoredMessage]) -> None:
        if messages:
            self._emit(FeedMessages(conv=conv, messages=tuple(messages)))

    # -- several nodes ---------------------------------------------------------------------

    async def renew_lease(self, node: str, now_ms: int, ttl_ms: int) -> bool:
        await self._enter()
        lease = self._leases.get(node)
        if lease is None or lease.swept:
            self._leases[node] = _Lease(now_ms + ttl_ms)
            return lease is None
        lease.expires = max(lease.expires, now_ms + ttl_ms)
        return True

    async def drop_lease(self, node: str) -> None:
        await self._enter()
        self._leases.pop(node, None)

    async def sweep_expired(self, now_ms: int, dead: Sequence[str] = ()) -> list[str]:
        await self._enter()
        known = set(dead)
        swept = sorted(
            n
            for n, lease in self._leases.items()
            if not lease.swept and (lease.expires < now_ms or n in known)
        )
        for node in swept:
            lease = self._leases[node]
            lease.swept = True
            lease.expires = min(lease.expires, now_ms)
            for key in sorted(k for k, s in self._sessions.items() if s.node == node):
                user = key[0]
                del self._sessions[key]
                self._last_seen[user] = max(self._last_seen.get(user, lease.expires), lease.expires)
            self._emit(FeedNodeDown(node=node, ts=lease.expires))
        return swept

    async def open_session(self, session: DeviceSession) -> None:
        check_id("user id", session.user)
        check_id("device id", session.device)
        await self._enter()
        current = self._sessions.get((session.user, session.device))
        if current is not None and current.since > session.since:
            return  # an older session recorded late: the newer one stands
        self._sessions[(session.user, session.device)] = session
        self._emit(
            FeedSession(
                user=session.user,
                device=session.device,
                session=session.session,
                node=session.node,
                ts=session.since,
            ),
            origin=session.node,
        )

    async def close_session(self, user: str, device: str, session: str, ts: int) -> bool:
        await self._enter()
        current = self._sessions.get((user, device))
        if current is None or current.session != session:
            return False
        del self._sessions[(user, device)]
        self._emit(
            FeedSession(user=user, device=device, session=None, node=current.node, ts=ts),
            origin=current.node,
        )
        return True

    async def sessions(self) -> list[DeviceSession]:
        await self._enter()
        return [self._sessions[k] for k in sorted(self._sessions)]

    async def publish(self, events: Sequence[Ephemeral]) -> None:
        await self._enter()
        for event in events:
            self._emit(event, origin=event.node)

    async def watch(self, node: str, after: object | None = None) -> ChangeFeed:
        await self._enter()
        self._trim_lost_feed()
        end = self._feed_base + len(self._feed)
        if after is None:
            return _MemoryFeed(self, node, self._feed_epoch, end)
        match after:
            case (int(epoch), int(position)) if (
                epoch == self._feed_epoch and self._feed_base <= position <= end
            ):
                return _MemoryFeed(self, node, epoch, position)
        raise FeedLost(f"feed position {after!r} is no longer retained")
