"""Every frame type survives encode → decode unchanged, in the direction it travels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    CLIENT_FRAMES,
    SERVER_FRAMES,
    Ack,
    ConvRow,
    Convs,
    Error,
    ErrorCode,
    Frame,
    GroupAdd,
    GroupCreate,
    GroupLeave,
    GroupRemove,
    Hello,
    History,
    MemberMarks,
    Msg,
    Nack,
    Ping,
    Pong,
    Presence,
    PresenceSub,
    PresenceUnsub,
    Read,
    Receipt,
    Recv,
    Send,
    Synced,
    Typing,
    TypingNotice,
    Welcome,
    convs_result,
    decode_client_frame,
    decode_server_frame,
    empty_result,
    encode,
    frame_to_dict,
    group_created_result,
    history_result,
)

TEXT_MSG = Msg(conv="d:alice:bob", seq=7, id="m7", sender="alice", cmid="c-1", body="hi", ts=1)
MEMBER_MSG = Msg(
    conv="g:0af3",
    seq=1,
    id="m1",
    sender="alice",
    cmid=None,
    body='{"op":"create","by":"alice","users":["alice","bob"]}',
    ts=1_700_000_000_000,
    kind="member",
)

CLIENT_SAMPLES: list[Frame] = [
    Hello(token="tok.en", device="phone-1"),
    Hello(token="t", device="d", rid="r1"),
    Send(cmid="c1", body="hello", to="bob"),
    Send(cmid="c2", body="é ✓✓ 🎉", conv="g:0af3", rid="r2"),
    Send(cmid="c3", body="", conv="d:alice:bob"),
    Recv(conv="g:0af3", seq=0),
    Recv(conv="g:0af3", seq=12, rid="r"),
    Read(conv="d:alice:bob", seq=3),
    History(conv="g:0af3"),
    History(conv="g:0af3", before=0, limit=1, rid="h"),
    History(conv="g:0af3", before=51, limit=200),
    Convs(),
    Convs(rid="c"),
    Convs(limit=1, cursor="x"),
    Convs(limit=500, cursor="c" * 256, rid="c"),
    GroupCreate(title="team", members=()),
    GroupCreate(title="t" * 100, members=("bob", "carol"), rid="g"),
    GroupAdd(conv="g:0af3", user="dave"),
    GroupRemove(conv="g:0af3", user="dave", rid="x"),
    GroupLeave(conv="g:0af3"),
    PresenceSub(users=("bob",)),
    PresenceUnsub(users=("bob", "carol"), rid="p"),
    Typing(conv="g:0af3"),
    Ping(),
    Ping(rid="p.1"),
]

SERVER_SAMPLES: list[Frame] = [
    Welcome(user="alice", device="phone-1", session="s-1", heartbeat_s=30),
    Welcome(user="alice", device="phone-1", session="s-1", heartbeat_s=30, node="host-1"),
    Welcome(user="alice", device="phone-1", session="s-1", heartbeat_s=10, rid="h"),
    TEXT_MSG,
    MEMBER_MSG,
    Synced(),
    Ack(cmid="c1", conv="d:alice:bob", seq=1, id="m1", ts=5),
    Ack(cmid="c1", conv="d:alice:bob", seq=1, id="m1", ts=5, rid="r"),
    Nack(cmid="c1", code=ErrorCode.CONFLICT, message="cmid reused", retry=False),
    Nack(cmid="c1", code=ErrorCode.UNAVAILABLE, message="store down", retry=True, rid="r"),
    Receipt(conv="g:0af3", user="bob", delivered=3),
    Receipt(conv="g:0af3", user="bob", read=2),
    Receipt(conv="g:0af3", user="bob", delivered=3, read=3),
    Presence(user="bob", status="online", last_seen=None),
    Presence(user="bob", status="offline", last_seen=1_700_000_000_000),
    TypingNotice(conv="g:0af3", user="bob"),
    history_result("h", (MEMBER_MSG, TEXT_MSG), more=False),
    history_result(None, (), more=True),
    convs_result(
        "c",
        (
            ConvRow(
                conv="d:alice:bob",
                kind="direct",
                title=None,
                members=("alice", "bob"),
                last_seq=9,
                delivered=9,
                read=4,
                unread=2,
                others=(MemberMarks(user="bob", delivered=9, read=9),),
            ),
            ConvRow(
                conv="g:0af3",
                kind="group",
                title="team",
                members=("alice",),
                last_seq=1,
                delivered=0,
                read=0,
                unread=0,
            ),
        ),
        more=True,
        cursor="opaque-cursor",
    ),
    convs_result(None, (), more=False, cursor=None),
    group_created_result("g", "g:0af3"),
    empty_result(None),
    empty_result("r"),
    Error(code=ErrorCode.FORBIDDEN, message="not a member"),
    Error(code="bad_frame", message="x", rid="r"),
    Pong(),
    Pong(rid="p"),
]

Decoder = Callable[[str | bytes], Frame]
DIRECTIONS: list[tuple[str, Decoder, list[Frame]]] = [
    ("client->server", decode_client_frame, CLIENT_SAMPLES),
    ("server->client", decode_server_frame, SERVER_SAMPLES),
]


@pytest.mark.parametrize(
    ("decode", "frame"),
    [
        pytest.param(decode, frame, id=f"{direction}:{type(frame).__name__}{i}")
        for direction, decode, samples in DIRECTIONS
        for i, frame in enumerate(samples)
    ],
)
def test_encode_then_decode_gives_the_same_frame(decode: Decoder, frame: Frame) -> None:
    wire = encode(frame)
    assert decode(wire) == frame
    assert orjson.loads(wire) == frame_to_dict(frame)
    assert orjson.loads(wire)["type"] == type(frame).TYPE


@pytest.mark.parametrize(
    ("frame_types", "samples"),
    [(CLIENT_FRAMES, CLIENT_SAMPLES), (SERVER_FRAMES, SERVER_SAMPLES)],
    ids=["client", "server"],
)
def test_every_frame_type_has_a_sample(frame_types: tuple[type, ...], samples: list[Frame]) -> None:
    assert {type(f) for f in samples} == set(frame_types)


def test_wire_names_follow_the_contract() -> None:
    assert frame_to_dict(TEXT_MSG) == {
        "type": "msg",
        "conv": "d:alice:bob",
        "seq": 7,
        "id": "m7",
        "from": "alice",
        "cmid": "c-1",
        "body": "hi",
        "ts": 1,
        "kind": "text",
    }
    # Absent optional fields are left out, except those the contract spells as null.
    assert frame_to_dict(Send(cmid="c", body="b", to="bob")) == {
        "type": "send",
        "cmid": "c",
        "body": "b",
        "to": "bob",
    }
    assert frame_to_dict(Receipt(conv="c", user="u", read=1)) == {
        "type": "receipt",
        "conv": "c",
        "user": "u",
        "read": 1,
    }
    assert frame_to_dict(empty_result(None)) == {"type": "result", "rid": None}
    assert frame_to_dict(Presence(user="u", status="online")) == {
        "type": "presence",
        "user": "u",
        "status": "online",
        "last_seen": None,
    }


def test_a_default_history_limit_is_sent_explicitly() -> None:
    assert frame_to_dict(History(conv="c")) == {"type": "history", "conv": "c", "limit": 50}
    assert decode_client_frame('{"type":"history","conv":"c"}') == History(conv="c", limit=50)


def test_result_fields_compare_regardless_of_order() -> None:
    assert history_result("r", (), True) == decode_server_frame(
        '{"type":"result","more":true,"rid":"r","messages":[]}'
    )


@settings(max_examples=50)
@given(body=st.text(max_size=300), cmid=st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True))
def test_any_text_body_round_trips(body: str, cmid: str) -> None:
    send = Send(cmid=cmid, body=body, to="bob")
    assert decode_client_frame(encode(send)) == send
    msg = Msg(conv="c", seq=1, id="i", sender="bob", cmid=cmid, body=body, ts=0)
    pushed: Any = decode_server_frame(encode(msg))
    assert pushed == msg
