"""Admission, token expiry, shutdown drain and abuse limits, over real WebSockets against a
node on SecantusDB (issue 14: items 8, 9, 10, 11 and 15)."""

from __future__ import annotations

import contextlib
import time

import attrs
import trio
from trio_websocket import ConnectionClosed, wrap_client_stream
from wsclient import TEST_CONFIG, Chat, StartChat, WsClient, acks_until_close, slow_reader

from actors import NodeConfig


class SlowStart(trio.abc.Stream):
    """A client stream that sends the first few bytes of its upgrade request, pauses, then
    the rest: a slow (or hostile) WebSocket handshake."""

    def __init__(self, stream: trio.abc.Stream, pause_s: float) -> None:
        self._stream = stream
        self._pause_s = pause_s
        self._paused = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self._paused:
            self._paused = True
            await self._stream.send_all(data[:16])
            await trio.sleep(self._pause_s)  # the slowness under test, not a wait for an event
            data = data[16:]
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


async def test_hello_deadline_runs_from_the_accept(start_chat: StartChat) -> None:
    # A 0.7 s handshake leaves 0.3 s of a 1 s hello timeout: a hello at 1.4 s is too late
    # (it was accepted when the 1 s ran from the end of the handshake, until 1.7 s).
    chat = await start_chat(config_with(hello_timeout_s=1.0))
    started = trio.current_time()
    tcp = await trio.open_tcp_stream("127.0.0.1", chat.port)
    ws = await wrap_client_stream(chat.nursery, SlowStart(tcp, 0.7), "127.0.0.1", "/v1/ws")
    client = WsClient(ws)
    await trio.sleep_until(started + 1.4)  # the slow client's hello, late on purpose
    with contextlib.suppress(ConnectionClosed):
        await client.send({"type": "hello", "token": chat.token("ann"), "device": "d1"})
    assert await client.closed() == 4408


async def test_connections_waiting_for_hello_are_limited(start_chat: StartChat) -> None:
    chat = await start_chat(config_with(max_pending_hellos=3))
    waiting = [await chat.raw() for _ in range(3)]
    refused = await chat.raw()
    assert await refused.closed() == 4429
    # Those already in may still say hello, and then a newcomer fits again.
    await waiting[0].hello(chat.token("ann"), "d1")
    newcomer = await chat.raw()
    await newcomer.hello(chat.token("ben"), "d1")


async def test_node_wide_connection_limit(start_chat: StartChat) -> None:
    chat = await start_chat(config_with(max_connections=2))
    await chat.connect("ann")
    await chat.connect("ben")
    refused = await chat.raw()
    assert await refused.closed() == 4429


async def test_device_limit_per_user(start_chat: StartChat) -> None:
    chat = await start_chat(config_with(max_devices_per_user=2))
    first = await chat.connect("ann", "d1")
    await chat.connect("ann", "d2")
    third = await chat.raw()
    await third.send({"type": "hello", "token": chat.token("ann"), "device": "d3"})
    assert await third.closed() == 4429
    # Another user is not affected, and the same device replaces its old connection.
    await chat.connect("ben", "d1")
    await chat.connect("ann", "d1")
    assert await first.closed() == 4409


async def test_session_ends_when_its_token_expires(chat: Chat) -> None:
    client = await chat.raw()
    # Minted with 2 s to live (whole seconds): it expires 1-2 s from now.
    await client.hello(chat.issuer.mint("ann", 2, time.time()), "d1")
    error = await client.wait_for("error", within=5)
    assert error == {"type": "error", "code": "unauthenticated", "message": "token expired"}
    assert await client.closed() == 4401


async def test_shutdown_writes_what_each_connection_is_owed_then_1001(chat: Chat) -> None:
    ann, ann_socket = await slow_reader(chat.nursery, chat.port, chat.token("ann"))
    ben = await chat.connect("ben")
    # About 1 MiB of pushes ann does not read: her connection's writer is stuck behind them.
    for i in range(64):
        await ben.send({"type": "send", "cmid": f"b{i}", "to": "ann", "body": "x" * 16384})
        await ben.wait_for("ack", cmid=f"b{i}")
    cmids = [f"c{i}" for i in range(50)]
    for cmid in cmids:
        await ann.send({"type": "send", "cmid": cmid, "to": "ben", "body": f"m {cmid}"})
    await ben.wait_for("msg", cmid=cmids[-1])  # all 50 stored; their acks queued for ann
    chat.nursery.start_soon(chat.node.shutdown)
    # Now ann reads, and fast: the node gives her what she is owed within its drain bound.
    with trio.fail_after(10):
        answers, reason = await acks_until_close(ann, ann_socket)
    assert reason is not None and reason.code == 1001
    assert sorted(answers) == sorted(cmids)


async def test_rate_budget_is_per_user_across_devices(start_chat: StartChat) -> None:
    config = config_with(rate_burst=20, rate_per_s=0.01, user_rate_burst=30, user_rate_per_s=0.01)
    chat = await start_chat(config)
    phones = [await chat.connect("ann", f"d{i}") for i in range(2)]
    codes: list[str] = []
    for phone in phones:
        for _i in range(20):  # within each connection's own burst
            rid = chat.rid()
            await phone.send({"type": "history", "conv": "g:none", "rid": rid})
            codes.append((await phone.wait_for("error", rid=rid))["code"])
    assert codes.count("rate_limited") == 10
    assert codes.count("forbidden") == 30


async def test_typing_is_relayed_at_most_once_a_second(chat: Chat) -> None:
    ann, ben = await chat.connect("ann"), await chat.connect("ben")
    await ann.send({"type": "send", "cmid": "c0", "to": "ben", "body": "hi"})
    conv = (await ann.wait_for("ack"))["conv"]
    for _ in range(3):
        await ann.send({"type": "typing", "conv": conv})
    await ann.send({"type": "send", "cmid": "c1", "conv": conv, "body": "there"})
    # One mailbox per conversation: the relays come before the push of the later message.
    await ben.wait_for("msg", seq=2)
    assert [f["type"] for f in ben.backlog].count("typing") == 1


async def test_history_before_zero_and_null_limit_behave_as_documented(chat: Chat) -> None:
    ann = await chat.connect("ann")
    for i in range(3):
        await ann.send({"type": "send", "cmid": f"c{i}", "to": "ben", "body": "x"})
        await ann.wait_for("ack", cmid=f"c{i}")
    conv = "d:ann:ben"
    empty = await ann.request({"type": "history", "conv": conv, "before": 0, "rid": chat.rid()})
    assert (empty["messages"], empty["more"]) == ([], False)
    page = await ann.request({"type": "history", "conv": conv, "limit": None, "rid": chat.rid()})
    assert [m["seq"] for m in page["messages"]] == [1, 2, 3]


def config_with(**changes: object) -> NodeConfig:
    """TEST_CONFIG with ``changes``."""
    return attrs.evolve(TEST_CONFIG, **changes)  # type: ignore[misc]


async def test_a_refused_send_leaves_no_direct_conversation(chat: Chat) -> None:
    ann, cy = await chat.connect("ann"), await chat.connect("cy")
    await ann.send({"type": "send", "cmid": "c1", "to": "ben", "body": "hi ben"})
    await ann.wait_for("ack", cmid="c1")
    await ann.send({"type": "send", "cmid": "c1", "to": "cy", "body": "hi cy"})  # reused cmid
    nack = await ann.wait_for("nack", cmid="c1")
    assert nack["code"] == "conflict"
    # No trace: cy lists no conversation, and ann may not watch cy's presence.
    listing = await cy.request({"type": "convs", "rid": chat.rid()})
    assert listing["convs"] == []
    refused = await ann.request(
        {"type": "presence_sub", "users": ["cy"], "rid": chat.rid()}, kind="error"
    )
    assert refused["code"] == "forbidden"
