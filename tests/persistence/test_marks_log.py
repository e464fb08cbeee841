"""MongoStore's watermarks: a batch is one durable log document, folded later; readers (any
store, any node) see logged and folded marks alike, and a dead store's log is folded by others."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from persistence import Draft, MongoStore, ReadMark, RecvMark
from persistence._mongo._marks import STALE_LOG_MS


@pytest.fixture
async def two(mongo_uri: str, mongo_db_name: str) -> AsyncIterator[tuple[MongoStore, MongoStore]]:
    one = await MongoStore.connect(mongo_uri, mongo_db_name)
    other = await MongoStore.connect(mongo_uri, mongo_db_name)
    try:
        yield one, other
    finally:
        await one.aclose()
        await other.aclose()


async def log_size(store: MongoStore) -> int:
    return await trio.to_thread.run_sync(store._db.marklog.count_documents, {})


async def test_logged_marks_are_read_everywhere_before_and_after_the_fold(
    two: tuple[MongoStore, MongoStore],
) -> None:
    writer, reader = two
    conv = await writer.direct_conversation("alice", "bob")
    drafts = [Draft(sender="alice", device="p", cmid=f"c{i}", body="x", ts=1) for i in range(5)]
    await writer.append(conv.id, drafts)
    await writer.merge_marks([RecvMark(user="bob", device="d", conv=conv.id, seq=2)], [])
    await writer.merge_marks(
        [RecvMark(user="bob", device="d", conv=conv.id, seq=4)],
        [ReadMark(user="bob", conv=conv.id, seq=3)],
    )
    assert await log_size(writer) == 2  # one document per batch, nothing folded yet
    assert await reader.device_recv("bob", "d", conv.id) == 4
    assert ((await reader.marks(conv.id))["bob"].read) == 3
    await writer.fold_marks()
    assert await log_size(writer) == 0
    assert await reader.device_recv("bob", "d", conv.id) == 4
    # Lower marks logged after the fold never move the folded ones back.
    await writer.merge_marks([RecvMark(user="bob", device="d", conv=conv.id, seq=1)], [])
    assert await reader.device_recv("bob", "d", conv.id) == 4
    [backlog] = await reader.unsynced("bob", "d")
    assert (backlog.lo, backlog.hi) == (5, 5)
    await writer.fold_marks()
    assert await reader.device_recv("bob", "d", conv.id) == 4


async def test_the_log_of_a_store_that_died_is_folded_by_another(
    two: tuple[MongoStore, MongoStore], mongo_uri: str, mongo_db_name: str
) -> None:
    _, survivor = two
    conv = await survivor.direct_conversation("carol", "dave")
    await survivor.append(conv.id, [Draft(sender="carol", device="p", cmid="k", body="x", ts=1)])
    dead = await MongoStore.connect(mongo_uri, mongo_db_name)
    await dead.merge_marks([RecvMark(user="dave", device="d", conv=conv.id, seq=1)], [])
    await dead.aclose()  # never folds
    # Make its log document old enough to count as abandoned.
    await trio.to_thread.run_sync(
        lambda: survivor._db.marklog.update_many({}, {"$inc": {"ts": -2 * STALE_LOG_MS}})
    )
    await survivor.fold_marks()
    assert await log_size(survivor) == 0
    assert await survivor.device_recv("dave", "d", conv.id) == 1
