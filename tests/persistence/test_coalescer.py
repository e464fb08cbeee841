"""Unit tests of the store-agnostic Coalescer (leader/follower batching) and BoundedCache."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from persistence import NotFound, Unavailable
from persistence._mongo._cache import BoundedCache
from persistence._mongo._coalescer import Coalescer


class Batches:
    """A batch function that records its batches and waits for the test to release each one."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = trio.Event()
        self.entered = trio.Event()
        self.fail: BaseException | None = None
        self.before_return: Callable[[], None] = lambda: None

    async def __call__(self, args: list[int]) -> list[int]:
        self.batches.append(list(args))
        self.entered.set()
        await self.release.wait()
        self.before_return()
        if self.fail is not None:
            raise self.fail
        return [a * 10 for a in args]

    def next_batch(self) -> None:
        """Let the batch in flight return; the next one will wait again."""
        self.release.set()
        self.release = trio.Event()
        self.entered = trio.Event()


async def test_calls_arriving_during_a_batch_form_the_next_one() -> None:
    fn = Batches()
    merged: Coalescer[int, int] = Coalescer(fn)
    results: dict[int, int] = {}

    async def call(arg: int) -> None:
        results[arg] = await merged(arg)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 1)
        await fn.entered.wait()
        for arg in (2, 3, 4):
            nursery.start_soon(call, arg)
            await trio.testing.wait_all_tasks_blocked()
        fn.next_batch()
        await fn.entered.wait()
        fn.next_batch()
    assert fn.batches == [[1], [2, 3, 4]]
    assert results == {1: 10, 2: 20, 3: 30, 4: 40}


async def test_a_batch_is_bounded_by_weight_and_the_oldest_call_is_always_taken() -> None:
    fn = Batches()
    merged: Coalescer[int, int] = Coalescer(fn, max_batch=5, weight=lambda arg: arg)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(merged, 1)
        await fn.entered.wait()
        for arg in (9, 2, 2, 1, 3):
            nursery.start_soon(merged, arg)
            await trio.testing.wait_all_tasks_blocked()
        for _ in range(4):
            fn.next_batch()
            await trio.testing.wait_all_tasks_blocked()
    # 9 exceeds the bound alone and is still taken whole; then 2+2+1 fill one batch.
    assert fn.batches == [[1], [9], [2, 2, 1], [3]]


async def test_a_store_error_reaches_every_merged_call() -> None:
    fn = Batches()
    merged: Coalescer[int, int] = Coalescer(fn)
    errors: list[BaseException] = []

    async def call(arg: int) -> None:
        try:
            await merged(arg)
        except NotFound as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 1)
        await fn.entered.wait()
        nursery.start_soon(call, 2)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, 3)
        await trio.testing.wait_all_tasks_blocked()
        fn.next_batch()
        await fn.entered.wait()
        fn.fail = NotFound("gone")
        fn.next_batch()
    assert [str(e) for e in errors] == ["gone", "gone"]


async def test_an_unexpected_error_is_the_leaders_and_unavailable_for_the_others() -> None:
    fn = Batches()
    merged: Coalescer[int, int] = Coalescer(fn, what="the test batch")
    seen: dict[int, BaseException] = {}

    async def call(arg: int) -> None:
        try:
            await merged(arg)
        except (RuntimeError, Unavailable) as exc:
            seen[arg] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 1)
        await fn.entered.wait()
        nursery.start_soon(call, 2)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, 3)
        await trio.testing.wait_all_tasks_blocked()
        fn.next_batch()
        await fn.entered.wait()
        fn.fail = RuntimeError("boom")
        fn.next_batch()
    assert fn.batches == [[1], [2, 3]]
    assert isinstance(seen[2], RuntimeError)  # the leader of the failed batch
    assert isinstance(seen[3], Unavailable) and "the test batch failed" in str(seen[3])
    assert 1 not in seen
    # The coalescer is usable again afterwards.
    fn.fail = None
    fn.release.set()
    assert await merged(5) == 50


async def test_a_cancelled_waiting_call_leaves_the_queue() -> None:
    fn = Batches()
    merged: Coalescer[int, int] = Coalescer(fn)
    results: dict[int, int] = {}

    async def call(arg: int) -> None:
        results[arg] = await merged(arg)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 1)
        await fn.entered.wait()
        async with trio.open_nursery() as inner:
            inner.start_soon(call, 3)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, 2)
            await trio.testing.wait_all_tasks_blocked()
            inner.cancel_scope.cancel()  # 3 gives up while queued
        fn.next_batch()
        await fn.entered.wait()
        fn.next_batch()
    assert fn.batches == [[1], [2]]
    assert results == {1: 10, 2: 20}


async def test_a_promoted_call_cancelled_before_leading_passes_the_lead_on() -> None:
    fn = Batches()
    merged: Coalescer[int, int] = Coalescer(fn)
    results: dict[int, int] = {}

    async def call(arg: int) -> None:
        results[arg] = await merged(arg)

    # A lead that is not passed on leaves 3 waiting forever: fail instead of hanging.
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, 1)
            await fn.entered.wait()
            async with trio.open_nursery() as inner:
                inner.start_soon(call, 2)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(call, 3)
                await trio.testing.wait_all_tasks_blocked()
                # Batch [1] cancels 2 and returns, promoting 2, which sees the cancellation
                # before it can lead.
                fn.before_return = inner.cancel_scope.cancel
                fn.next_batch()
            fn.before_return = lambda: None
            await fn.entered.wait()
            fn.next_batch()
    assert fn.batches == [[1], [3]]
    assert results == {1: 10, 3: 30}


def test_bounded_cache_evicts_the_least_recently_used() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3)
    assert "b" not in cache and len(cache) == 2
    cache.raise_to("a", 0)  # never lowers
    cache.raise_to("c", 7)
    assert cache.items() == [("a", 1), ("c", 7)]
    assert cache.pop("a") == 1 and cache.pop("a") is None
    with pytest.raises(ValueError, match="at least one"):
        BoundedCache(0)
