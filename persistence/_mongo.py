"""MongoStore: the Store contract on MongoDB through pymongo's synchronous client.

Every database call runs in a worker thread (``trio.to_thread.run_sync``) under one
``trio.CapacityLimiter``. Writes an acknowledgement depends on use write concern
``majority`` + ``j: true``; watermarks and presence facts use ``w: 1`` (nothing is acked on
them, a lost one only causes a redundant push).

Schema (why it looks like this: measured on SecantusDB, every secondary index entry costs
about as much as a whole document, so the hot path avoids them; see docs/benchmarks.md):

* ``chunks``: one document per group-committed batch, ``_id = conv|first-seq (16 digits)``,
  holding the batch's messages in ``msgs``. The ``_id`` is the (conv, seq) uniqueness: two
  writers that both believe the conversation ends at seq N both insert ``conv|N+1`` and exactly
  one wins. Chunks never overlap because every writer starts after a known chunk end.
* ``keys``: one document per text message, ``_id = sender|device|cmid`` → (conv, seq, first
  seq of its chunk): the idempotency key, unique forever. Keys and chunks are written in one
  transaction, so no key exists without its message and no message without its key.

Group commit across conversations (:meth:`MongoStore.append`): concurrent ``append`` calls —
from many conversation actors — are merged into ONE transaction (one chunk per conversation,
one key per message, one commit = one journal flush). The first caller leads; calls arriving
while a commit is in flight queue up and the next leader takes them all. A duplicate chunk
``_id`` means another writer extended that conversation: only that conversation's end is
re-read (and its membership, if a membership event was passed) and the merged write retried;
a duplicate key means that message was stored before: it is replayed from the key.

Cached per conversation (``_Head``): a chunk end and the membership valid through it. A cached
"member" is checked by the write itself (the chunk insert at end+1 fails if anybody, e.g. a
membership change on another node, wrote after that end); a cached "not a member" is never
trusted (re-read before refusing). So the cache has no staleness window for appends.
* ``convs``: conversation metadata and membership, with ``member_ids``/``past_ids`` arrays for
  the per-user listings. Membership changes write their event chunk and the new membership in
  one transaction.
* ``recv``, ``read``, ``devices``, ``users``, ``jobs``: watermarks, device registry, presence
  facts and the notification outbox. The jobs an ``append(..., notify=...)`` owes are upserted
  in the same transaction as the chunks and keys (a replayed message writes none).

Retries: transient errors (network, not-primary, retryable labels) are retried with bounded
exponential backoff by re-running the whole operation. That is safe because every write is
guarded by a unique key (idempotency key, chunk position, conversation id, the ``last_op`` of
a membership change): a write that did happen before an ambiguous failure is found, never
repeated. When retries are exhausted the caller gets :class:`Unavailable`.
"""

from __future__ import annotations

import functools
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs
import trio
from pymongo import MongoClient, ReturnDocument, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from ._contract import Store
from ._errors import NotFound, StoreError, Unavailable
from ._rules import (
    GROUP_ID_HEX,
    apply_member_change,
    check_id,
    check_limit,
    check_title,
    clamp_mark,
    direct_id,
    draft_error,
    group_founders,
    history_bounds,
    member_body,
    new_group,
    no_such_conversation,
    not_member,
    plan_member_change,
    replay,
    unread_count,
)
from ._types import (
    Conversation,
    ConvRow,
    Draft,
    MemberMarks,
    MemberOp,
    NotificationJob,
    ReadMark,
    RecvMark,
    StoredMessage,
)

T = TypeVar("T")
Doc = dict[str, Any]

#: Most messages in one chunk document; bigger batches are split (in the same transaction).
#: Bounding it lets a range query find the chunk holding ``lo`` by ``_id`` alone.
CHUNK_MAX = 256
#: Rounds of "someone else took that seq / that key" before giving up on one append.
MAX_ROUNDS = 64
#: ``$in`` point-read rounds to catch up with other writers' chunks before one index range read.
CATCH_UP_PROBES = 2
#: Ids per ``$in`` point-read query (SecantusDB's ``$in`` gets slower per id when long).
PROBES_PER_QUERY = 100
#: Most drafts one merged commit carries: on SecantusDB the cost per message of a transaction
#: grows again past a few hundred documents (docs/benchmarks.md), and a bound keeps one
#: commit's latency bounded. A single bigger append() call is never split across commits.
MERGE_MAX_DRAFTS = 512
#: Watermark upserts per bulk-write command (see MongoStore._bulk).
MARKS_PER_COMMAND = 50
#: A range read first asks for the chunks starting at most this many seqs before ``lo``; only
#: when none of them holds ``lo`` does it look further back (up to :data:`CHUNK_MAX`).
#: SecantusDB's cost of an index range is per document examined, so the window is small.
RANGE_LOOKBACK = 32
#: Chunks a store writes to a conversation between two updates of the conversation's
#: ``end_hint`` (a known chunk end that a cold "last seq" read starts from).
HINT_EVERY = 32
_DURABLE = WriteConcern(w="majority", j=True)
_LIGHT = WriteConcern(w=1)
#: MongoDB's duplicate key error code.
_DUPLICATE_KEY = 11000
_RETRY_LABELS = (
    "RetryableWriteError",
    "TransientTransactionError",
    "UnknownTransactionCommitResult",
)


class _Contended(Exception):
    """Another writer changed the conversation under us; re-read and try again."""


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionFailure):  # AutoReconnect, NotPrimaryError, NetworkTimeout, ...
        return True
    if isinstance(exc, PyMongoError):
        return any(exc.has_error_label(label) for label in _RETRY_LABELS)
    return False


def _chunk_id(conv: str, seq: int) -> str:
    return f"{conv}|{seq:016d}"


def _decode_message(conv: str, m: Doc) -> StoredMessage:
    return StoredMessage(
        conv=conv,
        seq=int(m["s"]),
        id=m["i"],
        sender=m["u"],
        device=m["d"],
        cmid=m["c"],
        body=m["b"],
        ts=int(m["t"]),
        kind=m["k"],
    )


def _encode_message(m: StoredMessage) -> Doc:
    return {
        "s": m.seq,
        "i": m.id,
        "u": m.sender,
        "d": m.device,
        "c": m.cmid,
        "b": m.body,
        "t": m.ts,
        "k": m.kind,
    }


def _decode_conv(doc: Doc) -> Conversation:
    return Conversation(
        id=doc["_id"],
        kind=doc["kind"],
        title=doc.get("title"),
        creator=doc.get("creator"),
        members={u: int(seq) for u, seq in doc["members"].items()},
        departed={u: (int(span[0]), int(span[1])) for u, span in doc.get("departed", {}).items()},
    )


def _membership_fields(conv: Conversation) -> Doc:
    return {
        "members": dict(conv.members),
        "departed": {u: list(span) for u, span in conv.departed.items()},
        "member_ids": list(conv.members),
        "past_ids": list(conv.departed),
    }


def _new_message_id() -> str:
    return os.urandom(12).hex()


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
            database, write_concern=_DURABLE, read_concern=ReadConcern("majority")
        )
        self._light = client.get_database(database, write_concern=_LIGHT)
        self._rng = rng if rng is not None else random.SystemRandom()
        self._limiter = trio.CapacityLimiter(max_threads)
        # Appends (one merged commit at a time) and watermark batches get threads of their
        # own, so neither waits behind a burst of the other or of hello reads.
        self._commit_limiter = trio.CapacityLimiter(2)
        self._marks_limiter = trio.CapacityLimiter(2)
        # Hello-time operations, merged across concurrent hellos (see _Coalescer).
        self._hello_limiter = trio.CapacityLimiter(3)
        self._register_batch = _Coalescer(self, self._register_many, self._hello_limiter)
        self._online_batch = _Coalescer(self, self._online_many, self._hello_limiter)
        self._unsynced_batch = _Coalescer(self, self._unsynced_many, self._hello_limiter)
        self._retries = retries
        self._backoff_s = backoff_s
        # Per conversation: a chunk end this instance saw and the membership valid through it
        # (see _Head). Only a hint: a stale one costs a duplicate-key round, never a wrong seq.
        self._heads: dict[str, _Head] = {}
        # Per conversation: the highest chunk end this instance has seen (a hint: the chunk
        # after it, if any, has ``_id`` conv|end+1), and chunks written since the stored
        # ``end_hint`` was last raised by this instance.
        self._ends: dict[str, int] = {}
        self._directs: dict[str, Conversation] = {}
        # "user|device" registered by this instance since it started (see register_device).
        self._registered: set[str] = set()
        self._unhinted: dict[str, int] = {}
        # Group commit across conversations (see append): requests waiting for the next commit,
        # and whether some append() call is currently leading (running a merged commit).
        self._appends = _Coalescer(
            self,
            self._commit_counted,
            self._commit_limiter,
            max_batch=MERGE_MAX_DRAFTS,
            weight=lambda request: len(request.drafts),
            what="the group commit",
        )
        #: Merged commits so far and the append() calls and drafts they carried (for metrics
        #: and the benchmark: calls / commits is the group-commit batch size).
        self.commits = 0
        self.committed_calls = 0
        self.committed_drafts = 0

    @classmethod
    async def connect(cls, uri: str, database: str = "messenger", **kwargs: Any) -> MongoStore:
        """Connect to ``uri``, create the indexes (idempotently) and return the store."""
        client: MongoClient[Doc] = MongoClient(
            uri, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, socketTimeoutMS=30000
        )
        store = cls(client, database, **kwargs)
        try:
            await store._call(store._create_indexes)
        except BaseException:
            client.close()
            raise
        return store

    def _create_indexes(self) -> None:
        db = self._db
        # One entry per chunk (not per message): every read of messages and every "last seq"
        # goes through it, because SecantusDB answers ``_id`` ranges with a collection scan.
        db.chunks.create_index([("conv", 1), ("first", 1)], name="conv_first")
        db.convs.create_index("member_ids")
        db.convs.create_index("past_ids")
        db.recv.create_index("c")
        db.recv.create_index([("u", 1), ("d", 1)])
        db.read.create_index("c")
        db.devices.create_index("u")
        db.jobs.create_index(
            "user", unique=True, name="one_open_job", partialFilterExpression={"open": True}
        )
        db.jobs.create_index([("done", 1), ("first_ts", 1)])

    async def _call(
        self, fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None
    ) -> T:
        """Run ``fn(*args)`` in a worker thread, retrying transient failures with backoff."""
        delay = self._backoff_s
        for attempt in range(self._retries + 1):
            try:
                return await trio.to_thread.run_sync(
                    functools.partial(fn, *args), limiter=limiter or self._limiter
                )
            except StoreError:
                raise
            except PyMongoError as exc:
                if not _is_transient(exc):
                    raise
                if attempt == self._retries:
                    raise Unavailable(
                        f"database unavailable after {attempt + 1} attempts: {exc}"
                    ) from exc
            await trio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    def _txn(self, session: ClientSession, body: Callable[[ClientSession], T]) -> T:
        """Run ``body`` in one durable transaction (one commit, one journal flush)."""
        session.start_transaction(write_concern=_DURABLE, read_concern=ReadConcern("snapshot"))
        try:
            result = body(session)
        except BaseException:
            if session.in_transaction:
                session.abort_transaction()
            raise
        session.commit_transaction()
        return result

    # -- reads shared by several operations ---------------------------------------------

    def _load_conv(
        self, conv: str, session: ClientSession | None = None
    ) -> tuple[Conversation, Doc]:
        doc = self._db.convs.find_one({"_id": conv}, session=session)
        if doc is None:
            raise no_such_conversation(conv)
        return _decode_conv(doc), doc

    def _note_end(self, conv: str, end: int) -> None:
        """Remember ``end`` (a chunk end, i.e. some chunk's last seq) as a hint for ``conv``."""
        if end > self._ends.get(conv, 0):
            self._ends[conv] = end

    def _hint(self, conv: str, doc: Doc | None = None) -> int:
        """A chunk end of ``conv`` known to be at most its current end (0 if none known)."""
        stored = 0 if doc is None else int(doc.get("end_hint", 0))
        return max(stored, self._ends.get(conv, 0))

    def _ends_after(
        self, conv: str, start: int, session: ClientSession | None = None
    ) -> tuple[int, bool]:
        """The end of ``conv`` read from the ``(conv, first)`` index, from chunk end ``start``.

        One index range over the chunks after ``start`` (SecantusDB's cost is per chunk
        examined, so ``start`` should be a recent end). Also says whether a membership event
        was passed.
        """
        end, member = start, False
        for doc in self._db.chunks.find(
            {"conv": conv, "first": {"$gt": start}},
            projection={"_id": 0, "last": 1, "msgs.k": 1},
            session=session,
        ):
            end = max(end, int(doc["last"]))
            member = member or any(m.get("k") == "member" for m in doc["msgs"])
        self._note_end(conv, end)
        return end, member

    def _read_last_seq(
        self, conv: str, session: ClientSession | None = None, doc: Doc | None = None
    ) -> int:
        """The last seq of ``conv`` (``doc``: its ``convs`` document, for the stored hint)."""
        return self._ends_after(conv, self._hint(conv, doc), session)[0]

    def _last_seqs(self, docs: Iterable[Doc]) -> dict[str, int]:
        """The last seq of each conversation of ``docs`` (their ``convs`` documents).

        From each one's hint, one ``$in`` point read of the chunk that would follow it for all
        of them; only the conversations that moved on get an index range read each.
        """
        ends, _changed = self._catch_up({d["_id"]: self._hint(d["_id"], d) for d in docs})
        return ends

    def _fetch(
        self, conv: str, lo: int, hi: int, session: ClientSession | None = None
    ) -> list[StoredMessage]:
        lo = max(lo, 1)
        if hi < lo:
            return []
        near = max(1, lo - RANGE_LOOKBACK)
        chunks = list(
            self._db.chunks.find(
                {"conv": conv, "first": {"$gte": near, "$lte": hi}}, session=session
            )
        )
        if near > 1 and not any(c["first"] <= lo <= c["last"] for c in chunks):
            # The chunk holding lo (if any) starts further back: it is a big one.
            far = max(1, lo - CHUNK_MAX + 1)
            chunks += [
                c
                for c in self._db.chunks.find(
                    {"conv": conv, "first": {"$gte": far, "$lt": near}}, session=session
                )
                if c["last"] >= lo
            ]
        chunks.sort(key=lambda c: int(c["first"]))
        if chunks:
            self._note_end(conv, int(chunks[-1]["last"]))
        return [
            _decode_message(conv, m)
            for chunk in chunks
            for m in chunk["msgs"]
            if lo <= m["s"] <= hi
        ]

    def _lookup_key(self, key: str) -> StoredMessage | None:
        doc = self._db.keys.find_one({"_id": key})
        if doc is None:
            return None
        conv, seq = doc["conv"], int(doc["seq"])
        if "chunk" in doc:
            # Keys written since the group commit name their chunk: one point read on _id.
            chunk = self._db.chunks.find_one({"_id": _chunk_id(conv, doc["chunk"])})
            found = [
                _decode_message(conv, m) for m in (chunk or {}).get("msgs", []) if m["s"] == seq
            ]
        else:
            found = self._fetch(conv, seq, seq)  # older keys: a range read
        if not found:
            raise Unavailable(f"idempotency key {key!r} points at a missing message")
        return found[0]

    # -- conversations -------------------------------------------------------------------

    async def direct_conversation(self, a: str, b: str) -> Conversation:
        conv_id = direct_id(a, b)
        # A direct conversation never changes (no adds, removes or leaves) and is never
        # deleted, so once seen it is answered from memory.
        known = self._directs.get(conv_id)
        if known is not None:
            return known
        conv = await self._call(self._direct_sync, conv_id, a, b)
        self._directs[conv_id] = conv
        return conv

    def _direct_sync(self, conv_id: str, a: str, b: str) -> Conversation:
        # Read first: the durable upsert (a write on every call) only when it is missing.
        found = self._db.convs.find_one({"_id": conv_id})
        if found is not None:
            return _decode_conv(found)
        conv = Conversation(id=conv_id, kind="direct", members={a: 1, b: 1})
        fields = {"kind": "direct", "v": 0, **_membership_fields(conv)}
        try:
            doc = self._db.convs.find_one_and_update(
                {"_id": conv_id},
                {"$setOnInsert": fields},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            # Two first messages raced to create it; the other one won, which is the point.
            doc = self._db.convs.find_one({"_id": conv_id})
        assert doc is not None
        return _decode_conv(doc)

    async def create_group(
        self, creator: str, title: str, members: Iterable[str], ts: int
    ) -> tuple[Conversation, StoredMessage]:
        check_title(title)
        founders = group_founders(creator, members)
        conv = new_group(
            f"g:{self._rng.getrandbits(4 * GROUP_ID_HEX):0{GROUP_ID_HEX}x}",
            creator,
            title,
            founders,
        )
        event = StoredMessage(
            conv=conv.id,
            seq=1,
            id=_new_message_id(),
            sender=creator,
            device="",
            cmid=None,
            body=member_body("create", creator, founders),
            ts=ts,
            kind="member",
        )
        return await self._call(self._create_group_sync, conv, event)

    def _create_group_sync(
        self, conv: Conversation, event: StoredMessage
    ) -> tuple[Conversation, StoredMessage]:
        doc = {
            "_id": conv.id,
            "kind": "group",
            "title": conv.title,
            "creator": conv.creator,
            "v": 0,
            "created_by_msg": event.id,
            "end_hint": 1,
            **_membership_fields(conv),
        }
        chunk = {
            "_id": _chunk_id(conv.id, 1),
            "conv": conv.id,
            "first": 1,
            "last": 1,
            "msgs": [_encode_message(event)],
        }

        def body(s: ClientSession) -> None:
            self._db.convs.insert_one(doc, session=s)
            self._db.chunks.insert_one(chunk, session=s)

        with self._client.start_session() as session:
            try:
                self._txn(session, body)
            except DuplicateKeyError:
                # Only our own earlier attempt can hold this random id (ambiguous failure).
                existing, _ = self._load_conv(conv.id)
                stored = self._fetch(conv.id, 1, 1)
                if not stored or stored[0].id != event.id:
                    raise
                return existing, stored[0]
        self._heads[conv.id] = _Head(conv, 1)
        self._note_end(conv.id, 1)
        return conv, event

    async def get_conversation(self, conv: str) -> Conversation:
        return (await self._call(self._load_conv, conv))[0]

    async def _member_change(
        self, conv: str, op: MemberOp, actor: str, user: str, ts: int
    ) -> StoredMessage | None:
        op_id = uuid.uuid4().hex
        return await self._call(self._member_change_sync, conv, op, actor, user, ts, op_id)

    def _member_change_sync(
        self, conv_id: str, op: MemberOp, actor: str, user: str, ts: int, op_id: str
    ) -> StoredMessage | None:
        try:
            return self._member_change_rounds(conv_id, op, actor, user, ts, op_id)
        finally:
            # Not needed for correctness (a cached head is re-validated by the next chunk
            # insert), but our own change should not cost us a duplicate-key round.
            self._heads.pop(conv_id, None)

    def _member_change_rounds(
        self, conv_id: str, op: MemberOp, actor: str, user: str, ts: int, op_id: str
    ) -> StoredMessage | None:
        for _ in range(MAX_ROUNDS):
            conv, doc = self._load_conv(conv_id)
            if doc.get("last_op") == op_id:
                # An earlier attempt committed but its reply was lost.
                return self._fetch(conv_id, doc["last_op_seq"], doc["last_op_seq"])[0]
            plan = plan_member_change(conv, op, actor, user)
            if plan is None:
                return None
            kind, target = plan
            try:
                with self._client.start_session() as session:
                    return self._txn(
                        session,
                        functools.partial(
                            self._write_member_event,
                            conv,
                            doc,
                            kind,
                            actor,
                            target,
                            ts,
                            op_id,
                        ),
                    )
            except (DuplicateKeyError, _Contended):
                continue
            except PyMongoError as exc:
                if exc.has_error_label("TransientTransactionError") and not isinstance(
                    exc, ConnectionFailure
                ):
                    continue  # a write conflict with a concurrent writer: re-read and retry
                raise
        raise Unavailable(f"conversation {conv_id!r} is too contended to change membership")

    def _write_member_event(
        self,
        conv: Conversation,
        doc: Doc,
        kind: MemberOp,
        actor: str,
        target: str,
        ts: int,
        op_id: str,
        session: ClientSession,
    ) -> StoredMessage:
        seq = self._read_last_seq(conv.id, session, doc) + 1
        event = StoredMessage(
            conv=conv.id,
            seq=seq,
            id=_new_message_id(),
            sender=actor,
            device="",
            cmid=None,
            body=member_body(kind, actor, [target]),
            ts=ts,
            kind="member",
        )
        self._db.chunks.insert_one(
            {
                "_id": _chunk_id(conv.id, seq),
                "conv": conv.id,
                "first": seq,
                "last": seq,
                "msgs": [_encode_message(event)],
            },
            session=session,
        )
        changed = apply_member_change(conv, kind, target, seq)
        result = self._db.convs.update_one(
            {"_id": conv.id, "v": doc["v"]},
            {
                "$set": {
                    **_membership_fields(changed),
                    "last_op": op_id,
                    "last_op_seq": seq,
                    "end_hint": seq,
                },
                "$inc": {"v": 1},
            },
            session=session,
        )
        if result.matched_count != 1:
            raise _Contended()
        return event

    async def add_member(self, conv: str, actor: str, user: str, ts: int) -> StoredMessage | None:
        return await self._member_change(conv, "add", actor, user, ts)

    async def remove_member(
        self, conv: str, actor: str, user: str, ts: int
    ) -> StoredMessage | None:
        return await self._member_change(conv, "remove", actor, user, ts)

    async def leave(self, conv: str, user: str, ts: int) -> StoredMessage:
        event = await self._member_change(conv, "leave", user, user, ts)
        assert event is not None, "a leave always records an event"
        return event

    async def conversations(self, user: str, device: str) -> list[ConvRow]:
        check_id("user id", user)
        check_id("device id", device)
        return await self._call(self._conversations_sync, user, device)

    def _conversations_sync(self, user: str, device: str) -> list[ConvRow]:
        rows = []
        docs = list(self._db.convs.find({"member_ids": user}, sort=[("_id", 1)]))
        lasts = self._last_seqs(docs)
        for doc in docs:
            conv = _decode_conv(doc)
            last = lasts[conv.id]
            marks = self._marks_sync(conv)
            read = marks[user].read
            rows.append(
                ConvRow(
                    conv=conv.id,
                    kind=conv.kind,
                    title=conv.title,
                    members=tuple(conv.members),
                    last_seq=last,
                    delivered=self._device_recv_sync(user, device, conv.id),
                    read=read,
                    unread=unread_count(conv, user, read, self._fetch(conv.id, read + 1, last)),
                    others=tuple(marks[u] for u in conv.members if u != user),
                )
            )
        return rows

    async def contacts(self, user: str) -> set[str]:
        return await self._call(self._contacts_sync, user)

    def _contacts_sync(self, user: str) -> set[str]:
        found: set[str] = set()
        for doc in self._db.convs.find({"member_ids": user}, projection={"member_ids": 1}):
            found.update(doc["member_ids"])
        found.discard(user)
        return found

    async def shares_conversation(self, a: str, b: str) -> bool:
        if a == b:
            return False
        doc = await self._call(
            self._db.convs.find_one, {"member_ids": {"$all": [a, b]}}, {"_id": 1}
        )
        return doc is not None

    # -- messages ------------------------------------------------------------------------
    #
    # Group commit ACROSS conversations, through a _Coalescer: every append() is a _Request;
    # the leading call writes everything queued (up to MERGE_MAX_DRAFTS drafts) as ONE
    # transaction (one chunk document per conversation, one key document per message, one
    # commit = one journal flush). A batch is exactly what arrived while the previous commit
    # was in flight: no timer, no background task.

    async def append(
        self, conv: str, drafts: Sequence[Draft], *, notify: Sequence[str] = ()
    ) -> list[StoredMessage | StoreError]:
        request = _Request(conv, list(drafts), tuple(sorted(set(notify))))
        outcome: list[StoredMessage | StoreError] | StoreError = await self._appends(request)
        if isinstance(outcome, StoreError):
            raise outcome
        return outcome

    def _commit_counted(
        self, batch: list[_Request]
    ) -> list[list[StoredMessage | StoreError] | StoreError]:
        """:meth:`_commit_sync`, counting the commit once it succeeded (retries re-run it)."""
        outcomes = self._commit_sync(batch)
        self.commits += 1
        self.committed_calls += len(batch)
        self.committed_drafts += sum(len(r.drafts) for r in batch)
        return outcomes

    def _catch_up(self, starts: dict[str, int]) -> tuple[dict[str, int], set[str]]:
        """Follow each conversation's chunks from a known chunk end to its current end.

        Chunks are contiguous, so the chunk after end ``e`` has ``_id`` ``conv|e+1``: every
        step is one ``$in`` point read for all the conversations at once (SecantusDB answers
        ``_id`` equality with the index, cheaply). A conversation still moving after
        :data:`CATCH_UP_PROBES` steps is finished with one ``(conv, first)`` index range read.
        Returns the ends and the conversations in which a membership event was passed.
        """
        ends = dict(starts)
        moving = set(ends)
        changed: set[str] = set()
        for _ in range(CATCH_UP_PROBES):
            if not moving:
                break
            probes = sorted(_chunk_id(c, ends[c] + 1) for c in moving)
            found = [
                doc
                for k in range(0, len(probes), PROBES_PER_QUERY)
                for doc in self._db.chunks.find(
                    {"_id": {"$in": probes[k : k + PROBES_PER_QUERY]}},
                    projection={"conv": 1, "last": 1, "msgs.k": 1},
                )
            ]
            advanced = set()
            for doc in found:
                conv_id = doc["conv"]
                ends[conv_id] = int(doc["last"])
                advanced.add(conv_id)
                if any(m.get("k") == "member" for m in doc["msgs"]):
                    changed.add(conv_id)
            moving &= advanced
        for conv_id in sorted(moving):
            ends[conv_id], member = self._ends_after(conv_id, ends[conv_id])
            if member:
                changed.add(conv_id)
        for conv_id, end in ends.items():
            self._note_end(conv_id, end)
        return ends, changed

    def _load_heads(
        self, conv_ids: Iterable[str], starts: dict[str, _Head] | None = None
    ) -> dict[str, _Head]:
        """(Re)load the heads of ``conv_ids``, also into ``self._heads`` (unknown ids: absent).

        Order matters: a membership is valid through an end found *after* it was read. For a
        conversation without a start, its document (membership and ``end_hint``) is read
        first, then the end from there; a membership change committed in between lies after
        the hint, so the catch-up passes its event and the membership is read again. A write
        at end+1 collides with any change after the end.
        """
        starts = dict(starts or {})
        cold = sorted(c for c in conv_ids if c not in starts)
        for k in range(0, len(cold), PROBES_PER_QUERY):
            for doc in self._db.convs.find({"_id": {"$in": cold[k : k + PROBES_PER_QUERY]}}):
                starts[doc["_id"]] = _Head(_decode_conv(doc), self._hint(doc["_id"], doc))
        ends, changed = self._catch_up({c: h.end for c, h in starts.items()})
        convs = {c: h.conv for c, h in starts.items()}
        reread = sorted(changed)
        for k in range(0, len(reread), PROBES_PER_QUERY):
            for doc in self._db.convs.find({"_id": {"$in": reread[k : k + PROBES_PER_QUERY]}}):
                convs[doc["_id"]] = _decode_conv(doc)
        loaded = {c: _Head(convs[c], ends[c]) for c in ends if c in convs}
        for conv_id in conv_ids:
            if conv_id in loaded:
                self._heads[conv_id] = loaded[conv_id]
            else:
                self._heads.pop(conv_id, None)
        # Returned rather than read back from self._heads: another worker thread (a
        # membership change of this store) may drop a cached head at any moment.
        return loaded

    def _commit_sync(
        self, batch: list[_Request]
    ) -> list[list[StoredMessage | StoreError] | StoreError]:
        """One merged durable write for every request of ``batch`` (runs in a worker thread).

        Re-run as a whole by :meth:`_call` after a transient failure: that is safe because
        every message of an earlier attempt that did commit is found by its key and replayed.
        """
        wanted = list(dict.fromkeys(request.conv for request in batch))
        cached = {c: h for c in wanted if (h := self._heads.get(c)) is not None}
        cached.update(self._load_heads([c for c in wanted if c not in cached]))
        heads: dict[str, _Head | None] = {c: cached.get(c) for c in wanted}
        outcomes: list[list[StoredMessage | StoreError] | StoreError] = []
        results: list[list[StoredMessage | StoreError | None]] = []
        first_slot: dict[str, tuple[int, int]] = {}
        repeats: list[tuple[tuple[int, int], tuple[int, int]]] = []
        todo: dict[str, list[tuple[int, int]]] = {}
        fresh: set[str] = set()
        for r, request in enumerate(batch):
            slots: list[StoredMessage | StoreError | None] = [None] * len(request.drafts)
            results.append(slots)
            head = heads[request.conv]
            if head is None:
                outcomes.append(no_such_conversation(request.conv))
                continue
            outcomes.append([])
            for i, draft in enumerate(request.drafts):
                error = draft_error(draft)
                if error is not None:
                    slots[i] = error
                    continue
                key = f"{draft.sender}|{draft.device}|{draft.cmid}"
                if key in first_slot:
                    repeats.append(((r, i), first_slot[key]))
                    continue
                first_slot[key] = (r, i)
                if not head.conv.is_member(draft.sender) and request.conv not in fresh:
                    # A cached "no" is never trusted: the sender may have been added by
                    # another node. (A cached "yes" is checked by the chunk insert itself.)
                    fresh.add(request.conv)
                    self._heads.pop(request.conv, None)
                    head = heads[request.conv] = self._load_heads([request.conv]).get(request.conv)
                    assert head is not None, "conversations are never deleted"
                    # Slots judged on the old head are written at the new end: judge again.
                    for q, j in list(todo.get(request.conv, [])):
                        prior = batch[q].drafts[j]
                        if not head.conv.is_member(prior.sender):
                            todo[request.conv].remove((q, j))
                            key_qj = f"{prior.sender}|{prior.device}|{prior.cmid}"
                            results[q][j] = self._refuse(head.conv, key_qj, prior)
                if head.conv.is_member(draft.sender):
                    todo.setdefault(request.conv, []).append((r, i))
                else:
                    slots[i] = self._refuse(head.conv, key, draft)
        keys = {slot: key for key, slot in first_slot.items()}
        contended = self._write_rounds(batch, heads, todo, results, keys)
        for (r, i), (q, j) in repeats:
            earlier = results[q][j]
            if isinstance(earlier, StoredMessage):
                results[r][i] = replay(earlier, batch[r].conv, batch[r].drafts[i])
            elif earlier is not None:
                results[r][i] = earlier
        for r, request in enumerate(batch):
            if isinstance(outcomes[r], StoreError):
                continue
            if request.conv in contended or any(x is None for x in results[r]):
                outcomes[r] = Unavailable(
                    f"conversation {request.conv!r} is too contended to append"
                )
                continue
            outcomes[r] = [x for x in results[r] if x is not None]
        return outcomes

    def _refuse(self, conv: Conversation, key: str, draft: Draft) -> StoredMessage | StoreError:
        # A former member may still replay what they sent before leaving.
        original = self._lookup_key(key)
        return (
            not_member(conv, draft.sender) if original is None else replay(original, conv.id, draft)
        )

    def _write_rounds(
        self,
        batch: list[_Request],
        heads: dict[str, _Head | None],
        todo: dict[str, list[tuple[int, int]]],
        results: list[list[StoredMessage | StoreError | None]],
        keys: dict[tuple[int, int], str],
    ) -> set[str]:
        """Write ``todo`` in one transaction, fixing conflicts per conversation; returns the
        conversations given up on (too contended)."""
        todo = {conv: slots for conv, slots in todo.items() if slots}
        budget = MAX_ROUNDS + sum(len(s) for s in todo.values())
        conflicts = 0
        while todo:
            if budget == 0 or conflicts > MAX_ROUNDS:
                return set(todo)
            budget -= 1
            plan: dict[str, list[StoredMessage]] = {}
            for conv_id, slots in todo.items():
                head = heads[conv_id]
                assert head is not None
                plan[conv_id] = [
                    StoredMessage(
                        conv=conv_id,
                        seq=head.end + n,
                        id=_new_message_id(),
                        sender=batch[r].drafts[i].sender,
                        device=batch[r].drafts[i].device,
                        cmid=batch[r].drafts[i].cmid,
                        body=batch[r].drafts[i].body,
                        ts=batch[r].drafts[i].ts,
                    )
                    for n, (r, i) in enumerate(slots, start=1)
                ]
            jobs = self._plan_jobs(batch, heads, todo, plan)
            try:
                with self._client.start_session() as session:
                    self._txn(session, functools.partial(self._write_group, plan, jobs))
            except _JobRace:
                # A concurrent writer opened the same user's job: the round is aborted whole
                # (messages included); the next one coalesces into that job.
                conflicts += 1
                continue
            except _Duplicates as dup:
                taken = set(dup.keys)
                for conv_id, slots in todo.items():
                    for slot in [s for s in slots if keys[s] in taken]:
                        # Stored before (another node, or our own attempt whose reply was lost).
                        slots.remove(slot)
                        original = self._lookup_key(keys[slot])
                        if original is None:
                            raise Unavailable(f"idempotency key {keys[slot]!r} vanished") from None
                        r, i = slot
                        results[r][i] = replay(original, conv_id, batch[r].drafts[i])
                olds = {c: heads[c] for c in dup.convs}
                fresh = self._load_heads(
                    dup.convs, {c: h for c, h in olds.items() if h is not None}
                )
                for conv_id in dup.convs:
                    old, head = olds[conv_id], fresh.get(conv_id)
                    assert old is not None and head is not None
                    heads[conv_id] = head
                    if head.conv is not old.conv:  # membership changed: judge the slots again
                        for r, i in list(todo[conv_id]):
                            draft = batch[r].drafts[i]
                            if not head.conv.is_member(draft.sender):
                                todo[conv_id].remove((r, i))
                                results[r][i] = self._refuse(head.conv, keys[(r, i)], draft)
                todo = {conv: slots for conv, slots in todo.items() if slots}
                continue
            except PyMongoError as exc:
                if exc.has_error_label("TransientTransactionError") and not isinstance(
                    exc, ConnectionFailure
                ):
                    # A write conflict with a concurrent writer's open transaction: try again.
                    conflicts += 1
                    time.sleep(0.001 * self._rng.random() * min(conflicts, 10))
                    continue
                raise
            for conv_id, slots in todo.items():
                messages = plan[conv_id]
                for (r, i), message in zip(slots, messages, strict=True):
                    results[r][i] = message
                head = heads[conv_id]
                assert head is not None
                # The insert at head.end + 1 succeeded, so nothing (no membership change
                # either) came between: head.conv is still the membership at the new end.
                heads[conv_id] = self._heads[conv_id] = _Head(head.conv, messages[-1].seq)
                self._note_end(conv_id, messages[-1].seq)
                self._unhinted[conv_id] = self._unhinted.get(conv_id, 0) + (
                    (len(messages) + CHUNK_MAX - 1) // CHUNK_MAX
                )
            todo = {}
        self._raise_hints()
        return set()

    def _raise_hints(self) -> None:
        """Store the end of each conversation this instance wrote HINT_EVERY chunks to since
        its last hint, so a cold "last seq" read examines few chunks. Only a hint: a light
        write, and a failure is ignored (the next commit tries again)."""
        due = sorted(c for c, n in self._unhinted.items() if n >= HINT_EVERY)
        if not due:
            return
        ops = [UpdateOne({"_id": c}, {"$max": {"end_hint": self._ends[c]}}) for c in due]
        try:
            self._light.convs.bulk_write(ops, ordered=False)
        except PyMongoError:
            return
        for conv_id in due:
            self._unhinted.pop(conv_id, None)

    @staticmethod
    def _plan_jobs(
        batch: list[_Request],
        heads: dict[str, _Head | None],
        todo: dict[str, list[tuple[int, int]]],
        plan: dict[str, list[StoredMessage]],
    ) -> dict[str, _JobNote]:
        """G8: the offline-notification job of each user named in ``notify`` by a request
        with a message in ``plan``, written by the same transaction: the first new message
        (conv, seq) of the commit, the number of new messages, the latest ts."""
        jobs: dict[str, _JobNote] = {}
        for conv_id, slots in todo.items():
            head = heads[conv_id]
            assert head is not None
            for (r, _i), message in zip(slots, plan[conv_id], strict=True):
                for user in batch[r].notify:
                    # head.conv is the membership at the new end (see _Head).
                    if not head.conv.is_member(user):
                        continue
                    note = jobs.get(user)
                    if note is None:
                        jobs[user] = _JobNote(conv_id, message.seq, message.ts, 1)
                    else:
                        note.count += 1
                        note.ts = max(note.ts, message.ts)
        return jobs

    def _write_group(
        self, plan: dict[str, list[StoredMessage]], jobs: dict[str, _JobNote], s: ClientSession
    ) -> None:
        keys = [
            {
                "_id": f"{m.sender}|{m.device}|{m.cmid}",
                "conv": conv_id,
                "seq": m.seq,
                # The first seq of the chunk holding it, so a replay is a point read.
                "chunk": messages[(n // CHUNK_MAX) * CHUNK_MAX].seq,
            }
            for conv_id, messages in plan.items()
            for n, m in enumerate(messages)
        ]
        chunks = [
            {
                "_id": _chunk_id(conv_id, part[0].seq),
                "conv": conv_id,
                "first": part[0].seq,
                "last": part[-1].seq,
                "msgs": [_encode_message(m) for m in part],
            }
            for conv_id, messages in plan.items()
            for part in (messages[k : k + CHUNK_MAX] for k in range(0, len(messages), CHUNK_MAX))
        ]
        # ordered=False: every duplicate of the batch is reported at once, so one round
        # fixes all the conversations that collided (the transaction aborts either way).
        try:
            self._db.keys.insert_many(keys, ordered=False, session=s)
        except BulkWriteError as exc:
            raise _Duplicates.from_bulk(exc, [str(k["_id"]) for k in keys], None) from exc
        try:
            self._db.chunks.insert_many(chunks, ordered=False, session=s)
        except BulkWriteError as exc:
            raise _Duplicates.from_bulk(exc, None, [str(c["conv"]) for c in chunks]) from exc
        for user in sorted(jobs):
            try:
                self._db.jobs.update_one(
                    {"user": user, "open": True},
                    _job_update(jobs[user].conv, jobs[user].seq, jobs[user].ts, jobs[user].count),
                    upsert=True,
                    session=s,
                )
            except DuplicateKeyError as exc:
                raise _JobRace(user) from exc

    async def history(
        self, conv: str, user: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        check_limit(limit)
        return await self._call(self._history_sync, conv, user, before, limit)

    def _history_sync(
        self, conv_id: str, user: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        conv, doc = self._load_conv(conv_id)
        lo, hi = history_bounds(conv, user, before)
        last = self._read_last_seq(conv_id, doc=doc)
        top = last if hi is None else min(hi, last)
        # Seqs are gap-free, so the page is a plain seq range.
        start = max(lo, top - limit + 1)
        return self._fetch(conv_id, start, top), start > lo

    async def range(self, conv: str, lo: int, hi: int) -> list[StoredMessage]:
        return await self._call(self._range_sync, conv, lo, hi)

    def _range_sync(self, conv: str, lo: int, hi: int) -> list[StoredMessage]:
        self._load_conv(conv)
        return self._fetch(conv, lo, hi)

    async def last_seq(self, conv: str) -> int:
        return await self._call(self._last_seq_sync, conv)

    def _last_seq_sync(self, conv: str) -> int:
        _, doc = self._load_conv(conv)
        return self._read_last_seq(conv, doc=doc)

    # -- watermarks ----------------------------------------------------------------------

    def _clamper(self, marks: Iterable[tuple[str, int]]) -> Callable[[str, str, int], int | None]:
        highest: dict[str, int] = {}
        for conv, seq in marks:
            highest[conv] = max(seq, highest.get(conv, 0))
        wanted = sorted(highest)
        docs = list(self._db.convs.find({"_id": {"$in": wanted}}))
        known = {d["_id"]: _decode_conv(d) for d in docs}
        # A known chunk end at or above every mark of a conversation clamps exactly like its
        # last seq would; only the others need their last seq read.
        lasts = {d["_id"]: self._hint(d["_id"], d) for d in docs}
        lasts.update(self._last_seqs([d for d in docs if highest[d["_id"]] > lasts[d["_id"]]]))

        def clamp(conv: str, user: str, seq: int) -> int | None:
            found = known.get(conv)
            return None if found is None else clamp_mark(found, user, lasts[conv], seq)

        return clamp

    async def merge_recv(self, marks: Sequence[RecvMark]) -> None:
        if marks:
            await self._call(self._merge_recv_sync, list(marks), limiter=self._marks_limiter)

    def _merge_recv_sync(self, marks: list[RecvMark]) -> None:
        self._merge_marks(
            self._light.recv,
            [((m.user, m.conv, m.seq), {"u": m.user, "d": m.device, "c": m.conv}) for m in marks],
            lambda f: f"{f['u']}|{f['d']}|{f['c']}",
        )

    async def merge_read(self, marks: Sequence[ReadMark]) -> None:
        if marks:
            await self._call(self._merge_read_sync, list(marks), limiter=self._marks_limiter)

    def _merge_read_sync(self, marks: list[ReadMark]) -> None:
        self._merge_marks(
            self._light.read,
            [((m.user, m.conv, m.seq), {"u": m.user, "c": m.conv}) for m in marks],
            lambda f: f"{f['u']}|{f['c']}",
        )

    def _merge_marks(
        self,
        collection: Collection[Doc],
        marks: list[tuple[tuple[str, str, int], dict[str, str]]],
        key: Callable[[dict[str, str]], str],
    ) -> None:
        """Max-merge watermarks, each clamped to what its user may see: ``marks`` are
        ``((user, conv, seq), identifying fields)``; ``key`` makes the document id."""
        clamp = self._clamper((conv, seq) for (_user, conv, seq), _fields in marks)
        ops = []
        for (user, conv, seq), fields in marks:
            clamped = clamp(conv, user, seq)
            if clamped is not None:
                ops.append(
                    UpdateOne(
                        {"_id": key(fields)},
                        {"$max": {"s": clamped}, "$setOnInsert": fields},
                        upsert=True,
                    )
                )
        self._bulk(collection, ops)

    @staticmethod
    def _bulk(collection: Collection[Doc], ops: list[UpdateOne]) -> None:
        # In slices: SecantusDB runs one command at a time, and a bulk write of hundreds of
        # upserts (~1 ms each) would hold up every append queued behind it.
        for k in range(0, len(ops), MARKS_PER_COMMAND):
            collection.bulk_write(ops[k : k + MARKS_PER_COMMAND], ordered=False)

    def _marks_sync(self, conv: Conversation) -> dict[str, MemberMarks]:
        users = sorted([*conv.members, *conv.departed])
        delivered = dict.fromkeys(users, 0)
        read = dict.fromkeys(users, 0)
        for doc in self._db.recv.find({"c": conv.id}, projection={"u": 1, "s": 1}):
            if doc["u"] in delivered:
                delivered[doc["u"]] = max(delivered[doc["u"]], int(doc["s"]))
        for doc in self._db.read.find({"c": conv.id}, projection={"u": 1, "s": 1}):
            if doc["u"] in read:
                read[doc["u"]] = int(doc["s"])
        return {u: MemberMarks(user=u, delivered=delivered[u], read=read[u]) for u in users}

    async def marks(self, conv: str) -> dict[str, MemberMarks]:
        return await self._call(lambda: self._marks_sync(self._load_conv(conv)[0]))

    def _device_recv_sync(self, user: str, device: str, conv: str) -> int:
        doc = self._db.recv.find_one({"_id": f"{user}|{device}|{conv}"})
        return 0 if doc is None else int(doc["s"])

    async def device_recv(self, user: str, device: str, conv: str) -> int:
        return await self._call(self._device_recv_sync, user, device, conv)

    async def unsynced(
        self, user: str, device: str
    ) -> list[tuple[Conversation, list[StoredMessage]]]:
        result: list[tuple[Conversation, list[StoredMessage]]] = await self._unsynced_batch(
            (user, device)
        )
        return result

    def _unsynced_many(
        self, wanted: list[tuple[str, str]]
    ) -> list[list[tuple[Conversation, list[StoredMessage]]]]:
        """:meth:`unsynced` of many (user, device) at once: a few commands for all of them."""
        users = sorted({u for u, _ in wanted})
        recv: dict[tuple[str, str], dict[str, int]] = {}
        for d in self._db.recv.find({"u": {"$in": users}}):
            recv.setdefault((d["u"], d["d"]), {})[d["c"]] = int(d["s"])
        # Two indexed queries: SecantusDB answers an $or of them with a collection scan.
        docs = {d["_id"]: d for d in self._db.convs.find({"member_ids": {"$in": users}})}
        for doc in self._db.convs.find({"past_ids": {"$in": users}}):
            docs.setdefault(doc["_id"], doc)
        lasts = self._last_seqs(docs.values()) if docs else {}
        by_user: dict[str, list[Doc]] = {}
        for conv_id in sorted(docs):
            doc = docs[conv_id]
            for user in {*doc.get("member_ids", []), *doc.get("past_ids", [])}:
                by_user.setdefault(user, []).append(doc)
        return [
            self._unsynced_one(user, by_user.get(user, []), recv.get((user, device), {}), lasts)
            for user, device in wanted
        ]

    def _unsynced_one(
        self, user: str, docs: list[Doc], recv: dict[str, int], lasts: dict[str, int]
    ) -> list[tuple[Conversation, list[StoredMessage]]]:
        out = []
        for doc in docs:
            conv = _decode_conv(doc)
            span = conv.visible_range(user)
            assert span is not None
            lo = max(span[0], recv.get(conv.id, 0) + 1)
            last = lasts[conv.id]
            hi = last if span[1] is None else min(span[1], last)
            if lo <= hi:
                out.append((conv, self._fetch(conv.id, lo, hi)))
        return out

    # -- presence and devices ------------------------------------------------------------

    async def set_last_seen(self, user: str, ts: int) -> None:
        await self._call(
            self._light.users.update_one, {"_id": user}, {"$max": {"last_seen": ts}}, True
        )

    async def last_seen(self, users: Iterable[str]) -> dict[str, int | None]:
        wanted = list(users)
        return await self._call(self._last_seen_sync, wanted)

    def _last_seen_sync(self, users: list[str]) -> dict[str, int | None]:
        found = {d["_id"]: d.get("last_seen") for d in self._db.users.find({"_id": {"$in": users}})}
        return {u: None if (t := found.get(u)) is None else int(t) for u in users}

    async def register_device(self, user: str, device: str, ts: int) -> None:
        check_id("user id", user)
        check_id("device id", device)
        key = f"{user}|{device}"
        if key in self._registered:
            # Registered by this instance already: the registry only answers "which devices
            # ever connected" (devices()), so a later connect changes nothing it answers.
            return
        await self._register_batch((user, device, ts))
        self._registered.add(key)

    def _register_many(self, devices: list[tuple[str, str, int]]) -> list[None]:
        # Insert, not upsert: on SecantusDB every upsert statement of a bulk write is a
        # transaction of its own (a commit, an fsync with --sync-on-commit: ~3 ms each), while
        # one unordered insert_many is ~0.4 ms per new device. Devices registered before
        # (e.g. by a previous node) fail as duplicates and get their ts raised by one
        # update_many (one statement) to the latest ts of the batch.
        latest: dict[str, tuple[str, str, int]] = {}
        for u, d, ts in devices:
            key = f"{u}|{d}"
            if key not in latest or latest[key][2] < ts:
                latest[key] = (u, d, ts)
        docs = [{"_id": k, "u": u, "d": d, "ts": ts} for k, (u, d, ts) in latest.items()]
        try:
            self._light.devices.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                raise
            known = [docs[e["index"]]["_id"] for e in errors]
            ts = max(latest[k][2] for k in known)
            self._light.devices.update_many({"_id": {"$in": known}}, {"$max": {"ts": ts}})
        return [None] * len(devices)

    async def devices(self, user: str) -> list[str]:
        docs = await self._call(lambda: list(self._db.devices.find({"u": user})))
        return sorted(d["d"] for d in docs)

    # -- notification outbox -------------------------------------------------------------

    async def notify_offline(self, user: str, conv: str, seq: int, ts: int) -> None:
        await self._call(self._notify_sync, user, conv, seq, ts)

    def _notify_sync(self, user: str, conv: str, seq: int, ts: int) -> None:
        update = _job_update(conv, seq, ts, 1)
        for _ in range(3):
            try:
                self._db.jobs.update_one({"user": user, "open": True}, update, upsert=True)
                return
            except DuplicateKeyError:
                continue  # a concurrent call opened the period's job: update that one instead
        raise Unavailable(f"could not record the notification of user {user!r}")

    async def user_online(self, user: str) -> None:
        await self._online_batch(user)

    def _online_many(self, users: list[str]) -> list[None]:
        # Read first (the partial unique index answers it): most users have no open job, and
        # then nothing is written. Nothing is acknowledged on this, so the write is light.
        wanted = sorted(set(users))
        found = self._db.jobs.find({"user": {"$in": wanted}, "open": True}, {"user": 1})
        if open_users := sorted({d["user"] for d in found}):
            self._light.jobs.update_many(
                {"user": {"$in": open_users}, "open": True}, {"$set": {"open": False}}
            )
        return [None] * len(users)

    async def claim_notifications(
        self, owner: str, now_ms: int, lease_ms: int, limit: int
    ) -> list[NotificationJob]:
        return await self._call(self._claim_sync, owner, now_ms, lease_ms, limit)

    def _claim_sync(
        self, owner: str, now_ms: int, lease_ms: int, limit: int
    ) -> list[NotificationJob]:
        claimed = []
        for _ in range(limit):
            doc = self._db.jobs.find_one_and_update(
                {"done": False, "$or": [{"lease_until": None}, {"lease_until": {"$lte": now_ms}}]},
                {"$set": {"owner": owner, "lease_until": now_ms + lease_ms}},
                sort=[("first_ts", 1), ("_id", 1)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            claimed.append(
                NotificationJob(
                    id=doc["_id"],
                    user=doc["user"],
                    conv=doc["conv"],
                    seq=int(doc["seq"]),
                    count=int(doc["count"]),
                    first_ts=int(doc["first_ts"]),
                    last_ts=int(doc["last_ts"]),
                    owner=doc["owner"],
                    lease_until=None if doc["lease_until"] is None else int(doc["lease_until"]),
                )
            )
        return claimed

    async def complete_notification(self, job_id: str) -> None:
        result = await self._call(
            self._db.jobs.update_one, {"_id": job_id}, {"$set": {"done": True}}
        )
        if result.matched_count == 0:
            raise NotFound(f"notification job {job_id!r} does not exist")

    async def pending_notifications(self) -> int:
        return await self._call(self._db.jobs.count_documents, {"done": False})

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._client.close)


def _job_update(conv: str, seq: int, ts: int, count: int) -> Doc:
    """The upsert of a user's open offline-notification job (one per offline period)."""
    return {
        "$inc": {"count": count},
        "$set": {"conv": conv, "seq": seq, "last_ts": ts},
        "$setOnInsert": {
            "_id": uuid.uuid4().hex,
            "first_ts": ts,
            "done": False,
            "owner": None,
            "lease_until": None,
        },
    }


@attrs.define(eq=False)
class _JobNote:
    """The offline-notification job a merged commit records for one user."""

    conv: str
    seq: int
    ts: int
    count: int


class _JobRace(Exception):
    """A concurrent writer opened a user's notification job inside our transaction."""


class _Duplicates(Exception):
    """Unique keys of a merged write that already exist: idempotency keys and the
    conversations whose next chunk position was taken."""

    def __init__(self, keys: list[str], convs: list[str]) -> None:
        super().__init__(f"duplicate keys {keys!r}, chunk positions taken in {convs!r}")
        self.keys = keys
        self.convs = sorted(set(convs))

    @classmethod
    def from_bulk(
        cls, exc: BulkWriteError, keys: list[str] | None, convs: list[str] | None
    ) -> _Duplicates | BulkWriteError:
        errors = exc.details.get("writeErrors", [])
        if not errors or any(e.get("code") != 11000 for e in errors):
            return exc
        hit = [int(e["index"]) for e in errors]
        return cls(
            [keys[i] for i in hit] if keys is not None else [],
            [convs[i] for i in hit] if convs is not None else [],
        )


@attrs.define(eq=False)
class _Head:
    """A chunk end ``end`` of a conversation seen by this instance, and its membership then.

    ``conv`` is valid through ``end`` because it was read after ``end`` was (see
    :meth:`MongoStore._load_heads`), or because this instance itself wrote every chunk since.
    A write at ``end + 1`` succeeds only if nobody wrote after ``end`` — no message and no
    membership change — so a cached head never admits a message a fresh read would refuse.
    """

    conv: Conversation
    end: int


@attrs.define(eq=False)
class _Request:
    """One append() call: its drafts and the offline users to notify, merged with others."""

    conv: str
    drafts: list[Draft]
    notify: tuple[str, ...] = ()


@attrs.define(eq=False)
class _Pending:
    """One call waiting in a :class:`_Coalescer` (or leading it)."""

    arg: Any
    wake: trio.Event = attrs.field(factory=trio.Event)
    promoted: bool = False
    finished: bool = False
    result: Any = None
    error: BaseException | None = None

    def finish(self, result: Any, error: BaseException | None) -> None:
        self.result, self.error, self.finished = result, error, True
        self.wake.set()

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class _Coalescer:
    """Merges concurrent calls of one cheap operation into one batched call in a thread.

    Leader/follower, no timer and no background task: a call arriving while a batch is in
    flight queues; when the batch returns, the lead passes to the oldest queued call, which
    takes everything queued so far (up to ``max_batch``). :meth:`MongoStore.append` uses it for
    the group commit across conversations; the hello path for its cheap lookups. On SecantusDB a
    command costs ~1-3 ms of server time whatever it carries, so N hellos at once cost a
    handful of commands instead of 4N. ``fn`` gets the queued arguments and returns one
    result per argument.
    """

    def __init__(
        self,
        store: MongoStore,
        fn: Callable[[list[Any]], list[Any]],
        limiter: trio.CapacityLimiter,
        max_batch: int = 256,
        weight: Callable[[Any], int] = lambda _arg: 1,
        what: str = "the merged call",
    ) -> None:
        self._store = store
        self._fn = fn
        self._limiter = limiter
        #: A batch takes queued calls until their total ``weight`` reaches ``max_batch``; the
        #: oldest call is always taken, so one heavy call is never split or starved.
        self._max_batch = max_batch
        self._weight = weight
        self._what = what
        self._queue: list[_Pending] = []
        self._leading = False

    async def __call__(self, arg: Any) -> Any:
        request = _Pending(arg)
        self._queue.append(request)
        if self._leading:
            try:
                await request.wake.wait()
            except BaseException:
                if request in self._queue:
                    self._queue.remove(request)
                if request.promoted and not request.finished:
                    self._hand_off()
                raise
            if request.finished:
                return request.outcome()
        self._leading = True
        try:
            # The oldest queued calls; we are the oldest (a leader is either the first caller
            # into an empty queue or the head a leader promoted).
            taken, size = 0, 0
            while taken < len(self._queue) and (taken == 0 or size < self._max_batch):
                size += self._weight(self._queue[taken].arg)
                taken += 1
            batch, self._queue = self._queue[:taken], self._queue[taken:]
            try:
                results = await self._store._call(
                    self._fn, [r.arg for r in batch], limiter=self._limiter
                )
            except BaseException as exc:
                # The leader re-raises exc itself; the calls merged with it get a StoreError.
                failure = exc
                if not isinstance(exc, StoreError):
                    failure = Unavailable(f"{self._what} failed: {exc!r}; retry")
                    failure.__cause__ = exc
                for r in batch:
                    if r is not request:
                        r.finish(None, failure)
                raise
            for r, result in zip(batch, results, strict=True):
                r.finish(result, None)
        finally:
            self._hand_off()
        return request.outcome()

    def _hand_off(self) -> None:
        if self._queue:
            self._queue[0].promoted = True
            self._queue[0].wake.set()
        else:
            self._leading = False
