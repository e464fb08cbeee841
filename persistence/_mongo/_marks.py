"""Watermarks and the hello backlog of MongoStore: ``recv``, ``read`` and what they imply.

Watermarks are max-merged upserts, each clamped to what its user may see. The hello backlog
(:meth:`Marks.unsynced_many`) and the ``convs`` listing read them together with the chunk log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database

from .._rules import clamp_mark, unread_count
from .._types import Conversation, ConvRow, MemberMarks, ReadMark, RecvMark, StoredMessage
from ._chunks import ChunkLog
from ._schema import Doc, decode_conv, read_id, recv_id

#: Watermark upserts per bulk-write command (see :meth:`Marks._bulk`).
MARKS_PER_COMMAND = 50

Backlog = list[tuple[Conversation, list[StoredMessage]]]


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

    def conversations(self, user: str, device: str) -> list[ConvRow]:
        """The ``convs`` listing of ``user`` as ``device`` sees it."""
        rows = []
        docs = list(self._db.convs.find({"member_ids": user}, sort=[("_id", 1)]))
        lasts = self._chunks.last_seqs(docs)
        for doc in docs:
            conv = decode_conv(doc)
            last = lasts[conv.id]
            marks = self.marks(conv)
            read = marks[user].read
            rows.append(
                ConvRow(
                    conv=conv.id,
                    kind=conv.kind,
                    title=conv.title,
                    members=tuple(conv.members),
                    last_seq=last,
                    delivered=self.device_recv(user, device, conv.id),
                    read=read,
                    unread=unread_count(
                        conv, user, read, self._chunks.fetch(conv.id, read + 1, last)
                    ),
                    others=tuple(marks[u] for u in conv.members if u != user),
                )
            )
        return rows

    def unsynced_many(self, wanted: list[tuple[str, str]]) -> list[Backlog]:
        """The hello backlog of many (user, device) at once: a few commands for all of them."""
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
        out = []
        for doc in docs:
            conv = decode_conv(doc)
            span = conv.visible_range(user)
            assert span is not None
            lo = max(span[0], recv.get(conv.id, 0) + 1)
            last = lasts[conv.id]
            hi = last if span[1] is None else min(span[1], last)
            if lo <= hi:
                out.append((conv, self._chunks.fetch(conv.id, lo, hi)))
        return out
