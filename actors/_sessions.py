"""Device sessions across nodes: the table of devices connected to the other nodes, and the
writer of this node's own sessions (see :mod:`actors._cluster`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Generic, TypeVar

import attrs
import trio

from persistence import DeviceSession, Store, StoreError

log = logging.getLogger("actors.sessions")
T = TypeVar("T")
#: Pause before retrying a session write that failed.
RETRY_S = 0.5


@attrs.define
class RemoteSessions:
    """(user, device) → (session, node, since) of devices connected to *other* nodes.

    Plain data changed synchronously by the feed dispatcher (and by a local hello, which
    takes the device over). ``has(user)`` is what "connected anywhere" (G6, G8) adds to the
    local router. Its size is the number of devices connected to the rest of the deployment.
    """

    _sessions: dict[tuple[str, str], tuple[str, str, int]] = attrs.field(factory=dict)
    _per_user: dict[str, int] = attrs.field(factory=dict)

    def has(self, user: str) -> bool:
        return user in self._per_user

    def get(self, user: str, device: str) -> tuple[str, str, int] | None:
        return self._sessions.get((user, device))

    def start(self, user: str, device: str, session: str, node: str, since: int) -> None:
        if (user, device) not in self._sessions:
            self._per_user[user] = self._per_user.get(user, 0) + 1
        self._sessions[(user, device)] = (session, node, since)

    def end(self, user: str, device: str, session: str | None = None) -> None:
        """Forget the device's remote session (only if it is ``session``, when given)."""
        found = self._sessions.get((user, device))
        if found is None or (session is not None and found[0] != session):
            return
        del self._sessions[(user, device)]
        left = self._per_user[user] - 1
        if left:
            self._per_user[user] = left
        else:
            del self._per_user[user]

    def drop_node(self, node: str) -> list[str]:
        """Forget every session of ``node``; the users who had one, sorted."""
        keys = sorted(k for k, (_s, n, _t) in self._sessions.items() if n == node)
        for user, device in keys:
            self.end(user, device)
        return sorted({user for user, _device in keys})

    def reset(self, sessions: Sequence[DeviceSession], me: str) -> None:
        self._sessions.clear()
        self._per_user.clear()
        for s in sessions:
            if s.node != me:
                self.start(s.user, s.device, s.session, s.node, s.since)

    def users(self) -> list[str]:
        return sorted(self._per_user)


class Queue(Generic[T]):
    """A list a single writer task drains; ``drain`` waits until it is empty and written."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self.work = trio.Event()
        self.idle = trio.Event()
        self.idle.set()

    def put(self, item: T) -> None:
        self.items.append(item)
        self.idle = trio.Event() if self.idle.is_set() else self.idle
        self.work.set()

    async def drain(self) -> None:
        await self.idle.wait()


class SessionWriter:
    """Writes session opens and closes to the Store in the order they happened.

    Off the hello's and the close's path: :meth:`open`/:meth:`close` never block. A write that
    fails is retried (it is idempotent) after ``RETRY_S``; nothing after it overtakes it.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: Queue[DeviceSession | tuple[str, str, str, int]] = Queue()

    def open(self, session: DeviceSession) -> None:
        self._queue.put(session)

    def close(self, user: str, device: str, session: str, ts: int) -> None:
        self._queue.put((user, device, session, ts))

    async def drain(self) -> None:
        """Return once everything handed over so far is written (the caller bounds it)."""
        await self._queue.drain()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        queue = self._queue
        task_status.started()
        while True:
            await queue.work.wait()
            queue.work = trio.Event()
            while queue.items:
                item = queue.items[0]
                try:
                    if isinstance(item, DeviceSession):
                        await self._store.open_session(item)
                    else:
                        await self._store.close_session(*item)
                except StoreError as exc:
                    log.warning("could not record a session change (will retry): %s", exc)
                    await trio.sleep(RETRY_S)
                    continue
                queue.items.pop(0)
            queue.idle.set()
