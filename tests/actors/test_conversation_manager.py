"""The conversation manager and its actors on a MemoryStore, without a node or a transport:
requests go in through ``submit``, frames come out on fake connection handles."""

from __future__ import annotations

import trio
import trio.testing
from unit import FakeConnection, fake_connection, make_context

from actors import SEQ_REUSE_AFTER_RESTART
from actors._conversations import ConversationManager
from actors._messages import MarkRequest, SendRequest
from persistence import MemoryStore
from protocol import Ack, Msg, Receipt


def send(origin: FakeConnection, cmid: str, body: str = "hi") -> SendRequest:
    return SendRequest(origin=origin.handle, cmid=cmid, body=body, rid=None)


def acks(connection: FakeConnection) -> list[tuple[str, int]]:
    return [(f.cmid, f.seq) for f in connection.frames if isinstance(f, Ack)]


async def test_send_is_acked_pushed_to_the_recipient_and_receipted_on_recv(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    ctx = make_context(store)
    alice, bob = fake_connection(1, "alice"), fake_connection(2, "bob")
    ctx.router.register(alice.handle)
    ctx.router.register(bob.handle)
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
