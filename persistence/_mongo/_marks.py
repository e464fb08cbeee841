"""Watermarks and the hello backlog of MongoStore: ``recv``, ``read`` and what they imply.

Watermarks are max-merged upserts, each clamped to what its user may see. The hello backlog
(:meth:`Marks.unsynced_many`) and the ``convs`` listing read them together with the chunk log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database

from .._rules import clamp_mark, convs_page
from .._types import (
    BacklogRange,
    Conversation,
    ConvPage,
    ConvRow,
    MemberMarks,
    ReadMark,
    RecvMark,
)
from ._chunks import ChunkLog
from ._schema import PROBES_PER_QUERY, Doc, decode_conv, read_id, recv_id

#: Watermark upserts per bulk-write command (see :meth:`Marks._bulk`).
MARKS_PER_COMMAND = 50

Backlog = list[BacklogRange]


class Marks:
    """The blocking operations on watermarks (run in worker threads by the store)."""

    def __init__(self, db: Database[Doc], light: Database[Doc], chunks: ChunkLog) -> None:
        self._db = db
        self._light = light
        self._chunks = chunks

    # -- writes ----------------------------------------------------------------------------

    def merge_recv(self, marks: list[RecvMark]) -> None:
        self._merge(
            self._light.recv,
            [
                (m.user, m.conv, m.seq, recv_id(m.user, m.device, m.conv), {"d": m.device})
                for m in marks
            ],
        )

    def merge_read(self, marks: list[ReadMark]) -> None:
        self._merge(
            self._light.read, [(m.user, m.conv, m.seq, read_id(m.user, m.conv), {}) for m in marks]
        )

    def _merge(
        self, collection: Collection[Doc], marks: list[tuple[str, str, int, str, dict[str, str]]]
    ) -> None:
        """Max-merge watermarks, each clamped to what its user may see: ``marks`` are
        ``(user, conv, seq, document id, extra identifying fields)``."""
        clamp = self._clamper((conv, seq) for _user, conv, seq, _id, _extra in marks)
        ops = []
        for user, conv, seq, doc_id, extra in marks:
            clamped = clamp(conv, user, seq)
            if clamped is not None:
                ops.append(
                    UpdateOne(
                        {"_id": doc_id},
                        {"$max": {"s": clamped}, "$setOnInsert": {"u": user, **extra, "c": conv}},
                        upsert=True,
                    )
                )
        self._bulk(collection, ops)

    def _clamper(self, marks: Iterable[tuple[str, int]]) -> Callable[[str, str, int], int | None]:
        highest: dict[str, int] = {}
        for conv, seq in marks:
            highest[conv] = max(seq, highest.get(conv, 0))
        wanted = sorted(highest)
        docs = list(self._db.convs.find({"_id": {"$in": wanted}}))
        known = {d["_id"]: decode_conv(d) for d in docs}
        # A known chunk end at or above every mark of a conversation clamps exactly like its
        # last seq would; only the others need their last seq read.
        lasts = {d["_id"]: self._chunks.hint(d["_id"], d) for d in docs}
        lasts.update(
            self._chunks.last_seqs([d for d in docs if highest[d["_id"]] > lasts[d["_id"]]])
        )

        def clamp(conv: str, user: str, seq: int) -> int | None:
            found = known.get(conv)
            return None if found is None else clamp_mark(found, user, lasts[conv], seq)

        return clamp

    @staticmethod
    def _bulk(collection: Collection[Doc], ops: list[UpdateOne]) -> None:
        # In slices: SecantusDB runs one command at a time, and a bulk write of hundreds of
        # upserts (~1 ms each) would hold up every append queued behind it.
        for k in range(0, len(ops), MARKS_PER_COMMAND):
            collection.bulk_write(ops[k : k + MARKS_PER_COMMAND], ordered=False)

    # -- reads -----------------------------------------------------------------------------

    def marks(self, conv: Conversation) -> dict[str, MemberMarks]:
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

    def device_recv(self, user: str, device: str, conv: str) -> int:
        doc = self._db.recv.find_one({"_id": recv_id(user, device, conv)})
        return 0 if doc is None else int(doc["s"])

    def conversations(self, user: str, device: str, limit: int, cursor: str | None) -> ConvPage:
        """A page of the ``convs`` listing of ``user`` as ``device`` sees it.

        Every page reads the ids and ends of all the user's conversations (one indexed query
        and the catch-up's ``$in`` rounds; the activity of each end from memory, or one small
        bodiless read the first time), then only its own rows: their documents and marks in
        ``$in`` batches, and their unread counts from bodiless reads.
        """
        ids = list(self._db.convs.find({"member_ids": user}, projection={"end_hint": 1}))
        ends = self._chunks.last_seqs(ids)
        stamps = self._chunks.last_ts(ends)
        page, next_cursor = convs_page(((stamps[c], c) for c in ends), limit, cursor)
        docs: dict[str, Doc] = {}
        recv: dict[tuple[str, str], int] = {}  # (user, conv) → highest recv of their devices
        mine: dict[str, int] = {}  # conv → this device's recv
        read: dict[tuple[str, str], int] = {}
        for k in range(0, len(page), PROBES_PER_QUERY):
            batch = page[k : k + PROBES_PER_QUERY]
            docs.update((d["_id"], d) for d in self._db.convs.find({"_id": {"$in": batch}}))
            for d in self._db.recv.find(
                {"c": {"$in": batch}}, projection={"u": 1, "d": 1, "c": 1, "s": 1}
            ):
                key = (d["u"], d["c"])
                recv[key] = max(recv.get(key, 0), int(d["s"]))
                if d["u"] == user and d["d"] == device:
                    mine[d["c"]] = int(d["s"])
            for d in self._db.read.find({"c": {"$in": batch}}, projection={"u": 1, "c": 1, "s": 1}):
                read[(d["u"], d["c"])] = int(d["s"])
        rows = []
        for conv_id in page:
            if conv_id not in docs:
                continue  # gone between the two reads (conversations are never deleted)
            conv = decode_conv(docs[conv_id])
            last = ends[conv_id]
            own_read = read.get((user, conv_id), 0)
            unread = (
                sum(
                    1
                    for seq, sender, kind, _ts in self._chunks.headers(conv_id, own_read + 1, last)
                    if kind == "text" and sender != user and conv.can_see(user, seq)
                )
                if own_read < last  # read up to the end (the usual case): nothing to count
                else 0
            )
            rows.append(
                ConvRow(
                    conv=conv_id,
                    kind=conv.kind,
                    title=conv.title,
                    members=tuple(conv.members),
                    last_seq=last,
                    delivered=mine.get(conv_id, 0),
                    read=own_read,
                    unread=unread,
                    others=tuple(
                        MemberMarks(
                            user=u,
                            delivered=recv.get((u, conv_id), 0),
                            read=read.get((u, conv_id), 0),
                        )
                        for u in conv.members
                        if u != user
                    ),
                )
            )
        return ConvPage(rows=tuple(rows), cursor=next_cursor)

    def unsynced_many(self, wanted: list[tuple[str, str]]) -> list[Backlog]:
        """Where the hello backlog of many (user, device) is, at once: a few commands for all
        of them, and no message read (the node reads them with ``range``, page by page)."""
        users = sorted({u for u, _ in wanted})
        recv: dict[tuple[str, str], dict[str, int]] = {}
        for d in self._db.recv.find({"u": {"$in": users}}):
            recv.setdefault((d["u"], d["d"]), {})[d["c"]] = int(d["s"])
        # Two indexed queries: SecantusDB answers an $or of them with a collection scan.
        docs = {d["_id"]: d for d in self._db.convs.find({"member_ids": {"$in": users}})}
        for doc in self._db.convs.find({"past_ids": {"$in": users}}):
            docs.setdefault(doc["_id"], doc)
        lasts = self._chunks.last_seqs(docs.values()) if docs else {}
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
    ) -> Backlog:
        out: Backlog = []
        for doc in docs:
            conv = decode_conv(doc)
            span = conv.visible_range(user)
            assert span is not None
            lo = max(span[0], recv.get(conv.id, 0) + 1)
            last = lasts[conv.id]
            hi = last if span[1] is None else min(span[1], last)
            if lo <= hi:
                out.append(BacklogRange(conv=conv.id, lo=lo, hi=hi))
        return out
