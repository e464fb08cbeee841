"""The thread and retry runner of MongoStore: pymongo's blocking calls, run from Trio.

Every database call runs in a worker thread (``trio.to_thread.run_sync``) under a
``trio.CapacityLimiter``. Transient errors (network, not-primary, retryable labels) are
retried with bounded exponential backoff by re-running the whole operation. That is safe
because every write is guarded by a unique key (idempotency key, chunk position,
conversation id, the ``last_op`` of a membership change): a write that did happen before an
ambiguous failure is found, never repeated. When retries are exhausted the caller gets
:class:`Unavailable`.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from pymongo import MongoClient
from pymongo.client_session import ClientSession
from pymongo.errors import ConnectionFailure, PyMongoError
from pymongo.read_concern import ReadConcern

from protocol import jittered_backoff

from .._errors import StoreError, Unavailable
from ._schema import DURABLE, Doc

T = TypeVar("T")

_RETRY_LABELS = (
    "RetryableWriteError",
    "TransientTransactionError",
    "UnknownTransactionCommitResult",
)


def is_transient(exc: BaseException) -> bool:
    """Whether re-running the operation that raised ``exc`` may succeed."""
    if isinstance(exc, ConnectionFailure):  # AutoReconnect, NotPrimaryError, NetworkTimeout, ...
        return True
    if isinstance(exc, PyMongoError):
        return any(exc.has_error_label(label) for label in _RETRY_LABELS)
    return False


def is_write_conflict(exc: PyMongoError) -> bool:
    """A transaction aborted by a concurrent writer's open transaction (not a network error):
    re-reading and trying again in this thread is the fix."""
    return exc.has_error_label("TransientTransactionError") and not isinstance(
        exc, ConnectionFailure
    )


class Runner:
    """Runs blocking store work in worker threads with retries; owns the default limiter."""

    def __init__(
        self,
        client: MongoClient[Doc],
        *,
        rng: random.Random,
        max_threads: int,
        retries: int,
        backoff_s: float,
    ) -> None:
        self._client = client
        self._rng = rng
        self._retries = retries
        self._backoff_s = backoff_s
        self.limiter = trio.CapacityLimiter(max_threads)

    async def call(
        self, fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None
    ) -> T:
        """Run ``fn(*args)`` in a worker thread, retrying transient failures with backoff."""
        for attempt in range(self._retries + 1):
            try:
                return await trio.to_thread.run_sync(
                    functools.partial(fn, *args), limiter=limiter or self.limiter
                )
            except StoreError:
                raise
            except PyMongoError as exc:
                if not is_transient(exc):
                    raise
                if attempt == self._retries:
                    raise Unavailable(
                        f"database unavailable after {attempt + 1} attempts: {exc}"
                    ) from exc
            await trio.sleep(
                jittered_backoff(attempt + 1, base_s=self._backoff_s, max_s=1.0, rng=self._rng)
            )
        raise AssertionError("unreachable")

    def transaction(self, body: Callable[[ClientSession], T]) -> T:
        """Run ``body`` in one durable transaction (one commit, one journal flush); blocking."""
        with self._client.start_session() as session:
            session.start_transaction(write_concern=DURABLE, read_concern=ReadConcern("snapshot"))
            try:
                result = body(session)
            except BaseException:
                if session.in_transaction:
                    session.abort_transaction()
                raise
            session.commit_transaction()
            return result
