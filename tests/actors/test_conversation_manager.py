"""The conversation manager and its actors on a MemoryStore, without a node or a transport:
requests go in through ``submit``, frames come out on fake connection handles."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import trio
import trio.testing
from unit import FakeConnection, connected, fake_connection, make_context

from actors import SEQ_REUSE_AFTER_RESTART
from actors._conversations import ConversationManager
from actors._messages import MarkRequest, SendRequest
from persistence import Conversation, ConvPage, MemoryStore, StoredMessage, Unavailable
from protocol import Ack, MemberEvent, Msg, Receipt


def send(origin: FakeConnection, cmid: str, body: str = "hi") -> SendRequest:
    return SendRequest(origin=origin.handle, cmid=cmid, body=body, rid=None)


def acks(connection: FakeConnection) -> list[tuple[str, int]]:
    return [(f.cmid, f.seq) for f in connection.frames if isinstance(f, Ack)]


async def test_send_is_acked_pushed_to_the_recipient_and_receipted_on_recv(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    ctx = make_context(store)
    alice, bob = connected(ctx, "alice", "bob")
    manager = ConversationManager(ctx)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        conv = await manager.direct_conversation("alice", "bob")
        await manager.submit(conv, send(alice, "m1"))
        await manager.submit(conv, send(alice, "m1"))  # a resend: deduped by cmid
        await trio.testing.wait_all_tasks_blocked()
        assert acks(alice) == [("m1", 1), ("m1", 1)]
        assert [(f.seq, f.body) for f in bob.frames if isinstance(f, Msg)] == [(1, "hi")]

        await manager.submit(conv, MarkRequest(origin=bob.handle, kind="recv", seq=1, rid=None))
        await trio.sleep(1)  # virtual time: past the watermark window and its write
        receipts = [f for f in alice.frames if isinstance(f, Receipt)]
        assert [(r.user, r.delivered) for r in receipts] == [("bob", 1)]
        manager.stop()


async def test_a_restarted_manager_starts_fresh_actors_not_dead_mailboxes() -> None:
    store = MemoryStore()
    ctx = make_context(store)
    alice = fake_connection(1, "alice")
    manager = ConversationManager(ctx)
    async with trio.open_nursery() as first_life:
        await first_life.start(manager.run)
        conv = await manager.direct_conversation("alice", "bob")
        await manager.submit(conv, send(alice, "m1"))
        await trio.testing.wait_all_tasks_blocked()
        first_life.cancel_scope.cancel()  # the manager dies (its supervisor runs it again)

    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        with trio.fail_after(5):
            await manager.submit(conv, send(alice, "m2"))
        await trio.testing.wait_all_tasks_blocked()
        assert acks(alice) == [("m1", 1), ("m2", 2)]
        manager.stop()


async def test_the_stale_seq_cache_exists_only_for_its_mutant() -> None:
    for mutants, expected in [(frozenset(), 0), (frozenset({SEQ_REUSE_AFTER_RESTART}), 3)]:
        ctx = make_context(MemoryStore(), mutants=mutants)
        alice = fake_connection(1, "alice")
        manager = ConversationManager(ctx)
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            for peer in ("bob", "carol", "dave"):
                conv = await manager.direct_conversation("alice", peer)
                await manager.submit(conv, send(alice, f"to-{peer}"))
            await trio.testing.wait_all_tasks_blocked()
            assert len(acks(alice)) == 3
            assert len(manager._first_seen_seq) == expected
            manager.stop()


class AmbiguousStore(MemoryStore):
    """Creates the group, then reports failure; its listing fails ``listing_failures`` times."""

    def __init__(self, listing_failures: int) -> None:
        super().__init__()
        self.listing_failures = listing_failures

    async def create_group(
        self,
        creator: str,
        title: str,
        members: Iterable[str],
        ts: int,
        *,
        notify: Iterable[str] = (),
    ) -> tuple[Conversation, StoredMessage]:
        await super().create_group(creator, title, members, ts, notify=notify)
        raise Unavailable("the reply was lost")

    async def conversations(
        self, user: str, device: str, *, limit: int = 100, cursor: str | None = None
    ) -> ConvPage:
        if self.listing_failures:
            self.listing_failures -= 1
            raise Unavailable("listing failed")
        return await super().conversations(user, device, limit=limit, cursor=cursor)


async def test_an_ambiguous_group_create_is_found_through_retried_searches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = AmbiguousStore(listing_failures=2)
    manager = ConversationManager(make_context(store))
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        conv, event = await manager.create_group("alice", "d1", "team", ["bob"])
        assert (conv.kind, event.seq, event.kind) == ("group", 1, "member")
        assert MemberEvent.parse(event.body).users == ("alice", "bob")
        manager.stop()


async def test_an_ambiguous_group_create_that_cannot_be_searched_reports_the_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    manager = ConversationManager(make_context(AmbiguousStore(listing_failures=3)))
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        with pytest.raises(Unavailable, match="the reply was lost"):
            await manager.create_group("alice", "d1", "team", ["bob"])
        manager.stop()
