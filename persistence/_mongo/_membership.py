"""Conversations and membership of MongoStore: creating them and changing who belongs.

A membership change writes its event chunk and the new membership (``v`` bumped, ``last_op``
recorded) in one durable transaction; a concurrent change or message makes it re-read and
try again, and a retried change that did commit before finds itself through ``last_op``.
"""

from __future__ import annotations

import functools

from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from protocol import MemberEvent

from .._errors import Unavailable
from .._rules import apply_member_change, member_message, plan_member_change
from .._types import Conversation, MemberOp, StoredMessage
from ._chunks import ChunkLog, Head
from ._commit import MAX_ROUNDS
from ._outbox import JobNote, JobRace, write_jobs
from ._runner import Runner, is_write_conflict
from ._schema import Doc, chunk_doc, load_conv, membership_fields, new_message_id


class _Contended(Exception):
    """Another writer changed the conversation under us; re-read and try again."""


class Membership:
    """The blocking operations on ``convs`` (run in worker threads by the store)."""

    def __init__(
        self,
        db: Database[Doc],
        chunks: ChunkLog,
        runner: Runner,
    ) -> None:
        self._db = db
        self._chunks = chunks
        self._runner = runner

    def create_group(
        self, conv: Conversation, event: StoredMessage, notify: tuple[str, ...]
    ) -> tuple[Conversation, StoredMessage]:
        """Write the group, its creation event and the jobs of ``notify`` in one transaction
        (retried whole when a concurrent writer opened one of those jobs meanwhile)."""
        doc = {
            "_id": conv.id,
            "kind": "group",
            "title": conv.title,
            "creator": conv.creator,
            "v": 0,
            "created_by_msg": event.id,
            "end_hint": 1,
            **membership_fields(conv),
        }
        chunk = chunk_doc(conv.id, [event])

        notes = _job_notes(conv, notify, event)

        def body(s: ClientSession) -> None:
            self._db.convs.insert_one(doc, session=s)
            self._db.chunks.insert_one(chunk, session=s)
            write_jobs(self._db, notes, s)

        try:
            for _ in range(MAX_ROUNDS):
                try:
                    self._runner.transaction(body)
                    break
                except JobRace:
                    continue
            else:
                raise Unavailable(f"could not record the notifications of group {conv.id!r}")
        except DuplicateKeyError:
            # Only our own earlier attempt can hold this random id (ambiguous failure).
            existing, _ = load_conv(self._db, conv.id)
            stored = self._chunks.fetch(conv.id, 1, 1)
            if not stored or stored[0].id != event.id:
                raise
            return existing, stored[0]
        self._chunks.heads.put(conv.id, Head(conv, 1))
        self._chunks.note_end(conv.id, 1)
        return conv, event

    def contacts(self, user: str) -> set[str]:
        found: set[str] = set()
        for doc in self._db.convs.find({"member_ids": user}, projection={"member_ids": 1}):
            found.update(doc["member_ids"])
        found.discard(user)
        return found

    def change(
        self,
        conv_id: str,
        op: MemberOp,
        actor: str,
        user: str,
        ts: int,
        op_id: str,
        notify: tuple[str, ...] = (),
    ) -> StoredMessage | None:
        """Apply one membership change (``op_id``: unique per change, for retries); the
        jobs of ``notify`` (the members among them) are written with the event."""
        try:
            return self._change_rounds(conv_id, op, actor, user, ts, op_id, notify)
        finally:
            # Not needed for correctness (a cached head is re-validated by the next chunk
            # insert), but our own change should not cost us a duplicate-key round.
            self._chunks.heads.pop(conv_id)

    def _change_rounds(
        self,
        conv_id: str,
        op: MemberOp,
        actor: str,
        user: str,
        ts: int,
        op_id: str,
        notify: tuple[str, ...],
    ) -> StoredMessage | None:
        for _ in range(MAX_ROUNDS):
            conv, doc = load_conv(self._db, conv_id)
            if doc.get("last_op") == op_id:
                # An earlier attempt committed but its reply was lost.
                return self._chunks.fetch(conv_id, doc["last_op_seq"], doc["last_op_seq"])[0]
            plan = plan_member_change(conv, op, actor, user)
            if plan is None:
                return None
            kind, target = plan
            try:
                return self._runner.transaction(
                    functools.partial(
                        self._write_event, conv, doc, kind, actor, target, ts, op_id, notify
                    )
                )
            except (DuplicateKeyError, _Contended, JobRace):
                continue
            except PyMongoError as exc:
                if is_write_conflict(exc):
                    continue  # a write conflict with a concurrent writer: re-read and retry
                raise
        raise Unavailable(f"conversation {conv_id!r} is too contended to change membership")

    def _write_event(
        self,
        conv: Conversation,
        doc: Doc,
        kind: MemberOp,
        actor: str,
        target: str,
        ts: int,
        op_id: str,
        notify: tuple[str, ...],
        session: ClientSession,
    ) -> StoredMessage:
        seq = self._chunks.read_last_seq(conv.id, session, doc) + 1
        change = MemberEvent(op=kind, by=actor, users=(target,))
        event = member_message(conv.id, seq, new_message_id(), change, ts)
        self._db.chunks.insert_one(chunk_doc(conv.id, [event]), session=session)
        changed = apply_member_change(conv, kind, target, seq)
        result = self._db.convs.update_one(
            {"_id": conv.id, "v": doc["v"]},
            {
                "$set": {
                    **membership_fields(changed),
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
        write_jobs(self._db, _job_notes(changed, notify, event), session)
        return event


def _job_notes(
    conv: Conversation, notify: tuple[str, ...], event: StoredMessage
) -> dict[str, JobNote]:
    """G8: the job a membership event owes each member of ``conv`` named in ``notify``."""
    return {u: JobNote(conv.id, event.seq, event.ts, 1) for u in notify if conv.is_member(u)}
