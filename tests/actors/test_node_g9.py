"""End-to-end G9 matrix: every kind of bad input gets its precise error or close code, and a
conversation running beside it is unaffected."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from wsclient import Chat, WsClient

_cmids = itertools.count()


async def bystanders_still_talk(a: WsClient, b: WsClient) -> None:
    cmid = f"ok{next(_cmids)}"
    await a.send({"type": "send", "cmid": cmid, "to": "bob", "body": "still fine"})
    ack = await a.wait_for("ack", cmid=cmid)
    msg = await b.wait_for("msg", seq=ack["seq"])
    assert msg["body"] == "still fine"


OPEN_CASES: list[tuple[str, Any, str, str]] = [
    ("non-json", "{not json", "error", "bad_frame"),
    ("json-not-object", "[1, 2]", "error", "bad_frame"),
    ("binary", b"\x00\x01binary", "error", "bad_frame"),
    (
        "wrong-types",
        {"type": "recv", "conv": "d:a:b", "seq": "1", "rid": "r"},
        "error",
        "bad_frame",
    ),
    ("unknown-type", {"type": "teleport", "rid": "r"}, "error", "bad_frame"),
    ("missing-fields", {"type": "recv", "rid": "r"}, "error", "bad_frame"),
    ("no-type", {"conv": "x", "rid": "r"}, "error", "bad_frame"),
    (
        "second-hello",
        {"type": "hello", "token": "t", "device": "d", "rid": "r"},
        "error",
        "bad_frame",
    ),
    (
        "history-limit",
        {"type": "history", "conv": "c", "limit": 0, "rid": "r"},
        "error",
        "bad_frame",
    ),
    (
        "invalid-cmid",
        {"type": "send", "cmid": "no spaces!", "to": "bob", "body": "x", "rid": "r"},
        "error",
        "bad_frame",
    ),
    ("missing-cmid", {"type": "send", "to": "bob", "body": "x", "rid": "r"}, "error", "bad_frame"),
    (
        "oversize-body",
        {"type": "send", "cmid": "big", "to": "bob", "body": "x" * (16 * 1024 + 1), "rid": "r"},
        "nack",
        "too_large",
    ),
    (
        "oversize-frame",
        {"type": "ping", "pad": "x" * (70 * 1024), "rid": "r"},
        "error",
        "too_large",
    ),
    (
        "send-to-self",
        {"type": "send", "cmid": "me", "to": "mallory", "body": "x", "rid": "r"},
        "nack",
        "forbidden",
    ),
    ("unknown-conv", {"type": "history", "conv": "g:nope", "rid": "r"}, "error", "forbidden"),
]


@pytest.fixture
async def pair(chat: Chat) -> tuple[WsClient, WsClient]:
    a = await chat.connect("alice")
    b = await chat.connect("bob")
    await bystanders_still_talk(a, b)
    return a, b


async def test_bad_frames_after_hello_are_answered_and_contained(
    chat: Chat, pair: tuple[WsClient, WsClient]
) -> None:
    mallory = await chat.connect("mallory")
    for name, frame, kind, code in OPEN_CASES:
        await mallory.send(frame)
        reply = await mallory.recv()
        assert (reply["type"], reply["code"]) == (kind, code), (name, reply)
        assert reply["message"], name
        if isinstance(frame, dict) and "rid" in frame and code not in ("too_large",):
            assert reply.get("rid") == "r", (name, reply)
        await bystanders_still_talk(*pair)
    assert (await mallory.request({"type": "ping", "rid": "alive"}, kind="pong"))["rid"] == "alive"


async def test_history_of_a_foreign_conversation_is_forbidden(
    chat: Chat, pair: tuple[WsClient, WsClient]
) -> None:
    a, _b = pair
    conv = (await a.request({"type": "convs", "rid": "c"}))["convs"][0]["conv"]
    mallory = await chat.connect("mallory")
    for frame in (
        {"type": "history", "conv": conv, "rid": "h"},
        {"type": "typing", "conv": conv, "rid": "h"},
        {"type": "group_add", "conv": conv, "user": "mallory", "rid": "h"},
        {"type": "recv", "conv": conv, "seq": 1, "rid": "h"},
    ):
        error = await mallory.request(frame, kind="error")
        assert error["code"] == "forbidden", (frame, error)
    await mallory.send({"type": "send", "cmid": "in", "conv": conv, "body": "hi", "rid": "h"})
    assert (await mallory.wait_for("nack", cmid="in"))["code"] == "forbidden"
    await bystanders_still_talk(*pair)


@pytest.mark.parametrize(
    ("first", "code", "close"),
    [
        ({"type": "ping", "rid": "r"}, "bad_frame", 4400),
        ("garbage", "bad_frame", 4400),
        (b"\x01\x02", "bad_frame", 4400),
        ({"type": "hello", "token": "v1.bad.token", "device": "d"}, "unauthenticated", 4401),
        ({"type": "hello", "device": "d"}, "unauthenticated", 4401),
        ({"type": "hello", "token": "t", "device": "bad device!"}, "bad_frame", 4400),
    ],
)
async def test_bad_first_frames_close_the_connection(
    chat: Chat, pair: tuple[WsClient, WsClient], first: Any, code: str, close: int
) -> None:
    client = await chat.raw()
    await client.send(first)
    error = await client.recv()
    assert (error["type"], error["code"]) == ("error", code)
    assert await client.closed() == close
    await bystanders_still_talk(*pair)


async def test_frames_over_one_mebibyte_close_with_1009(
    chat: Chat, pair: tuple[WsClient, WsClient]
) -> None:
    mallory = await chat.connect("mallory")
    await mallory.send("x" * (1024 * 1024 + 16))
    assert await mallory.closed() == 1009
    await bystanders_still_talk(*pair)


async def test_a_thousand_garbage_frames(chat: Chat, pair: tuple[WsClient, WsClient]) -> None:
    mallory = await chat.connect("mallory")
    for i in range(1000):
        await mallory.send(f"garbage {i}" if i % 2 else {"type": f"junk{i}", "rid": f"g{i}"})
    for i in range(1000):
        reply = await mallory.recv()
        assert (reply["type"], reply["code"]) == ("error", "bad_frame")
        if not i % 2:
            assert reply["rid"] == f"g{i}"
    await bystanders_still_talk(*pair)
    assert (await mallory.request({"type": "ping", "rid": "p"}, kind="pong"))["rid"] == "p"
