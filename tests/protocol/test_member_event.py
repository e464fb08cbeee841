"""The member-event body: one type writes it and reads it back, and bad bodies are the
peer's fault with a wire code."""

from __future__ import annotations

import pytest

from protocol import ErrorCode, MemberEvent, RemoteProtocolError


def test_body_is_the_contract_json_and_parses_back() -> None:
    event = MemberEvent(op="create", by="alice", users=("alice", "bob"))
    assert event.to_body() == '{"op":"create","by":"alice","users":["alice","bob"]}'
    assert MemberEvent.parse(event.to_body()) == event


def test_adds_is_true_only_for_create_and_add_naming_the_user() -> None:
    assert MemberEvent(op="add", by="a", users=("b",)).adds("b")
    assert MemberEvent(op="create", by="a", users=("a", "b")).adds("a")
    assert not MemberEvent(op="add", by="a", users=("b",)).adds("c")
    assert not MemberEvent(op="remove", by="a", users=("b",)).adds("b")


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        ("not json", "not JSON"),
        ("[1]", "an object"),
        ('{"op":"add","by":"a"}', "an object"),
        ('{"op":"add","by":"a","users":"b"}', "must be a list"),
        ('{"op":"join","by":"a","users":["b"]}', "'op'"),
        ('{"op":"add","by":"a b","users":["b"]}', "'by'"),
        ('{"op":"add","by":"a","users":[1]}', "'users'"),
    ],
)
def test_a_bad_body_is_a_remote_bad_frame(body: str, hint: str) -> None:
    with pytest.raises(RemoteProtocolError, match=hint) as info:
        MemberEvent.parse(body)
    assert info.value.code is ErrorCode.BAD_FRAME
