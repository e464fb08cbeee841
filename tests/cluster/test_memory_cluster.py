"""Several Nodes sharing one MemoryStore and its change feed, under trio's virtual clock: the
cluster rules as the simulator sees them (deterministic, no threads, no sockets)."""

from __future__ import annotations

import random

import orjson
import pytest
import trio
import trio.testing
from memory_transport import MemoryPeer, memory_transport_pair

from actors import Node, NodeConfig, TokenIssuer
from persistence import MemoryStore

ISSUER = TokenIssuer(b"memory-cluster-test-secret-0123456789")
EPOCH_MS = 1_700_000_000_000
CONFIG = NodeConfig(presence_grace_s=5.0, lease_s=10.0, lease_refresh_s=1.0)
Frame = dict[str, object]


def virtual_ms() -> int:
    return EPOCH_MS + int(trio.current_time() * 1000)


def make_node(store: MemoryStore, name: str) -> Node:
    return Node(
        store=store,
        verify_token=ISSUER.verify,
        rng=random.Random(name),
        wall_ms=virtual_ms,
        config=CONFIG,
        name=name,
    )


class Peer:
    """A client over a memory transport, keeping the frames it skipped."""

    def __init__(self, peer: MemoryPeer, welcome: Frame) -> None:
        self.peer = peer
        self.welcome = welcome
        self.seen: list[Frame] = []

    async def send(self, frame: Frame) -> None:
        await self.peer.send(orjson.dumps(frame).decode())

    async def wait_for(self, kind: str, **fields: object) -> Frame:
        for frame in self.seen:
            if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                self.seen.remove(frame)
                return frame
        with trio.fail_after(60):
            while True:
                frame = dict(orjson.loads(await self.peer.receive()))
                if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                    return frame
                self.seen.append(frame)


async def connect(node: Node, user: str, device: str = "d") -> Peer:
    transport, peer = memory_transport_pair()
    node.attach(transport)
    token = ISSUER.mint(user, 3600, virtual_ms() / 1000)
    await peer.send(orjson.dumps({"type": "hello", "token": token, "device": device}).decode())
    welcome = dict(orjson.loads(await peer.receive()))
    assert welcome["type"] == "welcome"
    while dict(orjson.loads(await peer.receive()))["type"] != "synced":
        pass
    return Peer(peer, welcome)


async def test_membership_applies_before_a_later_send_through_another_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore(rng=random.Random(3))
    async with trio.open_nursery() as nursery:
        a = await nursery.start(make_node(store, "A").run)
        b = await nursery.start(make_node(store, "B").run)
        alice = await connect(a, "alice")
        bob = await connect(b, "bob")
        carol = await connect(b, "carol")
        assert (alice.welcome["node"], bob.welcome["node"]) == ("A", "B")
        await alice.send(
            {"type": "group_create", "rid": "g", "title": "t", "members": ["bob", "carol"]}
        )
        group = (await alice.wait_for("result", rid="g"))["conv"]
        await bob.send({"type": "send", "cmid": "b1", "conv": group, "body": "one"})
        await carol.wait_for("msg", conv=group, seq=2)  # B's actor holds carol as a member
        await alice.send({"type": "group_remove", "rid": "r", "conv": group, "user": "carol"})
        await alice.wait_for("result", rid="r")
        await bob.send({"type": "send", "cmid": "b2", "conv": group, "body": "two"})
        assert (await bob.wait_for("ack", cmid="b2"))["seq"] == 4
        await alice.wait_for("msg", conv=group, seq=4)
        await carol.wait_for("msg", conv=group, seq=3)  # her removal: the last she sees
        await carol.send({"type": "ping", "rid": "p"})
        await carol.wait_for("pong", rid="p")
        assert not [f for f in carol.seen if f.get("conv") == group and f.get("seq") == 4]
        await a.shutdown()
        await b.shutdown()


async def test_a_crashed_nodes_devices_go_offline_after_lease_and_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore(rng=random.Random(4))
    async with trio.open_nursery() as nursery:
        a = await nursery.start(make_node(store, "A").run)
        b = await nursery.start(make_node(store, "B").run)
        await connect(a, "alice")
        bob = await connect(b, "bob")
        await bob.send({"type": "send", "cmid": "c", "to": "alice", "body": "hi"})
        await bob.wait_for("ack", cmid="c")
        await bob.send({"type": "presence_sub", "rid": "s", "users": ["alice"]})
        assert (await bob.wait_for("presence", user="alice"))["status"] == "online"
        crashed_at = trio.current_time()
        a.crash()
        offline = await bob.wait_for("presence", user="alice")
        elapsed = trio.current_time() - crashed_at
        assert offline["status"] == "offline"
        # The lease expires at most lease_s after the crash, a sweep follows within a refresh,
        # then the grace; never before the grace.
        assert (
            CONFIG.presence_grace_s
            <= elapsed
            <= (CONFIG.lease_s + CONFIG.lease_refresh_s + CONFIG.presence_grace_s + 1)
        )
        assert [s.user for s in await store.sessions()] == ["bob"]  # A's were swept
        await b.shutdown()


@pytest.mark.parametrize("lose_history", [False, True])
async def test_direct_delivery_and_receipts_cross_nodes(
    autojump_clock: trio.testing.MockClock, lose_history: bool
) -> None:
    store = MemoryStore(rng=random.Random(5))
    async with trio.open_nursery() as nursery:
        a = await nursery.start(make_node(store, "A").run)
        b = await nursery.start(make_node(store, "B").run)
        alice = await connect(a, "alice")
        bob = await connect(b, "bob")
        if lose_history:
            store.drop_feed_history()  # B resyncs from the Store instead
        await alice.send({"type": "send", "cmid": "c1", "to": "bob", "body": "hi"})
        ack = await alice.wait_for("ack", cmid="c1")
        assert (await bob.wait_for("msg", conv=ack["conv"]))["seq"] == 1
        await bob.send({"type": "read", "conv": ack["conv"], "seq": 1})
        await alice.wait_for("receipt", conv=ack["conv"], user="bob", read=1)
        await a.shutdown()
        await b.shutdown()


async def test_a_presence_subscription_ends_when_nothing_is_shared_any_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore(rng=random.Random(6))
    async with trio.open_nursery() as nursery:
        a = await nursery.start(make_node(store, "A").run)
        b = await nursery.start(make_node(store, "B").run)
        alice = await connect(a, "alice")
        carol = await connect(b, "carol")
        await alice.send({"type": "group_create", "rid": "g", "title": "t", "members": ["carol"]})
        group = (await alice.wait_for("result", rid="g"))["conv"]
        await alice.send({"type": "presence_sub", "rid": "s", "users": ["carol"]})
        assert (await alice.wait_for("presence", user="carol"))["status"] == "online"
        await alice.send({"type": "group_remove", "rid": "r", "conv": group, "user": "carol"})
        await alice.wait_for("result", rid="r")
        await carol.wait_for("msg", conv=group, seq=2)  # carol's node applied the removal
        await carol.peer.close()
        # Long past the grace: the subscription ended, so no "offline" comes.
        await trio.sleep(CONFIG.presence_grace_s * 3)
        await alice.send({"type": "ping", "rid": "p"})
        await alice.wait_for("pong", rid="p")
        assert not [f for f in alice.seen if f["type"] == "presence"]
        # Bounded tables (issue 14): nothing about carol is kept on A any more.
        assert a.presence.tracked() == {"alice"}
        await a.shutdown()
        await b.shutdown()
