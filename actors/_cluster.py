"""The node's part in a deployment of several nodes: its lease, its sessions and its feed.

Every node holds a lease in the Store (renewed every ``lease_refresh_s``, expiring after
``lease_s``), records each connected device as a session with its node id (written in the
background by :class:`~actors._sessions.SessionWriter`, in order), and follows ONE change feed
(:class:`FeedDispatcher`) carrying what the other nodes did. The dispatcher hands each event to
the actor that owns the matter, in feed order:

* stored messages and member events → the conversation actor (started if a local device may
  see the conversation), which pushes in seq order, fills gaps from the Store and applies a
  membership event before pushing anything after it (G7);
* receipts and typing of other nodes → the conversation actor likewise;
* session starts and ends → :class:`RemoteSessions` (the table of devices connected to other
  nodes), then the presence registry; a start that replaces a device connected here closes
  the local connection with 4409;
* a dead node (its lease expired and was swept) → all its sessions end at its lease expiry.

Receipts and typing notices are announced to the other nodes only when some member of the
conversation is connected elsewhere (:class:`Publisher`, batched), so a single node writes
nothing extra. When the feed's history is gone (:class:`persistence.FeedLost`), the node
reopens it from now and resyncs: the remote sessions from the Store, every running
conversation actor from the Store, and the conversations of every locally connected device.

Ownership: :class:`ClusterLink` runs them as one supervised child of the
node; everything here talks to the actors only through their mailboxes, and to
:class:`RemoteSessions` and the router synchronously (plain tables, no ``await`` inside).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from persistence import (
    ChangeFeed,
    DeviceSession,
    Ephemeral,
    FeedEvent,
    FeedLost,
    FeedMarks,
    FeedMessages,
    FeedNodeDown,
    FeedSession,
    FeedTyping,
    Store,
    StoreError,
)

from ._config import CLAIMS_AFTER_LEASE_LOST, RESUME_TOKEN_NOT_ADVANCED
from ._context import NodeContext
from ._messages import RemoteChanged, RemoteMarks, RemoteMessages, RemoteTyping
from ._sessions import Queue

log = logging.getLogger("actors.cluster")

#: Pause before reopening a feed that failed.
RETRY_S = 0.5
#: Close code for the connections of a node that found itself declared dead (RFC 6455
#: "service restart": reconnect, to this node or another).
SERVICE_RESTART = 1012


class Publisher:
    """Announces receipts and typing to the other nodes, batched into one write at a time."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: Queue[Ephemeral] = Queue()

    def submit(self, event: Ephemeral) -> None:
        self._queue.put(event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        queue = self._queue
        task_status.started()
        while True:
            await queue.work.wait()
            queue.work = trio.Event()
            events, queue.items = queue.items, []
            try:
                await self._store.publish(events)
            except StoreError as exc:
                # Receipts are also in the Store (the next convs/hello shows them) and typing
                # is best effort: a failed announcement is dropped, not retried late.
                log.warning("could not announce %d events to other nodes: %s", len(events), exc)
            if not queue.items:
                queue.idle.set()


class FeedDispatcher:
    """Follows the node's change feed and hands each event to its owner (module docstring)."""

    def __init__(
        self,
        ctx: NodeContext,
        conversations: RemoteTarget,
        close_local: CloseLocal,
        dead: Sequence[str] = (),
    ) -> None:
        self._ctx = ctx
        # Nodes known dead (a restarted node's predecessors): their sessions are stale even
        # before the sweep that ends them in the Store got through.
        self._dead = frozenset(dead)
        self._conversations = conversations
        self._close_local = close_local
        self._token: object | None = None
        self._feed: ChangeFeed | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the feed (resuming where a previous run stopped), then dispatch forever."""
        feed = await self._open()
        task_status.started()
        try:
            while True:
                try:
                    events = await feed.next()
                except FeedLost as exc:
                    log.warning("change feed history lost, resyncing: %s", exc)
                    await feed.aclose()
                    self._token = None
                    feed = await self._open()
                    await self._conversations.resync_all()
                    continue
                except StoreError as exc:
                    log.warning("change feed failed (reopening): %s", exc)
                    await feed.aclose()
                    await trio.sleep(RETRY_S)
                    feed = await self._open()
                    continue
                for event in events:
                    await self._dispatch(event)
                self._advance(feed)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await feed.aclose()

    async def _open(self) -> ChangeFeed:
        """A feed at the kept token; from now (and the sessions reloaded) when there is none.

        When the kept token's history is gone, the conversations resync from the Store once
        the fresh feed is open (so nothing stored in between is missed).
        """
        store, me = self._ctx.store, self._ctx.name
        lost = False
        while True:
            try:
                if self._token is not None:
                    try:
                        return await store.watch(me, after=self._token)
                    except FeedLost:
                        self._token, lost = None, True
                # Opened before the sessions are read, so no change falls between the two.
                feed = await store.watch(me)
                try:
                    sessions = await store.sessions()
                except BaseException:
                    await feed.aclose()
                    raise
            except StoreError as exc:
                log.warning("cannot open the change feed (retrying): %s", exc)
                await trio.sleep(RETRY_S)
                continue
            await self._reset_sessions(sessions)
            self._advance(feed)
            if lost:
                await self._conversations.resync_all()
            return feed

    def _advance(self, feed: ChangeFeed) -> None:
        """Keep the feed's position: a feed reopened after a failure resumes there."""
        if not self._ctx.mutant(RESUME_TOKEN_NOT_ADVANCED):
            self._token = feed.token

    async def _reset_sessions(self, sessions: Sequence[DeviceSession]) -> None:
        remote = self._ctx.remote
        before = set(remote.users())
        remote.reset([s for s in sessions if s.node not in self._dead], self._ctx.name)
        after = set(remote.users())
        ts = self._ctx.wall_ms()
        for user in sorted(before ^ after):
            await self._presence(
                RemoteChanged(user=user, before=user in before, after=user in after, ts=ts)
            )

    async def _presence(self, change: RemoteChanged) -> None:
        presence = self._ctx.presence
        if presence is not None:
            await presence.send(change)

    async def _dispatch(self, event: FeedEvent) -> None:
        ctx = self._ctx
        match event:
            case FeedMessages(conv=conv, messages=messages):
                await self._conversations.remote(conv, RemoteMessages(messages=messages))
            case FeedMarks(conv=conv):
                await self._conversations.remote(conv, RemoteMarks(event=event))
            case FeedTyping(conv=conv, user=user):
                await self._conversations.remote(conv, RemoteTyping(user=user))
            case FeedSession(user=user, device=device, session=session, node=node, ts=ts):
                before = ctx.remote.has(user)
                if session is None:
                    ctx.remote.end(user, device)
                elif self._close_local(user, device, ts):
                    ctx.remote.start(user, device, session, node, ts)
                await self._presence(
                    RemoteChanged(user=user, before=before, after=ctx.remote.has(user), ts=ts)
                )
            case FeedNodeDown(node=node, ts=ts):
                log.warning("node %s is gone (lease expired at %d): its sessions ended", node, ts)
                for user in ctx.remote.drop_node(node):
                    await self._presence(
                        RemoteChanged(user=user, before=True, after=ctx.remote.has(user), ts=ts)
                    )


class RemoteTarget(Protocol):
    """What the dispatcher needs of the conversation manager (see ConversationManager)."""

    async def remote(
        self, conv: str, request: RemoteMessages | RemoteMarks | RemoteTyping
    ) -> None: ...

    async def resync_all(self) -> None: ...


#: ``close_local(user, device, since)``: a session that started at ``since`` on another node
#: took the device over; close its connection here if that one is older. True if the remote
#: session is the device's current one (False: the local connection is newer).
CloseLocal = Callable[[str, str, int], bool]


class ClusterLink:
    """The node's lease, session writer, publisher and feed dispatcher, run as one child."""

    def __init__(
        self,
        ctx: NodeContext,
        conversations: RemoteTarget,
        close_local: CloseLocal,
        drop_connections: Callable[[int, str], None],
        predecessors: Sequence[str] = (),
    ) -> None:
        self._ctx = ctx
        self._predecessors = tuple(predecessors)
        self.publisher = Publisher(ctx.store)
        self.feed = FeedDispatcher(ctx, conversations, close_local, predecessors)
        self._drop_connections = drop_connections

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._hold_lease)
            await nursery.start(self._ctx.sessions.run)
            await nursery.start(self.publisher.run)
            await nursery.start(self.feed.run)
            task_status.started()

    async def _hold_lease(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Renew this node's lease and sweep the nodes whose lease expired, every refresh."""
        ctx, config = self._ctx, self._ctx.config
        ttl_ms = int(config.lease_s * 1000)
        started = False
        while True:
            try:
                renewed = await ctx.store.renew_lease(ctx.name, ctx.wall_ms(), ttl_ms)
                if not renewed and not ctx.mutant(CLAIMS_AFTER_LEASE_LOST):
                    # Declared dead while alive (a long pause, a partition): the Store has
                    # ended this node's sessions, so its connections must come back anew.
                    log.error("node %s was declared dead; dropping its connections", ctx.name)
                    self._drop_connections(SERVICE_RESTART, "node restarting; reconnect")
                await ctx.store.sweep_expired(ctx.wall_ms(), self._predecessors)
                self._predecessors = ()
            except StoreError as exc:
                log.warning("could not renew the lease of %s: %s", ctx.name, exc)
            if not started:
                started = True
                task_status.started()
            await trio.sleep(config.lease_refresh_s)

    async def leave(self) -> None:
        """Graceful shutdown: write the sessions' ends, then give the lease up."""
        await self._ctx.sessions.drain()
        try:
            await self._ctx.store.drop_lease(self._ctx.name)
        except StoreError as exc:
            log.warning("could not drop the lease of %s: %s", self._ctx.name, exc)
