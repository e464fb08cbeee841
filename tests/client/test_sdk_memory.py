"""The SDK over the simulator's seam: real WebSocket code over in-memory streams to a real
in-process node on the in-memory store, under trio's virtual clock."""

from __future__ import annotations

import random

import trio
import trio.testing
from clienthelpers import EventLog

from actors import Node, NodeConfig, TokenIssuer
from client import Client, Reconnecting, stream_transport
from persistence import MemoryStore
from protocol import Acked, NewMessage

SECRET = b"memory-transport-test-secret-0123456789"


def virtual_ms() -> int:
    return int(trio.current_time() * 1000)


async def test_crash_and_restart_over_memory_streams(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    store = MemoryStore(rng=random.Random(1))
    issuer = TokenIssuer(SECRET)
    config = NodeConfig(presence_grace_s=0.5, watermark_window_s=0.02)
    nodes: list[Node] = []

    async def start_node() -> None:
        node = Node(
            store=store,
            verify_token=issuer.verify,
            rng=random.Random(len(nodes)),
            wall_ms=virtual_ms,
            config=config,
        )
        await nursery.start(node.run)
        nodes.append(node)

    async def open_stream() -> trio.abc.Stream:
        client_end, server_end = trio.testing.memory_stream_pair()
        nodes[-1].attach_stream(server_end)
        return client_end

    def client(user: str, seed: int) -> Client:
        token = issuer.mint(user, 3600, 0)
        return Client(
            token=token,
            device="dev",
            transport=stream_transport(open_stream),
            rng=random.Random(seed),
        )

    await start_node()
    async with client("alice", 1) as alice, client("bob", 2) as bob:
        alice_log = EventLog.following(nursery, alice)
        bob_log = EventLog.following(nursery, bob)
        with trio.fail_after(600):
            await alice.wait_synced()
            await bob.wait_synced()
            conv = (await alice.send("one", to="bob")).conv
            nodes[-1].crash()
            cmids = [alice.send_nowait(f"during {i}", conv=conv) for i in range(10)]
            await start_node()
            await alice_log.wait_until(lambda: {e.cmid for e in alice_log.of(Acked)} >= set(cmids))
            await bob_log.wait_until(lambda: len(bob_log.of(NewMessage)) >= 11)
        bodies = [e.message.body for e in bob_log.of(NewMessage)]
        assert bodies == ["one"] + [f"during {i}" for i in range(10)]
        assert alice_log.of(Reconnecting) and bob_log.of(Reconnecting)
