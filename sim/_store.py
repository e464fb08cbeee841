"""Store wrappers the simulator puts between a node and the MemoryStore: faults and a mutant.

The node only ever sees the :class:`persistence.Store` contract, so the simulator acts on it
from outside rather than through hooks in production code:

* :class:`FaultyStore` consults a :class:`StoreFaults` dial before every operation: latency
  (virtual time), failures without effect (``Unavailable``), ambiguous writes (the write is
  applied, then ``Unavailable`` is raised -- a timeout after the primary committed), a node
  cut off from the store (every call fails, or hangs until the cut ends and then fails),
  lease renewals that fail (the node is declared dead while alive), and the node's change
  feed stalling or losing its cursor (:class:`_FaultyFeed`). Each simulated node has its
  own wrapper and dial over the one shared MemoryStore.
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

from persistence import (
    ChangeFeed,
    Draft,
    FeedEvent,
    Store,
    StoredMessage,
    StoreError,
    Unavailable,
)

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
    ``cut_off(hang)``: every operation fails until :meth:`reconnect` (with ``hang``, it first
    waits for the reconnect, as a call to an unreachable server does until its timeout).
    ``lose_lease(True)``: lease renewals fail without effect (the rest works), so the other
    nodes declare this one dead while it still serves its clients.
    ``stall_feed(True)``: the change feed delivers nothing until ``stall_feed(False)``.
    ``drop_cursor()``: the feed's next read fails (a lost change-stream cursor).
    ``fired`` counts the faults that actually hit an operation, for the report.
    """

    latency: float = 0.0
    failing: int = 0
    ambiguous: int = 0
    cut: bool = False
    hang: bool = False
    lease_lost: bool = False
    feed_stalled: bool = False
    cursor_dropped: bool = False
    fired: dict[str, int] = attrs.field(factory=dict)
    _restored: trio.Event = attrs.field(factory=trio.Event)
    _feed_resumed: trio.Event = attrs.field(factory=trio.Event)

    def fail_next(self, n: int = 1) -> None:
        self.failing += n

    def ambiguous_next(self, n: int = 1) -> None:
        self.ambiguous += n

    def cut_off(self, hang: bool) -> None:
        self.cut, self.hang = True, hang

    def reconnect(self) -> None:
        self.cut = self.hang = False
        self._restored.set()
        self._restored = trio.Event()

    def lose_lease(self, lost: bool) -> None:
        self.lease_lost = lost

    def stall_feed(self, stalled: bool) -> None:
        self.feed_stalled = stalled
        if not stalled:
            self._feed_resumed.set()
            self._feed_resumed = trio.Event()

    def drop_cursor(self) -> None:
        self.cursor_dropped = True

    def heal(self) -> None:
        self.failing = self.ambiguous = 0
        self.latency = 0.0
        self.lease_lost = self.cursor_dropped = False
        self.reconnect()
        self.stall_feed(False)

    async def cut_check(self) -> None:
        """Raise ``Unavailable`` if the node is cut off (after the cut, when it hangs)."""
        if not self.cut:
            return
        if self.hang:
            await self._restored.wait()
        raise Unavailable("store unreachable (injected cut-off)")

    async def feed_held(self) -> None:
        """Wait while the feed is stalled."""
        while self.feed_stalled:
            await self._feed_resumed.wait()

    async def feed_wait(self) -> None:
        """Before a feed read: wait out a stall, fail once for a dropped cursor."""
        await self.feed_held()
        await self.cut_check()
        if self.cursor_dropped:
            self.cursor_dropped = False
            self.count("cursor_dropped")
            raise Unavailable("change stream cursor lost (injected fault)")

    def count(self, kind: str) -> None:
        self.fired[kind] = self.fired.get(kind, 0) + 1


#: ``observe(operation, args, result)``: told after each successful call of a method in
#: :data:`OBSERVED` (the world learns from it when a node's lease was swept).
Observer = Callable[[str, tuple[Any, ...], Any], None]
OBSERVED = frozenset({"renew_lease", "sweep_expired"})


class FaultyStore:
    """``inner`` with the faults of ``faults`` (see the module docstring)."""

    def __init__(self, inner: Store, faults: StoreFaults, observe: Observer | None = None) -> None:
        self._inner = inner
        self._faults = faults
        self._observe = observe

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
        lease = name == "renew_lease"
        watch = name == "watch"
        observe = self._observe if name in OBSERVED else None

        async def operation(*args: Any, **kwargs: Any) -> Any:
            if faults.latency > 0:
                await trio.sleep(faults.latency)
            await faults.cut_check()
            if faults.failing > 0:
                faults.failing -= 1
                faults.count("fail")
                raise Unavailable("store unavailable (injected fault)")
            if lease and faults.lease_lost:
                raise Unavailable("lease renewal lost (injected fault)")
            result = await call(*args, **kwargs)
            if write and faults.ambiguous > 0:
                faults.ambiguous -= 1
                faults.count("ambiguous")
                raise Unavailable("store unavailable after the write (injected ambiguous fault)")
            if observe is not None:
                observe(name, args, result)
            if watch:
                return _FaultyFeed(result, faults)
            return result

        return operation


class _FaultyFeed(ChangeFeed):
    """A node's change feed behind its fault dial: stalls, lost cursors, cut-offs."""

    def __init__(self, inner: ChangeFeed, faults: StoreFaults) -> None:
        self._inner = inner
        self._faults = faults

    @property
    def token(self) -> object:
        return self._inner.token

    async def next(self) -> list[FeedEvent]:
        await self._faults.feed_wait()
        events = await self._inner.next()
        await self._faults.feed_held()  # a stall that began while the read was waiting
        return events

    async def aclose(self) -> None:
        await self._inner.aclose()


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
