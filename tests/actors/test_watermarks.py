"""Watermarks (plain data) and the node-wide MarkWriter, each on its own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from actors._watermarks import MarkWriter, ReceiptOut, Watermarks
from persistence import Draft, MemberMarks, MemoryStore, ReadMark, RecvMark
from protocol import Receipt
from sim._store import FaultyStore, StoreFaults

CONV = "d:alice:bob"


@contextlib.contextmanager
def untimed(_op: str) -> Iterator[None]:
    yield


def test_recv_marks_max_merge_and_delivered_is_the_best_device() -> None:
    marks = Watermarks(CONV)
    marks.raise_recv("bob", "phone", 3)
    marks.raise_recv("bob", "phone", 2)  # lower: ignored
    marks.raise_recv("bob", "laptop", 1)
    assert marks.device_recv("bob", "phone") == 3
    assert marks.pending() == (
        [
            RecvMark(user="bob", device="laptop", conv=CONV, seq=1),
            RecvMark(user="bob", device="phone", conv=CONV, seq=3),
        ],
        [],
    )
    assert marks.written() == [
        ReceiptOut(Receipt(conv=CONV, user="bob", delivered=3), frozenset({"phone"}))
    ]
    assert not marks.dirty


def test_read_marks_rise_only_and_start_from_the_store() -> None:
    marks = Watermarks(CONV)
    marks.load_users({"bob": MemberMarks(user="bob", delivered=4, read=4)})
    marks.raise_read("bob", "phone", 2)  # below what the Store had
    assert not marks.dirty
    marks.raise_read("bob", "phone", 5)
    assert marks.pending() == ([], [ReadMark(user="bob", conv=CONV, seq=5)])
    (out,) = marks.written()
    assert (out.receipt.read, out.receipt.delivered) == (5, None)


def test_the_backwards_mutant_lets_a_mark_fall() -> None:
    marks = Watermarks(CONV, backwards=True)
    marks.raise_recv("bob", "phone", 3)
    marks.written()
    marks.raise_recv("bob", "phone", 1)
    assert marks.device_recv("bob", "phone") == 1


@pytest.fixture
async def store() -> MemoryStore:
    """Conversation CONV with two messages (the Store clamps marks to what exists)."""
    store = MemoryStore()
    await store.direct_conversation("alice", "bob")
    drafts = [Draft(sender="alice", device="d", cmid=f"c{i}", body="hi", ts=i) for i in (1, 2)]
    await store.append(CONV, drafts)
    return store


async def test_the_writer_merges_submissions_and_calls_back_after_the_write(
    store: MemoryStore,
) -> None:
    writer = MarkWriter(store, retry_s=1.0, timed=untimed)
    called: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit(
            [RecvMark(user="bob", device="phone", conv=CONV, seq=1)], [], lambda: called.append("a")
        )
        writer.submit(
            [RecvMark(user="bob", device="phone", conv=CONV, seq=2)],
            [ReadMark(user="bob", conv=CONV, seq=2)],
            lambda: called.append("b"),
        )
        assert called == []  # nothing announced before it is written
        with trio.fail_after(5):
            await writer.drain()
        assert called == ["a", "b"]
        assert await store.device_recv("bob", "phone", CONV) == 2
        assert (await store.marks(CONV))["bob"] == MemberMarks(user="bob", delivered=2, read=2)
        nursery.cancel_scope.cancel()


async def test_a_failed_write_is_retried_and_announced_only_once_written(
    store: MemoryStore, autojump_clock: trio.testing.MockClock
) -> None:
    faults = StoreFaults()
    writer = MarkWriter(FaultyStore(store, faults).as_store(), retry_s=1.0, timed=untimed)
    called: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        faults.fail_next(1)
        started = trio.current_time()
        writer.submit(
            [RecvMark(user="bob", device="phone", conv=CONV, seq=1)],
            [],
            lambda: called.append(trio.current_time() - started),
        )
        await writer.drain()
        assert called == [1.0]  # after one retry pause
        assert await store.device_recv("bob", "phone", CONV) == 1
        nursery.cancel_scope.cancel()
