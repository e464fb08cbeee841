"""Store wrappers the simulator puts between a node and the MemoryStore: faults and a mutant.

The node only ever sees the :class:`persistence.Store` contract, so the simulator acts on it
from outside rather than through hooks in production code:

* :class:`FaultyStore` consults a :class:`StoreFaults` dial before every operation: latency
  (virtual time), failures without effect (``Unavailable``), and ambiguous writes (the
  write is applied, then ``Unavailable`` is raised -- a timeout after the primary committed).
* :class:`ForgetfulStore` is the ``no_cmid_dedupe`` mutant: every draft reaches the Store
  under a fresh cmid, so a resend is stored again (G2).

Both delegate every other attribute to the wrapped store, so a Store method added later is
passed through (and, for :class:`FaultyStore`, made faulty) without a change here. Only the
names in :data:`WRITES` can be ambiguous.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import attrs
import trio

from persistence import Draft, Store, StoredMessage, StoreError, Unavailable

#: Store methods that change the Store: an ambiguous fault applies them, then fails.
WRITES = frozenset(
    {
        "direct_conversation",
        "create_group",
        "add_member",
        "remove_member",
        "leave",
        "append",
        "merge_recv",
        "merge_read",
        "set_last_seen",
        "notify_offline",
        "user_online",
        "claim_notifications",
        "complete_notification",
    }
)
#: Methods that are not operations (no fault, no checkpoint).
_PLAIN = frozenset({"aclose", "__aenter__", "__aexit__"})


@attrs.define
class StoreFaults:
    """The fault dial a :class:`FaultyStore` consults; the simulator owns and turns it.

    ``fail_next(n)``: the next ``n`` operations raise ``Unavailable`` without effect.
    ``ambiguous_next(n)``: the next ``n`` writes take effect, then raise ``Unavailable``.
    ``latency``: seconds every operation sleeps first (virtual under ``MockClock``).
    ``fired`` counts the faults that actually hit an operation, for the report.
    """

    latency: float = 0.0
    failing: int = 0
    ambiguous: int = 0
    fired: dict[str, int] = attrs.field(factory=dict)

    def fail_next(self, n: int = 1) -> None:
        self.failing += n

    def ambiguous_next(self, n: int = 1) -> None:
        self.ambiguous += n

    def heal(self) -> None:
        self.failing = self.ambiguous = 0
        self.latency = 0.0

    def count(self, kind: str) -> None:
        self.fired[kind] = self.fired.get(kind, 0) + 1


class FaultyStore:
    """``inner`` with the faults of ``faults`` (see the module docstring)."""

    def __init__(self, inner: Store, faults: StoreFaults) -> None:
        self._inner = inner
        self._faults = faults

    def as_store(self) -> Store:
        """This wrapper typed as the contract it forwards (it has every Store method)."""
        return cast(Store, self)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if name in _PLAIN or name.startswith("_") or not callable(target):
            return target
        operation = self._faulty(name, target)
        setattr(self, name, operation)  # built once: later lookups find it directly
        return operation

    def _faulty(self, name: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        faults = self._faults
        write = name in WRITES

        async def operation(*args: Any, **kwargs: Any) -> Any:
            if faults.latency > 0:
                await trio.sleep(faults.latency)
            if faults.failing > 0:
                faults.failing -= 1
                faults.count("fail")
                raise Unavailable("store unavailable (injected fault)")
            result = await call(*args, **kwargs)
            if write and faults.ambiguous > 0:
                faults.ambiguous -= 1
                faults.count("ambiguous")
                raise Unavailable("store unavailable after the write (injected ambiguous fault)")
            return result

        return operation


class ForgetfulStore:
    """The ``no_cmid_dedupe`` mutant: ``append`` stores each draft under a fresh cmid."""

    def __init__(self, inner: Store, rng: random.Random) -> None:
        self._inner = inner
        self._rng = rng

    def as_store(self) -> Store:
        return cast(Store, self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def append(
        self, conv: str, drafts: Sequence[Draft], *, notify: Sequence[str] = ()
    ) -> list[StoredMessage | StoreError]:
        fresh = [attrs.evolve(d, cmid=f"{self._rng.getrandbits(64):016x}") for d in drafts]
        return await self._inner.append(conv, fresh, notify=notify)


class EarlyHistoryStore:
    """The ``history_before_join`` mutant: ``history`` pages also reach below the event that
    (last) added the caller, down to older messages of the conversation (G7 Visibility)."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    def as_store(self) -> Store:
        return cast(Store, self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def history(
        self, conv: str, user: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        messages, more = await self._inner.history(conv, user, before, limit)
        first = messages[0].seq if messages else before
        if first is None or first <= 1 or len(messages) >= limit:
            return messages, more
        older = await self._inner.range(conv, max(1, first - (limit - len(messages))), first - 1)
        return [*older, *messages], more
