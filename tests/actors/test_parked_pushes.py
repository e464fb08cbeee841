"""Pushes parked during a hello's backlog: what is released after ``synced`` (G4, G7)."""

from __future__ import annotations

from unit import fake_connection

from actors._router import SyncedBacklog
from protocol import Msg, Pong, Receipt, TypingNotice


def text(conv: str, seq: int) -> Msg:
    return Msg(conv=conv, seq=seq, id=f"m{seq}", sender="bob", cmid=f"c{seq}", body="x", ts=1)


def test_parked_pushes_drop_what_the_backlog_carried_and_what_follows_a_departure() -> None:
    handle = fake_connection(1, "carol").handle
    handle.syncing = True
    parked = [
        text("g:left", 2),  # the backlog carried it
        Receipt(conv="g:left", user="bob", delivered=2),  # pushed while carol was a member
        TypingNotice(conv="g:left", user="bob"),
        text("g:stay", 4),  # above the backlog: kept, in order
        Receipt(conv="g:stay", user="bob", read=3),
        TypingNotice(conv="g:stay", user="bob"),
        Pong(rid=None),
    ]
    for frame in parked:
        assert handle.push(frame)
    synced = SyncedBacklog(up_to={"g:left": 3, "g:stay": 3}, departed={"g:left"})
    assert handle.take_parked(synced) == parked[3:]
    assert handle.take_parked(synced) == []


def test_without_a_departure_receipts_and_typing_are_released() -> None:
    handle = fake_connection(1, "carol").handle
    handle.syncing = True
    parked = [Receipt(conv="g:1", user="bob", delivered=1), TypingNotice(conv="g:1", user="bob")]
    for frame in parked:
        assert handle.push(frame)
    assert handle.take_parked(SyncedBacklog(up_to={"g:1": 5})) == parked
