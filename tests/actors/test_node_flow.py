"""End-to-end over real WebSockets: the five-step flow, offline sync, idempotent resend."""

from __future__ import annotations

from wsclient import Chat


async def test_five_step_flow(chat: Chat) -> None:
    a = await chat.connect("alice")
    b = await chat.connect("bob")
    await a.send({"type": "send", "cmid": "c1", "to": "bob", "body": "hi", "rid": "s1"})
    ack = await a.wait_for("ack", cmid="c1")
    assert ack["seq"] == 1 and ack["rid"] == "s1"
    stored, _more = await chat.store.history(ack["conv"], "alice", None, 10)
    assert [m.seq for m in stored] == [1]  # the ack came after the durable write
    msg = await b.wait_for("msg")
    assert (msg["conv"], msg["seq"], msg["id"], msg["from"], msg["cmid"], msg["body"]) == (
        ack["conv"],
        1,
        ack["id"],
        "alice",
        "c1",
        "hi",
    )
    assert msg["kind"] == "text" and msg["ts"] == ack["ts"]
    await b.send({"type": "recv", "conv": msg["conv"], "seq": 1})
    delivered = await a.wait_for("receipt", user="bob")
    assert delivered == {"type": "receipt", "conv": ack["conv"], "user": "bob", "delivered": 1}
    await b.send({"type": "read", "conv": msg["conv"], "seq": 1})
    read = await a.wait_for("receipt", user="bob", read=1)
    assert "delivered" not in read
    assert not [f for f in a.backlog if f["type"] == "msg"]  # the sender is not pushed its own


async def test_offline_recipient_syncs_on_every_device(chat: Chat) -> None:
    a = await chat.connect("alice")
    await a.send({"type": "send", "cmid": "c1", "to": "bob", "body": "one"})
    first = await a.wait_for("ack", cmid="c1")
    await a.send({"type": "send", "cmid": "c2", "to": "bob", "body": "two"})
    await a.wait_for("ack", cmid="c2")
    # The second ack comes from the same conversation actor after it recorded the first job.
    assert await chat.store.pending_notifications() == 1
    b1 = await chat.connect("bob", "phone")
    assert [(f["type"], f["seq"], f["body"]) for f in b1.synced_frames] == [
        ("msg", 1, "one"),
        ("msg", 2, "two"),
    ]
    b2 = await chat.connect("bob", "laptop")
    assert [f["seq"] for f in b2.synced_frames] == [1, 2]
    h1 = await b1.request({"type": "history", "conv": first["conv"], "rid": "h1"})
    h2 = await b2.request({"type": "history", "conv": first["conv"], "rid": "h2"})
    assert h1["messages"] == h2["messages"] and h1["more"] is False
    assert [m["body"] for m in h1["messages"]] == ["one", "two"]


async def test_resend_after_disconnect_stores_once(chat: Chat) -> None:
    a = await chat.connect("alice")
    frame = {"type": "send", "cmid": "c-lost", "to": "bob", "body": "are you there"}
    await a.send(frame)
    await a.aclose()  # gone before the ack could arrive
    a2 = await chat.connect("alice")
    await a2.send(frame)
    ack = await a2.wait_for("ack", cmid="c-lost")
    await a2.send(frame)
    again = await a2.wait_for("ack", cmid="c-lost")
    assert (again["seq"], again["id"]) == (ack["seq"], ack["id"]) == (1, ack["id"])
    messages, _ = await chat.store.history(ack["conv"], "alice", None, 50)
    assert [(m.seq, m.cmid) for m in messages] == [(1, "c-lost")]
    await a2.send({**frame, "body": "something else"})
    nack = await a2.wait_for("nack", cmid="c-lost")
    assert (nack["code"], nack["retry"]) == ("conflict", False)


async def test_convs_rows_carry_the_other_members_marks(chat: Chat) -> None:
    a = await chat.connect("alice")
    b = await chat.connect("bob")
    await a.send({"type": "send", "cmid": "c1", "to": "bob", "body": "hi"})
    ack = await a.wait_for("ack")
    await b.wait_for("msg")
    await b.send({"type": "read", "conv": ack["conv"], "seq": 99})  # clamped to 1
    await a.wait_for("receipt", user="bob", read=1)
    result = await a.request({"type": "convs", "rid": "c"})
    (row,) = result["convs"]
    assert row["conv"] == ack["conv"] and row["kind"] == "direct" and row["last_seq"] == 1
    assert row["delivered"] == 1 and row["read"] == 0 and row["unread"] == 0
    assert row["others"] == [{"user": "bob", "delivered": 0, "read": 1}]


async def test_new_connection_replaces_the_same_device(chat: Chat) -> None:
    old = await chat.connect("alice", "phone")
    new = await chat.connect("alice", "phone")
    assert await old.closed() == 4409
    pong = await new.request({"type": "ping", "rid": "p"}, kind="pong")
    assert pong == {"type": "pong", "rid": "p"}


async def test_http_endpoints_share_the_port(chat: Chat) -> None:
    import trio

    async def get(path: str, upgrade: bool = False) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", chat.port)
        extra = (
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            if upgrade
            else ""
        )
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
        await stream.aclose()
        return data

    assert (await get("/healthz")).startswith(b"HTTP/1.1 200")
    # /metrics only with --metrics (NodeConfig.metrics): see test_web_gateway.py.
    assert (await get("/metrics")).startswith(b"HTTP/1.1 404")
    assert (await get("/nope")).startswith(b"HTTP/1.1 404")
    assert (await get("/v2/ws", upgrade=True)).startswith(b"HTTP/1.1 404")
