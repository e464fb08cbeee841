"""End-to-end: group create/add/remove/leave, member events in the sequence, removal."""

from __future__ import annotations

import json

from wsclient import Chat, Frame, WsClient


def event(frame: Frame) -> dict[str, object]:
    assert frame["type"] == "msg" and frame["kind"] == "member" and frame["cmid"] is None
    return dict(json.loads(frame["body"]))


async def member_msg(client: WsClient, seq: int) -> dict[str, object]:
    return event(await client.wait_for("msg", seq=seq))


async def test_group_lifecycle(chat: Chat) -> None:
    ann = await chat.connect("ann")
    ben = await chat.connect("ben")
    cat = await chat.connect("cat")
    created = await ann.request(
        {"type": "group_create", "title": "trip", "members": ["ben"], "rid": "g"}
    )
    conv = created["conv"]
    assert await member_msg(ann, 1) == {"op": "create", "by": "ann", "users": ["ann", "ben"]}
    assert (await member_msg(ben, 1))["op"] == "create"

    await ben.request({"type": "group_add", "conv": conv, "user": "cat", "rid": "a"})
    assert await member_msg(cat, 2) == {"op": "add", "by": "ben", "users": ["cat"]}
    again = await ben.request({"type": "group_add", "conv": conv, "user": "cat", "rid": "a2"})
    assert again == {"type": "result", "rid": "a2"}  # already in: no event

    not_creator = await ben.request(
        {"type": "group_remove", "conv": conv, "user": "cat", "rid": "x"}, kind="error"
    )
    assert not_creator["code"] == "forbidden"
    nobody = await ann.request(
        {"type": "group_remove", "conv": conv, "user": "zed", "rid": "y"}, kind="error"
    )
    assert nobody["code"] == "not_found"

    await cat.send({"type": "send", "cmid": "m1", "conv": conv, "body": "hello all"})
    assert (await cat.wait_for("ack", cmid="m1"))["seq"] == 3
    await ann.request({"type": "group_remove", "conv": conv, "user": "cat", "rid": "r"})
    removal = await cat.wait_for("msg", seq=4)
    assert event(removal) == {"op": "remove", "by": "ann", "users": ["cat"]}

    await ben.send({"type": "send", "cmid": "m2", "conv": conv, "body": "cat is gone"})
    assert (await ben.wait_for("ack", cmid="m2"))["seq"] == 5
    await ben.request({"type": "group_leave", "conv": conv, "rid": "l"})
    assert (await member_msg(ann, 6))["op"] == "leave"

    denied = await cat.request({"type": "history", "conv": conv, "rid": "h"}, kind="error")
    assert denied["code"] == "forbidden"
    await cat.send({"type": "send", "cmid": "m3", "conv": conv, "body": "let me in"})
    assert (await cat.wait_for("nack", cmid="m3"))["code"] == "forbidden"
    await cat.send({"type": "recv", "conv": conv, "seq": 4})  # accepted up to the removal
    pong = await cat.request({"type": "ping", "rid": "p"}, kind="pong")
    assert pong["rid"] == "p"
    assert not [f for f in cat.backlog if f["type"] in ("msg", "error") and f.get("seq", 0) > 4]

    history = await ann.request({"type": "history", "conv": conv, "rid": "hh"})
    assert [m["seq"] for m in history["messages"]] == [1, 2, 3, 4, 5, 6]


async def test_direct_conversations_refuse_membership_changes(chat: Chat) -> None:
    ann = await chat.connect("ann")
    await ann.send({"type": "send", "cmid": "m", "to": "ben", "body": "hi"})
    conv = (await ann.wait_for("ack"))["conv"]
    refused = await ann.request(
        {"type": "group_add", "conv": conv, "user": "cat", "rid": "a"}, kind="error"
    )
    assert refused["code"] == "forbidden"
