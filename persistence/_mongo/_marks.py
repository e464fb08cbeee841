"""Watermarks and the hello backlog of MongoStore: the ``marklog`` and ``marks`` collections.

A batch of marks (:meth:`Marks.merge`, one per window of the node's mark writer) is ONE
durable insert into ``marklog``: a single document listing every mark of the batch,
journaled before it returns, so a receipt sent after it never announces a mark a crash
could take back (G5). One insert per batch instead of one update per conversation: on
SecantusDB an update costs ~0.5 ms of store CPU, a listed mark ~40 us. Every few seconds
(:meth:`Marks.fold`, :data:`FOLD_EVERY_S`) the store folds what it logged into the
per-conversation ``marks`` documents (one ``$max`` update per conversation touched since,
however many batches touched it) and deletes those log documents, in one transaction; log
documents left by a store that died are folded by any other once they are
:data:`STALE_LOG_MS` old.

Readers see both: they read the log first, then the ``marks`` documents, and max-merge
(a fold that commits in between moves marks from the log into documents read afterwards,
so nothing is missed). The hello backlog (:meth:`Marks.unsynced_many`) and the ``convs``
listing read the documents of the user's conversations with one ``$in`` query.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable

from pymongo import UpdateOne
from pymongo.client_session import ClientSession
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
from ._runner import Runner
from ._schema import (
    PROBES_PER_QUERY,
    Doc,
    decode_conv,
    read_field,
    recv_field,
    recv_owner,
)

#: Conversation updates per bulk-write command of one fold (one commit for all of them).
MARKS_PER_COMMAND = 50
#: How often the node asks the store to fold its marks log (Store.FOLD_MARKS_EVERY_S).
FOLD_EVERY_S = 2.0
#: Log documents this old belong to a store that stopped folding (it died): any store folds them.
STALE_LOG_MS = 60_000

Backlog = list[BacklogRange]
#: conversation -> "recv.<field>" / "read.<field>" -> seq
Pending = dict[str, dict[str, int]]


def _max_into(target: Pending, conv: str, path: str, seq: int) -> None:
    fields = target.setdefault(conv, {})
    if seq > fields.get(path, 0):
        fields[path] = seq


class Marks:
    """The blocking operations on watermarks (run in worker threads by the store)."""

    def __init__(
        self,
        db: Database[Doc],
        chunks: ChunkLog,
        runner: Runner,
        known_direct: Callable[[str], Conversation | None],
    ) -> None:
        self._db = db
        self._chunks = chunks
        self._runner = runner
        #: The direct conversation an id names (its membership never changes), or None.
        self._known_direct = known_direct
        # What this store logged and has not folded yet, and the log documents holding it.
        # Worker threads share them (a merge may run while a fold does), hence the lock.
        self._lock = threading.Lock()
        self._unfolded: Pending = {}
        self._logged: list[str] = []

    # -- writes ----------------------------------------------------------------------------

    def merge(self, recv: list[RecvMark], read: list[ReadMark]) -> None:
        """Max-merge ``recv`` and ``read`` marks, each clamped to what its user may see: one
        durable insert of a log document."""
        clamp = self._clamper([(m.conv, m.seq) for m in recv] + [(m.conv, m.seq) for m in read])
        batch: Pending = {}
        for r in recv:
            if (seq := clamp(r.conv, r.user, r.seq)) is not None:
                _max_into(batch, r.conv, f"recv.{recv_field(r.user, r.device)}", seq)
        for m in read:
            if (seq := clamp(m.conv, m.user, m.seq)) is not None:
                _max_into(batch, m.conv, f"read.{read_field(m.user)}", seq)
        if not batch:
            return
        doc_id = uuid.uuid4().hex
        entries = [[c, path, seq] for c in sorted(batch) for path, seq in sorted(batch[c].items())]
        # A retry after an ambiguous failure may log the batch twice: harmless (max-merge).
        self._db.marklog.insert_one({"_id": doc_id, "ts": int(time.time() * 1000), "m": entries})
        with self._lock:
            for c, fields in batch.items():
                for path, seq in fields.items():
                    _max_into(self._unfolded, c, path, seq)
            self._logged.append(doc_id)

    def fold(self) -> int:
        """Fold the marks this store logged (and stale log documents of stores that died)
        into the ``marks`` documents, in one transaction; returns the log documents folded."""
        with self._lock:
            unfolded, self._unfolded = self._unfolded, {}
            logged, self._logged = self._logged, []
        try:
            cutoff = int(time.time() * 1000) - STALE_LOG_MS
            ids = list(logged)
            for doc in self._db.marklog.find({"ts": {"$lt": cutoff}}):
                ids.append(doc["_id"])
                for c, path, seq in doc["m"]:
                    _max_into(unfolded, c, path, int(seq))
            if ids:
                self._runner.transaction(lambda s: self._write_fold(unfolded, ids, s))
        except BaseException:
            with self._lock:  # folded next time (the log still holds all of it)
                for c, fields in unfolded.items():
                    for path, seq in fields.items():
                        _max_into(self._unfolded, c, path, seq)
                self._logged[:0] = logged
            raise
        return len(ids)

    def _write_fold(self, unfolded: Pending, ids: list[str], s: ClientSession) -> None:
        ops = [UpdateOne({"_id": c}, {"$max": unfolded[c]}, upsert=True) for c in sorted(unfolded)]
        # In slices: one command at a time on SecantusDB; one commit for all of them.
        for k in range(0, len(ops), MARKS_PER_COMMAND):
            self._db.marks.bulk_write(ops[k : k + MARKS_PER_COMMAND], ordered=False, session=s)
        for k in range(0, len(ids), PROBES_PER_QUERY):
            self._db.marklog.delete_many({"_id": {"$in": ids[k : k + PROBES_PER_QUERY]}}, session=s)

    def _clamper(self, marks: Iterable[tuple[str, int]]) -> Callable[[str, str, int], int | None]:
        highest: dict[str, int] = {}
        for conv, seq in marks:
            highest[conv] = max(seq, highest.get(conv, 0))
        # A direct conversation's membership never changes (its id says it): it needs
        # no read. The others are read in a few $in queries.
        known: dict[str, Conversation] = {}
        starts: dict[str, int] = {}
        cold = []
        for conv in sorted(highest):
            direct = self._known_direct(conv)
            if direct is None:
                cold.append(conv)
            else:
                known[conv], starts[conv] = direct, self._chunks.hint(conv)
        for k in range(0, len(cold), PROBES_PER_QUERY):
            for d in self._db.convs.find({"_id": {"$in": cold[k : k + PROBES_PER_QUERY]}}):
                known[d["_id"]], starts[d["_id"]] = decode_conv(d), self._chunks.hint(d["_id"], d)
        # A known chunk end at or above every mark of a conversation clamps exactly like its
        # last seq would; only the others need their last seq read.
        lasts = dict(starts)
        behind = {c: end for c, end in starts.items() if highest[c] > end}
        if behind:
            lasts.update(self._chunks.catch_up(behind)[0])

        def clamp(conv: str, user: str, seq: int) -> int | None:
            found = known.get(conv)
            return None if found is None else clamp_mark(found, user, lasts[conv], seq)

        return clamp

    # -- reads -----------------------------------------------------------------------------

    def _docs(self, convs: Iterable[str]) -> dict[str, Doc]:
        """The watermarks of ``convs`` as ``{"recv": {...}, "read": {...}}`` (absent: none
        yet): the log first, then the ``marks`` documents (a few ``$in`` reads)."""
        wanted = sorted(set(convs))
        logged: Pending = {}
        if wanted:
            want = set(wanted)
            for doc in self._db.marklog.find({}, projection={"m": 1}):
                for c, path, seq in doc["m"]:
                    if c in want:
                        _max_into(logged, c, path, int(seq))
        docs: dict[str, Doc] = {
            d["_id"]: d
            for k in range(0, len(wanted), PROBES_PER_QUERY)
            for d in self._db.marks.find({"_id": {"$in": wanted[k : k + PROBES_PER_QUERY]}})
        }
        for c, fields in logged.items():
            doc = docs.setdefault(c, {"_id": c})
            for path, seq in fields.items():
                kind, _, field = path.partition(".")
                marks = doc.setdefault(kind, {})
                marks[field] = max(int(marks.get(field, 0)), seq)
        return docs

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
        return self._member_marks(conv, self._docs([conv.id]).get(conv.id))

    def device_recv(self, user: str, device: str, conv: str) -> int:
        doc = self._docs([conv]).get(conv, {})
        return int(doc.get("recv", {}).get(recv_field(user, device), 0))

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
        for k in range(0, len(page), PROBES_PER_QUERY):
            batch = page[k : k + PROBES_PER_QUERY]
            docs.update((d["_id"], d) for d in self._db.convs.find({"_id": {"$in": batch}}))
        mark_docs = self._docs(page)
        field = recv_field(user, device)
        rows = []
        for conv_id in page:
            if conv_id not in docs:
                continue  # gone between the two reads (conversations are never deleted)
            conv = decode_conv(docs[conv_id])
            last = ends[conv_id]
            mark_doc = mark_docs.get(conv_id)
            marks = self._member_marks(conv, mark_doc)
            own_read = marks[user].read
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
                    delivered=int((mark_doc or {}).get("recv", {}).get(field, 0)),
                    read=own_read,
                    unread=unread,
                    others=tuple(marks[u] for u in conv.members if u != user),
                )
            )
        return ConvPage(rows=tuple(rows), cursor=next_cursor)

    def unsynced_many(self, wanted: list[tuple[str, str]]) -> list[Backlog]:
        """Where the hello backlog of many (user, device) is, at once: a few commands for all
        of them, and no message read (the node reads them with ``range``, page by page)."""
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
        out: Backlog = []
        for doc in docs:
            conv = decode_conv(doc)
            span = conv.visible_range(user)
            assert span is not None
            recv = int(mark_docs.get(conv.id, {}).get("recv", {}).get(field, 0))
            lo = max(span[0], recv + 1)
            last = lasts[conv.id]
            hi = last if span[1] is None else min(span[1], last)
            if lo <= hi:
                out.append(BacklogRange(conv=conv.id, lo=lo, hi=hi))
        return out
