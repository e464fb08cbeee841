"""What a client session's rules are made of: the lifecycle tables and the per-send,
per-request and per-conversation records the session keeps (rules in ``_client``)."""

from __future__ import annotations

import enum
from typing import Final

import attrs

from ._frames import (
    Ack,
    Error,
    Msg,
    Nack,
    Pong,
    Presence,
    Receipt,
    RequestFrame,
    Result,
    Send,
    ServerFrame,
    Synced,
    TypingNotice,
    Welcome,
)


class ClientState(enum.Enum):
    """Where a client session is in its connection lifecycle."""

    IDLE = "idle"
    CONNECTING = "connecting"
    OPEN = "open"
    SYNCED = "synced"
    DISCONNECTED = "disconnected"


class Trigger(enum.Enum):
    CONNECT = "connect"
    WELCOME = "welcome"
    SYNCED = "synced"
    LOST = "connection_lost"


TRANSITIONS: Final[dict[tuple[ClientState, Trigger], ClientState]] = {
    (ClientState.IDLE, Trigger.CONNECT): ClientState.CONNECTING,
    (ClientState.DISCONNECTED, Trigger.CONNECT): ClientState.CONNECTING,
    (ClientState.CONNECTING, Trigger.WELCOME): ClientState.OPEN,
    (ClientState.OPEN, Trigger.SYNCED): ClientState.SYNCED,
    (ClientState.CONNECTING, Trigger.LOST): ClientState.DISCONNECTED,
    (ClientState.OPEN, Trigger.LOST): ClientState.DISCONNECTED,
    (ClientState.SYNCED, Trigger.LOST): ClientState.DISCONNECTED,
}

_LIVE_FRAMES: Final[frozenset[type[ServerFrame]]] = frozenset(
    {Msg, Ack, Nack, Receipt, Presence, TypingNotice, Result, Error, Pong}
)

#: Server frames the session accepts in each state; anything else is the server's fault.
ACCEPTS: Final[dict[ClientState, frozenset[type[ServerFrame]]]] = {
    ClientState.CONNECTING: frozenset({Welcome, Error}),
    ClientState.OPEN: _LIVE_FRAMES | {Synced, Welcome},
    ClientState.SYNCED: _LIVE_FRAMES | {Synced, Welcome},
}


@attrs.define
class OutboxEntry:
    frame: Send
    on_wire: bool = False
    attempts: int = 0
    retry_at: float | None = None


@attrs.define
class PendingRequest:
    frame: RequestFrame
    on_wire: bool = False
    #: presence_sub/unsub get no ``result`` on success; only an ``error`` resolves them.
    expects_result: bool = True
    #: a gap-fill ``history`` issued by the session itself, not by the caller.
    internal: bool = False
    #: when it fails for want of a reply; set by the first ``tick`` after it went out.
    deadline: float | None = None


@attrs.define
class ConvState:
    watermark: int | None = None
    above: set[int] = attrs.Factory(set)
    reported: int = 0
    recv_due: float | None = None
    read: int = 0
    gap_rid: str | None = None

    def holds(self, seq: int) -> bool:
        return (self.watermark is not None and seq <= self.watermark) or seq in self.above

    def advance(self) -> None:
        if self.watermark is None:
            return
        while self.watermark + 1 in self.above:
            self.watermark += 1
            self.above.discard(self.watermark)
        self.above = {s for s in self.above if s > self.watermark}

    def hold(self, seqs: set[int], now: float, delay_s: float) -> None:
        """Mark ``seqs`` held; a ``recv`` is due ``delay_s`` after ``now`` if ``w`` rose."""
        before = self.watermark
        self.above |= seqs
        self.advance()
        if self.watermark != before:
            self.schedule_recv(now, delay_s)

    def schedule_recv(self, now: float, delay_s: float) -> None:
        rose = self.watermark is not None and self.watermark > self.reported
        if rose and self.recv_due is None:
            self.recv_due = now + delay_s

    def take_report(self) -> int | None:
        """The watermark to report in a ``recv`` now (None: nothing rose since the last)."""
        self.recv_due = None
        if self.watermark is None or self.watermark <= self.reported:
            return None
        self.reported = self.watermark
        return self.watermark

    def missing_run(self) -> tuple[int, int] | None:
        """The lowest run of missing seqs (rule 5), unless a gap request is already out."""
        if self.gap_rid is not None or self.watermark is None or not self.above:
            return None
        return self.watermark + 1, min(self.above) - 1

    def invisible(self, before: int, seqs: set[int], more: bool) -> set[int]:
        """What a gap-fill page of ``seqs`` below ``before`` shows we cannot see (rule 5).

        The page is the newest visible messages below ``before``: what it lacks in
        [lowest, before) is invisible to us, and so is all below it when nothing older is."""
        lowest = min(seqs, default=before)
        hidden = set(range(lowest, before)) - seqs
        if not more and self.watermark is not None:
            hidden |= set(range(self.watermark + 1, lowest))
        return {s for s in hidden if not self.holds(s)}

    def learn_base(self, delivered: int, read: int) -> None:
        """A ``convs`` row's watermarks (rule 3): the base, unless one is known already."""
        if self.watermark is None:
            self.watermark = delivered
            self.reported = delivered
            self.advance()
        self.read = max(self.read, read)
