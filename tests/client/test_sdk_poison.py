"""Big server frames and replies that never come or cannot be read: the SDK never hangs.

A body of characters JSON must escape stays under the 64 KiB client-frame limit on the way
in and comes out of the node as a ``msg`` over 64 KiB (server frames may be up to 1 MiB);
a history page of such messages would be megabytes if the node did not keep results
under 512 KiB.
"""

from __future__ import annotations

import random

import orjson
import pytest
import trio
import trio_websocket
from clienthelpers import EventLog, NodeProcess, fake_node

from client import Client, Reconnecting, RequestError, RequestTimeout
from protocol import (
    MAX_FRAME_BYTES,
    MAX_RESULT_BYTES,
    ErrorCode,
    NewMessage,
    Synced,
    Welcome,
    encode,
)

#: As many control characters as a ``send`` frame can carry (each escapes to 6 bytes).
POISON = "\x01" * ((MAX_FRAME_BYTES - 200) // 6)


@pytest.mark.slow
async def test_escaped_bodies_reach_the_sdk_and_history_stays_under_the_limit(
    node: NodeProcess, nursery: trio.Nursery
) -> None:
    await trio.to_thread.run_sync(node.start)
    mallory_token, bob_token = node.tokens("mallory", "bob")
    async with (
        Client(node.url, token=mallory_token, device="m", rng=random.Random(1)) as mallory,
        Client(node.url, token=bob_token, device="b", rng=random.Random(2)) as bob,
    ):
        log = EventLog.following(nursery, bob)
        with trio.fail_after(60):
            await bob.wait_synced()
            first = await mallory.send(POISON + "0", to="bob")
            for i in range(1, 20):
                await mallory.send(POISON + str(i), conv=first.conv)
            await log.wait_until(lambda: len(log.of(NewMessage)) == 20)
            assert [e.message.body[-1:] for e in log.of(NewMessage)][-2:] == ["8", "9"]

            shown: list[str] = []
            before = None
            for _ in range(20):
                page = await bob.history(first.conv, before=before, limit=200)
                assert page.messages
                shown[:0] = [m.body.removeprefix(POISON) for m in page.messages]
                if not page.more:
                    break
                before = page.messages[0].seq
            assert shown == [str(i) for i in range(20)]
            (row,) = await bob.convs()
            assert row.last_seq == 20
        assert log.of(Reconnecting) == []


@pytest.mark.slow
async def test_history_pages_are_cut_to_the_result_limit(
    node: NodeProcess, nursery: trio.Nursery
) -> None:
    """The raw reply of the node is under 512 KiB, and says ``more``."""
    await trio.to_thread.run_sync(node.start)
    mallory_token, bob_token = node.tokens("mallory", "bob")
    async with Client(node.url, token=mallory_token, device="m") as mallory:
        with trio.fail_after(60):
            first = await mallory.send(POISON, to="bob")
            for _ in range(11):
                await mallory.send(POISON, conv=first.conv)
    url = node.url
    async with trio_websocket.open_websocket_url(url, max_message_size=2**24) as ws:
        with trio.fail_after(30):
            await ws.send_message(
                orjson.dumps({"type": "hello", "token": bob_token, "device": "raw"}).decode()
            )
            while orjson.loads(await ws.get_message())["type"] != "synced":
                pass
            await ws.send_message(
                orjson.dumps(
                    {"type": "history", "conv": first.conv, "limit": 200, "rid": "h"}
                ).decode()
            )
            while True:
                text = await ws.get_message()
                reply = orjson.loads(text)
                if reply.get("rid") == "h":
                    break
    assert len(text.encode()) <= MAX_RESULT_BYTES
    assert reply["more"] is True
    seqs = [m["seq"] for m in reply["messages"]]
    assert seqs == list(range(13 - len(seqs), 13)) and len(seqs) >= 5


async def welcome(ws: trio_websocket.WebSocketConnection, hello: dict[str, object]) -> None:
    device = str(hello["device"])
    await ws.send_message(encode(Welcome(user="bob", device=device, session="s", heartbeat_s=30)))
    await ws.send_message(encode(Synced()))


async def test_a_reply_that_cannot_be_decoded_fails_the_request(nursery: trio.Nursery) -> None:
    async def garble(ws: trio_websocket.WebSocketConnection, hello: dict[str, object]) -> None:
        await welcome(ws, hello)
        while True:
            frame = orjson.loads(await ws.get_message())
            if frame["type"] == "history":
                garbled = {"type": "result", "rid": frame["rid"], "messages": 7}
                await ws.send_message(orjson.dumps(garbled).decode())

    url = await fake_node(nursery, garble)
    async with Client(url, token="t", device="d") as bob:
        with trio.fail_after(10):
            with pytest.raises(RequestError) as failed:
                await bob.history("c1")
    assert failed.value.code is ErrorCode.BAD_FRAME
    assert "could not be decoded" in str(failed.value)


async def test_a_request_that_gets_no_reply_times_out(nursery: trio.Nursery) -> None:
    async def ignore(ws: trio_websocket.WebSocketConnection, hello: dict[str, object]) -> None:
        await welcome(ws, hello)
        while True:
            await ws.get_message()

    url = await fake_node(nursery, ignore)
    async with Client(url, token="t", device="d", request_timeout_s=0.5) as bob:
        with trio.fail_after(10):
            with pytest.raises(RequestTimeout):
                await bob.convs()
            with pytest.raises(RequestTimeout):
                await bob.group_create("g", ["carol"])
            assert bob.session.pending_requests == {}
