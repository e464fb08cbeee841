"""MongoStore's chunk layout: no chunk spans two blocks, and every read is ``_id`` probes —
ranges anywhere (also past the end), "last seq" from a cold store (jumps of whole blocks),
a membership change that a jump skips over, and a database of the earlier layout."""

from __future__ import annotations

import pymongo
import pytest

from persistence import BacklogRange, BadInput, Draft, Forbidden, MongoStore, StoredMessage
from persistence._mongo._schema import BLOCK, block_start


def drafts(sender: str, tag: str, n: int) -> list[Draft]:
    return [
        Draft(sender=sender, device="d", cmid=f"{tag}-{k}", body=f"{tag} {k}", ts=k)
        for k in range(n)
    ]


async def test_chunks_stay_in_their_block_and_any_range_reads_back(
    mongo_uri: str, mongo_db_name: str
) -> None:
    writer = await MongoStore.connect(mongo_uri, mongo_db_name)
    cold = await MongoStore.connect(mongo_uri, mongo_db_name)
    try:
        conv = (await writer.direct_conversation("alice", "bob")).id
        sizes = [1, 20, 3, 2 * BLOCK + 5, BLOCK, 7, 1, 1, 3 * BLOCK]
        for n, size in enumerate(sizes):
            stored = await writer.append(conv, drafts("alice", f"b{n}", size))
            assert all(isinstance(m, StoredMessage) for m in stored)
        end = sum(sizes)
        for chunk in writer._db.chunks.find({"conv": conv}):
            assert block_start(chunk["first"]) == block_start(chunk["last"]), chunk["_id"]
        # A store that never saw the conversation walks to its end from the stored hint.
        assert await cold.last_seq(conv) == end
        for lo, hi in [(1, 1), (1, end), (2, 17), (BLOCK, BLOCK + 1), (30, 31), (end, end)]:
            assert [m.seq for m in await cold.range(conv, lo, hi)] == list(range(lo, hi + 1))
        assert [m.seq for m in await cold.range(conv, end - 3, 100_000)] == list(
            range(end - 3, end + 1)
        )
        assert await cold.range(conv, end + 1, end + 50) == []
    finally:
        await writer.aclose()
        await cold.aclose()


async def test_a_removal_skipped_by_a_jump_is_still_seen(
    mongo_uri: str, mongo_db_name: str
) -> None:
    """A store holding an old head of a group learns of a removal many blocks later: its
    write collides, the catch-up jumps over the blocks between and reads the membership."""
    stale = await MongoStore.connect(mongo_uri, mongo_db_name)
    other = await MongoStore.connect(mongo_uri, mongo_db_name)
    try:
        conv, _ = await stale.create_group("alice", "Team", ["carol"], 1)
        await stale.append(conv.id, drafts("carol", "c", 1))  # stale caches "carol is a member"
        await other.append(conv.id, drafts("alice", "a", 4 * BLOCK))
        await other.remove_member(conv.id, "alice", "carol", 2)
        await other.append(conv.id, drafts("alice", "z", 3 * BLOCK))
        [refused] = await stale.append(conv.id, drafts("carol", "late", 1))
        assert isinstance(refused, Forbidden)
        assert await stale.last_seq(conv.id) == 2 + 4 * BLOCK + 1 + 3 * BLOCK
    finally:
        await stale.aclose()
        await other.aclose()


async def test_a_database_of_the_earlier_layout_is_refused(
    mongo_uri: str, mongo_db_name: str
) -> None:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri)
    try:
        db = client[mongo_db_name]
        db.chunks.create_index([("conv", 1), ("first", 1)], name="conv_first")
        # Empty: the index is dropped and the store starts.
        store = await MongoStore.connect(mongo_uri, mongo_db_name)
        await store.aclose()
        assert "conv_first" not in db.chunks.index_information()
        db.chunks.create_index([("conv", 1), ("first", 1)], name="conv_first")
        db.chunks.insert_one({"_id": "d:a:b|0000000000000001", "conv": "d:a:b", "first": 1})
        with pytest.raises(BadInput, match="earlier layout"):
            await MongoStore.connect(mongo_uri, mongo_db_name)
    finally:
        client.close()


async def test_many_ranges_read_at_once(mongo_uri: str, mongo_db_name: str) -> None:
    """read_ranges: the spans' probes share queries; each span still reads exactly its seqs
    (two spans of one conversation, a span past the end, an empty conversation)."""
    store = await MongoStore.connect(mongo_uri, mongo_db_name)
    try:
        convs = [(await store.direct_conversation("alice", f"u{i}")).id for i in range(4)]
        for n, conv in enumerate(convs[:3]):
            await store.append(conv, drafts("alice", f"r{n}", 5 + n * BLOCK))
        spans = [
            BacklogRange(conv=convs[0], lo=2, hi=4),
            BacklogRange(conv=convs[1], lo=BLOCK, hi=10_000),
            BacklogRange(conv=convs[0], lo=5, hi=5),
            BacklogRange(conv=convs[2], lo=2 * BLOCK + 6, hi=2 * BLOCK + 9),
            BacklogRange(conv=convs[3], lo=1, hi=3),
        ]
        got = [(m.conv, m.seq) for m in await store.read_ranges(spans)]
        assert got == [
            *((convs[0], s) for s in (2, 3, 4)),
            *((convs[1], s) for s in range(BLOCK, BLOCK + 6)),
            (convs[0], 5),
        ]
    finally:
        await store.aclose()
