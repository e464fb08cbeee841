"""The chunk log of MongoStore: reading messages and conversation ends, and their caches.

Cached per conversation, all bounded (:class:`BoundedCache`) and all hints:

* a :class:`Head`: a chunk end and the membership valid through it, for the group commit;
* the highest chunk end seen (the chunk after it, if any, has ``_id`` ``chunk_id(conv,
  end + 1)``), where every "last seq" read starts;
* the chunks written since this instance last raised the stored ``end_hint``;
* the time of the last message at a known end (the ``convs`` listing's "latest activity").

A cached "member" is checked by the write itself (the chunk insert at end+1 fails if anybody,
e.g. a membership change on another node, wrote after that end); a cached "not a member" is
never trusted (re-read before refusing). So the cache has no staleness window for appends,
and an evicted entry only costs a read.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from pymongo import UpdateOne
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import PyMongoError

from .._errors import Unavailable
from .._types import Conversation, StoredMessage
from ._cache import BoundedCache
from ._schema import (
    CHUNK_MAX,
    PROBES_PER_QUERY,
    Doc,
    chunk_id,
    decode_conv,
    decode_message,
    has_member_event,
)

#: ``$in`` point-read rounds to catch up with other writers' chunks before one index range read.
CATCH_UP_PROBES = 2
#: A range read first asks for the chunks starting at most this many seqs before ``lo``; only
#: when none of them holds ``lo`` does it look further back (up to :data:`CHUNK_MAX`).
#: SecantusDB's cost of an index range is per document examined, so the window is small.
RANGE_LOOKBACK = 32
#: Chunks a store writes to a conversation between two updates of the conversation's
#: ``end_hint`` (a known chunk end that a cold "last seq" read starts from).
HINT_EVERY = 32
#: Conversations whose head (membership + end) one store keeps: ~1 KiB each for a group.
HEADS_MAX = 20_000
#: Conversations whose latest chunk end one store remembers.
ENDS_MAX = 100_000


@attrs.define(eq=False)
class Head:
    """A chunk end ``end`` of a conversation seen by this instance, and its membership then.

    ``conv`` is valid through ``end`` because it was read after ``end`` was (see
    :meth:`ChunkLog.load_heads`), or because this instance itself wrote every chunk since.
    A write at ``end + 1`` succeeds only if nobody wrote after ``end`` — no message and no
    membership change — so a cached head never admits a message a fresh read would refuse.
    """

    conv: Conversation
    end: int


class ChunkLog:
    """Reads of the ``chunks`` collection and the per-conversation hints that speed them up."""

    def __init__(self, db: Database[Doc], light: Database[Doc]) -> None:
        self._db = db
        self._light = light
        self.heads: BoundedCache[str, Head] = BoundedCache(HEADS_MAX)
        self._ends: BoundedCache[str, int] = BoundedCache(ENDS_MAX)
        self._unhinted: BoundedCache[str, int] = BoundedCache(ENDS_MAX)
        #: conv → (a chunk end, the ts of the message at that end).
        self._tails: BoundedCache[str, tuple[int, int]] = BoundedCache(ENDS_MAX)

    # -- ends ------------------------------------------------------------------------------

    def note_end(self, conv: str, end: int) -> None:
        """Remember ``end`` (a chunk end, i.e. some chunk's last seq) as a hint for ``conv``."""
        self._ends.raise_to(conv, end)

    def hint(self, conv: str, doc: Doc | None = None) -> int:
        """A chunk end of ``conv`` known to be at most its current end (0 if none known)."""
        stored = 0 if doc is None else int(doc.get("end_hint", 0))
        return max(stored, self._ends.get(conv) or 0)

    def ends_after(
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
            member = member or has_member_event(doc)
        self.note_end(conv, end)
        return end, member

    def read_last_seq(
        self, conv: str, session: ClientSession | None = None, doc: Doc | None = None
    ) -> int:
        """The last seq of ``conv`` (``doc``: its ``convs`` document, for the stored hint)."""
        return self.ends_after(conv, self.hint(conv, doc), session)[0]

    def last_seqs(self, docs: Iterable[Doc]) -> dict[str, int]:
        """The last seq of each conversation of ``docs`` (their ``convs`` documents).

        From each one's hint, one ``$in`` point read of the chunk that would follow it for all
        of them; only the conversations that moved on get an index range read each.
        """
        ends, _changed = self.catch_up({d["_id"]: self.hint(d["_id"], d) for d in docs})
        return ends

    def catch_up(self, starts: dict[str, int]) -> tuple[dict[str, int], set[str]]:
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
            probes = sorted(chunk_id(c, ends[c] + 1) for c in moving)
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
                if has_member_event(doc):
                    changed.add(conv_id)
            moving &= advanced
        for conv_id in sorted(moving):
            ends[conv_id], member = self.ends_after(conv_id, ends[conv_id])
            if member:
                changed.add(conv_id)
        for conv_id, end in ends.items():
            self.note_end(conv_id, end)
        return ends, changed

    def wrote(self, conv: str, messages: list[StoredMessage]) -> None:
        """Note that this instance appended ``messages`` (one commit's) to ``conv``."""
        self.note_end(conv, messages[-1].seq)
        self._tails.put(conv, (messages[-1].seq, messages[-1].ts))
        chunks = (len(messages) + CHUNK_MAX - 1) // CHUNK_MAX
        self._unhinted.put(conv, (self._unhinted.get(conv) or 0) + chunks)

    def raise_hints(self) -> None:
        """Store the end of each conversation this instance wrote HINT_EVERY chunks to since
        its last hint, so a cold "last seq" read examines few chunks. Only a hint: a light
        write, and a failure is ignored (the next commit tries again)."""
        due = sorted(c for c, n in self._unhinted.items() if n >= HINT_EVERY)
        ops = [
            UpdateOne({"_id": c}, {"$max": {"end_hint": end}})
            for c in due
            if (end := self._ends.get(c)) is not None
        ]
        if not ops:
            return
        try:
            self._light.convs.bulk_write(ops, ordered=False)
        except PyMongoError:
            return
        for conv_id in due:
            self._unhinted.pop(conv_id)

    # -- heads -----------------------------------------------------------------------------

    def load_heads(
        self, conv_ids: Iterable[str], starts: dict[str, Head] | None = None
    ) -> dict[str, Head]:
        """(Re)load the heads of ``conv_ids``, also into the cache (unknown ids: absent).

        Order matters: a membership is valid through an end found *after* it was read. For a
        conversation without a start, its document (membership and ``end_hint``) is read
        first, then the end from there; a membership change committed in between lies after
        the hint, so the catch-up passes its event and the membership is read again. A write
        at end+1 collides with any change after the end.
        """
        conv_ids = list(conv_ids)
        starts = dict(starts or {})
        cold = sorted(c for c in conv_ids if c not in starts)
        for k in range(0, len(cold), PROBES_PER_QUERY):
            for doc in self._db.convs.find({"_id": {"$in": cold[k : k + PROBES_PER_QUERY]}}):
                starts[doc["_id"]] = Head(decode_conv(doc), self.hint(doc["_id"], doc))
        ends, changed = self.catch_up({c: h.end for c, h in starts.items()})
        convs = {c: h.conv for c, h in starts.items()}
        reread = sorted(changed)
        for k in range(0, len(reread), PROBES_PER_QUERY):
            for doc in self._db.convs.find({"_id": {"$in": reread[k : k + PROBES_PER_QUERY]}}):
                convs[doc["_id"]] = decode_conv(doc)
        loaded = {c: Head(convs[c], ends[c]) for c in ends if c in convs}
        for conv_id in conv_ids:
            if conv_id in loaded:
                self.heads.put(conv_id, loaded[conv_id])
            else:
                self.heads.pop(conv_id)
        # Returned rather than read back from the cache: another worker thread (a
        # membership change of this store) may drop a cached head at any moment.
        return loaded

    # -- messages --------------------------------------------------------------------------

    def fetch(
        self, conv: str, lo: int, hi: int, session: ClientSession | None = None
    ) -> list[StoredMessage]:
        """The messages of ``conv`` with ``lo <= seq <= hi``, in seq order."""
        chunks = self._covering(conv, lo, hi, session)
        if chunks:
            self.note_end(conv, int(chunks[-1]["last"]))
        return [
            decode_message(conv, m) for chunk in chunks for m in chunk["msgs"] if lo <= m["s"] <= hi
        ]

    def _covering(
        self,
        conv: str,
        lo: int,
        hi: int,
        session: ClientSession | None = None,
        projection: dict[str, int] | None = None,
    ) -> list[Doc]:
        """The chunks of ``conv`` holding seqs ``lo..hi``, by first seq (``projection``:
        which fields, which must then include ``first`` and ``last``)."""
        lo = max(lo, 1)
        if hi < lo:
            return []
        near = max(1, lo - RANGE_LOOKBACK)
        chunks = list(
            self._db.chunks.find(
                {"conv": conv, "first": {"$gte": near, "$lte": hi}},
                projection=projection,
                session=session,
            )
        )
        if near > 1 and not any(c["first"] <= lo <= c["last"] for c in chunks):
            # The chunk holding lo (if any) starts further back: it is a big one.
            far = max(1, lo - CHUNK_MAX + 1)
            chunks += [
                c
                for c in self._db.chunks.find(
                    {"conv": conv, "first": {"$gte": far, "$lt": near}},
                    projection=projection,
                    session=session,
                )
                if c["last"] >= lo
            ]
        chunks.sort(key=lambda c: int(c["first"]))
        return chunks

    def headers(self, conv: str, lo: int, hi: int) -> list[tuple[int, str, str, int]]:
        """(seq, sender, kind, ts) of the messages of ``conv`` with ``lo <= seq <= hi``,
        read without their bodies (counting unread messages, finding activity)."""
        fields = {"first": 1, "last": 1, "msgs.s": 1, "msgs.u": 1, "msgs.k": 1, "msgs.t": 1}
        return [
            (int(m["s"]), m["u"], m["k"], int(m["t"]))
            for chunk in self._covering(conv, lo, hi, projection=fields)
            for m in chunk["msgs"]
            if lo <= m["s"] <= hi
        ]

    def last_ts(self, ends: dict[str, int]) -> dict[str, int]:
        """The time of each conversation's message at ``ends[conv]`` (0 for an empty one):
        from memory when this instance knows that end, else one bodiless read."""
        out: dict[str, int] = {}
        for conv, end in ends.items():
            cached = self._tails.get(conv)
            if cached is not None and cached[0] == end:
                out[conv] = cached[1]
                continue
            found = self.headers(conv, end, end) if end > 0 else []
            out[conv] = found[0][3] if found else 0
            if found:
                self._tails.put(conv, (end, out[conv]))
        return out

    def lookup_key(self, key: str) -> StoredMessage | None:
        """The message stored under idempotency key ``key``, or ``None``."""
        doc = self._db.keys.find_one({"_id": key})
        if doc is None:
            return None
        conv, seq = doc["conv"], int(doc["seq"])
        if "chunk" in doc:
            # Keys written since the group commit name their chunk: one point read on _id.
            chunk = self._db.chunks.find_one({"_id": chunk_id(conv, doc["chunk"])})
            found = [
                decode_message(conv, m) for m in (chunk or {}).get("msgs", []) if m["s"] == seq
            ]
        else:
            found = self.fetch(conv, seq, seq)  # older keys: a range read
        if not found:
            raise Unavailable(f"idempotency key {key!r} points at a missing message")
        return found[0]
