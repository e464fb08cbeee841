"""Malformed frames get the precise code and message of the contract (PROTOCOL.md)."""

from __future__ import annotations

import orjson
import pytest

from protocol import (
    MAX_BODY_BYTES,
    MAX_FRAME_BYTES,
    Convs,
    ErrorCode,
    History,
    LocalProtocolError,
    Msg,
    Nack,
    Ping,
    Receipt,
    RemoteProtocolError,
    Send,
    SendError,
    decode_client_frame,
    decode_server_frame,
    empty_result,
)


def wire(**fields: object) -> str:
    return orjson.dumps(fields).decode()


def reject(data: str | bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        decode_client_frame(data)
    return info.value


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (
            b'{"type":"ping"}',
            "bad_frame",
            "binary frames are not accepted; send JSON as a text frame",
        ),
        ("[1]", "bad_frame", "frame must be a JSON object"),
        ('{"rid":"r"}', "bad_frame", "frame has no string field 'type'"),
        (wire(type=3), "bad_frame", "frame has no string field 'type'"),
        (wire(type="dance"), "bad_frame", "unknown frame type 'dance'"),
        (wire(type="welcome"), "bad_frame", "unknown frame type 'welcome'"),
        (wire(type="send", body="x", to="bob"), "bad_frame", "missing field 'cmid'"),
        (
            wire(type="send", cmid="no spaces", body="x", to="bob"),
            "bad_frame",
            "field 'cmid' must be 1-64 characters of [A-Za-z0-9_.-]",
        ),
        (
            wire(type="send", cmid="c" * 65, body="x", to="bob"),
            "bad_frame",
            "field 'cmid' must be 1-64 characters of [A-Za-z0-9_.-]",
        ),
        (
            wire(type="send", cmid=7, body="x", to="bob"),
            "bad_frame",
            "field 'cmid' must be a string",
        ),
        (
            wire(type="history", conv="g:1", limit=0),
            "bad_frame",
            "field 'limit' must be from 1 to 200",
        ),
        (
            wire(type="history", conv="g:1", limit=201),
            "bad_frame",
            "field 'limit' must be from 1 to 200",
        ),
        (
            wire(type="history", conv="g:1", limit=2.0),
            "bad_frame",
            "field 'limit' must be an integer",
        ),
        (
            wire(type="history", conv="g:1", before=-1),
            "bad_frame",
            "field 'before' must be a non-negative integer",
        ),
        (wire(type="recv", conv="g:1", seq=True), "bad_frame", "field 'seq' must be an integer"),
        (wire(type="read", conv="", seq=1), "bad_frame", "field 'conv' must be a conversation id"),
        (
            wire(type="read", conv="g" * 201, seq=1),
            "bad_frame",
            "field 'conv' must be a conversation id",
        ),
        (
            wire(type="group_create", title="", members=[]),
            "bad_frame",
            "field 'title' must be a string of 1 to 100 characters",
        ),
        (
            wire(type="group_create", title="t", members=["ok", "not ok"]),
            "bad_frame",
            "field 'members' must be a list of user ids",
        ),
        (
            wire(type="group_create", title="t", members=[f"u{i}" for i in range(257)]),
            "bad_frame",
            "field 'members' must list at most 256 users",
        ),
        (
            wire(type="presence_sub", users=[]),
            "bad_frame",
            "field 'users' must list 1 to 256 users",
        ),
        (
            wire(type="presence_unsub", users="bob"),
            "bad_frame",
            "field 'users' must be a list of strings",
        ),
        (wire(type="hello", device="d"), "unauthenticated", "missing field 'token'"),
        (
            wire(type="hello", token=None, device="d"),
            "unauthenticated",
            "field 'token' must be a string",
        ),
        (
            wire(type="hello", token="", device="d"),
            "unauthenticated",
            "field 'token' must be a non-empty string",
        ),
        (
            wire(type="hello", token="t", device="a/b"),
            "bad_frame",
            "field 'device' must be 1-64 characters of [A-Za-z0-9_.-]",
        ),
        (
            wire(type="convs", limit=0),
            "bad_frame",
            "field 'limit' must be from 1 to 500",
        ),
        (
            wire(type="convs", limit=501),
            "bad_frame",
            "field 'limit' must be from 1 to 500",
        ),
        (
            wire(type="convs", cursor=""),
            "bad_frame",
            "field 'cursor' must be a cursor from a previous result (1-256 chars)",
        ),
        (
            wire(type="convs", cursor=7),
            "bad_frame",
            "field 'cursor' must be a string",
        ),
        (
            wire(type="ping", rid=""),
            "bad_frame",
            "field 'rid' must be 1-64 characters of [A-Za-z0-9_.-]",
        ),
    ],
)
def test_bad_frame_is_named_precisely(data: str | bytes, code: str, message: str) -> None:
    exc = reject(data)
    assert type(exc) is RemoteProtocolError
    assert (exc.code, exc.message) == (code, message)
    assert exc.close_code is None


def test_invalid_json_says_so() -> None:
    exc = reject('{"type": "ping",')
    assert exc.code is ErrorCode.BAD_FRAME
    assert exc.message.startswith("frame is not valid JSON: ")


def test_the_offending_rid_is_echoed_when_readable() -> None:
    assert reject(wire(type="dance", rid="r-9")).rid == "r-9"
    assert reject(wire(type="history", conv="g:1", limit=0, rid="r.1")).rid == "r.1"
    assert reject(wire(type="send", body="x", to="bob", rid="r2")).rid == "r2"
    assert reject(wire(type="history", conv="g:1", limit=0, rid="bad rid")).rid is None


def test_a_known_type_is_named_on_the_error() -> None:
    assert reject(wire(type="history", conv=1)).frame_type == "history"
    assert reject(wire(type="dance")).frame_type is None


def test_a_frame_over_64_kib_is_too_large() -> None:
    # The limit counts UTF-8 bytes: 'é' is two of them.
    data = wire(type="ping", pad="é" * (MAX_FRAME_BYTES // 2))
    exc = reject(data)
    assert (exc.code, exc.message) == ("too_large", "frame is over the 65536 byte limit")


def test_a_frame_of_exactly_64_kib_is_accepted() -> None:
    head = '{"type":"ping","pad":"'
    data = head + "x" * (MAX_FRAME_BYTES - len(head) - 2) + '"}'
    assert len(data.encode()) == MAX_FRAME_BYTES
    assert decode_client_frame(data) == Ping()


def test_a_body_over_16_kib_is_nacked_too_large() -> None:
    body = "é" * (MAX_BODY_BYTES // 2) + "x"
    with pytest.raises(SendError) as info:
        decode_client_frame(wire(type="send", cmid="c1", body=body, to="bob", rid="r"))
    exc = info.value
    assert (exc.code, exc.cmid, exc.rid) == ("too_large", "c1", "r")
    assert exc.message == "field 'body' is over 16384 bytes of UTF-8"


def test_a_body_of_exactly_16_kib_is_accepted() -> None:
    body = "é" * (MAX_BODY_BYTES // 2)
    assert decode_client_frame(wire(type="send", cmid="c", body=body, to="b")).body == body


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"conv": "g:1", "to": "bob"}, "a send names exactly one of 'conv' and 'to'"),
        ({}, "a send names exactly one of 'conv' and 'to'"),
        ({"to": "bob", "body": None}, "field 'body' must be a string"),
        ({"to": "not a user"}, "field 'to' must be 1-64 characters of [A-Za-z0-9_.-]"),
        ({"conv": 5}, "field 'conv' must be a string"),
    ],
)
def test_a_send_with_a_valid_cmid_is_nacked(fields: dict[str, object], message: str) -> None:
    frame = {"type": "send", "cmid": "c-7", "body": "hi", **fields}
    with pytest.raises(SendError) as info:
        decode_client_frame(orjson.dumps(frame).decode())
    exc = info.value
    assert (exc.code, exc.message, exc.cmid) == ("bad_frame", message, "c-7")


def test_unknown_fields_are_ignored() -> None:
    assert decode_client_frame(wire(type="convs", x=1, nested={"a": [1]})) == Convs()
    assert decode_client_frame(wire(type="history", conv="g:1", limit=5, sort="desc")) == History(
        conv="g:1", limit=5
    )
    assert decode_server_frame(wire(type="result", rid=None, extra=[1, 2])) == empty_result(None)


def test_null_optional_fields_are_absent() -> None:
    assert decode_client_frame(wire(type="send", cmid="c", body="b", conv=None, to="bob")) == Send(
        cmid="c", body="b", to="bob"
    )
    # docs/protocol.md §1: null is absent, so a null limit is the default limit.
    assert decode_client_frame(wire(type="history", conv="g:1", limit=None)) == History(conv="g:1")
    assert decode_client_frame(wire(type="history", conv="g:1", before=None)) == History(conv="g:1")
    assert decode_client_frame(wire(type="convs", limit=None, cursor=None)) == Convs()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (wire(type="synced", extra=1), None),
        (wire(type="receipt", conv="c", user="u"), "a receipt carries 'delivered', 'read' or both"),
        (
            wire(type="nack", cmid="c", code="nope", message="m", retry=False),
            "field 'code' must be one of 'bad_frame', 'unauthenticated', 'forbidden', "
            "'not_found', 'too_large', 'rate_limited', 'conflict', 'unavailable', 'internal'",
        ),
        (
            wire(type="msg", conv="c", seq=0, id="i", **{"from": "u"}, cmid="c", body="", ts=0),
            "field 'seq' must be a positive integer (seqs start at 1)",
        ),
        (
            wire(type="msg", conv="c", seq=1, id="i", **{"from": "u"}, cmid=None, body="", ts=0),
            "a text msg carries a 'cmid' and a member msg carries 'cmid': null",
        ),
        (
            wire(type="presence", user="u", status="away", last_seen=None),
            "field 'status' must be one of 'online', 'offline'",
        ),
        (wire(type="result", rid="r", more="yes"), "field 'more' must be true or false"),
        (wire(type="result", rid="r", messages=[{}]), "missing field 'conv'"),
        (wire(type="result", rid=5), "field 'rid' must be a string"),
    ],
)
def test_server_frames_are_checked_too(data: str, message: str | None) -> None:
    if message is None:
        decode_server_frame(data)
        return
    with pytest.raises(RemoteProtocolError) as info:
        decode_server_frame(data)
    assert (info.value.code, info.value.message) == ("bad_frame", message)


def test_building_an_invalid_frame_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="exactly one of"):
        Send(cmid="c", body="b")
    with pytest.raises(LocalProtocolError, match="'delivered', 'read' or both"):
        Receipt(conv="c", user="u")
    with pytest.raises(LocalProtocolError, match="not an error code"):
        Nack(cmid="c", code="oops", message="m")
    with pytest.raises(LocalProtocolError, match="'cmid': null"):
        Msg(conv="c", seq=1, id="i", sender="u", cmid="c", body="{}", ts=0, kind="member")
