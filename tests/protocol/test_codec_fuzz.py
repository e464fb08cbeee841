"""Whatever arrives, the decoders return a frame or raise ProtocolError with a valid code."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from protocol import (
    CLIENT_FRAMES,
    SERVER_FRAMES,
    ConvRow,
    ErrorCode,
    Frame,
    MemberMarks,
    ProtocolError,
    RemoteProtocolError,
    SendError,
    ServerSession,
    decode_client_frame,
    decode_server_frame,
    encode,
    is_valid_id,
)

FRAMES_BY_TYPE: dict[str, list[type[Any]]] = {}
for frame_cls in (*CLIENT_FRAMES, *SERVER_FRAMES):
    FRAMES_BY_TYPE.setdefault(frame_cls.TYPE, []).append(frame_cls)


def wire_names(*classes: type[Any]) -> list[str]:
    return sorted(
        {f.metadata.get("wire", f.name) for cls in classes for f in attrs.fields(cls)} - {"fields"}
    )


RESULT_FIELDS = ["messages", "more", "convs", "conv"]
ALL_FIELDS = sorted(
    {*wire_names(*CLIENT_FRAMES, *SERVER_FRAMES, ConvRow, MemberMarks), *RESULT_FIELDS}
)

MSG = {"conv": "g:1", "seq": 1, "id": "m", "from": "bob", "cmid": "c", "body": "", "ts": 0}
ROW = {
    "conv": "d:a:b",
    "kind": "direct",
    "title": None,
    "members": ["a", "b"],
    "last_seq": 2,
    "delivered": 1,
    "read": 1,
    "unread": 0,
    "others": [{"user": "b", "delivered": 2, "read": 0}],
}
ids = st.sampled_from(["bob", "c-1", "A.b_9"])
seqs = st.integers(min_value=0, max_value=250)
# Mostly values that are right for the field, so that many frames decode and the checks run
# deep; the rest is junk of every JSON shape.
RIGHT: dict[str, st.SearchStrategy[Any]] = {
    "token": ids,
    "device": ids,
    "cmid": ids,
    "rid": ids,
    "user": ids,
    "from": ids,
    "to": ids,
    "body": st.text(max_size=8),
    "message": st.text(max_size=8),
    "conv": st.sampled_from(["g:1", "d:a:b"]),
    "id": st.sampled_from(["m1"]),
    "session": st.sampled_from(["s1"]),
    "title": st.sampled_from(["team", None]),
    "seq": seqs,
    "before": seqs,
    "limit": seqs,
    "delivered": seqs,
    "read": seqs,
    "last_seq": seqs,
    "unread": seqs,
    "ts": seqs,
    "last_seen": seqs | st.none(),
    "heartbeat_s": st.integers(min_value=5, max_value=65),
    "retry": st.booleans(),
    "more": st.booleans(),
    "kind": st.sampled_from(["text", "member", "direct", "group"]),
    "status": st.sampled_from(["online", "offline"]),
    "code": st.sampled_from(["bad_frame", "conflict"]),
    "members": st.lists(ids, max_size=3),
    "users": st.lists(ids, max_size=3),
    "messages": st.just([MSG]) | st.just([]),
    "convs": st.just([ROW]) | st.just([]),
    "others": st.just(ROW["others"]),
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(ALL_FIELDS) | st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)


def value_for(name: str) -> st.SearchStrategy[Any]:
    right = RIGHT.get(name, json_values)
    return st.one_of(right, right, right, right, json_values)


def fields_for(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    names = wire_names(*FRAMES_BY_TYPE[kind]) + (RESULT_FIELDS if kind == "result" else [])
    every = {name: value_for(name) for name in names}
    return st.fixed_dictionaries(
        {"type": st.just(kind)}, optional={**every, "extra": json_values}
    ) | st.fixed_dictionaries({"type": st.just(kind), **every})


frame_objects = st.sampled_from(sorted(FRAMES_BY_TYPE)).flatmap(fields_for)
client_frame_objects = st.sampled_from(sorted({c.TYPE for c in CLIENT_FRAMES})).flatmap(fields_for)
server_frame_objects = st.sampled_from(sorted({c.TYPE for c in SERVER_FRAMES})).flatmap(fields_for)
wire_data: st.SearchStrategy[str | bytes] = (
    st.builds(json.dumps, frame_objects)
    | st.builds(json.dumps, json_values)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)

Decoder = Callable[[str | bytes], Frame]
FUZZ = settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])


def check_protocol_error(exc: ProtocolError) -> None:
    """A decoding error blames the peer and carries a code, a message and valid ids."""
    event(f"{exc.code.value}")
    assert isinstance(exc, RemoteProtocolError)
    assert isinstance(exc.code, ErrorCode)
    assert exc.message
    assert exc.rid is None or is_valid_id(exc.rid)
    if isinstance(exc, SendError):
        assert is_valid_id(exc.cmid)


def check_decoding(decode: Decoder, data: str | bytes) -> None:
    try:
        frame = decode(data)
    except ProtocolError as exc:
        check_protocol_error(exc)
        return
    event(f"decoded {type(frame).__name__}")
    # A decoded frame is a valid value: it encodes, and decodes to itself.
    assert decode(encode(frame)) == frame


@pytest.mark.parametrize(
    "decode", [decode_client_frame, decode_server_frame], ids=["client", "server"]
)
@FUZZ
@given(data=wire_data)
def test_decoding_arbitrary_data_only_gives_frames_or_protocol_errors(
    decode: Decoder, data: str | bytes
) -> None:
    check_decoding(decode, data)


@FUZZ
@given(obj=client_frame_objects)
def test_decoding_client_frame_shaped_objects(obj: dict[str, Any]) -> None:
    check_decoding(decode_client_frame, json.dumps(obj))


@FUZZ
@given(obj=server_frame_objects)
def test_decoding_server_frame_shaped_objects(obj: dict[str, Any]) -> None:
    check_decoding(decode_server_frame, json.dumps(obj))


@FUZZ
@given(data=st.lists(wire_data, max_size=4))
def test_an_open_session_never_raises_anything_else(data: list[str | bytes]) -> None:
    session = ServerSession(now=0)
    session.receive('{"type":"hello","token":"t","device":"d"}', 0)
    session.send(session.accept(user="u", device="d", session="s", heartbeat_s=30, now=0))
    for now, item in enumerate(data, start=1):
        try:
            session.receive(item, now)
        except RemoteProtocolError as exc:
            error = exc
        else:
            error = None
        if error is not None:
            assert error.close_code is None
            session.send(session.reply_for(error))
        assert session.deadline() == now + 60
