"""Watermarks and the hello backlog of MongoStore: the ``marks`` collection.

One document per conversation holds every watermark of it (see :mod:`._schema`): the
``recv`` mark of each device and the ``read`` mark of each user. A batch of marks is one
``$max`` update per conversation, all of them in ONE durable transaction (journaled: a
receipt sent after it never announces a mark a crash could take back, G5), and a 1:1
message's two marks (the recipient's ``recv`` and the sender's ack-driven rise) land in one
document. The hello backlog (:meth:`Marks.unsynced_many`) and the ``convs`` listing read
the documents of the user's conversations with one ``$in`` query.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pymongo import UpdateOne
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from .._errors import Unavailable
from .._rules import clamp_mark, unread_count
from .._types import Conversation, ConvRow, MemberMarks, ReadMark, RecvMark, StoredMessage
from ._chunks import ChunkLog
from ._runner import Runner
from ._schema import (
    DUPLICATE_KEY,
    PROBES_PER_QUERY,
    Doc,
    decode_conv,
    read_field,
    recv_field,
    recv_owner,
)

#: Conversation updates per bulk-write command of one marks transaction (see Marks.merge).
MARKS_PER_COMMAND = 50
#: Tries of one marks transaction that lost an upsert race (two first writers of a document).
UPSERT_RACES = 3

Backlog = list[tuple[Conversation, list[StoredMessage]]]


class Marks:
    """The blocking operations on watermarks (run in worker threads by the store)."""

    def __init__(self, db: Database[Doc], chunks: ChunkLog, runner: Runner) -> None:
        self._db = db
        self._chunks = chunks
        self._runner = runner

    # -- writes ----------------------------------------------------------------------------

    def merge(self, recv: list[RecvMark], read: list[ReadMark]) -> None:
        """Max-merge ``recv`` and ``read`` marks, each clamped to what its user may see, in
        one durable transaction."""
        clamp = self._clamper([(m.conv, m.seq) for m in recv] + [(m.conv, m.seq) for m in read])
        updates: dict[str, dict[str, int]] = {}

        def add(conv: str, path: str, seq: int | None) -> None:
            if seq is not None:
                fields = updates.setdefault(conv, {})
                fields[path] = max(seq, fields.get(path, 0))

        for r in recv:
            add(r.conv, f"recv.{recv_field(r.user, r.device)}", clamp(r.conv, r.user, r.seq))
        for m in read:
            add(m.conv, f"read.{read_field(m.user)}", clamp(m.conv, m.user, m.seq))
        if not updates:
            return
        ops = [
            UpdateOne({"_id": conv}, {"$max": updates[conv]}, upsert=True)
            for conv in sorted(updates)
        ]

        def body(s: ClientSession) -> None:
            # In slices: a bulk write of hundreds of updates would hold up every command
            # queued behind it on SecantusDB (one command at a time); one commit for all.
            for k in range(0, len(ops), MARKS_PER_COMMAND):
                self._db.marks.bulk_write(ops[k : k + MARKS_PER_COMMAND], ordered=False, session=s)

        for _ in range(UPSERT_RACES):
            try:
                self._runner.transaction(body)
                return
            except DuplicateKeyError:
                continue  # another writer created a document first: it exists now
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise
        raise Unavailable("watermarks: too many concurrent first writers; retry")

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

    # -- reads -----------------------------------------------------------------------------

    def _docs(self, convs: Iterable[str]) -> dict[str, Doc]:
        """The ``marks`` documents of ``convs`` (absent: no mark yet), a few ``$in`` reads."""
        wanted = sorted(set(convs))
        return {
            d["_id"]: d
            for k in range(0, len(wanted), PROBES_PER_QUERY)
            for d in self._db.marks.find({"_id": {"$in": wanted[k : k + PROBES_PER_QUERY]}})
        }

    @staticmethod
    def _member_marks(conv: Conversation, doc: Doc | None) -> dict[str, MemberMarks]:
        users = sorted([*conv.members, *conv.departed])
        delivered = dict.fromkeys(users, 0)
        read = dict.fromkeys(users, 0)
        if doc is not None:
            for field, seq in doc.get("recv", {}).items():
                user, _device = recv_owner(field)
                if user in delivered:
                    delivered[user] = max(delivered[user], int(seq))
            for user in users:
                read[user] = int(doc.get("read", {}).get(read_field(user), 0))
        return {u: MemberMarks(user=u, delivered=delivered[u], read=read[u]) for u in users}

    def marks(self, conv: Conversation) -> dict[str, MemberMarks]:
        return self._member_marks(conv, self._db.marks.find_one({"_id": conv.id}))

    def device_recv(self, user: str, device: str, conv: str) -> int:
        field = recv_field(user, device)
        doc = self._db.marks.find_one({"_id": conv}, projection={f"recv.{field}": 1})
        return 0 if doc is None else int(doc.get("recv", {}).get(field, 0))

    def conversations(self, user: str, device: str) -> list[ConvRow]:
        """The ``convs`` listing of ``user`` as ``device`` sees it."""
        rows = []
        docs = list(self._db.convs.find({"member_ids": user}, sort=[("_id", 1)]))
        lasts = self._chunks.last_seqs(docs)
        mark_docs = self._docs(d["_id"] for d in docs)
        field = recv_field(user, device)
        for doc in docs:
            conv = decode_conv(doc)
            last = lasts[conv.id]
            mark_doc = mark_docs.get(conv.id)
            marks = self._member_marks(conv, mark_doc)
            read = marks[user].read
            rows.append(
                ConvRow(
                    conv=conv.id,
                    kind=conv.kind,
                    title=conv.title,
                    members=tuple(conv.members),
                    last_seq=last,
                    delivered=int((mark_doc or {}).get("recv", {}).get(field, 0)),
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
        # Two indexed queries: SecantusDB answers an $or of them with a collection scan.
        docs = {d["_id"]: d for d in self._db.convs.find({"member_ids": {"$in": users}})}
        for doc in self._db.convs.find({"past_ids": {"$in": users}}):
            docs.setdefault(doc["_id"], doc)
        lasts = self._chunks.last_seqs(docs.values()) if docs else {}
        mark_docs = self._docs(docs)
        by_user: dict[str, list[Doc]] = {}
        for conv_id in sorted(docs):
            doc = docs[conv_id]
            for user in {*doc.get("member_ids", []), *doc.get("past_ids", [])}:
                by_user.setdefault(user, []).append(doc)
        return [
            self._unsynced_one(user, device, by_user.get(user, []), mark_docs, lasts)
            for user, device in wanted
        ]

    def _unsynced_one(
        self,
        user: str,
        device: str,
        docs: list[Doc],
        mark_docs: dict[str, Doc],
        lasts: dict[str, int],
    ) -> Backlog:
        field = recv_field(user, device)
        out = []
        for doc in docs:
            conv = decode_conv(doc)
            span = conv.visible_range(user)
            assert span is not None
            recv = int(mark_docs.get(conv.id, {}).get("recv", {}).get(field, 0))
            lo = max(span[0], recv + 1)
            last = lasts[conv.id]
            hi = last if span[1] is None else min(span[1], last)
            if lo <= hi:
                out.append((conv, self._chunks.fetch(conv.id, lo, hi)))
        return out
