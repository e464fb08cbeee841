"""The Store's cluster contract — leases, device sessions, ephemeral events and the change
feed — run against MemoryStore and MongoStore (real SecantusDB over a socket)."""

from __future__ import annotations

import pytest
import trio

from persistence import (
    ChangeFeed,
    DeviceSession,
    Draft,
    FeedEvent,
    FeedMarks,
    FeedMessages,
    FeedNodeDown,
    FeedSession,
    FeedTyping,
    Store,
    StoredMessage,
)

WAIT = 10.0


def session(user: str, device: str, sid: str, node: str, since: int = 100) -> DeviceSession:
    return DeviceSession(user=user, device=device, session=sid, node=node, since=since)


async def events_until(
    feed: ChangeFeed, done: type[FeedEvent] | None = None, count: int = 1
) -> list[FeedEvent]:
    """Read the feed until ``count`` events (of type ``done``, if given) arrived."""
    found: list[FeedEvent] = []
    with trio.fail_after(WAIT):
        while sum(1 for e in found if done is None or isinstance(e, done)) < count:
            found.extend(await feed.next())
    return found


async def test_feed_carries_messages_and_member_events_in_order(store: Store) -> None:
    feed = await store.watch("B")
    try:
        conv = await store.direct_conversation("alice", "bob")
        drafts = [
            Draft(sender="alice", device="d", cmid=f"c{i}", body=f"#{i}", ts=5) for i in (1, 2)
        ]
        stored = await store.append(conv.id, drafts)
        group, created = await store.create_group("alice", "team", ["bob", "carol"], 6)
        removed = await store.remove_member(group.id, "alice", "carol", 7)
        events = await events_until(feed, FeedMessages, 3)
    finally:
        await feed.aclose()
    batches = [e for e in events if isinstance(e, FeedMessages)]
    assert [(b.conv, list(b.messages)) for b in batches] == [
        (conv.id, stored),
        (group.id, [created]),
        (group.id, [removed]),
    ]


async def test_feed_skips_the_watchers_own_ephemeral_and_session_events(store: Store) -> None:
    feed_a = await store.watch("A")
    feed_b = await store.watch("B")
    try:
        await store.publish(
            [
                FeedTyping(conv="d:alice:bob", user="alice", node="A"),
                FeedMarks(
                    conv="d:alice:bob",
                    user="alice",
                    delivered=3,
                    read=None,
                    sources=("p",),
                    node="A",
                ),
            ]
        )
        await store.open_session(session("alice", "phone", "s1", "A"))
        seen_by_b = await events_until(feed_b, FeedSession)
        await store.publish([FeedTyping(conv="d:alice:bob", user="bob", node="B")])
        seen_by_a = await events_until(feed_a, FeedTyping)
    finally:
        await feed_a.aclose()
        await feed_b.aclose()
    assert seen_by_b == [
        FeedTyping(conv="d:alice:bob", user="alice", node="A"),
        FeedMarks(
            conv="d:alice:bob", user="alice", delivered=3, read=None, sources=("p",), node="A"
        ),
        FeedSession(user="alice", device="phone", session="s1", node="A", ts=100),
    ]
    assert seen_by_a == [FeedTyping(conv="d:alice:bob", user="bob", node="B")]


async def test_a_newer_session_replaces_the_old_one_on_any_node(store: Store) -> None:
    feed_a = await store.watch("A")
    try:
        await store.open_session(session("alice", "phone", "s1", "A"))
        await store.open_session(session("alice", "phone", "s2", "B", since=200))
        [event] = await events_until(feed_a, FeedSession)
        assert event == FeedSession(user="alice", device="phone", session="s2", node="B", ts=200)
        # The replaced connection's end changes nothing; the current one's end is announced.
        assert not await store.close_session("alice", "phone", "s1", 300)
        assert await store.sessions() == [session("alice", "phone", "s2", "B", since=200)]
        assert await store.close_session("alice", "phone", "s2", 400)
        [ended] = await events_until(feed_a, FeedSession)
    finally:
        await feed_a.aclose()
    assert ended == FeedSession(user="alice", device="phone", session=None, node="B", ts=400)
    assert await store.sessions() == []


async def test_an_older_session_recorded_late_leaves_the_newer_one(store: Store) -> None:
    # Node A records its (older) session of the device after node B recorded the newer one
    # (sessions are written in the background): B's must stand, or B's close of it later
    # finds nothing to end and every node keeps the device connected (sim --nodes 3 seed 15).
    await store.open_session(session("alice", "phone", "s2", "B", since=200))
    await store.open_session(session("alice", "phone", "s1", "A", since=100))
    assert await store.sessions() == [session("alice", "phone", "s2", "B", since=200)]
    assert not await store.close_session("alice", "phone", "s1", 300)
    assert await store.close_session("alice", "phone", "s2", 400)
    assert await store.sessions() == []


async def test_sweep_ends_the_sessions_of_an_expired_node_once(store: Store) -> None:
    assert await store.renew_lease("A", 1_000, 5_000)
    assert await store.renew_lease("B", 1_000, 5_000)
    await store.open_session(session("alice", "phone", "s1", "A"))
    await store.open_session(session("bob", "laptop", "s2", "B"))
    feed = await store.watch("C")
    try:
        assert await store.sweep_expired(5_999) == []
        assert await store.renew_lease("B", 4_000, 5_000)  # B is alive, A is not
        assert await store.sweep_expired(7_000) == ["A"]
        assert await store.sweep_expired(7_000) == []  # swept once
        [down] = await events_until(feed, FeedNodeDown)
    finally:
        await feed.aclose()
    assert down == FeedNodeDown(node="A", ts=6_000)
    assert await store.sessions() == [session("bob", "laptop", "s2", "B")]
    assert await store.last_seen(["alice", "bob"]) == {"alice": 6_000, "bob": None}
    # A comes back: its lease was swept, so it must drop its connections; then it holds again.
    assert not await store.renew_lease("A", 8_000, 5_000)
    assert await store.renew_lease("A", 9_000, 5_000)
    await store.drop_lease("A")
    assert await store.renew_lease("A", 9_000, 5_000)  # a fresh lease after a drop


async def test_a_restarted_node_sweeps_its_predecessor_at_once(store: Store) -> None:
    assert await store.renew_lease("node1", 1_000, 30_000)
    await store.open_session(session("alice", "phone", "s1", "node1"))
    assert await store.sweep_expired(2_000, ["node1"]) == ["node1"]
    assert await store.sessions() == []
    assert await store.last_seen(["alice"]) == {"alice": 2_000}


async def test_a_feed_resumes_from_its_token(store: Store) -> None:
    conv = await store.direct_conversation("alice", "bob")
    feed = await store.watch("B")
    await store.append(conv.id, [Draft(sender="alice", device="d", cmid="c1", body="1", ts=1)])
    await events_until(feed, FeedMessages)
    token = feed.token
    await feed.aclose()
    [second] = await store.append(
        conv.id, [Draft(sender="alice", device="d", cmid="c2", body="2", ts=2)]
    )
    again = await store.watch("B", after=token)
    try:
        [event] = await events_until(again, FeedMessages)
    finally:
        await again.aclose()
    assert isinstance(second, StoredMessage)
    assert event == FeedMessages(conv=conv.id, messages=(second,))


async def test_a_cancelled_read_loses_nothing(store: Store) -> None:
    feed = await store.watch("B")
    try:
        with trio.move_on_after(0.2):
            await feed.next()  # nothing happens: cancelled while waiting
        await store.publish([FeedTyping(conv="g:1", user="alice", node="A")])
        assert await events_until(feed) == [FeedTyping(conv="g:1", user="alice", node="A")]
    finally:
        await feed.aclose()


@pytest.mark.parametrize("retention", [2])
async def test_memory_feed_reports_lost_history(retention: int) -> None:
    from persistence import FeedLost, MemoryStore

    store = MemoryStore(feed_retention=retention)
    feed = await store.watch("B")
    for i in range(3):
        await store.publish([FeedTyping(conv="g:1", user=f"u{i}", node="A")])
    with pytest.raises(FeedLost):
        await feed.next()
    with pytest.raises(FeedLost):
        await store.watch("B", after=(0, 0))
    fresh = await store.watch("B")
    store.drop_feed_history()
    with pytest.raises(FeedLost):
        await fresh.next()
