"""MongoStore: the Store contract on MongoDB through pymongo's synchronous client.

The async facade. Each concern lives in a module of its own and runs in worker threads
through the :class:`Runner`: the schema (:mod:`._schema`), the chunk log and its caches
(:mod:`._chunks`), the group commit (:mod:`._commit`), membership (:mod:`._membership`),
watermarks and the hello backlog (:mod:`._marks`), presence facts (:mod:`._presence`)
and the notification outbox (:mod:`._outbox`). Concurrent calls of the group commit and of
the cheap hello-time operations are merged by :class:`Coalescer`\\ s.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import trio
from pymongo import MongoClient
from pymongo.errors import ConfigurationError
from pymongo.read_concern import ReadConcern

from protocol import MemberEvent

from .._contract import Store
from .._errors import BadInput, StoreError, Unavailable
from .._feed import ChangeFeed, DeviceSession, Ephemeral
from .._rules import (
    GROUP_ID_HEX,
    check_convs_limit,
    check_id,
    check_limit,
    check_title,
    direct_id,
    group_founders,
    history_bounds,
    implicit_direct,
    member_message,
    new_group,
)
from .._types import (
    BacklogRange,
    Conversation,
    ConvPage,
    Draft,
    MemberMarks,
    MemberOp,
    NotificationJob,
    ReadMark,
    RecvMark,
    StoredMessage,
)
from ._chunks import ChunkLog
from ._cluster import Cluster, MongoFeed
from ._coalescer import Coalescer
from ._commit import MERGE_MAX_DRAFTS, CommitStats, GroupCommit, Outcome, Request
from ._marks import FOLD_EVERY_S, Backlog, Marks
from ._membership import Membership
from ._outbox import Outbox
from ._presence import Presence
from ._runner import Runner
from ._schema import DURABLE, LIGHT, Doc, create_indexes, load_conv, new_message_id

A = TypeVar("A")
R = TypeVar("R")


class MongoStore(Store):
    """The production Store. Create with :meth:`connect`; close with :meth:`aclose`."""

    def __init__(
        self,
        client: MongoClient[Doc],
        database: str,
        *,
        rng: random.Random | None = None,
        max_threads: int = 8,
        retries: int = 6,
        backoff_s: float = 0.02,
    ) -> None:
        self._client = client
        self._db = client.get_database(
            database, write_concern=DURABLE, read_concern=ReadConcern("majority")
        )
        light = client.get_database(database, write_concern=LIGHT)
        self._rng = rng if rng is not None else random.SystemRandom()
        self._runner = Runner(
            client, rng=self._rng, max_threads=max_threads, retries=retries, backoff_s=backoff_s
        )
        self._chunks = ChunkLog(self._db, light)
        self._commit = GroupCommit(self._db, self._chunks, self._runner, self._rng)
        self._membership = Membership(self._db, self._chunks, self._runner)
        # A direct conversation's membership is a function of its id (implicit_direct).
        self._marks = Marks(self._db, self._chunks, self._runner, implicit_direct)
        self._presence = Presence(self._db, light)
        self._outbox = Outbox(self._db, light)
        self._cluster = Cluster(light)
        # Where the change feed connects its own client (see watch); set by connect().
        self._uri: str | None = None
        self._database_name = database
        # Appends (one merged commit at a time) and watermark batches get threads of their
        # own, so neither waits behind a burst of the other or of hello reads.
        self._marks_limiter = trio.CapacityLimiter(2)
        commit_limiter = trio.CapacityLimiter(2)
        # Group commit across conversations: the leading append() call writes everything
        # queued (up to MERGE_MAX_DRAFTS drafts) as ONE transaction. A batch is exactly what
        # arrived while the previous commit was in flight: no timer, no background task.
        self._appends: Coalescer[Request, Outcome] = Coalescer(
            self._in_thread(self._commit.commit, commit_limiter),
            max_batch=MERGE_MAX_DRAFTS,
            weight=lambda request: len(request.drafts),
            what="the group commit",
        )
        # Hello-time operations, merged across concurrent hellos.
        hello_limiter = trio.CapacityLimiter(3)
        self._online_batch: Coalescer[str, None] = Coalescer(
            self._in_thread(self._outbox.online_many, hello_limiter)
        )
        self._unsynced_batch: Coalescer[tuple[str, str], Backlog] = Coalescer(
            self._in_thread(self._marks.unsynced_many, hello_limiter)
        )

    @property
    def stats(self) -> CommitStats:
        """Counters of the group commit (merged commits and the append() calls they carried)."""
        return self._commit.stats

    def _in_thread(
        self, fn: Callable[[list[A]], list[R]], limiter: trio.CapacityLimiter
    ) -> Callable[[list[A]], Awaitable[list[R]]]:
        """``fn`` as a Coalescer's batch function: run in a thread under ``limiter``."""

        async def run(batch: list[A]) -> list[R]:
            return await self._runner.call(fn, batch, limiter=limiter)

        return run

    @classmethod
    async def connect(cls, uri: str, database: str = "messenger", **kwargs: Any) -> MongoStore:
        """Connect to ``uri``, create the indexes (idempotently) and return the store.

        A malformed ``uri`` raises :class:`BadInput`; an unreachable server
        :class:`Unavailable` (after the retries).
        """
        try:
            client: MongoClient[Doc] = MongoClient(
                uri, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, socketTimeoutMS=30000
            )
        except ConfigurationError as exc:  # InvalidURI included
            raise BadInput(f"invalid MongoDB URI: {exc}") from None
        store = cls(client, database, **kwargs)
        store._uri = uri
        try:
            await store._runner.call(create_indexes, store._db)
            await store._runner.call(store._cluster.create_indexes)
        except BaseException:
            client.close()
            raise
        return store

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._client.close)

    # -- conversations -------------------------------------------------------------------

    async def direct_conversation(self, a: str, b: str) -> Conversation:
        # A direct conversation never changes (no adds, removes or leaves): it is what its
        # id says, stored or not (the first message stores it).
        conv = implicit_direct(direct_id(a, b))
        assert conv is not None
        return conv

    async def create_group(
        self,
        creator: str,
        title: str,
        members: Iterable[str],
        ts: int,
        *,
        notify: Iterable[str] = (),
    ) -> tuple[Conversation, StoredMessage]:
        check_title(title)
        founders = group_founders(creator, members)
        conv = new_group(
            f"g:{self._rng.getrandbits(4 * GROUP_ID_HEX):0{GROUP_ID_HEX}x}",
            creator,
            title,
            founders,
        )
        creation = MemberEvent(op="create", by=creator, users=tuple(founders))
        event = member_message(conv.id, 1, new_message_id(), creation, ts)
        notified = tuple(sorted(set(notify)))
        return await self._runner.call(self._membership.create_group, conv, event, notified)

    async def get_conversation(self, conv: str) -> Conversation:
        return (await self._runner.call(load_conv, self._db, conv))[0]

    async def _member_change(
        self, conv: str, op: MemberOp, actor: str, user: str, ts: int, notify: Iterable[str]
    ) -> StoredMessage | None:
        op_id = uuid.uuid4().hex
        notified = tuple(sorted(set(notify)))
        return await self._runner.call(
            self._membership.change, conv, op, actor, user, ts, op_id, notified
        )

    async def add_member(
        self, conv: str, actor: str, user: str, ts: int, *, notify: Iterable[str] = ()
    ) -> StoredMessage | None:
        return await self._member_change(conv, "add", actor, user, ts, notify)

    async def remove_member(
        self, conv: str, actor: str, user: str, ts: int, *, notify: Iterable[str] = ()
    ) -> StoredMessage | None:
        return await self._member_change(conv, "remove", actor, user, ts, notify)

    async def leave(
        self, conv: str, user: str, ts: int, *, notify: Iterable[str] = ()
    ) -> StoredMessage:
        event = await self._member_change(conv, "leave", user, user, ts, notify)
        assert event is not None, "a leave always records an event"
        return event

    async def conversations(
        self, user: str, device: str, *, limit: int = 100, cursor: str | None = None
    ) -> ConvPage:
        check_id("user id", user)
        check_id("device id", device)
        check_convs_limit(limit)
        return await self._runner.call(self._marks.conversations, user, device, limit, cursor)

    async def contacts(self, user: str) -> set[str]:
        return await self._runner.call(self._membership.contacts, user)

    # -- messages ------------------------------------------------------------------------

    async def append(
        self, conv: str, drafts: Sequence[Draft], *, notify: Sequence[str] = ()
    ) -> list[StoredMessage | StoreError]:
        outcome = await self._appends(Request(conv, list(drafts), tuple(sorted(set(notify)))))
        if isinstance(outcome, StoreError):
            raise outcome
        return outcome

    async def history(
        self, conv: str, user: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        check_limit(limit)
        return await self._runner.call(self._history_sync, conv, user, before, limit)

    def _history_sync(
        self, conv_id: str, user: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        conv, doc = load_conv(self._db, conv_id)
        lo, hi = history_bounds(conv, user, before)
        last = self._chunks.read_last_seq(conv_id, doc=doc)
        top = last if hi is None else min(hi, last)
        # Seqs are gap-free, so the page is a plain seq range.
        start = max(lo, top - limit + 1)
        return self._chunks.fetch(conv_id, start, top), start > lo

    async def range(self, conv: str, lo: int, hi: int) -> list[StoredMessage]:
        return await self._runner.call(self._range_sync, conv, lo, hi)

    def _range_sync(self, conv: str, lo: int, hi: int) -> list[StoredMessage]:
        load_conv(self._db, conv)
        return self._chunks.fetch(conv, lo, hi)

    async def read_ranges(self, spans: Sequence[BacklogRange]) -> list[StoredMessage]:
        # One thread hop for all of them, their _id probes sharing queries.
        return await self._runner.call(
            self._chunks.fetch_many, [(s.conv, s.lo, s.hi) for s in spans]
        )

    async def last_seq(self, conv: str) -> int:
        return await self._runner.call(self._last_seq_sync, conv)

    def _last_seq_sync(self, conv: str) -> int:
        _, doc = load_conv(self._db, conv)
        return self._chunks.read_last_seq(conv, doc=doc)

    # -- watermarks ----------------------------------------------------------------------

    async def merge_recv(self, marks: Sequence[RecvMark]) -> None:
        await self.merge_marks(marks, ())

    async def merge_read(self, marks: Sequence[ReadMark]) -> None:
        await self.merge_marks((), marks)

    async def merge_marks(self, recv: Sequence[RecvMark], read: Sequence[ReadMark]) -> None:
        if recv or read:
            await self._runner.call(
                self._marks.merge, list(recv), list(read), limiter=self._marks_limiter
            )

    FOLD_MARKS_EVERY_S = FOLD_EVERY_S

    async def fold_marks(self) -> None:
        await self._runner.call(self._marks.fold, limiter=self._marks_limiter)

    async def marks(self, conv: str) -> dict[str, MemberMarks]:
        return await self._runner.call(lambda: self._marks.marks(load_conv(self._db, conv)[0]))

    async def device_recv(self, user: str, device: str, conv: str) -> int:
        return await self._runner.call(self._marks.device_recv, user, device, conv)

    async def unsynced(self, user: str, device: str) -> Backlog:
        return await self._unsynced_batch((user, device))

    # -- presence ----------------------------------------------------------------------

    async def set_last_seen(self, user: str, ts: int) -> None:
        await self._runner.call(self._presence.set_last_seen, user, ts)

    async def last_seen(self, users: Iterable[str]) -> dict[str, int | None]:
        return await self._runner.call(self._presence.last_seen, list(users))

    # -- several nodes (see ._cluster) ---------------------------------------------------

    async def renew_lease(self, node: str, now_ms: int, ttl_ms: int) -> bool:
        return await self._runner.call(self._cluster.renew, node, now_ms + ttl_ms)

    async def drop_lease(self, node: str) -> None:
        await self._runner.call(self._cluster.drop, node)

    async def sweep_expired(self, now_ms: int, dead: Sequence[str] = ()) -> list[str]:
        return await self._runner.call(self._cluster.sweep, now_ms, list(dead))

    async def open_session(self, session: DeviceSession) -> None:
        check_id("user id", session.user)
        check_id("device id", session.device)
        await self._runner.call(self._cluster.open_session, session)

    async def close_session(self, user: str, device: str, session: str, ts: int) -> bool:
        return await self._runner.call(self._cluster.close_session, user, device, session, ts)

    async def sessions(self) -> list[DeviceSession]:
        return await self._runner.call(self._cluster.sessions)

    async def publish(self, events: Sequence[Ephemeral]) -> None:
        if events:
            await self._runner.call(self._cluster.publish, list(events))

    async def watch(self, node: str, after: object | None = None) -> ChangeFeed:
        if self._uri is None:
            raise Unavailable("a change feed needs a store made by MongoStore.connect")
        return await MongoFeed.open(self._uri, self._database_name, node, after)

    # -- notification outbox -------------------------------------------------------------

    async def notify_offline(self, user: str, conv: str, seq: int, ts: int) -> None:
        await self._runner.call(self._outbox.notify, user, conv, seq, ts)

    async def user_online(self, user: str) -> None:
        await self._online_batch(user)

    async def claim_notifications(
        self, owner: str, now_ms: int, lease_ms: int, limit: int
    ) -> list[NotificationJob]:
        return await self._runner.call(self._outbox.claim, owner, now_ms, lease_ms, limit)

    async def complete_notification(self, job_id: str) -> None:
        await self._runner.call(self._outbox.complete, job_id)

    async def pending_notifications(self) -> int:
        return await self._runner.call(self._outbox.pending)
