"""The recv/read watermarks of one conversation, as its conversation actor holds them.

Owned by exactly one :class:`~actors._conversation.ConversationActor`; plain data, no I/O.
Marks are max-merged in memory (G5), remembered as *dirty* until the actor has written them
with one batched, durable ``merge_marks``, and only then turned into ``receipt`` frames
(:meth:`Watermarks.written`), so a receipt never announces a watermark a crash could lose.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

import attrs
import trio

from persistence import MemberMarks, ReadMark, RecvMark, Store, StoreError
from protocol import Receipt

log = logging.getLogger("actors.watermarks")


@attrs.define
class _Rise:
    """Which of a user's watermarks rose since the last write, and from which devices."""

    delivered: bool = False
    read: bool = False
    sources: set[str] = attrs.field(factory=set)


@attrs.frozen
class ReceiptOut:
    """A receipt to send: to every member's devices except ``user``'s ``sources``."""

    receipt: Receipt
    sources: frozenset[str]


@attrs.define
class Watermarks:
    """Device ``recv`` and user ``delivered``/``read`` marks of conversation ``conv``.

    ``backwards`` is the ``watermark_backwards`` mutant: assign instead of max-merge.
    """

    conv: str
    backwards: bool = False
    _recv: dict[tuple[str, str], int] = attrs.field(factory=dict)
    _delivered: dict[str, int] = attrs.field(factory=dict)
    _read: dict[str, int] = attrs.field(factory=dict)
    _dirty_recv: dict[tuple[str, str], int] = attrs.field(factory=dict)
    _dirty_read: dict[str, int] = attrs.field(factory=dict)
    _rises: dict[str, _Rise] = attrs.field(factory=dict)

    def load_users(self, marks: dict[str, MemberMarks]) -> None:
        """Start from the Store's per-user marks (after a (re)start of the actor)."""
        self._delivered = {u: m.delivered for u, m in marks.items()}
        self._read = {u: m.read for u, m in marks.items()}

    def merge_remote(
        self, user: str, delivered: int | None, read: int | None
    ) -> tuple[int | None, int | None]:
        """Max-merge ``user``'s marks as another node wrote them (nothing to write here);
        returns the merged marks of the fields given (a lagging feed may bring a lower one)."""
        if delivered is not None:
            delivered = self._delivered[user] = max(self._delivered.get(user, 0), delivered)
        if read is not None:
            read = self._read[user] = max(self._read.get(user, 0), read)
        return delivered, read

    def at_least_known(self, receipt: Receipt) -> Receipt:
        """``receipt`` with each mark it carries raised to what is known here now: a mark
        merged from another node after the receipt was made must not be followed by a lower
        one (G5: receipts never go back)."""
        delivered, read = receipt.delivered, receipt.read
        if delivered is not None:
            delivered = max(delivered, self._delivered.get(receipt.user, 0))
        if read is not None:
            read = max(read, self._read.get(receipt.user, 0))
        if (delivered, read) == (receipt.delivered, receipt.read):
            return receipt
        return attrs.evolve(receipt, delivered=delivered, read=read)

    def knows_device(self, user: str, device: str) -> bool:
        return (user, device) in self._recv

    def load_device(self, user: str, device: str, seq: int) -> None:
        self._recv[(user, device)] = max(seq, self._recv.get((user, device), 0))

    def device_recv(self, user: str, device: str) -> int:
        return self._recv.get((user, device), 0)

    def _merge(self, old: int, new: int) -> int:
        return new if self.backwards else max(old, new)

    def _rise(self, user: str, device: str) -> _Rise:
        rise = self._rises.setdefault(user, _Rise())
        rise.sources.add(device)
        return rise

    def raise_recv(self, user: str, device: str, seq: int) -> None:
        """Device ``device`` of ``user`` holds everything up to ``seq`` (already clamped)."""
        old = self._recv.get((user, device), 0)
        new = self._merge(old, seq)
        if new == old:
            return
        self._recv[(user, device)] = new
        self._dirty_recv[(user, device)] = new
        delivered = self._merge(self._delivered.get(user, 0), new)
        if delivered != self._delivered.get(user, 0):
            self._delivered[user] = delivered
            self._rise(user, device).delivered = True

    def raise_read(self, user: str, device: str, seq: int) -> None:
        """``user`` (on ``device``) has read up to ``seq`` (already clamped)."""
        old = self._read.get(user, 0)
        new = self._merge(old, seq)
        if new == old:
            return
        self._read[user] = new
        self._dirty_read[user] = new
        self._rise(user, device).read = True

    @property
    def dirty(self) -> bool:
        return bool(self._dirty_recv or self._dirty_read)

    def pending(self) -> tuple[list[RecvMark], list[ReadMark]]:
        """The marks to write, in a stable order."""
        recv = [
            RecvMark(user=u, device=d, conv=self.conv, seq=s)
            for (u, d), s in sorted(self._dirty_recv.items())
        ]
        read = [
            ReadMark(user=u, conv=self.conv, seq=s) for u, s in sorted(self._dirty_read.items())
        ]
        return recv, read

    def written(self) -> list[ReceiptOut]:
        """The pending marks are durable: forget them and return the receipts they earn."""
        self._dirty_recv.clear()
        self._dirty_read.clear()
        rises, self._rises = self._rises, {}
        out = []
        for user in sorted(rises):
            rise = rises[user]
            receipt = Receipt(
                conv=self.conv,
                user=user,
                delivered=self._delivered.get(user, 0) if rise.delivered else None,
                read=self._read.get(user, 0) if rise.read else None,
            )
            out.append(ReceiptOut(receipt, frozenset(rise.sources)))
        return out


class MarkWriter:
    """Node-wide writer of the watermarks of every conversation actor.

    Actors hand their coalesced marks over with :meth:`submit` (never blocks) together with
    a callback that sends the receipts those marks earn. The writer writes everything handed
    over since its last write with one ``merge_marks`` (MongoStore: one journaled transaction),
    then runs the callbacks: a receipt still never announces a
    mark a crash could lose. While a write is in flight new marks accumulate (max-merged), so
    the writes never outnumber the windows, however many conversations are active. A failed
    write is retried after ``retry_s`` with whatever arrived meanwhile.
    """

    def __init__(
        self, store: Store, retry_s: float, timed: Callable[[str], AbstractContextManager[None]]
    ) -> None:
        self._store = store
        self._retry_s = retry_s
        self._timed = timed
        self._recv: dict[tuple[str, str, str], int] = {}
        self._read: dict[tuple[str, str], int] = {}
        self._after: list[Callable[[], None]] = []
        self._work = trio.Event()
        # Callbacks handed over and not yet run, and an event set whenever that is zero.
        self._outstanding = 0
        self._all_written = trio.Event()
        self._all_written.set()

    def submit(
        self, recv: list[RecvMark], read: list[ReadMark], on_written: Callable[[], None]
    ) -> None:
        for r in recv:
            key = (r.user, r.device, r.conv)
            self._recv[key] = max(r.seq, self._recv.get(key, 0))
        for m in read:
            rkey = (m.user, m.conv)
            self._read[rkey] = max(m.seq, self._read.get(rkey, 0))
        self._after.append(on_written)
        self._outstanding += 1
        if self._all_written.is_set():
            self._all_written = trio.Event()
        self._work.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write until cancelled (and fold the Store's marks, if it asks for that)."""
        async with trio.open_nursery() as nursery:
            if self._store.FOLD_MARKS_EVERY_S is not None:
                nursery.start_soon(self._fold, self._store.FOLD_MARKS_EVERY_S)
            task_status.started()
            while True:
                await self._work.wait()
                self._work = trio.Event()
                if not await self._write_once():
                    await trio.sleep(self._retry_s)
                    self._work.set()

    async def _fold(self, every_s: float) -> None:
        """The Store's housekeeping of marks, off the receipts' path (a task of its own)."""
        while True:
            await trio.sleep(every_s)
            try:
                with self._timed("fold_marks"):
                    await self._store.fold_marks()
            except StoreError as exc:
                log.warning("could not fold watermarks (will retry): %s", exc)

    async def drain(self) -> None:
        """Return once everything submitted so far is written (the caller bounds the wait)."""
        while self._outstanding:
            await self._all_written.wait()

    async def _write_once(self) -> bool:
        recv, self._recv = self._recv, {}
        read, self._read = self._read, {}
        after, self._after = self._after, []
        if not after:
            return True
        try:
            with self._timed("merge_marks"):
                await self._store.merge_marks(
                    [RecvMark(user=u, device=d, conv=c, seq=s) for (u, d, c), s in recv.items()],
                    [ReadMark(user=u, conv=c, seq=s) for (u, c), s in read.items()],
                )
        except StoreError as exc:
            log.warning(
                "could not write %d watermarks (will retry): %s", len(recv) + len(read), exc
            )
            for key, seq in recv.items():
                self._recv[key] = max(seq, self._recv.get(key, 0))
            for rkey, seq in read.items():
                self._read[rkey] = max(seq, self._read.get(rkey, 0))
            self._after[:0] = after
            return False
        for callback in after:
            try:
                callback()
            except Exception:
                log.exception("sending receipts failed")
        self._outstanding -= len(after)
        if not self._outstanding:
            self._all_written.set()
        return True
