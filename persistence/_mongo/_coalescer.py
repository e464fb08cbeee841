"""Merge concurrent calls of one operation into batches: leader/follower, no timer, no task.

Store-agnostic: a :class:`Coalescer` wraps any async batch function ``run(args) -> results``
(one result per argument, in order). MongoStore uses it for the group commit across
conversations and for the cheap hello-time lookups: on SecantusDB a command costs ~1-3 ms of
server time whatever it carries, so N hellos at once cost a handful of commands instead of 4N.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import attrs
import trio

from .._errors import StoreError, Unavailable

A = TypeVar("A")
R = TypeVar("R")


@attrs.define(eq=False)
class _Pending(Generic[A, R]):
    """One call waiting in a :class:`Coalescer` (or leading it)."""

    arg: A
    wake: trio.Event = attrs.field(factory=trio.Event)
    promoted: bool = False
    finished: bool = False
    result: R | None = None
    error: BaseException | None = None

    def finish(self, result: R | None, error: BaseException | None) -> None:
        self.result, self.error, self.finished = result, error, True
        self.wake.set()

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # finished without error: set


class Coalescer(Generic[A, R]):
    """Merges concurrent calls into one call of ``run`` with all their arguments.

    A call arriving while a batch is in flight queues; when the batch returns, the lead passes
    to the oldest queued call, which takes everything queued so far (up to ``max_batch`` of
    total ``weight``; the oldest call is always taken, so one heavy call is never split or
    starved). A batch is exactly what arrived while the previous one was in flight.

    Failures: the leader re-raises what ``run`` raised; the calls merged with it get that
    error if it is a :class:`StoreError`, else an :class:`Unavailable` naming ``what``.
    Cancellation: a cancelled follower leaves the queue (if promoted, it passes the lead on);
    a cancelled leader's batch gets the cancellation as an ``Unavailable``.
    """

    def __init__(
        self,
        run: Callable[[list[A]], Awaitable[list[R]]],
        *,
        max_batch: int = 256,
        weight: Callable[[A], int] = lambda _arg: 1,
        what: str = "the merged call",
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._weight = weight
        self._what = what
        self._queue: list[_Pending[A, R]] = []
        self._leading = False

    async def __call__(self, arg: A) -> R:
        request: _Pending[A, R] = _Pending(arg)
        self._queue.append(request)
        if self._leading:
            try:
                await request.wake.wait()
            except BaseException:
                if request in self._queue:
                    self._queue.remove(request)
                if request.promoted and not request.finished:
                    self._hand_off()
                raise
            if request.finished:
                return request.outcome()
        self._leading = True
        try:
            # The oldest queued calls; we are the oldest (a leader is either the first caller
            # into an empty queue or the head a leader promoted).
            taken, size = 0, 0
            while taken < len(self._queue) and (taken == 0 or size < self._max_batch):
                size += self._weight(self._queue[taken].arg)
                taken += 1
            batch, self._queue = self._queue[:taken], self._queue[taken:]
            try:
                results = await self._run([r.arg for r in batch])
            except BaseException as exc:
                failure = exc
                if not isinstance(exc, StoreError):
                    failure = Unavailable(f"{self._what} failed: {exc!r}; retry")
                    failure.__cause__ = exc
                for r in batch:
                    if r is not request:
                        r.finish(None, failure)
                raise
            for r, result in zip(batch, results, strict=True):
                r.finish(result, None)
        finally:
            self._hand_off()
        return request.outcome()

    def _hand_off(self) -> None:
        if self._queue:
            self._queue[0].promoted = True
            self._queue[0].wake.set()
        else:
            self._leading = False
