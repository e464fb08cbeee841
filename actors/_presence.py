"""The presence registry: who is online, with a grace period before anyone goes offline (G6).

One actor owns all presence state of this node: the open connections of each user here, the
users inside their offline grace period, ``last_seen`` times and the presence subscriptions
of this node's connections. It learns about local connections and subscriptions from its
mailbox, and about devices on other nodes from the change feed (``RemoteChanged``, after
:class:`~actors._sessions.RemoteSessions` changed). A user is online while at least one device
is connected anywhere; when the last one disconnects (here, on another node, or with a dead
node at its lease expiry), ``offline`` is announced only if no device came back within
``presence_grace_s``, so reconnect flaps are invisible to subscribers. Every node applies the
grace to the same disconnect, so it is applied once, not once per node. ``last_seen`` is the
time of the disconnect (persisted by the node that saw it; a sweep persists a dead node's).

A subscription ends (silently) when the two users no longer share a conversation: after a
removal or leave (``Parted``, from the conversation actors) the pairs involving the parted
users are checked against the Store. Tables are bounded by what this node serves: the users
connected here, in grace, or subscribed to by a connection here; ``last_seen`` is kept only
for those.

Restart: a fresh registry rebuilds the open connections from the router, so a crash of the
registry alone does not make connected users look offline. Cancellation loses pending grace
timers; no one is told offline for them (they are still connected or their node died).

Start grace: a registry that just started (a node restart, or the registry's own restart)
cannot tell "offline for long" from "dropped with the crash a moment ago and reconnecting":
those users' grace timers died with the old registry. So for the first ``presence_grace_s``
after it starts, a subscription to a user with no connected device gets no answer yet: the
frame is deferred until the user connects (``online``) or the start grace ends (``offline``,
with the persisted ``last_seen``). Nothing untrue is ever said; the price is an initial
answer up to one grace period late, only right after a start.
"""

from __future__ import annotations

import logging
import math

import trio

from persistence import StoreError
from protocol import Error, ErrorCode, Presence

from ._config import PRESENCE_LOCAL_ONLY
from ._context import NodeContext
from ._messages import (
    DeviceConnected,
    DeviceDisconnected,
    Parted,
    PresenceRequest,
    RemoteChanged,
    Subscribe,
    SubscriberGone,
    Unsubscribe,
)
from ._router import ConnectionHandle

log = logging.getLogger("actors.presence")


class PresenceRegistry:
    """See the module docstring. Others talk to it through :attr:`mailbox`."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self.mailbox, self._inbox = trio.open_memory_channel[PresenceRequest](
            ctx.config.mailbox_size
        )
        # user -> ids of the user's open connections here (a short list: a set of one costs 4x).
        self._online: dict[str, list[int]] = {}
        self._grace_until: dict[str, float] = {}
        self._last_seen: dict[str, int | None] = {}
        # target user -> subscribing connection id -> its handle; and the reverse index.
        self._subscribers: dict[str, dict[int, ConnectionHandle]] = {}
        self._subscribed: dict[int, tuple[ConnectionHandle, set[str]]] = {}
        # Start grace (see the module docstring): until ``_undecided_until``, users with no
        # connected device are not reported; ``_deferred`` holds those someone asked about.
        self._undecided_until = -math.inf
        self._deferred: set[str] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the mailbox until cancelled (the node owns the mailbox; it is never closed)."""
        self._online = {}
        self._grace_until = {}
        self._deferred = set()
        self._undecided_until = trio.current_time() + self._grace_s()
        for handle in self._ctx.router.all():
            self._add_online(handle.user, handle.conn_id)
        task_status.started()
        while True:
            wake = min(self._grace_until.values(), default=math.inf)
            if self._deferred:
                wake = min(wake, self._undecided_until)
            request: PresenceRequest | None = None
            with trio.move_on_at(wake):  # only the wait: a timer never cuts a request short
                request = await self._inbox.receive()
            if request is not None:
                await self._handle(request)
            now = trio.current_time()
            self._expire_grace(now)
            self._expire_start_grace(now)

    async def _handle(self, request: PresenceRequest) -> None:
        match request:
            case DeviceConnected(user=user, conn_id=conn_id):
                self._connected(user, conn_id)
            case DeviceDisconnected(user=user, conn_id=conn_id, ts=ts):
                await self._disconnected(user, conn_id, ts)
            case RemoteChanged():
                self._remote_changed(request)
            case Subscribe():
                await self._subscribe(request)
            case Unsubscribe(origin=origin, users=users):
                for user in users:
                    self._drop_subscription(origin.conn_id, user)
            case SubscriberGone(origin=origin):
                _handle, targets = self._subscribed.get(origin.conn_id, (origin, set()))
                for user in sorted(targets):
                    self._drop_subscription(origin.conn_id, user)
            case Parted(users=users):
                await self._parted(users)

    def tracked(self) -> set[str]:
        """Every user this registry holds anything about (its tables are bounded by them)."""
        return {
            *self._online,
            *self._grace_until,
            *self._last_seen,
            *self._subscribers,
            *(u for _handle, users in self._subscribed.values() for u in users),
        }

    def _add_online(self, user: str, conn_id: int) -> None:
        conns = self._online.setdefault(user, [])
        if conn_id not in conns:
            conns.append(conn_id)

    def _connected_now(self, user: str) -> bool:
        return user in self._online or self._elsewhere(user)

    def _elsewhere(self, user: str) -> bool:
        return self._ctx.remote.has(user) and not self._ctx.mutant(PRESENCE_LOCAL_ONLY)

    def _is_online(self, user: str) -> bool:
        return self._connected_now(user) or user in self._grace_until

    def _grace_s(self) -> float:
        return self._ctx.config.presence_grace_s

    def _connected(self, user: str, conn_id: int) -> None:
        was_online = self._is_online(user)
        self._add_online(user, conn_id)
        self._came_back(user, was_online)

    def _came_back(self, user: str, was_online: bool) -> None:
        self._grace_until.pop(user, None)  # a flap: nobody is told
        self._deferred.discard(user)  # the deferred answer is this "online"
        if not was_online:
            self._publish(user)

    def _grace_of_late(self, user: str) -> None:
        """A user with no device connected anywhere whose last one disconnected less than a
        grace period ago (on another node, before this one tracked them) is still in that
        grace here: nobody is told ``offline`` before it ends (G6). Not during this node's
        start grace: that defers the answer for a whole grace after the start, which covers
        every disconnect before it (and ``last_seen`` of a crash may be older still)."""
        last_seen = self._last_seen.get(user)
        if (
            last_seen is None
            or self._is_online(user)
            or trio.current_time() < self._undecided_until
        ):
            return
        left_s = self._grace_s() - (self._ctx.wall_ms() - last_seen) / 1000
        if left_s > 0:
            self._grace_until[user] = trio.current_time() + left_s

    def _went_away(self, user: str, ts: int) -> None:
        """``user``'s last device anywhere disconnected at ``ts``: start the grace."""
        previous = self._last_seen.get(user)
        self._last_seen[user] = ts if previous is None else max(previous, ts)
        self._grace_until[user] = trio.current_time() + self._grace_s()

    async def _disconnected(self, user: str, conn_id: int, ts: int) -> None:
        conns = self._online.get(user)
        if conns is None or conn_id not in conns:
            return
        conns.remove(conn_id)
        if conns:
            return
        del self._online[user]
        if not self._elsewhere(user):
            self._went_away(user, ts)
        try:
            with self._ctx.timed("set_last_seen"):
                await self._ctx.store.set_last_seen(user, ts)
        except StoreError as exc:
            log.warning("could not persist last_seen of %s: %s", user, exc)
        self._forget_if_idle(user)

    def _remote_changed(self, change: RemoteChanged) -> None:
        user = change.user
        here = user in self._online
        if change.after and not change.before:
            self._came_back(user, here or user in self._grace_until)
        elif change.before and not change.after and not here:
            self._went_away(user, change.ts)

    def _expire_grace(self, now: float) -> None:
        for user in sorted(u for u, t in self._grace_until.items() if t <= now):
            del self._grace_until[user]
            self._publish(user)
            self._forget_if_idle(user)

    def _expire_start_grace(self, now: float) -> None:
        """The start grace is over: answer the deferred subscriptions as things stand."""
        if now < self._undecided_until or not self._deferred:
            return
        deferred, self._deferred = sorted(self._deferred), set()
        for user in deferred:
            self._publish(user)

    def _forget_if_idle(self, user: str) -> None:
        """Bound the tables: forget ``last_seen`` of a user nothing here refers to."""
        if (
            user not in self._online
            and user not in self._grace_until
            and user not in self._subscribers
        ):
            self._last_seen.pop(user, None)

    def _frame(self, user: str) -> Presence:
        last_seen = self._last_seen.get(user)
        if self._is_online(user):
            return Presence(user=user, status="online", last_seen=last_seen)
        return Presence(user=user, status="offline", last_seen=last_seen)

    def _publish(self, user: str) -> None:
        subscribers = self._subscribers.get(user)
        if not subscribers:
            return
        frame = self._frame(user)
        for conn_id in sorted(subscribers):
            subscribers[conn_id].push(frame)

    def _drop_subscription(self, conn_id: int, user: str) -> None:
        subs = self._subscribers.get(user)
        if subs is not None and subs.pop(conn_id, None) is not None and not subs:
            del self._subscribers[user]
        entry = self._subscribed.get(conn_id)
        if entry is not None:
            entry[1].discard(user)
            if not entry[1]:
                del self._subscribed[conn_id]
        self._forget_if_idle(user)

    async def _parted(self, users: tuple[str, ...]) -> None:
        """End the subscriptions between a parted user and users they share nothing with."""
        pairs: set[tuple[int, str, str]] = set()
        for parted in users:
            for conn_id, handle in self._subscribers.get(parted, {}).items():
                if handle.user != parted:
                    pairs.add((conn_id, handle.user, parted))
            for conn_id, (handle, targets) in self._subscribed.items():
                if handle.user == parted:
                    pairs.update((conn_id, parted, t) for t in targets if t != parted)
        contacts: dict[str, set[str] | None] = {}
        for conn_id, subscriber, target in sorted(pairs):
            if subscriber not in contacts:
                try:
                    with self._ctx.timed("contacts"):
                        contacts[subscriber] = await self._ctx.store.contacts(subscriber)
                except StoreError as exc:
                    # Kept for now: the next removal or the subscriber's reconnect checks again.
                    log.warning("could not check the contacts of %s: %s", subscriber, exc)
                    contacts[subscriber] = None
            known = contacts[subscriber]
            if known is not None and target not in known:
                self._drop_subscription(conn_id, target)

    async def _subscribe(self, request: Subscribe) -> None:
        unknown = [u for u in request.allowed if u not in self._last_seen]
        if unknown:
            try:
                with self._ctx.timed("last_seen"):
                    found = await self._ctx.store.last_seen(unknown)
                self._last_seen.update({u: None if t is None else int(t) for u, t in found.items()})
            except StoreError as exc:
                request.origin.push(Error(code=exc.code, message=exc.message, rid=request.rid))
                return
        undecided = trio.current_time() < self._undecided_until
        for user in request.allowed:
            self._grace_of_late(user)
            self._subscribers.setdefault(user, {})[request.origin.conn_id] = request.origin
            self._subscribed.setdefault(request.origin.conn_id, (request.origin, set()))[1].add(
                user
            )
            if undecided and not self._is_online(user):
                self._deferred.add(user)  # answered by _connected or _expire_start_grace
                continue
            request.origin.push(self._frame(user))
        if request.denied:
            names = ", ".join(request.denied)
            request.origin.push(
                Error(
                    code=ErrorCode.FORBIDDEN,
                    message=f"no shared conversation with: {names}",
                    rid=request.rid,
                )
            )
