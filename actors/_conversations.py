"""The conversation manager: starts conversation actors on demand and routes requests to them.

Owns the table conversation id → mailbox of its live actor, and the nursery the actors run in
(OTP terms: a ``simple_one_for_one`` supervisor of ``temporary`` children that are restarted
on demand: an actor that crashed or went idle is recreated, from the Store, by the next
request for its conversation). Cancelling :meth:`ConversationManager.run` cancels every actor;
:meth:`stop` instead closes their mailboxes so they finish what is queued and write their
watermarks (graceful shutdown).

The change feed (:mod:`actors._cluster`) hands over what other nodes did through
:meth:`ConversationManager.remote`: to the running actor, or to a new one only if a device
connected here may see the conversation (a bounded cache of group viewers answers that).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import trio

from persistence import Conversation, ConvRow, Store, StoredMessage, StoreError, Unavailable
from protocol import MAX_CONVS_LIMIT

from ._config import SEQ_REUSE_AFTER_RESTART
from ._context import NodeContext, member_event_of
from ._conversation import ConversationActor
from ._messages import (
    Announce,
    ConversationRequest,
    RemoteMarks,
    RemoteMessages,
    RemoteTyping,
    Resync,
)
from ._retry import retry_store
from ._watermarks import MarkWriter

log = logging.getLogger("actors.conversations")

Mailbox = trio.MemorySendChannel[ConversationRequest]
#: Pauses between tries to start a new group's actor that could not start (the last repeats).
ANNOUNCE_BACKOFF_S = (0.05, 0.2, 1.0)
#: Pauses between the searches for a group whose creation failed ambiguously.
FIND_GROUP_PAUSES_S = (0.05, 0.2)
#: Bound on the cache of group viewers the change feed consults (cleared when full).
_MAX_VIEWERS = 20_000
RemoteRequest = RemoteMessages | RemoteMarks | RemoteTyping | Resync


class ConversationManager:
    """See the module docstring. Used by connection actors through :meth:`submit`."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._actors: dict[str, Mailbox] = {}
        # The running actors, for the idle sweep (see _sweep_idle).
        self._running: dict[str, ConversationActor] = {}
        self._starting: dict[str, trio.Event] = {}
        # The last seq each conversation had when its first actor on this node started: a
        # deliberately stale cache kept only while the ``seq_reuse_after_restart`` mutant is on.
        self._first_seen_seq: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None
        self._stopping = trio.Event()
        #: Writes every actor's watermarks, merged node-wide (see MarkWriter).
        self.mark_writer = MarkWriter(ctx.store, ctx.config.watermark_retry_s, ctx.timed)
        # New group → its creation event, until an actor of the group has fanned it out.
        self._unannounced: dict[str, StoredMessage] = {}
        # Group id → everyone who may see some of it (members and former members), for the
        # change feed's "is this conversation seen on this node?"; dropped at member events.
        self._viewers: dict[str, frozenset[str]] = {}
        # Feed messages of conversations that could not be read when they came (the Store
        # failed): handed over again later, or with the conversation's next feed event.
        self._skipped: dict[str, dict[int, StoredMessage]] = {}

    def __len__(self) -> int:
        return len(self._actors)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the actors until :meth:`stop` (then wait for them) or cancellation.

        Each run starts from fresh state (OTP: a restarted child does not inherit its dead
        predecessor's): the actors, their mailboxes and pending announcements died with the
        previous run. Only caches of facts that never change (direct conversation ids) stay.
        """
        self._actors = {}
        self._running = {}
        self._starting = {}
        self._unannounced = {}
        self._skipped = {}
        async with trio.open_nursery() as outer:
            await outer.start(self.mark_writer.run)
            outer.start_soon(self._sweep_idle)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._stopping.wait()
                for mailbox in list(self._actors.values()):
                    mailbox.close()
            self._nursery = None
            # Every actor has handed over its last marks: write them before stopping.
            await self.mark_writer.drain()
            outer.cancel_scope.cancel()

    def stop(self) -> None:
        """Refuse new requests; live actors drain their mailboxes and stop."""
        self._stopping.set()

    async def submit(self, conv: str, request: ConversationRequest) -> None:
        """Queue ``request`` for ``conv``'s actor, starting it if needed.

        Raises the Store's error when the actor cannot start (``NotFound`` for an unknown
        conversation, ``Unavailable`` when storage is down or the node is stopping). Waits
        while the actor's mailbox is full (backpressure).
        """
        while True:
            mailbox = await self._mailbox(conv)
            try:
                await mailbox.send(request)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._forget(conv, mailbox)  # it retired between lookup and send: start anew

    async def direct_conversation(self, user: str, peer: str) -> str:
        """The id of the direct conversation of ``user`` and ``peer``. Nothing is written: the
        Store stores it with its first message, so a refused send leaves no trace (G7)."""
        return (await self._ctx.store.direct_conversation(user, peer)).id

    async def create_group(
        self, user: str, device: str, title: str, members: Sequence[str]
    ) -> tuple[Conversation, StoredMessage]:
        """Create a group and announce its creation event to the founders' devices.

        The creation and the announcement run in the manager's nursery, not in the caller's
        task: a caller cancelled meanwhile (its connection dropped) must not leave a group
        that was written, or may have been, unannounced to the founders connected now (G4).
        The event is handed to the group's first actor, which fans it out before it serves
        anything (so seq 1 is pushed before any later message); while that actor cannot start
        (Store down) starting it is retried, until it starts or the node stops.
        Raises what :meth:`_create_group` raises (``Unavailable`` if the node is stopping).
        """
        if self._stopping.is_set() or self._nursery is None:
            raise Unavailable("the node is shutting down")
        done = trio.Event()
        outcome: list[tuple[Conversation, StoredMessage] | Exception] = []

        async def create_and_announce() -> None:
            try:
                try:
                    created = await self._create_group(user, device, title, members)
                except Exception as exc:
                    outcome.append(exc)
                    return
                outcome.append(created)
            finally:
                done.set()
            conv, event = created[0].id, created[1]
            self._unannounced[conv] = event
            pauses = iter(ANNOUNCE_BACKOFF_S)
            while conv in self._unannounced and not self._stopping.is_set():
                try:
                    mailbox = await self._mailbox(conv)  # starting it announces (see _start)
                except StoreError as exc:
                    log.warning("could not start group %s to announce it: %s", conv, exc)
                    await trio.sleep(next(pauses, ANNOUNCE_BACKOFF_S[-1]))
                    continue
                if self._unannounced.pop(conv, None) is not None:
                    # Its actor was running already (a founder found the group in the Store
                    # while an ambiguous creation was searched for): ask it to announce.
                    try:
                        await mailbox.send(Announce(message=event))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self._forget(conv, mailbox)
                        self._unannounced[conv] = event  # it retired: start a new one
            self._unannounced.pop(conv, None)

        self._nursery.start_soon(create_and_announce)
        await done.wait()
        if not outcome:
            raise Unavailable("the node is shutting down")
        result = outcome[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def _create_group(
        self, user: str, device: str, title: str, members: Sequence[str]
    ) -> tuple[Conversation, StoredMessage]:
        """Create a group; after an ambiguous failure, find it if it was created after all.

        A retryable Store error may come after the group was written: then the creation
        stands, and answering ``unavailable`` would leave it unannounced (and a client's retry
        would create a second group). So the caller's groups are searched (a few tries) for
        the one whose creation event is this request's (same creator, time, title, founders);
        if it is found it is returned as if the call had succeeded, else the error is raised.
        """
        store, ts = self._ctx.store, self._ctx.wall_ms()
        # G8: the founders with no connected device get their jobs with the creation, in
        # one write however many they are (the Store keeps the founders among these).
        notify = [u for u in sorted({user, *members}) if not self._ctx.connected_anywhere(u)]
        try:
            with self._ctx.timed("create_group"):
                created = await store.create_group(user, title, members, ts, notify=notify)
        except StoreError as exc:
            if notify:
                self._ctx.wake_notifier()  # an ambiguous failure may have written the jobs
            if not exc.retryable:
                raise
            failure = exc
        else:
            if notify:
                self._ctx.wake_notifier()
            return created
        founders = list(dict.fromkeys([user, *members]))

        async def find() -> tuple[Conversation, StoredMessage] | None:
            with self._ctx.timed("find_group"):
                for row in await _all_conversations(store, user, device):
                    if row.kind != "group" or row.title != title:
                        continue
                    first = await store.range(row.conv, 1, 1)
                    if first and _is_creation(first[0], user, ts, founders):
                        return await store.get_conversation(row.conv), first[0]
            return None

        try:
            found = await retry_store(find, FIND_GROUP_PAUSES_S)
        except StoreError:
            found = None
        if found is None:  # not created, or not to be found: the original error stands
            raise failure from None
        log.info("ambiguous group_create of %s found %s", user, found[0].id)
        return found

    async def _mailbox(self, conv: str, published_from: int | None = None) -> Mailbox:
        while True:
            if self._stopping.is_set() or self._nursery is None:
                raise Unavailable("the node is shutting down")
            mailbox = self._actors.get(conv)
            if mailbox is not None:
                return mailbox
            starting = self._starting.get(conv)
            if starting is not None:
                await starting.wait()
                continue
            self._starting[conv] = event = trio.Event()
            try:
                return await self._start(conv, self._nursery, published_from)
            finally:
                del self._starting[conv]
                event.set()

    async def _start(
        self, conv: str, nursery: trio.Nursery, published_from: int | None = None
    ) -> Mailbox:
        send, receive = trio.open_memory_channel[ConversationRequest](self._ctx.config.mailbox_size)
        actor = ConversationActor(
            self._ctx,
            conv,
            receive,
            retire=functools.partial(self._forget, conv, send),
            mark_writer=self.mark_writer,
            stale_seq=self._first_seen_seq.get(conv),
            announce=(announce := self._unannounced.get(conv)),
            published_from=published_from,
        )
        await nursery.start(actor.run)
        if announce is not None:
            # Announced before it started (an event handed over meanwhile is still owed).
            self._unannounced.pop(conv, None)
        if self._ctx.mutant(SEQ_REUSE_AFTER_RESTART):  # kept for nothing else: unbounded
            self._first_seen_seq.setdefault(conv, actor.last_seq)
        self._actors[conv] = send
        self._running[conv] = actor
        return send

    # ------------------------------------------------------------------ the change feed

    async def remote(self, conv: str, request: RemoteRequest) -> None:
        """Hand what the change feed brought for ``conv`` to its actor.

        With no actor running, one is started only if a device connected here may see the
        conversation (for messages: pushing from the first of them). Waits while the actor's
        mailbox is full (backpressure on the feed). Messages of a conversation that cannot be
        read now are handed over again later (see :meth:`_retry_skipped`): a device here
        connected all along has no other way to get them live (G4).
        """
        if isinstance(request, RemoteMessages) and conv in self._skipped:
            request = _merged(self._skipped.pop(conv), request.messages)
        if not await self._hand_over(conv, request) and isinstance(request, RemoteMessages):
            if conv not in self._skipped and self._nursery is not None:
                self._nursery.start_soon(self._retry_skipped, conv)
            self._skipped.setdefault(conv, {}).update((m.seq, m) for m in request.messages)

    async def _retry_skipped(self, conv: str) -> None:
        """Hand the skipped feed messages of ``conv`` over again, with growing pauses, until
        the Store answers (or a later feed event of ``conv`` took them along)."""
        pauses = iter(ANNOUNCE_BACKOFF_S)
        while not self._stopping.is_set():
            await trio.sleep(next(pauses, ANNOUNCE_BACKOFF_S[-1]))
            skipped = self._skipped.pop(conv, None)
            if skipped is None:
                return
            request = _merged(skipped, ())
            if await self._hand_over(conv, request):
                return
            again = {m.seq: m for m in request.messages}
            if conv in self._skipped:  # skipped again meanwhile: that retry takes them along
                self._skipped[conv].update(again)
                return
            self._skipped[conv] = again

    async def _hand_over(self, conv: str, request: RemoteRequest) -> bool:
        """:meth:`remote`'s hand-over; False if the Store failed (nothing was handed over)."""
        first = request.messages[0].seq if isinstance(request, RemoteMessages) else None
        if isinstance(request, RemoteMessages) and any(
            m.kind == "member" for m in request.messages
        ):
            self._viewers.pop(conv, None)  # the membership changed
        while not self._stopping.is_set():
            mailbox = self._actors.get(conv)
            try:
                if mailbox is None:
                    if not await self._seen_here(conv):
                        return True
                    mailbox = await self._mailbox(
                        conv, published_from=None if first is None else first - 1
                    )
                await mailbox.send(request)
                return True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if mailbox is not None:
                    self._forget(conv, mailbox)
            except StoreError as exc:
                log.warning("feed event for %s skipped for now: %s", conv, exc)
                return False
        return True

    async def _seen_here(self, conv: str) -> bool:
        """True if a user with a device connected to this node may see ``conv``."""
        router = self._ctx.router
        if conv.startswith("d:"):
            return any(router.is_connected(u) for u in conv.split(":")[1:])
        viewers = self._viewers.get(conv)
        if viewers is None:
            with self._ctx.timed("get_conversation"):
                conversation = await self._ctx.store.get_conversation(conv)
            viewers = frozenset([*conversation.members, *conversation.departed])
            if len(self._viewers) >= _MAX_VIEWERS:
                self._viewers.clear()
            self._viewers[conv] = viewers
        return any(router.is_connected(u) for u in viewers)

    async def resync_all(self) -> None:
        """The feed lost history: every running actor resyncs from the Store, and the
        conversations of every device connected here with something above its recv mark get
        an actor that pushes it (from that mark)."""
        self._viewers.clear()
        running = sorted(self._actors)
        for conv in running:
            await self.remote(conv, Resync())
        for handle in self._ctx.router.all():
            cursor: str | None = None
            while True:
                try:
                    page = await self._ctx.store.conversations(
                        handle.user, handle.device, limit=500, cursor=cursor
                    )
                except StoreError as exc:
                    log.warning("cannot resync the conversations of %s: %s", handle.user, exc)
                    break
                for row in page.rows:
                    if row.last_seq > row.delivered and row.conv in running:
                        await self._catch_up(row.conv, int(row.delivered), int(row.last_seq))
                    elif row.last_seq > row.delivered and row.conv not in self._actors:
                        await self._resync_from(row.conv, int(row.delivered))
                if page.cursor is None:
                    break
                cursor = page.cursor

    async def _catch_up(self, conv: str, delivered: int, last_seq: int) -> None:
        """A running actor may have started while the lost history still held messages for
        a device here (above its recv mark): hand it those as the feed would have."""
        try:
            missing = await self._ctx.store.range(conv, delivered + 1, last_seq)
        except StoreError as exc:
            log.warning("cannot catch %s up: %s", conv, exc)
            return
        if missing:
            await self.remote(conv, RemoteMessages(messages=tuple(missing)))

    async def _resync_from(self, conv: str, delivered: int) -> None:
        try:
            mailbox = await self._mailbox(conv, published_from=delivered)
            await mailbox.send(Resync())
        except (StoreError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.warning("cannot resync %s: %s", conv, exc)

    def _forget(self, conv: str, mailbox: Mailbox) -> None:
        if self._actors.get(conv) is mailbox:
            del self._actors[conv]
            self._running.pop(conv, None)

    async def _sweep_idle(self) -> None:
        """Every quarter of ``conversation_idle_s``, end the wait of the actors idle for that
        long (they retire). One timer for all of them: an actor's wait for its mailbox needs
        no deadline of its own, which trio makes cost more than handling a request."""
        idle_s = self._ctx.config.conversation_idle_s
        while True:
            await trio.sleep(idle_s / 4)
            now = trio.current_time()
            for actor in list(self._running.values()):
                actor.expire_idle(now, idle_s)


async def _all_conversations(store: Store, user: str, device: str) -> list[ConvRow]:
    """Every row of ``user``'s ``convs`` listing, page by page."""
    rows: list[ConvRow] = []
    cursor: str | None = None
    while True:
        page = await store.conversations(user, device, limit=MAX_CONVS_LIMIT, cursor=cursor)
        rows.extend(page.rows)
        if page.cursor is None:
            return rows
        cursor = page.cursor


def _is_creation(message: StoredMessage, creator: str, ts: int, founders: list[str]) -> bool:
    event = member_event_of(message, by=creator, ts=ts)
    return event is not None and event.op == "create" and list(event.users) == founders


def _merged(skipped: dict[int, StoredMessage], messages: Sequence[StoredMessage]) -> RemoteMessages:
    """Skipped feed messages and newer ones, in seq order, as one hand-over."""
    by_seq = dict(skipped)
    by_seq.update((m.seq, m) for m in messages)
    return RemoteMessages(messages=tuple(by_seq[seq] for seq in sorted(by_seq)))
