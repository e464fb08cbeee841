"""A client session's outbox (rule 2 of ``_client``): the sends not yet acknowledged, their
cmids, and the backed-off resends after a ``nack`` with ``retry: true``."""

from __future__ import annotations

import random

import attrs

from ._backoff import jittered_backoff
from ._client_events import Acked, SendFailed
from ._client_output import Output
from ._codec import encode
from ._errors import ErrorCode, LocalProtocolError
from ._frames import Ack, Msg, Nack, Send
from ._limits import MAX_FRAME_BYTES


@attrs.define
class OutboxEntry:
    frame: Send
    on_wire: bool = False
    attempts: int = 0
    retry_at: float | None = None


class Outbox:
    """The unacknowledged sends, oldest first. Each cmid is resolved exactly once: by an
    :class:`Acked` or by a :class:`SendFailed`."""

    def __init__(
        self, out: Output, rng: random.Random, *, retry_base_s: float, retry_max_s: float
    ) -> None:
        self._out = out
        self._rng = rng
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._entries: dict[str, OutboxEntry] = {}

    def frames(self) -> tuple[Send, ...]:
        return tuple(entry.frame for entry in self._entries.values())

    def deadlines(self) -> list[float]:
        return [e.retry_at for e in self._entries.values() if e.retry_at is not None]

    def add(self, body: str, *, conv: str | None, to: str | None) -> OutboxEntry:
        """A new send with a fresh cmid. Raises :class:`LocalProtocolError` for a frame the
        contract forbids (both or neither target, a body over the limit, a frame over the
        client-frame limit: a body of characters JSON must escape can be under 16 KiB and its
        frame still over 64 KiB)."""
        frame = Send(cmid=self._new_cmid(), body=body, conv=conv, to=to)
        if len(body) > MAX_FRAME_BYTES // 8:
            size = len(encode(frame).encode())
            if size > MAX_FRAME_BYTES:
                raise LocalProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"this send is {size} bytes of JSON, over the {MAX_FRAME_BYTES} byte limit "
                    "of a client frame (control characters escape to 6 bytes each)",
                )
        entry = self._entries[frame.cmid] = OutboxEntry(frame)
        return entry

    def put_on_wire(self, entry: OutboxEntry) -> None:
        entry.on_wire = True
        entry.retry_at = None
        self._out.write(entry.frame)

    def resend_all(self) -> None:
        """After a ``welcome``: every entry again, oldest first, with its own cmid."""
        for entry in self._entries.values():
            self.put_on_wire(entry)

    def resend_due(self, now: float) -> None:
        for entry in self._entries.values():
            if entry.retry_at is not None and entry.retry_at <= now:
                self.put_on_wire(entry)

    def disconnected(self) -> None:
        for entry in self._entries.values():
            entry.on_wire = False
            entry.retry_at = None

    def own_send(self, msg: Msg, user: str | None) -> OutboxEntry | None:
        """The entry a pushed ``msg`` acknowledges: our user sent it with a cmid still here."""
        entry = self._entries.get(msg.cmid) if msg.cmid is not None else None
        return entry if entry is not None and msg.sender == user else None

    def acked(self, ack: Ack) -> None:
        entry = self._entries.pop(ack.cmid, None)
        if entry is not None:
            self._out.emit(Acked(cmid=ack.cmid, ack=ack, send=entry.frame))

    def nacked(self, nack: Nack, now: float) -> None:
        entry = self._entries.get(nack.cmid)
        if entry is None:
            return
        entry.on_wire = False
        if nack.retry:
            entry.attempts += 1
            entry.retry_at = now + jittered_backoff(
                entry.attempts, base_s=self._retry_base_s, max_s=self._retry_max_s, rng=self._rng
            )
        else:
            del self._entries[nack.cmid]
            self._out.emit(SendFailed(cmid=nack.cmid, nack=nack, send=entry.frame))

    def _new_cmid(self) -> str:
        while True:
            cmid = f"{self._rng.getrandbits(64):016x}"
            if cmid not in self._entries:
                return cmid
