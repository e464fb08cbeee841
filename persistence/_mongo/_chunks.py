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

import itertools
from collections.abc import Iterable, Sequence

import attrs
from pymongo import UpdateOne
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import PyMongoError

from .._errors import Unavailable
from .._types import Conversation, StoredMessage
from ._cache import BoundedCache
from ._schema import (
    BLOCK,
    PROBES_PER_QUERY,
    Doc,
    block_start,
    chunk_id,
    decode_conv,
    decode_message,
    has_member_event,
    split_blocks,
)

#: Most block starts one round of :meth:`ChunkLog.catch_up` probes ahead for a conversation
#: (the first jump round probes one, each further round twice as many).
MAX_JUMP = 64
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

    def read_last_seq(
        self, conv: str, session: ClientSession | None = None, doc: Doc | None = None
    ) -> int:
        """The last seq of ``conv`` (``doc``: its ``convs`` document, for the stored hint)."""
        return self.catch_up({conv: self.hint(conv, doc)}, session)[0][conv]

    def last_seqs(self, docs: Iterable[Doc]) -> dict[str, int]:
        """The last seq of each conversation of ``docs`` (their ``convs`` documents), each
        followed from its hint (see :meth:`catch_up`)."""
        ends, _changed = self.catch_up({d["_id"]: self.hint(d["_id"], d) for d in docs})
        return ends

    def catch_up(
        self, starts: dict[str, int], session: ClientSession | None = None
    ) -> tuple[dict[str, int], set[str]]:
        """Follow each conversation's chunks from a known chunk end to its current end.

        Every round is one ``$in`` point read for all the conversations still moving
        (SecantusDB answers ``_id`` equality with its primary index; an ``_id`` range would
        be a collection scan). The first round asks for the chunk right after each end (the
        chunk after end ``e`` has ``_id`` ``conv|e+1``): usually none, and then that
        conversation is done. Later rounds ask for the rest of the end's block (so they find
        the end within it exactly, no chunk spanning two blocks) and for the starts of the
        next blocks (1, 2, 4 … :data:`MAX_JUMP`), jumping to the furthest one found.

        Returns the ends and the conversations whose membership may have changed since their
        start: a membership event was passed, or a jump skipped chunks unread.
        """
        ends = dict(starts)
        changed: set[str] = set()
        moving = set(ends)
        fields = {"conv": 1, "first": 1, "last": 1, "msgs.k": 1}
        for round_no in itertools.count():
            if not moving:
                break
            jump = 0 if round_no == 0 else min(2 ** (round_no - 1), MAX_JUMP)
            probes: list[str] = []
            for conv_id in moving:
                nxt = ends[conv_id] + 1
                block = block_start(nxt)
                rest = range(nxt, nxt + 1 if jump == 0 else block + BLOCK)
                ahead = (block + j * BLOCK for j in range(1, jump + 1))
                probes += [chunk_id(conv_id, s) for s in (*rest, *ahead)]
            found: dict[str, dict[int, Doc]] = {}
            for doc in self._probe(probes, fields, session):
                found.setdefault(doc["conv"], {})[int(doc["first"])] = doc
            for conv_id in list(moving):
                start = ends[conv_id]
                end, skipped = self._follow(start, found.get(conv_id, {}), changed, conv_id)
                ends[conv_id] = end
                if skipped:
                    changed.add(conv_id)
                # Done when nothing followed, or (a later round) the end stayed in the block
                # whose rest this round read whole.
                if end == start or (jump > 0 and block_start(end) <= block_start(start + 1)):
                    moving.discard(conv_id)
        for conv_id, end in ends.items():
            self.note_end(conv_id, end)
        return ends, changed

    @staticmethod
    def _follow(
        end: int, found: dict[int, Doc], changed: set[str], conv_id: str
    ) -> tuple[int, bool]:
        """Walk ``found`` (first seq → chunk) from chunk end ``end``: contiguously, then from
        the furthest block start found beyond (a jump). Returns the new end and whether the
        jump skipped chunks unread. A chunk found after a gap (a concurrent write seen half)
        is left to the next round."""

        def walk(end: int) -> int:
            while (doc := found.get(end + 1)) is not None:
                end = int(doc["last"])
                if has_member_event(doc):
                    changed.add(conv_id)
            return end

        end = walk(end)
        beyond = [s for s in found if s > end + 1 and block_start(s) == s]
        if not beyond:
            return end, False
        top = found[max(beyond)]
        if has_member_event(top):
            changed.add(conv_id)
        return walk(int(top["last"])), True

    def _probe(
        self, ids: list[str], projection: dict[str, int] | None, session: ClientSession | None
    ) -> list[Doc]:
        """The chunks with these ``_id``s: ``$in`` point reads of PROBES_PER_QUERY ids each."""
        return [
            doc
            for k in range(0, len(ids), PROBES_PER_QUERY)
            for doc in self._db.chunks.find(
                {"_id": {"$in": ids[k : k + PROBES_PER_QUERY]}},
                projection=projection,
                session=session,
            )
        ]

    def wrote(self, conv: str, messages: list[StoredMessage]) -> None:
        """Note that this instance appended ``messages`` (one commit's) to ``conv``."""
        self.note_end(conv, messages[-1].seq)
        self._tails.put(conv, (messages[-1].seq, messages[-1].ts))
        chunks = len(split_blocks(messages))
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
        return self.fetch_many([(conv, lo, hi)], session)

    def fetch_many(
        self, spans: Sequence[tuple[str, int, int]], session: ClientSession | None = None
    ) -> list[StoredMessage]:
        """The messages of each (conv, lo, hi) of ``spans``, span after span in seq order;
        the probes of all the spans share their ``$in`` queries (a hello backlog of many
        conversations is a few queries, not one per conversation)."""
        messages: list[StoredMessage] = []
        for (conv, lo, hi), chunks in zip(spans, self._covering(spans, session), strict=True):
            if chunks:
                self.note_end(conv, int(chunks[-1]["last"]))
            messages += [
                decode_message(conv, m)
                for chunk in chunks
                for m in chunk["msgs"]
                if lo <= m["s"] <= hi
            ]
        return messages

    def _covering(
        self,
        spans: Sequence[tuple[str, int, int]],
        session: ClientSession | None = None,
        projection: dict[str, int] | None = None,
    ) -> list[list[Doc]]:
        """For each (conv, lo, hi) of ``spans``, the chunks holding seqs ``lo..hi``, by first
        seq (``projection``: which fields, which must then include ``first`` and ``last``).

        Pages of ``_id`` probes: the chunk holding lo starts in lo's block, at most at lo,
        and the others follow. Chunks are contiguous, so a page whose chunks end before the
        page does is the conversation's end (hi may lie far beyond it). The pages of all the
        spans go to the same queries.
        """
        covering: list[list[Doc]] = [[] for _ in spans]
        pages: dict[int, tuple[int, int]] = {}
        for i, (_conv, lo, hi) in enumerate(spans):
            start = block_start(max(lo, 1))
            if hi >= max(lo, 1):
                pages[i] = (start, min(start + PROBES_PER_QUERY - 1, hi))
        while pages:
            wanted = {
                chunk_id(spans[i][0], s) for i, (a, b) in pages.items() for s in range(a, b + 1)
            }
            found = {doc["_id"]: doc for doc in self._probe(sorted(wanted), projection, session)}
            later: dict[int, tuple[int, int]] = {}
            for i, (start, stop) in pages.items():
                conv, lo, hi = spans[i]
                page = [d for s in range(start, stop + 1) if (d := found.get(chunk_id(conv, s)))]
                covering[i] += [c for c in page if c["last"] >= lo]
                end = max((int(c["last"]) for c in page), default=0)
                if end >= stop and end < hi:
                    later[i] = (end + 1, min(end + PROBES_PER_QUERY, hi))
            pages = later
        for chunks in covering:
            chunks.sort(key=lambda c: int(c["first"]))
        return covering

    def headers(self, conv: str, lo: int, hi: int) -> list[tuple[int, str, str, int]]:
        """(seq, sender, kind, ts) of the messages of ``conv`` with ``lo <= seq <= hi``,
        read without their bodies (counting unread messages, finding activity)."""
        fields = {"first": 1, "last": 1, "msgs.s": 1, "msgs.u": 1, "msgs.k": 1, "msgs.t": 1}
        return [
            (int(m["s"]), m["u"], m["k"], int(m["t"]))
            for chunk in self._covering([(conv, lo, hi)], projection=fields)[0]
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
        # A key names the first seq of its chunk: one point read on _id.
        chunk = self._db.chunks.find_one({"_id": chunk_id(conv, doc["chunk"])})
        found = [decode_message(conv, m) for m in (chunk or {}).get("msgs", []) if m["s"] == seq]
        if not found:
            raise Unavailable(f"idempotency key {key!r} points at a missing message")
        return found[0]
