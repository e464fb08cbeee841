"""The node over its simulator seams: MemoryStore, memory transports, trio's virtual clock.

Time-driven rules (hello timeout, keep-alive, presence grace) run under ``autojump_clock``,
so they take no real time.
"""

from __future__ import annotations

import random

import orjson
import pytest
import trio
import trio.testing
from memory_transport import MemoryPeer, memory_transport_pair
from unit import virtual_ms

from actors import (
    MUTANTS,
    Node,
    NodeConfig,
    TokenIssuer,
    TransportClosed,
)
from persistence import MemoryStore
from sim._store import FaultyStore, StoreFaults

ISSUER = TokenIssuer(b"memory-transport-test-secret-0123456789")


def make_node(store: MemoryStore, **config: object) -> Node:
    return Node(
        store=store,
        verify_token=ISSUER.verify,
        rng=random.Random(1),
        wall_ms=virtual_ms,
        config=NodeConfig(**config),  # type: ignore[arg-type]
    )


async def recv(peer: MemoryPeer) -> dict[str, object]:
    return dict(orjson.loads(await peer.receive()))


async def connect(node: Node, user: str, device: str = "d") -> MemoryPeer:
    transport, peer = memory_transport_pair()
    node.attach(transport)
    token = ISSUER.mint(user, 3600, virtual_ms() / 1000)
    await peer.send(orjson.dumps({"type": "hello", "token": token, "device": device}).decode())
    assert (await recv(peer))["type"] == "welcome"
    while (await recv(peer))["type"] != "synced":
        pass
    return peer


async def drain(peer: MemoryPeer) -> None:
    while True:
        await peer.receive()


async def close_code(peer: MemoryPeer) -> int | None:
    with pytest.raises(TransportClosed) as info:
        await drain(peer)
    return info.value.code


async def test_hello_timeout_closes_4408(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(make_node(MemoryStore()).run)
        transport, peer = memory_transport_pair()
        node.attach(transport)
        started = trio.current_time()
        assert await close_code(peer) == 4408
        assert trio.current_time() - started == pytest.approx(10.0, abs=0.01)
        await node.shutdown()


async def test_keepalive_pings_count_and_silence_closes_4408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(make_node(MemoryStore(), heartbeat_s=10).run)
        peer = await connect(node, "ann")
        for _ in range(5):  # WebSocket pings every heartbeat keep it open for 50 s
            await trio.sleep(10)
            await peer.ping()
        opened_until = trio.current_time()
        assert await close_code(peer) == 4408
        assert trio.current_time() - opened_until == pytest.approx(20.0, abs=0.1)
        await node.shutdown()


async def test_shutdown_closes_every_connection_with_1001(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(make_node(MemoryStore()).run)
        peers = [await connect(node, user) for user in ("ann", "ben")]
        nursery.start_soon(node.shutdown)
        assert [await close_code(p) for p in peers] == [1001, 1001]


async def test_store_down_during_sync_errors_then_closes_1013(
    autojump_clock: trio.testing.MockClock,
) -> None:
    faults = StoreFaults()
    store = FaultyStore(MemoryStore(), faults).as_store()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(make_node(store).run)
        transport, peer = memory_transport_pair()
        node.attach(transport)
        token = ISSUER.mint("ann", 3600, virtual_ms() / 1000)
        faults.fail_next(1)  # the backlog read of the hello
        await peer.send(orjson.dumps({"type": "hello", "token": token, "device": "d"}).decode())
        assert (await recv(peer))["type"] == "welcome"
        error = await recv(peer)
        assert error["type"] == "error" and error["code"] == "unavailable"
        assert await close_code(peer) == 1013
        await node.shutdown()


async def test_slow_consumer_is_disconnected(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(make_node(MemoryStore(), outbox_size=8).run)
        ann = await connect(node, "ann")
        slow = await connect(node, "ben")  # never reads again
        for i in range(200):
            frame = {"type": "send", "cmid": f"c{i}", "to": "ben", "body": "x"}
            await ann.send(orjson.dumps(frame).decode())
            assert (await recv(ann))["type"] == "ack"
        assert await close_code(slow) == 1013
        await node.shutdown()


async def test_a_crashed_node_recovers_from_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    frame = orjson.dumps({"type": "send", "cmid": "c1", "to": "ben", "body": "x"}).decode()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(make_node(store).run)
        ann = await connect(node, "ann")
        await ann.send(frame)
        first = await recv(ann)
        node.crash()
    async with trio.open_nursery() as nursery:
        node = await nursery.start(make_node(store).run)
        ann = await connect(node, "ann")
        await ann.send(frame)
        assert await recv(ann) == first
        ben = await connect(node, "ben")
        await node.shutdown()
    assert (await store.last_seq(str(first["conv"]))) == 1
    assert ben is not None


async def test_zero_presence_grace_reports_offline_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        node = await nursery.start(make_node(MemoryStore(), presence_grace_s=0.0).run)
        ann = await connect(node, "ann")
        ben = await connect(node, "ben")
        await ann.send(
            orjson.dumps({"type": "send", "cmid": "c", "to": "ben", "body": "x"}).decode()
        )
        assert (await recv(ann))["type"] == "ack"
        await ann.send(orjson.dumps({"type": "presence_sub", "users": ["ben"]}).decode())
        assert (await recv(ann))["status"] == "online"
        await ben.close()
        before = trio.current_time()
        assert (await recv(ann))["status"] == "offline"
        assert trio.current_time() - before < 1.0
        await node.shutdown()


def test_mutant_names_are_checked() -> None:
    assert NodeConfig(mutants=MUTANTS).mutants == MUTANTS
    with pytest.raises(ValueError, match="mutants"):
        NodeConfig(mutants=frozenset({"no_such_bug"}))
