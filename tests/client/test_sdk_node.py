"""The SDK against a real ``messenger serve`` process, including a SIGKILL mid-conversation."""

from __future__ import annotations

import random

import pytest
import trio
from clienthelpers import EventLog, NodeProcess

from client import Client, Reconnecting
from protocol import Acked, ClientState, NewMessage, ReceiptUpdated, StateChanged

pytestmark = pytest.mark.slow


def make_client(node: NodeProcess, token: str, device: str, seed: int) -> Client:
    return Client(
        node.url,
        token=token,
        device=device,
        rng=random.Random(seed),
        backoff_base_s=0.1,
        backoff_max_s=1.0,
    )


async def test_send_deliver_and_receipts(node: NodeProcess, nursery: trio.Nursery) -> None:
    await trio.to_thread.run_sync(node.start)
    alice_token, bob_token = node.tokens("alice", "bob")
    async with (
        make_client(node, alice_token, "phone", 1) as alice,
        make_client(node, bob_token, "laptop", 2) as bob,
    ):
        alice_log = EventLog.following(nursery, alice)
        bob_log = EventLog.following(nursery, bob)
        with trio.fail_after(30):
            await alice.wait_synced()
            await bob.wait_synced()
            ack = await alice.send("hello bob", to="bob")
            got = await bob_log.wait_for(NewMessage)
            assert (got.message.conv, got.message.seq, got.message.body) == (
                ack.conv,
                ack.seq,
                "hello bob",
            )
            await alice_log.wait_for(
                ReceiptUpdated, lambda e: (e.receipt.delivered or 0) >= ack.seq
            )
            bob.mark_read(ack.conv, ack.seq)
            await alice_log.wait_for(ReceiptUpdated, lambda e: (e.receipt.read or 0) >= ack.seq)
            page = await bob.history(ack.conv)
            assert [m.body for m in page.messages] == ["hello bob"]
            rows = await bob.convs()
            assert [(r.conv, r.kind) for r in rows] == [(ack.conv, "direct")]


async def test_node_killed_mid_conversation(node: NodeProcess, nursery: trio.Nursery) -> None:
    """SIGKILL the node while alice talks to bob; what alice sends during the outage is
    delivered to bob exactly once and in order after the node restarts on the same port."""
    await trio.to_thread.run_sync(node.start)
    alice_token, bob_token = node.tokens("alice", "bob")
    async with (
        make_client(node, alice_token, "phone", 3) as alice,
        make_client(node, bob_token, "laptop", 4) as bob,
    ):
        alice_log = EventLog.following(nursery, alice)
        bob_log = EventLog.following(nursery, bob)
        with trio.fail_after(90):
            await alice.wait_synced()
            await bob.wait_synced()
            first = await alice.send("before 0", to="bob")
            conv = first.conv
            for i in range(1, 5):
                await alice.send(f"before {i}", conv=conv)
            await bob_log.wait_until(lambda: len(bob_log.of(NewMessage)) >= 3)

            await trio.to_thread.run_sync(node.kill)
            during = [alice.send_nowait(f"during {i}", conv=conv) for i in range(20)]
            await alice_log.wait_for(Reconnecting)
            await trio.to_thread.run_sync(node.start)

            await alice_log.wait_until(lambda: {e.cmid for e in alice_log.of(Acked)} >= set(during))
            await bob_log.wait_until(lambda: len(bob_log.of(NewMessage)) >= 25)
            assert alice.session.outbox == ()

            expected = [f"before {i}" for i in range(5)] + [f"during {i}" for i in range(20)]
            shown = [e.message for e in bob_log.of(NewMessage)]
            assert [m.body for m in shown] == expected
            assert [m.seq for m in shown] == list(range(1, 26))
            acked = [e.ack.seq for e in alice_log.of(Acked)]
            assert sorted(acked) == list(range(1, 26)) == sorted(set(acked))
            page = await bob.history(conv)
            assert [m.body for m in page.messages] == expected
            states = [e.state for e in bob_log.of(StateChanged)]
            assert states.count(ClientState.SYNCED) >= 2  # bob reconnected too
