"""Two real ``messenger serve --mongo-uri`` node processes on one database, clients over real
WebSockets: everything made through one node reaches the devices on the other."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from clusterhelpers import GRACE_S, TIMINGS, connect_on, tokens
from nodeprocess import Serve, serving
from test_notifier import WebhookServer

pytestmark = pytest.mark.slow

USERS = ("alice", "bob", "carol", "dave")


class Webhook(WebhookServer):
    """The notifier tests' webhook server, with an event per request received."""

    arrived: trio.Event = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        await super().handle(stream)
        self.arrived.set()
        self.arrived = trio.Event()

    def users(self) -> set[str]:
        return {json.loads(body)["user"] for *_x, body, _status in self.requests}


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    async with Webhook().listening() as server:
        yield server


@pytest.fixture
def nodes(
    tmp_path: Path, mongo_uri: str, mongo_db_name: str, webhook: Webhook
) -> Iterator[tuple[Serve, Serve]]:
    common = [
        "--port",
        "0",
        "--data-dir",
        str(tmp_path),
        "--mongo-uri",
        mongo_uri,
        "--database",
        mongo_db_name,
        "--notify-webhook",
        webhook.url,
        *TIMINGS,
    ]
    with serving(common) as a, serving(common) as b:
        yield a, b


@pytest.fixture
def toks(tmp_path: Path, nodes: tuple[Serve, Serve]) -> dict[str, str]:
    return tokens(tmp_path, *USERS)


_rids = itertools.count()


def rid() -> str:
    return f"r{next(_rids)}"


async def test_direct_and_group_delivery_receipts_and_typing_cross_nodes(
    nodes: tuple[Serve, Serve], toks: dict[str, str], nursery: trio.Nursery
) -> None:
    a, b = nodes
    alice = await connect_on(nursery, a.port, toks["alice"], "phone")
    bob = await connect_on(nursery, b.port, toks["bob"], "laptop")
    assert alice.welcome is not None and bob.welcome is not None
    assert alice.welcome["node"] != bob.welcome["node"]
    # 1:1 across nodes, in seq order.
    for i in range(5):
        await alice.send({"type": "send", "cmid": f"c{i}", "to": "bob", "body": f"#{i}"})
    acks = [await alice.wait_for("ack", cmid=f"c{i}") for i in range(5)]
    conv = acks[0]["conv"]
    pushed = [await bob.wait_for("msg", conv=conv) for _ in range(5)]
    assert [m["seq"] for m in pushed] == [1, 2, 3, 4, 5]
    assert [m["body"] for m in pushed] == [f"#{i}" for i in range(5)]
    # Receipts: bob's recv and read reach alice on the other node.
    await bob.send({"type": "recv", "conv": conv, "seq": 5})
    await alice.wait_for("receipt", conv=conv, user="bob", delivered=5)
    await bob.send({"type": "read", "conv": conv, "seq": 5})
    await alice.wait_for("receipt", conv=conv, user="bob", read=5)
    # Typing.
    await bob.send({"type": "typing", "conv": conv})
    await alice.wait_for("typing", conv=conv, user="bob")
    # A group made on B, written to on both nodes: one order for everyone.
    created = await bob.request(
        {"type": "group_create", "rid": rid(), "title": "team", "members": ["alice"]}
    )
    group = created["conv"]
    await alice.wait_for("msg", conv=group, seq=1)
    await alice.send({"type": "send", "cmid": "g1", "conv": group, "body": "from A"})
    await bob.send({"type": "send", "cmid": "g2", "conv": group, "body": "from B"})
    ack_a = await alice.wait_for("ack", cmid="g1")
    ack_b = await bob.wait_for("ack", cmid="g2")
    assert {ack_a["seq"], ack_b["seq"]} == {2, 3}
    # Each sees the other's message, and (sent from the other node) from the other's ack.
    assert (await alice.wait_for("msg", conv=group, seq=ack_b["seq"]))["body"] == "from B"
    assert (await bob.wait_for("msg", conv=group, seq=ack_a["seq"]))["body"] == "from A"


async def test_removed_through_a_never_receives_a_send_through_b(
    nodes: tuple[Serve, Serve], toks: dict[str, str], nursery: trio.Nursery
) -> None:
    a, b = nodes
    alice = await connect_on(nursery, a.port, toks["alice"], "phone")
    bob = await connect_on(nursery, b.port, toks["bob"], "laptop")
    carol = await connect_on(nursery, b.port, toks["carol"], "tablet")
    created = await alice.request(
        {"type": "group_create", "rid": rid(), "title": "g", "members": ["bob", "carol"]}
    )
    group = created["conv"]
    await carol.wait_for("msg", conv=group, seq=1)
    await bob.wait_for("msg", conv=group, seq=1)
    # bob's node has the group's actor running with carol in it.
    await bob.send({"type": "send", "cmid": "b1", "conv": group, "body": "before"})
    await carol.wait_for("msg", conv=group, seq=2)
    await alice.request({"type": "group_remove", "rid": rid(), "conv": group, "user": "carol"})
    # Sent through B right away: B may not have heard of the removal yet.
    await bob.send({"type": "send", "cmid": "b2", "conv": group, "body": "after"})
    ack = await bob.wait_for("ack", cmid="b2")
    assert ack["seq"] == 4
    removal = await carol.wait_for("msg", conv=group, seq=3)
    assert json.loads(removal["body"])["op"] == "remove"
    # Carol's last frame of the group is the removal: a ping's pong proves nothing came after.
    await carol.send({"type": "ping", "rid": "p"})
    await carol.wait_for("pong", rid="p")
    assert not [f for f in carol.backlog if f.get("conv") == group and f.get("seq", 0) > 3]
    await alice.wait_for("msg", conv=group, seq=4)  # the message itself is delivered


async def test_a_newer_connection_on_another_node_replaces_the_old_one(
    nodes: tuple[Serve, Serve], toks: dict[str, str], nursery: trio.Nursery
) -> None:
    a, b = nodes
    old = await connect_on(nursery, a.port, toks["alice"], "phone")
    await connect_on(nursery, b.port, toks["alice"], "phone")
    assert await old.closed() == 4409


async def test_presence_across_nodes_with_grace(
    nodes: tuple[Serve, Serve], toks: dict[str, str], nursery: trio.Nursery
) -> None:
    a, b = nodes
    alice = await connect_on(nursery, a.port, toks["alice"], "phone")
    bob = await connect_on(nursery, b.port, toks["bob"], "laptop")
    await alice.send({"type": "send", "cmid": "hi", "to": "bob", "body": "hi"})
    await alice.wait_for("ack", cmid="hi")
    await alice.send({"type": "presence_sub", "rid": "s", "users": ["bob"]})
    first = await alice.wait_for("presence", user="bob")
    assert first["status"] == "online"  # bob is connected, to the other node
    # A flap shorter than the grace is invisible; a real departure is seen after it.
    await bob.aclose()
    bob = await connect_on(nursery, b.port, toks["bob"], "laptop")
    await bob.aclose()
    started = trio.current_time()
    offline = await alice.wait_for("presence", user="bob", within=10 + GRACE_S)
    assert offline["status"] == "offline" and offline["last_seen"] is not None
    assert trio.current_time() - started >= GRACE_S * 0.9
    assert not [f for f in alice.backlog if f.get("type") == "presence"]
    # Back, on node A this time.
    await connect_on(nursery, a.port, toks["bob"], "laptop")
    assert (await alice.wait_for("presence", user="bob"))["status"] == "online"


async def test_notifications_only_for_users_with_no_device_anywhere(
    nodes: tuple[Serve, Serve], toks: dict[str, str], nursery: trio.Nursery, webhook: Webhook
) -> None:
    a, b = nodes
    alice = await connect_on(nursery, a.port, toks["alice"], "phone")
    dave = await connect_on(nursery, a.port, toks["dave"], "phone")
    bob = await connect_on(nursery, b.port, toks["bob"], "laptop")  # connected elsewhere
    # Node A has heard of bob's session once dave (on A) sees him online.
    await bob.send({"type": "send", "cmid": "hi", "to": "dave", "body": "hi"})
    await dave.wait_for("msg", conv="d:bob:dave")
    await dave.send({"type": "presence_sub", "rid": "s", "users": ["bob"]})
    assert (await dave.wait_for("presence", user="bob"))["status"] == "online"
    created = await alice.request(
        {"type": "group_create", "rid": rid(), "title": "g", "members": ["bob", "carol"]}
    )
    await alice.send({"type": "send", "cmid": "n1", "conv": created["conv"], "body": "ping"})
    await alice.wait_for("ack", cmid="n1")
    with trio.fail_after(15):
        while "carol" not in webhook.users():
            await webhook.arrived.wait()
    assert "bob" not in webhook.users()
