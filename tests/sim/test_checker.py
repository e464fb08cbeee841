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
    PresenceSeen,
    ReceiptSeen,
    SendIssued,
    SessionClosed,
    SessionOpened,
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
