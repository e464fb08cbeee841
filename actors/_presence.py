"""The presence registry: who is online, with a grace period before anyone goes offline (G6).

One actor owns all presence state of this node: the open connections of each user, the users
inside their offline grace period, ``last_seen`` times and the presence subscriptions. It
learns about connections and subscriptions only from its mailbox. A user is online while at
least one device is connected; when the last one disconnects, ``last_seen`` is persisted at
once, but ``offline`` is announced only if no device came back within ``presence_grace_s``,
so reconnect flaps are invisible to subscribers.

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

from ._context import NodeContext
from ._messages import (
    DeviceConnected,
    DeviceDisconnected,
    PresenceRequest,
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
        # user -> ids of the user's open connections (a short list: a set of one costs 4x).
        self._online: dict[str, list[int]] = {}
        self._grace_until: dict[str, float] = {}
        self._last_seen: dict[str, int | None] = {}
        self._subscribers: dict[str, dict[int, ConnectionHandle]] = {}
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
            case Subscribe():
                await self._subscribe(request)
            case Unsubscribe(origin=origin, users=users):
                for user in users:
                    self._subscribers.get(user, {}).pop(origin.conn_id, None)
            case SubscriberGone(origin=origin):
                for subs in self._subscribers.values():
                    subs.pop(origin.conn_id, None)

    def _add_online(self, user: str, conn_id: int) -> None:
        conns = self._online.setdefault(user, [])
        if conn_id not in conns:
            conns.append(conn_id)

    def _is_online(self, user: str) -> bool:
        return user in self._online or user in self._grace_until

    def _grace_s(self) -> float:
        return self._ctx.config.presence_grace_s

    def _connected(self, user: str, conn_id: int) -> None:
        was_online = self._is_online(user)
        self._add_online(user, conn_id)
        self._grace_until.pop(user, None)  # a flap: nobody is told
        self._deferred.discard(user)  # the deferred answer is this "online"
        if not was_online:
            self._publish(user)

    async def _disconnected(self, user: str, conn_id: int, ts: int) -> None:
        conns = self._online.get(user)
        if conns is None or conn_id not in conns:
            return
        conns.remove(conn_id)
        if conns:
            return
        del self._online[user]
        previous = self._last_seen.get(user)
        self._last_seen[user] = ts if previous is None else max(previous, ts)
        self._grace_until[user] = trio.current_time() + self._grace_s()
        try:
            with self._ctx.timed("set_last_seen"):
                await self._ctx.store.set_last_seen(user, ts)
        except StoreError as exc:
            log.warning("could not persist last_seen of %s: %s", user, exc)

    def _expire_grace(self, now: float) -> None:
        for user in sorted(u for u, t in self._grace_until.items() if t <= now):
            del self._grace_until[user]
            self._publish(user)

    def _expire_start_grace(self, now: float) -> None:
        """The start grace is over: answer the deferred subscriptions as things stand."""
        if now < self._undecided_until or not self._deferred:
            return
        deferred, self._deferred = sorted(self._deferred), set()
        for user in deferred:
            self._publish(user)

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
            self._subscribers.setdefault(user, {})[request.origin.conn_id] = request.origin
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
