"""``Client.convs()`` follows the node's pages (``more`` + ``cursor``) to the end."""

from __future__ import annotations

import orjson
import trio
import trio_websocket
from clienthelpers import fake_node

from client import Client
from protocol import ConvRow, Synced, Welcome, convs_result, encode


def row(conv: str) -> ConvRow:
    return ConvRow(
        conv=conv,
        kind="group",
        title=conv,
        members=("bob", "ann"),
        last_seq=1,
        delivered=0,
        read=0,
        unread=1,
        others=(),
    )


async def test_convs_reads_every_page(nursery: trio.Nursery) -> None:
    pages = {None: (("g3", "g2"), "c2"), "c2": (("g1",), None)}
    asked: list[object] = []

    async def session(ws: trio_websocket.WebSocketConnection, hello: dict[str, object]) -> None:
        welcome = Welcome(user="bob", device=str(hello["device"]), session="s", heartbeat_s=30)
        await ws.send_message(encode(welcome))
        await ws.send_message(encode(Synced()))
        while True:
            frame = orjson.loads(await ws.get_message())
            if frame["type"] != "convs":
                continue
            asked.append(frame.get("cursor"))
            convs, cursor = pages[frame.get("cursor")]
            rows = tuple(row(c) for c in convs)
            reply = convs_result(str(frame["rid"]), rows, cursor is not None, cursor)
            await ws.send_message(encode(reply))

    url = await fake_node(nursery, session)
    async with Client(url, token="t", device="d") as bob:
        with trio.fail_after(10):
            rows = await bob.convs()
    assert [r.conv for r in rows] == ["g3", "g2", "g1"]
    assert asked == [None, "c2"]
