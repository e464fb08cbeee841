"""MongoStore's part of several nodes: leases, device sessions, ephemeral events, the feed.

Part of the schema (see :mod:`._schema` for the rest); blocking operations run in worker
threads by :class:`~persistence._mongo._store.MongoStore` through its runner.

Collections (all written lightly, ``w: 1``: nothing is acknowledged on them):

* ``leases``: ``{_id: node, exp: ms, swept: bool}``. A node renews its own; any node's sweep
  flips ``swept`` of an expired one with a conditional update, so exactly one sweeper wins.
* ``sessions``: one document per (user, device), ``_id = user|device``, ``s`` the current
  session id (``None`` once ended), ``n`` its node, ``since``/``ended`` ms (``swept`` when
  a sweep ended it). Every write is a whole-document replace, so the change stream carries
  the full document of each change.
* ``ephemeral``: receipts (``k: "m"``), typing (``k: "t"``) and node-down notices
  (``k: "down"``), inserted for the change stream and expired by a TTL index on ``at``.

The change feed (:class:`MongoFeed`) is ONE database-level change stream per node (each open
stream costs SecantusDB ~0.5 ms on every insert), ``$match``ed to chunk inserts (messages and
member events, written in the same transaction as the membership they change), ephemeral
inserts and session replaces of other nodes. It has its own ``MongoClient`` and runs its
``getMore`` calls (``max_await_time_ms``) in a worker thread of its own.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import trio
from pymongo import MongoClient, ReplaceOne, UpdateOne
from pymongo.change_stream import ChangeStream
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from .._errors import Unavailable
from .._feed import (
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
)
from ._schema import decode_message, device_id

Doc = dict[str, Any]

#: How long a getMore of the feed waits for new changes before returning empty.
FEED_AWAIT_MS = 500
#: Least time between the starts of two getMores of one feed. SecantusDB ends an awaiting
#: getMore at any write to the oplog, matched by the ``$match`` or not (a watermark, a job,
#: a lease), often with an empty batch: without a floor each node issues one getMore (a
#: thread hop and a round trip, and a drain in the store) per write anywhere in the
#: deployment. With it a feed polls at most 100 times a second, and a change waits at most
#: this long more. On MongoDB, whose getMore returns only with changes or at its await time,
#: the floor only batches a busy stream.
FEED_MIN_GAP_S = 0.01
#: Ephemeral documents are deleted by the TTL monitor after this long.
EPHEMERAL_TTL_S = 60
#: MongoDB's "the resume token's history is gone" codes (ChangeStreamHistoryLost and
#: ChangeStreamFatalError).
HISTORY_LOST = frozenset({280, 286})


def decode_chunk_messages(doc: Doc) -> FeedMessages:
    """The messages of one inserted ``chunks`` document (see :mod:`._schema`)."""
    conv = str(doc["conv"])
    return FeedMessages(conv=conv, messages=tuple(decode_message(conv, m) for m in doc["msgs"]))


def _session_doc(s: DeviceSession) -> Doc:
    return {"_id": device_id(s.user, s.device), "u": s.user, "d": s.device, "s": s.session}


def _decode_change(change: Doc) -> FeedEvent | None:
    coll = change["ns"]["coll"]
    doc = change.get("fullDocument")
    if doc is None:
        return None
    if coll == "chunks":
        return decode_chunk_messages(doc)
    if coll == "sessions":
        return FeedSession(
            user=doc["u"],
            device=doc["d"],
            session=doc.get("s"),
            node=doc["n"],
            ts=int(doc["ended"] if doc.get("s") is None else doc["since"]),
        )
    if coll == "ephemeral":
        match doc["k"]:
            case "m":
                return FeedMarks(
                    conv=doc["c"],
                    user=doc["u"],
                    delivered=None if doc.get("dl") is None else int(doc["dl"]),
                    read=None if doc.get("rd") is None else int(doc["rd"]),
                    sources=tuple(doc.get("src", ())),
                    node=doc["n"],
                )
            case "t":
                return FeedTyping(conv=doc["c"], user=doc["u"], node=doc["n"])
            case "down":
                return FeedNodeDown(node=doc["n"], ts=int(doc["ts"]))
    return None


def feed_pipeline(node: str) -> list[Doc]:
    """The ``$match`` of ``node``'s change stream: what other nodes did that it needs."""
    return [
        {
            "$match": {
                "$or": [
                    {"operationType": "insert", "ns.coll": "chunks"},
                    {
                        "operationType": "insert",
                        "ns.coll": "ephemeral",
                        "$or": [{"fullDocument.k": "down"}, {"fullDocument.n": {"$ne": node}}],
                    },
                    {
                        "operationType": {"$in": ["insert", "replace"]},
                        "ns.coll": "sessions",
                        "fullDocument.n": {"$ne": node},
                        # A sweep's ends are announced by its one node-down notice.
                        "fullDocument.swept": {"$ne": True},
                    },
                ]
            }
        }
    ]


class MongoFeed(ChangeFeed):
    """One node's change stream (see the module docstring); owned by one task."""

    def __init__(self, uri: str, database: str, node: str, after: object | None) -> None:
        self._client: MongoClient[Doc] = MongoClient(
            uri, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000
        )
        self._database = database
        self._node = node
        self._token: Mapping[str, Any] | None = after  # type: ignore[assignment]
        self._stream: ChangeStream[Doc] | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False
        self._last_poll = -FEED_MIN_GAP_S

    @property
    def token(self) -> object:
        return self._token

    def open_sync(self) -> None:
        """Open the stream at the token (or now); raises FeedLost / PyMongoError."""
        db = self._client.get_database(self._database)
        try:
            self._stream = db.watch(
                feed_pipeline(self._node),
                resume_after=self._token,
                max_await_time_ms=FEED_AWAIT_MS,
            )
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST:
                raise FeedLost(f"the change stream's history is gone: {exc}") from exc
            raise
        self._token = self._stream.resume_token

    def _poll_sync(self) -> list[FeedEvent]:
        """One getMore (at most ``FEED_AWAIT_MS``): the events of its batch."""
        events: list[FeedEvent] = []
        try:
            if self._stream is None:
                self.open_sync()  # reopened at the token after a failure
            stream = self._stream
            assert stream is not None
            while True:
                change = stream.try_next()
                if change is None:
                    break
                event = _decode_change(change)
                if event is not None:
                    events.append(event)
                # Drain the batch this getMore fetched, but never start a second getMore
                # here: it would hold these events back for up to FEED_AWAIT_MS.
                if not stream._cursor._data:
                    break
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST:
                raise FeedLost(f"the change stream's history is gone: {exc}") from exc
            self._reset()
            raise Unavailable(f"change stream failed: {exc}") from exc
        except PyMongoError as exc:
            self._reset()
            raise Unavailable(f"change stream failed: {exc}") from exc
        self._token = stream.resume_token
        return events

    def _reset(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(PyMongoError):
                stream.close()

    async def next(self) -> list[FeedEvent]:
        while not self._closed:
            await trio.sleep_until(self._last_poll + FEED_MIN_GAP_S)
            self._last_poll = trio.current_time()
            # Not abandoned on cancel: the getMore returns within FEED_AWAIT_MS, and what it
            # read advances the token only together with the events handed back.
            events = await trio.to_thread.run_sync(self._poll_sync, limiter=self._limiter)
            if events:
                return events
        raise trio.ClosedResourceError("the feed was closed")

    @classmethod
    async def open(cls, uri: str, database: str, node: str, after: object | None) -> MongoFeed:
        """A feed of ``node`` positioned at ``after`` (or now), its stream open."""
        feed = cls(uri, database, node, after)
        try:
            await trio.to_thread.run_sync(feed.open_sync, limiter=feed._limiter)
        except PyMongoError as exc:
            await feed.aclose()
            raise Unavailable(f"cannot open the change stream: {exc}") from exc
        except BaseException:
            await feed.aclose()
            raise
        return feed

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._limiter:
            await trio.to_thread.run_sync(self._close_sync)

    def _close_sync(self) -> None:
        self._reset()
        self._client.close()


class Cluster:
    """The blocking operations on ``leases``, ``sessions`` and ``ephemeral``."""

    def __init__(self, light: Database[Doc]) -> None:
        self._light = light

    def create_indexes(self) -> None:
        db = self._light
        db.leases.create_index([("swept", 1), ("exp", 1)])
        db.sessions.create_index("n")
        db.ephemeral.create_index("at", expireAfterSeconds=EPHEMERAL_TTL_S)

    def renew(self, node: str, expires: int) -> bool:
        leases = self._light.leases
        found = leases.find_one_and_update(
            {"_id": node, "swept": False}, {"$max": {"exp": expires}}
        )
        if found is not None:
            return True
        previous = leases.find_one_and_replace(
            {"_id": node}, {"exp": expires, "swept": False}, upsert=True
        )
        return previous is None

    def drop(self, node: str) -> None:
        self._light.leases.delete_one({"_id": node})

    def sweep(self, now_ms: int, known_dead: list[str]) -> list[str]:
        db = self._light
        dead: list[str] = []
        expired = {"$or": [{"exp": {"$lt": now_ms}}, {"_id": {"$in": known_dead}}]}
        for lease in db.leases.find({"swept": False, **expired}).sort("_id", 1):
            node, held_until = lease["_id"], int(lease["exp"])
            expires = min(held_until, now_ms)
            won = db.leases.update_one(
                {"_id": node, "swept": False, "exp": held_until},
                {"$set": {"swept": True, "exp": expires}},
            )
            if won.modified_count != 1:
                continue  # renewed meanwhile, or another node swept it
            held = list(db.sessions.find({"n": node, "s": {"$ne": None}}))
            if held:
                db.users.bulk_write(
                    [
                        UpdateOne({"_id": u}, {"$max": {"last_seen": expires}}, upsert=True)
                        for u in sorted({d["u"] for d in held})
                    ],
                    ordered=False,
                )
                db.sessions.bulk_write(
                    [
                        ReplaceOne(
                            {"_id": d["_id"], "s": d["s"]},
                            {
                                "u": d["u"],
                                "d": d["d"],
                                "s": None,
                                "n": node,
                                "ended": expires,
                                "swept": True,
                            },
                        )
                        for d in held
                    ],
                    ordered=False,
                )
            db.ephemeral.insert_one({"k": "down", "n": node, "ts": expires, "at": _utcnow()})
            dead.append(node)
        return dead

    def open_session(self, s: DeviceSession) -> None:
        doc = {**_session_doc(s), "n": s.node, "since": s.since}
        # An older session recorded late (sessions are written in the background) leaves a
        # newer one standing: no match, and the upsert's insert then hits the _id.
        with contextlib.suppress(DuplicateKeyError):
            self._light.sessions.replace_one(
                {"_id": doc["_id"], "since": {"$not": {"$gt": s.since}}}, doc, upsert=True
            )

    def close_session(self, user: str, device: str, session: str, ts: int) -> bool:
        sessions = self._light.sessions
        key = device_id(user, device)
        current = sessions.find_one({"_id": key, "s": session}, {"n": 1})
        if current is None:
            return False
        ended = {"u": user, "d": device, "s": None, "n": current["n"], "ended": ts}
        return bool(sessions.replace_one({"_id": key, "s": session}, ended).modified_count)

    def sessions(self) -> list[DeviceSession]:
        found = [
            DeviceSession(
                user=d["u"], device=d["d"], session=d["s"], node=d["n"], since=int(d["since"])
            )
            for d in self._light.sessions.find({"s": {"$ne": None}})
        ]
        return sorted(found, key=lambda s: (s.user, s.device))

    def publish(self, events: Sequence[Ephemeral]) -> None:
        at = _utcnow()
        docs: list[Doc] = []
        for event in events:
            match event:
                case FeedMarks():
                    docs.append(
                        {
                            "k": "m",
                            "c": event.conv,
                            "u": event.user,
                            "dl": event.delivered,
                            "rd": event.read,
                            "src": list(event.sources),
                            "n": event.node,
                            "at": at,
                        }
                    )
                case FeedTyping():
                    docs.append(
                        {"k": "t", "c": event.conv, "u": event.user, "n": event.node, "at": at}
                    )
        if docs:
            self._light.ephemeral.insert_many(docs, ordered=False)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
