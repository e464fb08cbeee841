"""Retrying a Store call with pauses: the one retry loop of the actors.

A retry is only for what a moment may fix (a :class:`~persistence.StoreError`); anything
else propagates at once. Pauses are trio sleeps, so they run on virtual time in the simulator
and are cancelled with the caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import trio

from persistence import StoreError

T = TypeVar("T")


async def retry_store(call: Callable[[], Awaitable[T]], pauses: Iterable[float]) -> T:
    """Await ``call()`` until it returns; after a ``StoreError``, sleep the next pause and try
    again. When the pauses run out the last try's error propagates (one try per pause, plus
    one)."""
    for pause in pauses:
        try:
            return await call()
        except StoreError:
            await trio.sleep(pause)
    return await call()
