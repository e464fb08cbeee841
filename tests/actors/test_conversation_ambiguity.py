"""The conversation actor after an ambiguous append, and receipts after a departure, on a
MemoryStore behind the simulator's fault wrapper (no node, no transport)."""

from __future__ import annotations

import trio
import trio.testing
from unit import FakeConnection, connected, make_context

from actors._conversations import ConversationManager
from actors._messages import MarkRequest, MemberRequest, SendRequest
from persistence import MemoryStore
from protocol import Ack, Msg, Nack, Receipt
from sim._store import FaultyStore, StoreFaults


def pushed(connection: FakeConnection, conv: str) -> list[int]:
    return [f.seq for f in connection.frames if isinstance(f, Msg) and f.conv == conv]


async def test_a_send_stored_by_an_ambiguous_append_reaches_the_others_before_any_resend(
    autojump_clock: trio.testing.MockClock,
) -> None:
    faults = StoreFaults()
    ctx = make_context(FaultyStore(MemoryStore(), faults).as_store(), conversation_idle_s=1.0)
    alice, bob = connected(ctx, "alice", "bob")
    manager = ConversationManager(ctx)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        conv = await manager.direct_conversation("alice", "bob")
        faults.ambiguous_next(1)
        request = SendRequest(origin=alice.handle, cmid="m1", body="hi", rid=None)
        await manager.submit(conv, request)
        await trio.testing.wait_all_tasks_blocked()
        assert [f.retry for f in alice.frames if isinstance(f, Nack)] == [True]
        assert pushed(bob, conv) == [1]  # fanned out from the Store, not left for a resend
        assert pushed(alice, conv) == []  # the sender's resend gets the ack instead
        await trio.sleep(5)  # the actor idles out; the resend meets a fresh one
        await manager.submit(conv, request)
        await trio.testing.wait_all_tasks_blocked()
        assert [(f.cmid, f.seq) for f in alice.frames if isinstance(f, Ack)] == [("m1", 1)]
        manager.stop()


async def test_receipts_stop_with_the_event_that_removed_a_member_both_ways(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ctx = make_context(MemoryStore())
    ann, bob, cy = connected(ctx, "ann", "bob", "cy")
    manager = ConversationManager(ctx)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        group, _event = await manager.create_group("ann", "d1", "t", ["bob", "cy"])
        conv = group.id
        await manager.submit(
            conv, MemberRequest(origin=ann.handle, op="remove", user="cy", rid="r1")
        )
        await trio.testing.wait_all_tasks_blocked()
        assert pushed(cy, conv) == [1, 2]  # the removal is the last message cy gets
        for connection, seq in ((bob, 2), (cy, 2)):
            mark = MarkRequest(origin=connection.handle, kind="recv", seq=seq, rid=None)
            await manager.submit(conv, mark)
        await trio.sleep(1)  # past the watermark window and its write
        assert not [f for f in cy.frames if isinstance(f, Receipt)]
        about = [f.user for f in ann.frames if isinstance(f, Receipt)]
        assert "bob" in about and "cy" not in about
        manager.stop()
