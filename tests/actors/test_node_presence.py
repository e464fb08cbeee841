"""End-to-end: presence online, invisible flaps within the grace, offline with last_seen."""

from __future__ import annotations

from wsclient import Chat


async def test_presence_with_grace(chat: Chat) -> None:
    ann = await chat.connect("ann")
    await ann.send({"type": "send", "cmid": "m", "to": "ben", "body": "hi"})
    await ann.wait_for("ack")
    ben = await chat.connect("ben")
    await ann.send({"type": "presence_sub", "users": ["ben"], "rid": "s"})
    assert await ann.wait_for("presence") == {
        "type": "presence",
        "user": "ben",
        "status": "online",
        "last_seen": None,
    }
    # A flap: ben's only device drops and a new connection comes back within the grace.
    await ben.aclose()
    ben = await chat.connect("ben")
    await ben.aclose()
    offline = await ann.wait_for("presence", within=5)
    assert offline["status"] == "offline" and isinstance(offline["last_seen"], int)
    assert not [f for f in ann.backlog if f["type"] == "presence"]  # no report of the flap
    assert (await chat.store.last_seen(["ben"]))["ben"] == offline["last_seen"]
    await chat.connect("ben", "tablet")
    online = await ann.wait_for("presence")
    assert online["status"] == "online" and online["last_seen"] == offline["last_seen"]


async def test_presence_of_a_stranger_is_refused(chat: Chat) -> None:
    ann = await chat.connect("ann")
    await ann.send({"type": "send", "cmid": "m", "to": "ben", "body": "hi"})
    await ann.wait_for("ack")
    await ann.send({"type": "presence_sub", "users": ["ben", "eve"], "rid": "s"})
    ben = await ann.wait_for("presence")
    assert ben["user"] == "ben" and ben["status"] == "offline"
    error = await ann.wait_for("error", rid="s")
    assert error["code"] == "forbidden" and "eve" in error["message"]
    assert "ben" not in error["message"]
    await ann.send({"type": "presence_unsub", "users": ["zed"], "rid": "u"})  # a no-op
    assert (await ann.request({"type": "ping", "rid": "p"}, kind="pong"))["rid"] == "p"


async def test_typing_is_relayed_to_the_other_members_only(chat: Chat) -> None:
    ann = await chat.connect("ann")
    ben = await chat.connect("ben")
    await ann.send({"type": "send", "cmid": "m", "to": "ben", "body": "hi"})
    conv = (await ann.wait_for("ack"))["conv"]
    await ann.send({"type": "typing", "conv": conv})
    assert await ben.wait_for("typing") == {"type": "typing", "conv": conv, "user": "ann"}
    eve = await chat.connect("eve")
    refused = await eve.request({"type": "typing", "conv": conv, "rid": "t"}, kind="error")
    assert refused["code"] == "forbidden"
