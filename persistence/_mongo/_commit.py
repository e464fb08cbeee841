"""The group commit of MongoStore: many append() calls, many conversations, one transaction.

Concurrent ``append`` calls — from many conversation actors — are merged (by a
:class:`Coalescer`) into ONE transaction: one chunk per conversation (one per block it
reaches), one key per message, the offline-notification jobs they owe, one commit = one
journal flush. A duplicate chunk ``_id`` means another writer extended that conversation:
only that conversation's end is re-read (and its membership, if it may have changed) and the
merged write retried; a duplicate key means that message was stored before: it is replayed
from the key.

Re-run as a whole by the runner after a transient failure: that is safe because every
message of an earlier attempt that did commit is found by its key and replayed.
"""

from __future__ import annotations

import functools
import random
import time

import attrs
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import BulkWriteError, PyMongoError

from .._errors import StoreError, Unavailable
from .._rules import draft_error, implicit_direct, no_such_conversation, not_member, replay
from .._types import Conversation, Draft, StoredMessage
from ._chunks import ChunkLog, Head
from ._outbox import JobNote, JobRace, write_jobs
from ._runner import Runner, is_write_conflict
from ._schema import (
    DUPLICATE_KEY,
    Doc,
    chunk_doc,
    direct_doc,
    key_id,
    new_message_id,
    split_blocks,
)

#: Rounds of "someone else took that seq / that key" before giving up on one append.
MAX_ROUNDS = 64
#: Most drafts one merged commit carries: on SecantusDB the cost per message of a transaction
#: grows again past a few hundred documents (docs/benchmarks.md), and a bound keeps one
#: commit's latency bounded. A single bigger append() call is never split across commits.
MERGE_MAX_DRAFTS = 512

Outcome = list[StoredMessage | StoreError] | StoreError


@attrs.define(eq=False)
class Request:
    """One append() call: its drafts and the offline users to notify, merged with others."""

    conv: str
    drafts: list[Draft]
    notify: tuple[str, ...] = ()


@attrs.define(eq=False)
class CommitStats:
    """Merged commits so far and the append() calls they carried (calls / commits is the
    group-commit batch size), for metrics, the benchmark and tests."""

    commits: int = 0
    calls: int = 0


@attrs.define(eq=False)
class _Slot:
    """One draft of a merged commit and what became of it (``None``: not decided yet)."""

    conv: str
    draft: Draft
    notify: tuple[str, ...]
    key: str
    result: StoredMessage | StoreError | None = None
    #: An earlier slot of the same commit with the same key: this one replays its result.
    same_as: _Slot | None = None


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
        if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
            return exc
        hit = [int(e["index"]) for e in errors]
        return cls(
            [keys[i] for i in hit] if keys is not None else [],
            [convs[i] for i in hit] if convs is not None else [],
        )


class GroupCommit:
    """Writes a batch of :class:`Request` as one transaction; :meth:`commit` runs in a thread."""

    def __init__(
        self,
        db: Database[Doc],
        chunks: ChunkLog,
        runner: Runner,
        rng: random.Random,
    ) -> None:
        self._db = db
        self._chunks = chunks
        self._runner = runner
        self._rng = rng
        self.stats = CommitStats()

    def commit(self, batch: list[Request]) -> list[Outcome]:
        """One merged durable write for every request of ``batch``; counted once it succeeded."""
        outcomes = self._commit(batch)
        self.stats.commits += 1
        self.stats.calls += len(batch)
        return outcomes

    def _commit(self, batch: list[Request]) -> list[Outcome]:
        wanted = list(dict.fromkeys(request.conv for request in batch))
        cached = {c: h for c in wanted if (h := self._chunks.heads.get(c)) is not None}
        cached.update(self._chunks.load_heads([c for c in wanted if c not in cached]))
        heads: dict[str, Head | None] = {c: cached.get(c) for c in wanted}
        # Direct conversations not stored yet: their first message stores them (G7).
        unstored: set[str] = set()
        for conv_id in wanted:
            implicit = implicit_direct(conv_id) if heads[conv_id] is None else None
            if implicit is not None:
                heads[conv_id] = Head(implicit, 0)
                unstored.add(conv_id)
        per_request: list[list[_Slot] | StoreError] = []
        first_slot: dict[str, _Slot] = {}
        todo: dict[str, list[_Slot]] = {}
        fresh: set[str] = set()
        for request in batch:
            head = heads[request.conv]
            if head is None:
                per_request.append(no_such_conversation(request.conv))
                continue
            slots = [
                _Slot(request.conv, d, request.notify, key_id(d.sender, d.device, d.cmid))
                for d in request.drafts
            ]
            per_request.append(slots)
            for slot in slots:
                error = draft_error(slot.draft)
                if error is not None:
                    slot.result = error
                    continue
                if slot.key in first_slot:
                    slot.same_as = first_slot[slot.key]
                    continue
                first_slot[slot.key] = slot
                sender = slot.draft.sender
                if not head.conv.is_member(sender) and request.conv not in fresh:
                    # A cached "no" is never trusted: the sender may have been added by
                    # another node. (A cached "yes" is checked by the chunk insert itself.)
                    fresh.add(request.conv)
                    self._chunks.heads.pop(request.conv)
                    reloaded = self._chunks.load_heads([request.conv]).get(request.conv)
                    if reloaded is not None:
                        head = reloaded
                        unstored.discard(request.conv)
                    assert head is not None, "conversations are never deleted"
                    heads[request.conv] = head
                    # Slots judged on the old head are written at the new end: judge again.
                    self._judge(head.conv, todo.get(request.conv, []))
                if head.conv.is_member(sender):
                    todo.setdefault(request.conv, []).append(slot)
                else:
                    slot.result = self._refuse(head.conv, slot)
        contended = self._write_rounds(heads, todo, unstored)
        outcomes: list[Outcome] = []
        for request, judged in zip(batch, per_request, strict=True):
            if isinstance(judged, StoreError):
                outcomes.append(judged)
                continue
            for slot in judged:
                if slot.same_as is not None:
                    earlier = slot.same_as.result
                    if isinstance(earlier, StoredMessage):
                        slot.result = replay(earlier, slot.conv, slot.draft)
                    else:
                        slot.result = earlier
            results = [slot.result for slot in judged]
            if request.conv in contended or any(x is None for x in results):
                outcomes.append(
                    Unavailable(f"conversation {request.conv!r} is too contended to append")
                )
            else:
                outcomes.append([x for x in results if x is not None])
        return outcomes

    def _judge(self, conv: Conversation, slots: list[_Slot]) -> None:
        """Refuse (and drop from ``slots``) the slots whose sender ``conv`` has no more."""
        for slot in list(slots):
            if not conv.is_member(slot.draft.sender):
                slots.remove(slot)
                slot.result = self._refuse(conv, slot)

    def _refuse(self, conv: Conversation, slot: _Slot) -> StoredMessage | StoreError:
        # A former member may still replay what they sent before leaving.
        original = self._chunks.lookup_key(slot.key)
        if original is None:
            return not_member(conv, slot.draft.sender)
        return replay(original, conv.id, slot.draft)

    def _write_rounds(
        self, heads: dict[str, Head | None], todo: dict[str, list[_Slot]], unstored: set[str]
    ) -> set[str]:
        """Write ``todo`` in one transaction, fixing conflicts per conversation; returns the
        conversations given up on (too contended). ``unstored``: direct conversations whose
        document the transaction writes with their first message."""
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
                        id=new_message_id(),
                        sender=slot.draft.sender,
                        device=slot.draft.device,
                        cmid=slot.draft.cmid,
                        body=slot.draft.body,
                        ts=slot.draft.ts,
                    )
                    for n, slot in enumerate(slots, start=1)
                ]
            jobs = self._plan_jobs(heads, todo, plan)
            new_docs = [direct_doc(h.conv) for c in sorted(unstored & set(plan)) if (h := heads[c])]
            try:
                self._runner.transaction(functools.partial(self._write_group, plan, jobs, new_docs))
            except JobRace:
                # A concurrent writer opened the same user's job: the round is aborted whole
                # (messages included); the next one coalesces into that job.
                conflicts += 1
                continue
            except _Duplicates as dup:
                unstored.difference_update(dup.convs)  # stored by someone else meanwhile
                self._replay_duplicates(heads, todo, dup)
                todo = {conv: slots for conv, slots in todo.items() if slots}
                continue
            except PyMongoError as exc:
                if is_write_conflict(exc):
                    # A write conflict with a concurrent writer's open transaction: try again.
                    conflicts += 1
                    time.sleep(0.001 * self._rng.random() * min(conflicts, 10))
                    continue
                raise
            for conv_id, slots in todo.items():
                messages = plan[conv_id]
                for slot, message in zip(slots, messages, strict=True):
                    slot.result = message
                head = heads[conv_id]
                assert head is not None
                # The insert at head.end + 1 succeeded, so nothing (no membership change
                # either) came between: head.conv is still the membership at the new end.
                moved = heads[conv_id] = Head(head.conv, messages[-1].seq)
                self._chunks.heads.put(conv_id, moved)
                self._chunks.wrote(conv_id, messages)
            unstored.difference_update(plan)
            todo = {}
        self._chunks.raise_hints()
        return set()

    def _replay_duplicates(
        self, heads: dict[str, Head | None], todo: dict[str, list[_Slot]], dup: _Duplicates
    ) -> None:
        taken = set(dup.keys)
        for conv_id, slots in todo.items():
            for slot in [s for s in slots if s.key in taken]:
                # Stored before (another node, or our own attempt whose reply was lost).
                slots.remove(slot)
                original = self._chunks.lookup_key(slot.key)
                if original is None:
                    raise Unavailable(f"idempotency key {slot.key!r} vanished") from None
                slot.result = replay(original, conv_id, slot.draft)
        olds = {c: heads[c] for c in dup.convs}
        fresh = self._chunks.load_heads(dup.convs, {c: h for c, h in olds.items() if h is not None})
        for conv_id in dup.convs:
            old, head = olds[conv_id], fresh.get(conv_id)
            assert old is not None and head is not None
            heads[conv_id] = head
            if head.conv is not old.conv:  # membership changed: judge the slots again
                self._judge(head.conv, todo[conv_id])

    @staticmethod
    def _plan_jobs(
        heads: dict[str, Head | None],
        todo: dict[str, list[_Slot]],
        plan: dict[str, list[StoredMessage]],
    ) -> dict[str, JobNote]:
        """G8: the offline-notification job of each user named in ``notify`` by a request
        with a message in ``plan``, written by the same transaction: the first new message
        (conv, seq) of the commit, the number of new messages, the latest ts."""
        jobs: dict[str, JobNote] = {}
        for conv_id, slots in todo.items():
            head = heads[conv_id]
            assert head is not None
            for slot, message in zip(slots, plan[conv_id], strict=True):
                for user in slot.notify:
                    # head.conv is the membership at the new end (see Head).
                    if not head.conv.is_member(user):
                        continue
                    note = jobs.get(user)
                    if note is None:
                        jobs[user] = JobNote(conv_id, message.seq, message.ts, 1)
                    else:
                        note.count += 1
                        note.ts = max(note.ts, message.ts)
        return jobs

    def _write_group(
        self,
        plan: dict[str, list[StoredMessage]],
        jobs: dict[str, JobNote],
        new_docs: list[Doc],
        s: ClientSession,
    ) -> None:
        pieces = [(conv_id, piece) for conv_id, ms in plan.items() for piece in split_blocks(ms)]
        keys = [
            # "chunk": the first seq of the chunk holding it, so a replay is a point read.
            {
                "_id": key_id(m.sender, m.device, m.cmid),
                "conv": conv_id,
                "seq": m.seq,
                "chunk": piece[0].seq,
            }
            for conv_id, piece in pieces
            for m in piece
        ]
        chunks = [chunk_doc(conv_id, piece) for conv_id, piece in pieces]
        # ordered=False: every duplicate of the batch is reported at once, so one round
        # fixes all the conversations that collided (the transaction aborts either way).
        try:
            self._db.keys.insert_many(keys, ordered=False, session=s)
        except BulkWriteError as exc:
            raise _Duplicates.from_bulk(exc, [str(k["_id"]) for k in keys], None) from exc
        if new_docs:
            try:
                self._db.convs.insert_many(new_docs, ordered=False, session=s)
            except BulkWriteError as exc:
                raise _Duplicates.from_bulk(exc, None, [str(d["_id"]) for d in new_docs]) from exc
        try:
            self._db.chunks.insert_many(chunks, ordered=False, session=s)
        except BulkWriteError as exc:
            raise _Duplicates.from_bulk(exc, None, [str(c["conv"]) for c in chunks]) from exc
        write_jobs(self._db, jobs, s)
