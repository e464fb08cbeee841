"""The checker has teeth on hand-made histories: each category can fire, and a clean run passes."""

from __future__ import annotations

import random

import trio
import trio.testing

from persistence import Draft
from persistence._memory import MemoryStore
from sim._checker import Checker
from sim._history import (
    AckSeen,
    Displayed,
    FrameOut,
    History,
    HistorySeen,
    PresenceSeen,
    PushSeen,
    ReceiptSeen,
    SendIssued,
    SessionClosed,
    SessionOpened,
    TypingSeen,
)
from sim._trace import Trace
from sim._truth import snapshot


def _world() -> tuple[MemoryStore, Checker, History]:
    history = History(Trace())
    return MemoryStore(rng=random.Random(1)), Checker(history, grace_s=5.0, epoch_ms=0), history


async def _store_one(store: MemoryStore) -> None:
    await store.direct_conversation("a", "b")
    draft = Draft(sender="a", device="d0", cmid="c1", body="hi", ts=0)
    await store.append("d:a:b", [draft])


def _send(history: History, session: int = 1) -> None:
    history.record(SendIssued(at=0, user="a", device="d0", cmid="c1", body="hi", conv=None, to="b"))
    history.record(
        FrameOut(
            at=0,
            user="a",
            device="d0",
            session=session,
            type="send",
            fields=(("cmid", "c1"), ("to", "b"), ("body", "hi")),
        )
    )


def _run(check: object) -> None:
    async def main() -> None:
        await check()  # type: ignore[operator]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_clean_history_passes() -> None:
    async def check() -> None:
        store, checker, history = _world()
        history.record(SessionOpened(at=0, user="b", device="d0", session=1))
        await _store_one(store)
        _send(history)
        stored = store._messages["d:a:b"][0]
        history.record(
            AckSeen(
                at=1, user="a", device="d0", session=1, cmid="c1", conv="d:a:b", seq=1, id=stored.id
            )
        )
        history.record(
            Displayed(at=1, user="b", device="d0", conv="d:a:b", seq=1, id=stored.id, body="hi")
        )
        report = checker.check_liveness(snapshot(store), [("a", "d0"), ("b", "d0")])
        assert report.ok, report.render()

    _run(check)


def test_an_ack_for_something_not_stored_is_lost() -> None:
    async def check() -> None:
        store, checker, history = _world()
        _send(history)
        history.record(
            AckSeen(at=1, user="a", device="d0", session=1, cmid="c1", conv="d:a:b", seq=1, id="x")
        )
        report = checker.check_safety(snapshot(store))
        assert report.counts()["lost"] == 1

    _run(check)


def test_displaying_twice_is_a_duplicate_and_a_missing_message_is_lost() -> None:
    async def check() -> None:
        store, checker, history = _world()
        await _store_one(store)
        _send(history)
        mid = store._messages["d:a:b"][0].id
        for _ in range(2):
            history.record(
                Displayed(at=1, user="b", device="d0", conv="d:a:b", seq=1, id=mid, body="hi")
            )
        report = checker.check_liveness(snapshot(store), [("b", "d0"), ("b", "d1")])
        assert report.counts()["duplicated"] == 1
        assert report.counts()["lost"] == 1  # b/d1 never got it

    _run(check)


def test_a_receipt_ahead_of_the_recipients_recv_is_untruthful() -> None:
    async def check() -> None:
        store, checker, history = _world()
        await _store_one(store)
        history.record(
            ReceiptSeen(
                at=1,
                user="a",
                device="d0",
                session=1,
                conv="d:a:b",
                of_user="b",
                delivered=1,
                read=None,
            )
        )
        report = checker.check_safety(snapshot(store))
        assert report.counts()["untruthful_receipts"] == 1

    _run(check)


def test_offline_within_the_grace_period_is_a_presence_mismatch() -> None:
    async def check() -> None:
        store, checker, history = _world()
        await _store_one(store)
        history.record(SessionOpened(at=0, user="b", device="d0", session=1))
        history.record(SessionClosed(at=10, user="b", device="d0", session=1, how="cut"))
        history.record(
            PresenceSeen(
                at=11,
                user="a",
                device="d0",
                session=1,
                of_user="b",
                status="offline",
                last_seen=10_000,
                sent_at=11,
            )
        )
        history.record(
            PresenceSeen(
                at=16,
                user="a",
                device="d0",
                session=1,
                of_user="b",
                status="offline",
                last_seen=10_000,
                sent_at=16,
            )
        )
        report = checker.check_safety(snapshot(store))
        assert report.counts()["presence_mismatches"] == 1  # the one at 11 s, not at 16 s

    _run(check)


def test_a_message_to_an_offline_user_without_a_job_is_a_notification_miss() -> None:
    async def check() -> None:
        store, checker, history = _world()
        await _store_one(store)  # stored at ts 0 (virtual 0.0); b never connected
        _send(history)
        report = checker.check_notifications(snapshot(store))
        assert report.counts()["notification_misses"] == 1
        await store.notify_offline("b", "d:a:b", 1, 0)
        fresh = Checker(History(Trace()), grace_s=5.0, epoch_ms=0)
        assert fresh.check_notifications(snapshot(store)).ok

    _run(check)


def test_a_bad_frame_that_gets_no_answer_is_uncontained() -> None:
    async def check() -> None:
        store, checker, history = _world()
        history.record(SessionOpened(at=0, user="a", device="d0", session=1))
        history.record(
            FrameOut(
                at=1, user="a", device="d0", session=1, type="garbage", fields=(("text", "x"),)
            )
        )
        report = checker.check_liveness(snapshot(store), [])
        assert report.counts()["uncontained"] == 1

    _run(check)


async def _group_with_removal(store: MemoryStore) -> tuple[str, PushSeen]:
    """Group of a (creator), b, c; a removes c at seq 2. Returns the conv and c's push of #2."""
    conv, _event = await store.create_group("a", "t", ["b", "c"], 0)
    event = await store.remove_member(conv.id, "a", "c", 0)
    assert event is not None
    push = PushSeen(
        at=1,
        user="c",
        device="d0",
        session=1,
        conv=conv.id,
        seq=event.seq,
        id=event.id,
        sender="a",
        cmid=None,
        body=event.body,
        kind="member",
        synced=True,
    )
    return conv.id, push


def test_a_receipt_after_the_departure_was_pushed_is_a_leak() -> None:
    async def check() -> None:
        store, checker, history = _world()
        conv, push = await _group_with_removal(store)
        history.record(push)
        history.record(
            ReceiptSeen(
                at=2,
                user="c",
                device="d0",
                session=1,
                conv=conv,
                of_user="b",
                delivered=1,
                read=None,
            )
        )
        history.record(
            FrameOut(
                at=0,
                user="b",
                device="d0",
                session=1,
                type="recv",
                fields=(("conv", conv), ("seq", 1)),
            )
        )
        report = checker.check_safety(snapshot(store))
        assert any(
            "after it was pushed its departure" in t for t in report.findings["authorization_leaks"]
        )

    _run(check)


def test_a_receipt_caused_by_a_departed_members_mark_is_a_leak() -> None:
    async def check() -> None:
        store, checker, history = _world()
        conv, push = await _group_with_removal(store)
        history.record(push)
        history.record(
            FrameOut(
                at=2,
                user="c",
                device="d0",
                session=1,
                type="recv",
                fields=(("conv", conv), ("seq", 2)),
            )
        )
        history.record(
            ReceiptSeen(
                at=3,
                user="b",
                device="d0",
                session=1,
                conv=conv,
                of_user="c",
                delivered=2,
                read=None,
            )
        )
        report = checker.check_safety(snapshot(store))
        assert any("after being told of" in t for t in report.findings["authorization_leaks"])

    _run(check)


def test_typing_from_or_to_a_departed_member_is_a_leak() -> None:
    async def check() -> None:
        store, checker, history = _world()
        conv, push = await _group_with_removal(store)
        history.record(push)
        history.record(
            FrameOut(
                at=2, user="c", device="d0", session=1, type="typing", fields=(("conv", conv),)
            )
        )
        history.record(TypingSeen(at=3, user="b", device="d0", session=1, conv=conv, of_user="c"))
        history.record(TypingSeen(at=3, user="c", device="d0", session=1, conv=conv, of_user="b"))
        report = checker.check_safety(snapshot(store))
        leaks = report.findings["authorization_leaks"]
        assert any("relayed from after c was told" in t for t in leaks), leaks
        assert any("c/d0 got typing of b" in t for t in leaks), leaks

    _run(check)


def test_history_after_departure_or_before_the_join_is_a_leak() -> None:
    async def check() -> None:
        store, checker, history = _world()
        conv, push = await _group_with_removal(store)
        await store.add_member(conv, "a", "d", 0)  # d joins at seq 3
        history.record(push)
        first = store._messages[conv][0]
        for user, asked in (("c", 2.0), ("d", 2.0)):
            history.record(
                HistorySeen(
                    at=asked + 1,
                    user=user,
                    device="d0",
                    session=1,
                    conv=conv,
                    messages=((1, first.id),),
                    asked_at=asked,
                )
            )
        report = checker.check_safety(snapshot(store))
        leaks = report.findings["authorization_leaks"]
        assert any("c/d0 got history" in t for t in leaks), leaks
        assert any("before the event #3 that last added it" in t for t in leaks), leaks

    _run(check)
