"""MongoStore's group commit across conversations: many conversations appended at once by one
store and by two stores (two nodes) — each conversation stays 1..N gap-free and every message
is stored exactly once; cached heads never admit a message a fresh read would refuse."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from persistence import Draft, Forbidden, MongoStore, StoredMessage, Unavailable


@pytest.fixture
async def two(mongo_uri: str, mongo_db_name: str) -> AsyncIterator[tuple[MongoStore, MongoStore]]:
    one = await MongoStore.connect(mongo_uri, mongo_db_name)
    other = await MongoStore.connect(mongo_uri, mongo_db_name)
    try:
        yield one, other
    finally:
        await one.aclose()
        await other.aclose()


async def check_conversation(store: MongoStore, conv: str, expected: set[str]) -> None:
    stored = await store.range(conv, 1, 100_000)
    assert [m.seq for m in stored] == list(range(1, len(expected) + 1))
    assert sorted(m.body for m in stored) == sorted(expected)  # each exactly once
    assert await store.last_seq(conv) == len(expected)


async def test_many_conversations_through_one_store_are_merged(
    two: tuple[MongoStore, MongoStore],
) -> None:
    store, _ = two
    convs = [(await store.direct_conversation("alice", f"u{i}")).id for i in range(120)]
    per_conv = 4
    commits0, calls0 = store.stats.commits, store.stats.calls

    async def actor(conv: str) -> None:
        for k in range(per_conv):
            [stored] = await store.append(
                conv,
                [
                    Draft(
                        sender="alice",
                        device="d",
                        cmid=f"{conv.split(':')[2]}-{k}",
                        body=f"{conv} {k}",
                        ts=k,
                    )
                ],
            )
            assert isinstance(stored, StoredMessage) and stored.seq == k + 1

    async with trio.open_nursery() as nursery:
        for conv in convs:
            nursery.start_soon(actor, conv)
    for conv in convs:
        await check_conversation(store, conv, {f"{conv} {k}" for k in range(per_conv)})
    commits, calls = store.stats.commits - commits0, store.stats.calls - calls0
    assert calls == len(convs) * per_conv
    assert commits < calls / 4, f"appends were not merged: {calls} calls in {commits} commits"


async def test_two_stores_merge_many_conversations_without_gaps_or_duplicates(
    two: tuple[MongoStore, MongoStore],
) -> None:
    one, other = two
    convs = [(await one.direct_conversation("alice", f"u{i}")).id for i in range(40)]
    per_sender, batch = 12, 3

    async def actor(store: MongoStore, conv: str, sender: str) -> None:
        rng = random.Random(f"{conv}{sender}")
        tag = conv.split(":")[2]
        for start in range(0, per_sender, batch):
            drafts = [
                Draft(sender=sender, device="d", cmid=f"{tag}-m{i}", body=f"{sender} {i}", ts=i)
                for i in range(start, start + batch)
            ]
            results = await store.append(conv, drafts)
            assert all(isinstance(r, StoredMessage) for r in results)
            await trio.sleep(rng.random() * 0.002)

    async with trio.open_nursery() as nursery:
        for conv in convs:
            peer = conv.split(":")[2]
            nursery.start_soon(actor, one, conv, "alice")
            nursery.start_soon(actor, other, conv, peer)
    for conv in convs:
        peer = conv.split(":")[2]
        expected = {f"{u} {i}" for u in ("alice", peer) for i in range(per_sender)}
        await check_conversation(one, conv, expected)
        stored = await other.range(conv, 1, 1000)
        for user in ("alice", peer):  # each sender's messages keep their send order
            mine = [int(m.body.split()[1]) for m in stored if m.sender == user]
            assert mine == list(range(per_sender))
    # Resends through the other store replay the originals, whatever commit they were in.
    again = await other.append(
        convs[0],
        [
            Draft(
                sender="alice",
                device="d",
                cmid=f"{convs[0].split(':')[2]}-m0",
                body="alice 0",
                ts=0,
            )
        ],
    )
    assert again == [m for m in await one.range(convs[0], 1, 1000) if m.body == "alice 0"]


async def test_same_cmid_twice_in_one_merged_commit(two: tuple[MongoStore, MongoStore]) -> None:
    store, _ = two
    a = (await store.direct_conversation("alice", "bob")).id
    b = (await store.direct_conversation("alice", "carol")).id
    same = Draft(sender="alice", device="d", cmid="c1", body="hi", ts=1)
    results: dict[str, Any] = {}

    async def send(key: str, conv: str) -> None:
        results[key] = await store.append(conv, [same])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, "first", a)
        nursery.start_soon(send, "second", a)
        nursery.start_soon(send, "elsewhere", b)
    stored = [r[0] for r in results.values() if isinstance(r[0], StoredMessage)]
    assert len({(m.conv, m.seq, m.id) for m in stored}) == 1
    assert await store.last_seq(a) + await store.last_seq(b) == 1


async def test_cached_membership_follows_changes_made_by_another_node(
    two: tuple[MongoStore, MongoStore],
) -> None:
    one, other = two
    conv, _ = await one.create_group("alice", "Team", ["carol"], 1)
    [ok] = await one.append(conv.id, [Draft(sender="carol", device="d", cmid="c1", body="x", ts=1)])
    assert isinstance(ok, StoredMessage) and ok.seq == 2
    # Another node removes carol and adds dave; `one` still has the old membership cached.
    await other.remove_member(conv.id, "alice", "carol", 2)
    await other.add_member(conv.id, "alice", "dave", 3)
    late, dave = await one.append(
        conv.id,
        [
            Draft(sender="carol", device="d", cmid="c2", body="y", ts=4),
            Draft(sender="dave", device="d", cmid="d1", body="z", ts=4),
        ],
    )
    assert isinstance(late, Forbidden)
    assert isinstance(dave, StoredMessage) and dave.seq == 5
    # Carol's earlier message still replays for her although she has left.
    [replayed] = await one.append(
        conv.id, [Draft(sender="carol", device="d", cmid="c1", body="x", ts=9)]
    )
    assert replayed == ok


async def test_cancelled_appends_do_not_wedge_the_queue(two: tuple[MongoStore, MongoStore]) -> None:
    store, _ = two
    conv = (await store.direct_conversation("alice", "bob")).id
    rng = random.Random(3)

    async def maybe(k: int) -> None:
        # A cancelled leader's batch ends as Unavailable for the calls merged with it (the
        # Coalescer's contract: may or may not be stored, resending is safe); a call either
        # gets its result, that, or its own cancellation.
        with trio.move_on_after(rng.random() * 0.02), contextlib.suppress(Unavailable):
            await store.append(
                conv, [Draft(sender="alice", device="d", cmid=f"c{k}", body=f"{k}", ts=k)]
            )

    async with trio.open_nursery() as nursery:
        for k in range(60):
            nursery.start_soon(maybe, k)
    with trio.fail_after(10):
        [last] = await store.append(
            conv, [Draft(sender="bob", device="d", cmid="end", body="end", ts=0)]
        )
    assert isinstance(last, StoredMessage)
    stored = await store.range(conv, 1, 1000)
    assert [m.seq for m in stored] == list(range(1, len(stored) + 1))
    assert len({m.body for m in stored}) == len(stored)


async def test_cold_store_reads_what_another_store_wrote(
    mongo_uri: str, mongo_db_name: str
) -> None:
    """A second store (a node started later: no cached ends) finds the ends and ranges
    written by the first, also past the stored end hints and after a membership change."""
    writer = await MongoStore.connect(mongo_uri, mongo_db_name)
    try:
        group, _ = await writer.create_group("alice", "T", ["bob"], 1)
        expected = 1
        for i in range(70):  # 70 chunks of 1: more than one end hint
            [m] = await writer.append(
                group.id, [Draft(sender="alice", device="d", cmid=f"c{i}", body="x", ts=1)]
            )
            assert isinstance(m, StoredMessage)
            expected += 1
        await writer.add_member(group.id, "alice", "carol", 2)
        expected += 1
        reader = await MongoStore.connect(mongo_uri, mongo_db_name)
        try:
            assert await reader.last_seq(group.id) == expected
            messages = await reader.range(group.id, 1, expected)
            assert [m.seq for m in messages] == list(range(1, expected + 1))
            [m] = await reader.append(
                group.id, [Draft(sender="carol", device="d", cmid="k", body="x", ts=1)]
            )
            assert isinstance(m, StoredMessage) and m.seq == expected + 1
            # The writer's cached head is behind: its next append catches up.
            [n] = await writer.append(
                group.id, [Draft(sender="bob", device="d", cmid="k", body="x", ts=1)]
            )
            assert isinstance(n, StoredMessage) and n.seq == expected + 2
        finally:
            await reader.aclose()
    finally:
        await writer.aclose()


async def test_concurrent_first_messages_meet_in_one_direct_conversation(
    two: tuple[MongoStore, MongoStore],
) -> None:
    """Racing creations of a direct conversation (one store and two) all get it: the losing
    upsert (a duplicate key, or on SecantusDB no document at all) reads the winner's."""
    stores = [*two, two[0]]

    async def create(got: list[str], store: MongoStore, a: str, b: str) -> None:
        got.append((await store.direct_conversation(a, b)).id)

    for i in range(10):
        got: list[str] = []
        async with trio.open_nursery() as nursery:
            for k, store in enumerate(stores):
                a, b = (f"u{i}", "bob") if k % 2 == 0 else ("bob", f"u{i}")
                nursery.start_soon(create, got, store, a, b)
        assert got == [f"d:bob:u{i}"] * len(stores)
