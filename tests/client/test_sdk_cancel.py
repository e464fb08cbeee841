"""A connected SDK client inside a scope that is cancelled: the client stops cleanly.

``Client.__aexit__`` runs under the cancelled scope, so its polite goodbye (flushing recv
reports, the WebSocket close handshake) is cut short; it must still stop its tasks and exit
its nursery, or trio fails the whole run (``TrioInternalError``) with orphaned tasks.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from actors import Node, NodeConfig, TokenIssuer
from client import Client, ClientClosed, stream_transport
from persistence import MemoryStore

SECRET = b"memory-transport-test-secret-0123456789"


def virtual_ms() -> int:
    return int(trio.current_time() * 1000)


async def test_cancelling_the_scope_around_a_connected_client(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    issuer = TokenIssuer(SECRET)
    node = Node(
        store=MemoryStore(rng=random.Random(1)),
        verify_token=issuer.verify,
        rng=random.Random(0),
        wall_ms=virtual_ms,
        config=NodeConfig(presence_grace_s=0.5),
    )
    await nursery.start(node.run)

    async def open_stream() -> trio.abc.Stream:
        client_end, server_end = trio.testing.memory_stream_pair()
        node.attach_stream(server_end)
        return client_end

    def client(user: str, seed: int) -> Client:
        return Client(
            token=issuer.mint(user, 3600, 0),
            device="dev",
            transport=stream_transport(open_stream),
            rng=random.Random(seed),
        )

    # Cancelled from inside, while connected and idle.
    with trio.CancelScope() as scope:
        async with client("alice", 1) as alice:
            with trio.fail_after(60):
                await alice.wait_synced()
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    with pytest.raises(ClientClosed):
        alice.send_nowait("too late", to="bob")

    # Cancelled from outside (a deadline), with a send in flight.
    with trio.move_on_after(5) as deadline:
        async with client("bob", 2) as bob:
            with trio.fail_after(60):
                await bob.wait_synced()
            await bob.send("hi", to="alice")
            bob.send_nowait("in flight", to="alice")
            await trio.sleep_forever()
    assert deadline.cancelled_caught
    with pytest.raises(ClientClosed):
        bob.send_nowait("too late", to="alice")

    # The node saw both go and is still serving.
    async with client("carol", 3) as carol:
        with trio.fail_after(60):
            await carol.wait_synced()
