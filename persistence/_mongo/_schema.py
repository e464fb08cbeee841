"""MongoStore's schema: collections, document ids, codecs and indexes, in one place.

Why it looks like this: measured on SecantusDB, every secondary index entry costs about as
much as a whole document, so the hot path avoids them (see docs/benchmarks.md).

Collections (all in one database):

* ``chunks``: one document per group-committed batch of one conversation within one
  *block* (seqs ``k*BLOCK+1 .. (k+1)*BLOCK``: a chunk never spans two, so a batch crossing a
  block boundary is two chunks), ``_id = chunk_id(conv, first seq)`` (``conv|first-seq`` in
  16 digits), with ``conv``, ``first``, ``last`` and the batch's messages in ``msgs`` (see
  :func:`encode_message`). The ``_id`` is the (conv, seq) uniqueness: two writers that both
  believe the conversation ends at seq N both insert ``conv|N+1`` and exactly one wins.
  Chunks never overlap because every writer starts after a known chunk end, and they are
  contiguous, so the chunk after end ``e`` has ``_id`` ``chunk_id(conv, e + 1)``; and the
  chunk holding seq ``s`` starts in ``block_start(s) .. s``. So every read is ``_id`` point
  reads (``$in``; see :mod:`._chunks`) and there is **no secondary index**: on SecantusDB
  one costs more per chunk than the chunk itself (and SecantusDB answers ``_id`` ranges with
  a collection scan, hence no ranges). Schema change (2026-12-02): earlier versions had
  chunks of up to 256 messages across blocks and an index ``(conv, first)``
  (``conv_first``); such a database is refused at connect (see :func:`create_indexes`).
* ``keys``: one document per text message, ``_id = key_id(sender, device, cmid)`` →
  ``conv``, ``seq`` and ``chunk`` (the first seq of the chunk holding it): the idempotency
  key, unique forever (G2). Keys and chunks are written in one durable transaction, so no
  key exists without its message and no message without its key.
* ``convs``: one document per conversation, ``_id`` the conversation id: ``kind``, ``title``,
  ``creator``, ``members`` (user → seq that added them), ``departed`` (user → [added,
  removed]), the arrays ``member_ids``/``past_ids`` (indexed, for the per-user listings), a
  version ``v`` (optimistic concurrency of membership changes), ``last_op``/``last_op_seq``
  (the last membership change, so a retried change finds itself) and ``end_hint`` (a chunk
  end at most the real end, where a cold "last seq" read starts).
* ``marklog``: the durable log of watermark batches, one document per batch:
  ``_id`` random, ``ts`` (wall ms of the write), ``m`` a list of ``[conv, path, seq]`` where
  ``path`` is ``recv.<recv_field(user, device)>`` or ``read.<read_field(user)>``. Written
  journaled (a receipt follows it), folded into ``marks`` and deleted every few seconds by
  the store that wrote it (or, after :data:`._marks.STALE_LOG_MS`, by any store). Small by
  construction; readers read all of it. No secondary index.
* ``marks``: one document per conversation, ``_id`` the conversation id, holding every
  folded watermark of it: ``recv`` maps ``recv_field(user, device)`` to that device's recv
  mark and ``read`` maps ``read_field(user)`` to that user's read mark (``$max``-merged, so
  they never move backwards). A watermark is the max of its ``marks`` entry and every
  ``marklog`` entry for it. No secondary index: every read knows its conversations.
  Schema change (2026-12-02): ``marklog`` + ``marks`` replace the per-mark collections
  ``recv`` (``user|device|conv``) and ``read`` (``user|conv``) of earlier versions, which are
  no longer read (their marks are lost on upgrade: at worst a redundant push).
* ``users``: ``_id`` the user id, ``last_seen`` (max-merged).
* ``jobs``: the offline-notification outbox, one document per job: ``user``, ``conv``,
  ``seq``, ``count``, ``first_ts``, ``last_ts``, ``open`` (the user's current offline
  period), ``done``, ``owner``, ``lease_until``, ``due`` (claimable from; none once
  delivered), ``claim`` (the claim that leased it). A partial unique index on ``user`` where
  ``open`` makes "one open job per user" a database fact; ``due`` for claims (``_outbox``).

The collections that several nodes share — ``leases``, ``sessions`` and ``ephemeral`` — are
documented in :mod:`._cluster`.

Write concerns: everything an acknowledgement or a receipt depends on is ``majority`` +
``j: true`` (:data:`DURABLE`): messages, keys, membership, jobs and watermarks (one
``marklog`` insert per batch of marks); presence facts and hints use ``w: 1``
(:data:`LIGHT`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import CollectionInvalid
from pymongo.write_concern import WriteConcern

from .._errors import BadInput
from .._rules import implicit_direct, no_such_conversation
from .._types import Conversation, StoredMessage

Doc = dict[str, Any]

#: Seqs per block; no chunk spans two blocks, so the chunk holding a seq is found by at most
#: BLOCK ``_id`` probes, and a jump of one block is one probe (see :mod:`._chunks`). Small, as
#: a range read probes up to BLOCK - 1 ids before its first seq; big batches are split into
#: chunks of at most BLOCK messages (in the same transaction).
BLOCK = 16
#: Ids per ``$in`` point-read query (SecantusDB's ``$in`` gets slower per id when long).
PROBES_PER_QUERY = 100
#: MongoDB's duplicate key error code.
DUPLICATE_KEY = 11000
DURABLE = WriteConcern(w="majority", j=True)
LIGHT = WriteConcern(w=1)


def key_id(sender: str, device: str, cmid: str | None) -> str:
    """The ``keys`` ``_id`` of a message: (sender, device, cmid), its identity forever."""
    return f"{sender}|{device}|{cmid}"


def chunk_id(conv: str, first: int) -> str:
    """The ``chunks`` ``_id`` of the chunk of ``conv`` starting at seq ``first``."""
    return f"{conv}|{first:016d}"


def block_start(seq: int) -> int:
    """The first seq of the block holding ``seq`` (seqs start at 1)."""
    return (seq - 1) // BLOCK * BLOCK + 1


def split_blocks(messages: Sequence[StoredMessage]) -> list[Sequence[StoredMessage]]:
    """Consecutive messages of one conversation cut at block boundaries: one chunk each."""
    pieces: list[Sequence[StoredMessage]] = []
    k = 0
    while k < len(messages):
        n = block_start(messages[k].seq) + BLOCK - messages[k].seq
        pieces.append(messages[k : k + n])
        k += n
    return pieces


def recv_field(user: str, device: str) -> str:
    """The key of a device's recv mark in a ``marks`` document's ``recv`` map.

    User and device ids are ``[A-Za-z0-9_.-]``; a ``.`` would split a MongoDB update path, so
    it is written as ``:`` (which no id contains); ``|`` separates the two ids.
    """
    return f"{user}|{device}".replace(".", ":")


def recv_owner(field: str) -> tuple[str, str]:
    """The (user, device) of a :func:`recv_field` key."""
    user, _, device = field.replace(":", ".").partition("|")
    return user, device


def read_field(user: str) -> str:
    """The key of a user's read mark in a ``marks`` document's ``read`` map."""
    return user.replace(".", ":")


def device_id(user: str, device: str) -> str:
    """The id of a user's device in the collections keyed by device (``sessions``)."""
    return f"{user}|{device}"


def new_message_id() -> str:
    """A fresh server message id (96 random bits, hex)."""
    return os.urandom(12).hex()


def encode_message(m: StoredMessage) -> Doc:
    """A message as an element of a chunk's ``msgs`` (short field names: it is per message)."""
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


def decode_message(conv: str, m: Doc) -> StoredMessage:
    """The inverse of :func:`encode_message`."""
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


def chunk_doc(conv: str, messages: Sequence[StoredMessage]) -> Doc:
    """The chunk holding ``messages`` (consecutive seqs of ``conv`` within one block)."""
    assert block_start(messages[0].seq) == block_start(messages[-1].seq), "spans two blocks"
    return {
        "_id": chunk_id(conv, messages[0].seq),
        "conv": conv,
        "first": messages[0].seq,
        "last": messages[-1].seq,
        "msgs": [encode_message(m) for m in messages],
    }


def has_member_event(chunk: Doc) -> bool:
    """Whether a chunk (projected with at least ``msgs.k``) holds a membership event."""
    return any(m.get("k") == "member" for m in chunk["msgs"])


def decode_conv(doc: Doc) -> Conversation:
    """A ``convs`` document as a :class:`Conversation`."""
    return Conversation(
        id=doc["_id"],
        kind=doc["kind"],
        title=doc.get("title"),
        creator=doc.get("creator"),
        members={u: int(seq) for u, seq in doc["members"].items()},
        departed={u: (int(span[0]), int(span[1])) for u, span in doc.get("departed", {}).items()},
    )


def membership_fields(conv: Conversation) -> Doc:
    """The membership fields of a ``convs`` document."""
    return {
        "members": dict(conv.members),
        "departed": {u: list(span) for u, span in conv.departed.items()},
        "member_ids": list(conv.members),
        "past_ids": list(conv.departed),
    }


def load_conv(
    db: Database[Doc], conv: str, session: ClientSession | None = None
) -> tuple[Conversation, Doc]:
    """Read ``conv`` (decoded, and its document); :class:`NotFound` if it does not exist.

    A direct conversation not stored yet (no message) is its implicit self, with an empty
    document (see :func:`persistence._rules.implicit_direct`).
    """
    doc = db.convs.find_one({"_id": conv}, session=session)
    if doc is None:
        implicit = implicit_direct(conv)
        if implicit is None:
            raise no_such_conversation(conv)
        return implicit, {}
    return decode_conv(doc), doc


def direct_doc(conv: Conversation) -> Doc:
    """The ``convs`` document of a direct conversation, written with its first message."""
    return {"_id": conv.id, "kind": "direct", "v": 0, **membership_fields(conv)}


#: Collections without a secondary index, created up front with the others (see below).
_PLAIN_COLLECTIONS = ("chunks", "keys", "marklog", "marks", "users")


def create_indexes(db: Database[Doc]) -> None:
    """Create every collection and index of the schema (idempotent).

    Every collection exists before the first request: none is created implicitly by a write
    in the middle of traffic, where a crash of the embedded server right after a creation
    left a data directory it could not reopen (seen once in a kill-and-restart test).
    A database whose chunks predate blocks (it has the ``conv_first`` index) is refused:
    its chunks cross block boundaries, which the reads of :mod:`._chunks` would not find.
    """
    existing = set(db.list_collection_names())
    for name in _PLAIN_COLLECTIONS:
        if name not in existing:
            with contextlib.suppress(CollectionInvalid):  # another store created it meanwhile
                db.create_collection(name)
    if "chunks" in existing and "conv_first" in db.chunks.index_information():
        if db.chunks.find_one({}, projection={"_id": 1}) is not None:
            raise BadInput(
                f"database {db.name!r} holds chunks of an earlier layout (index conv_first): "
                "start with a new database or data directory"
            )
        db.chunks.drop_index("conv_first")
    db.convs.create_index("member_ids")
    db.convs.create_index("past_ids")
    db.jobs.create_index(
        "user", unique=True, name="one_open_job", partialFilterExpression={"open": True}
    )
    db.jobs.create_index([("done", 1), ("first_ts", 1)])
    db.jobs.create_index("due")  # claims read windows of it (see _outbox)
