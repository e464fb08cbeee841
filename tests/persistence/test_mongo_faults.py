"""MongoStore against a real SecantusDB: injected failures, two nodes at once, SIGKILL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import trio

from persistence import (
    Draft,
    EmbeddedServer,
    EmbeddedServerError,
    MongoStore,
    StoredMessage,
    Unavailable,
)


@pytest.fixture
async def mongo(mongo_uri: str, mongo_db_name: str) -> AsyncIterator[MongoStore]:
    store = await MongoStore.connect(mongo_uri, mongo_db_name, backoff_s=0.001)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def admin(mongo_uri: str) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri)
    try:
        yield client
    finally:
        client.admin.command("configureFailPoint", "failCommand", mode="off")
        client.close()


def fail_command(client: pymongo.MongoClient[dict[str, Any]], mode: Any, **data: Any) -> None:
    client.admin.command("configureFailPoint", "failCommand", mode=mode, data=data)


def draft(cmid: str, body: str = "hi") -> Draft:
    return Draft(sender="alice", device="d1", cmid=cmid, body=body, ts=1)


async def stored_seqs(store: MongoStore, conv: str) -> list[int]:
    return [m.seq for m in await store.range(conv, 1, 10_000)]


async def test_transient_insert_error_is_retried_and_stored_once(
    mongo: MongoStore, admin: pymongo.MongoClient[dict[str, Any]]
) -> None:
    conv = await mongo.direct_conversation("alice", "bob")
    fail_command(
        admin,
        {"times": 2},
        failCommands=["insert"],
        errorCode=262,  # ExceededTimeLimit: retryable, not a topology change
        errorLabels=["RetryableWriteError"],
    )
    [message] = await mongo.append(conv.id, [draft("c1")])
    assert isinstance(message, StoredMessage) and message.seq == 1
    assert await stored_seqs(mongo, conv.id) == [1]


async def test_connection_closed_at_commit_stores_once(
    mongo: MongoStore, admin: pymongo.MongoClient[dict[str, Any]]
) -> None:
    conv = await mongo.direct_conversation("alice", "bob")
    fail_command(admin, {"times": 1}, failCommands=["commitTransaction"], closeConnection=True)
    [message] = await mongo.append(conv.id, [draft("c1"), draft("c2")][:1])
    assert isinstance(message, StoredMessage) and message.seq == 1
    [replayed] = await mongo.append(conv.id, [draft("c1")])
    assert replayed == message
    assert await stored_seqs(mongo, conv.id) == [1]


async def test_notification_job_commits_with_the_message_and_once(
    mongo: MongoStore, admin: pymongo.MongoClient[dict[str, Any]]
) -> None:
    # G8: the job is in the transaction of the message; the ambiguous commit (connection
    # closed) is retried, and the resend replays: still exactly one job, counted once.
    conv = await mongo.direct_conversation("alice", "bob")
    fail_command(admin, {"times": 1}, failCommands=["commitTransaction"], closeConnection=True)
    [message] = await mongo.append(conv.id, [draft("c1")], notify=["bob"])
    assert isinstance(message, StoredMessage) and message.seq == 1
    [replayed] = await mongo.append(conv.id, [draft("c1")], notify=["bob"])
    assert replayed == message
    [job] = await mongo.claim_notifications("n", 1_000, 500, 10)
    assert (job.user, job.conv, job.seq, job.count) == ("bob", conv.id, 1, 1)


async def test_resend_after_lost_reply_and_closed_connection_gets_original_seq(
    mongo: MongoStore, admin: pymongo.MongoClient[dict[str, Any]]
) -> None:
    # Simulated: the first append's reply is "lost" by discarding it (failCommand fails
    # before executing, so it cannot lose a reply itself); the resend then meets a closed
    # connection on its first insert, is retried, and must resolve through the cmid key.
    conv = await mongo.direct_conversation("alice", "bob")
    [lost] = await mongo.append(conv.id, [draft("c1")])
    await mongo.append(conv.id, [draft("c2")])
    fail_command(admin, {"times": 1}, failCommands=["insert"], closeConnection=True)
    [again, new] = await mongo.append(conv.id, [draft("c1"), draft("c3")])
    assert again == lost
    assert isinstance(new, StoredMessage) and new.seq == 3
    assert await stored_seqs(mongo, conv.id) == [1, 2, 3]


async def test_exhausted_retries_raise_unavailable(
    mongo: MongoStore, admin: pymongo.MongoClient[dict[str, Any]]
) -> None:
    conv = await mongo.direct_conversation("alice", "bob")
    fail_command(admin, "alwaysOn", failCommands=["insert"], closeConnection=True)
    with pytest.raises(Unavailable) as info:
        await mongo.append(conv.id, [draft("c1")])
    assert info.value.retryable
    fail_command(admin, "off")
    [message] = await mongo.append(conv.id, [draft("c1")])
    assert isinstance(message, StoredMessage) and message.seq == 1


async def test_two_stores_append_concurrently_without_gaps_or_duplicates(
    mongo_uri: str, mongo_db_name: str
) -> None:
    one = await MongoStore.connect(mongo_uri, mongo_db_name)
    two = await MongoStore.connect(mongo_uri, mongo_db_name)
    conv = await one.direct_conversation("alice", "bob")
    per_node, batch = 200, 10

    async def node(store: MongoStore, sender: str) -> None:
        for start in range(0, per_node, batch):
            drafts = [
                Draft(sender=sender, device="d", cmid=f"m{i}", body=f"{sender} {i}", ts=i)
                for i in range(start, start + batch)
            ]
            results = await store.append(conv.id, drafts)
            assert all(isinstance(r, StoredMessage) for r in results)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node, one, "alice")
            nursery.start_soon(node, two, "bob")
        stored = await one.range(conv.id, 1, 10_000)
        assert [m.seq for m in stored] == list(range(1, 2 * per_node + 1))
        bodies = sorted(m.body for m in stored)
        assert bodies == sorted(f"{u} {i}" for u in ("alice", "bob") for i in range(per_node))
        # Each sender's messages keep their send order.
        for user in ("alice", "bob"):
            mine = [int(m.body.split()[1]) for m in stored if m.sender == user]
            assert mine == list(range(per_node))
    finally:
        await one.aclose()
        await two.aclose()


async def test_acked_messages_survive_sigkill(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "node")
    await trio.to_thread.run_sync(server.start)
    try:
        store = await MongoStore.connect(server.uri, "durable")
        conv = await store.direct_conversation("alice", "bob")
        acked = await store.append(conv.id, [draft(f"c{i}", f"body {i}") for i in range(50)])
        await store.aclose()
        server.kill()
        await trio.to_thread.run_sync(server.restart)
        store = await MongoStore.connect(server.uri, "durable")
        assert await store.range(conv.id, 1, 100) == acked
        [replayed] = await store.append(conv.id, [draft("c7", "body 7")])
        assert replayed == acked[7]
        await store.aclose()
    finally:
        server.stop()


def test_locked_data_directory_is_refused(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "node"):
        second = EmbeddedServer(tmp_path / "node")
        with pytest.raises(EmbeddedServerError, match="in use by another messenger node"):
            second.start()


def test_data_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a directory")
    with pytest.raises(EmbeddedServerError, match="is not a directory"):
        EmbeddedServer(target).start()
