"""What the checker remembers of a run, and the questions every check asks of it.

:class:`CheckerState` holds the bookkeeping the checks build from the history (sends, acks,
what each device held, sessions, departures, node events); the checks themselves are its
subclasses (:mod:`sim._checks_store`, :mod:`sim._checks_notices`, :mod:`sim._checker`).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import attrs

from ._history import (
    AckSeen,
    Displayed,
    FrameOut,
    History,
    HistorySeen,
    PresenceSeen,
    PushSeen,
    ReceiptSeen,
    SendIssued,
    SendResolved,
    TypingSeen,
)
from ._report import PROPAGATION_S, TOLERANCE_S, Report
from ._truth import ConvTruth


@attrs.define
class _Session:
    """One connection of a device, as the checker saw it open and close."""

    user: str
    device: str
    session: int
    opened: float
    closed: float | None = None
    node: str = ""


@attrs.define
class CheckerState:
    """The checker's memory of the run; ``grace_s`` is the node's presence grace period."""

    history: History
    grace_s: float
    epoch_ms: int
    report: Report = attrs.Factory(Report)
    _cursor: int = 0
    # send bookkeeping
    _sends: dict[str, SendIssued] = attrs.Factory(dict)  # body -> send
    _resolved: dict[str, SendResolved] = attrs.Factory(dict)  # body -> resolution
    _cmid_body: dict[tuple[str, str, str], str] = attrs.Factory(dict)
    _acks: list[AckSeen] = attrs.Factory(list)
    # per device state
    _held: dict[tuple[str, str], set[tuple[str, int]]] = attrs.Factory(lambda: defaultdict(set))
    _displayed: dict[tuple[str, str], set[tuple[str, int]]] = attrs.Factory(
        lambda: defaultdict(set)
    )
    _acked_at: dict[tuple[str, str], set[tuple[str, int]]] = attrs.Factory(lambda: defaultdict(set))
    _pushed: dict[tuple[str, str, int, str], list[int]] = attrs.Factory(lambda: defaultdict(list))
    _session_writes: dict[tuple[str, str, int, str], list[str]] = attrs.Factory(
        lambda: defaultdict(list)
    )
    _writes: Counter[tuple[str, str, int, str]] = attrs.Factory(Counter)
    _first_write: dict[tuple[str, str, str], int] = attrs.Factory(dict)
    _session_acks: dict[tuple[str, str, int], dict[str, int]] = attrs.Factory(
        lambda: defaultdict(dict)
    )
    # receipts and watermarks
    _recv_sent: dict[tuple[str, str], int] = attrs.Factory(dict)  # (user, conv) -> max recv
    _read_sent: dict[tuple[str, str], int] = attrs.Factory(dict)
    _receipt_seen: dict[tuple[str, str, str, str, str, str], int] = attrs.Factory(dict)
    _pending_receipts: list[ReceiptSeen] = attrs.Factory(list)
    _store_recv: dict[tuple[str, str, str], int] = attrs.Factory(dict)
    _store_read: dict[tuple[str, str], int] = attrs.Factory(dict)
    # presence
    _sessions: dict[tuple[str, str, int], _Session] = attrs.Factory(dict)
    _pending_presence: list[PresenceSeen] = attrs.Factory(list)
    _node_starts: list[float] = attrs.Factory(list)
    _closed_at: dict[tuple[str, str, int], float] = attrs.Factory(dict)
    # G9: bad frames awaiting their error/nack, per (user, device, session)
    _garbage: dict[tuple[str, str, int], list[FrameOut]] = attrs.Factory(lambda: defaultdict(list))
    # content checks against the store wait until the Store holds the seq (G1 checks it)
    _pending_content: list[PushSeen | Displayed | HistorySeen] = attrs.Factory(list)
    # G7 after a departure: (user, device, conv) -> [(seq, when read)] of the events removing
    # ``user`` that were pushed to ``device`` (so the node knew of them). Frames read or
    # written later carry the latest seq as ``told`` (None: no departure told yet).
    _departures: dict[tuple[str, str, str], list[tuple[int, float]]] = attrs.Factory(
        lambda: defaultdict(list)
    )
    _pending_receipt_told: list[int | None] = attrs.Factory(list)
    _pending_typing: list[tuple[TypingSeen, int | None]] = attrs.Factory(list)
    # (user, conv) -> [(when written, told)] of typing frames; (user, conv, kind) ->
    # [(seq, when written, told)] of recv/read frames: what may cause notices and receipts
    _typing_frames: dict[tuple[str, str], list[tuple[float, int | None]]] = attrs.Factory(
        lambda: defaultdict(list)
    )
    _mark_frames: dict[tuple[str, str, str], list[tuple[int, float, int | None]]] = attrs.Factory(
        lambda: defaultdict(list)
    )
    # (viewer user, viewer device, of_user, conv) -> when the previous notice was read
    _typing_seen_at: dict[tuple[str, str, str, str], float] = attrs.Factory(dict)
    # Store checks: conv -> messages checked; (sender, device, body) -> where it is stored
    _store_checked: dict[str, int] = attrs.Factory(dict)
    _copies: dict[tuple[str, str, str], list[str]] = attrs.Factory(lambda: defaultdict(list))
    # (user, last_seen) -> the earliest write of an ``offline`` frame saying so
    _offline_sent: dict[tuple[str, int | None], float] = attrs.Factory(dict)
    # user -> when a device of theirs first wrote ``hello`` (nobody is online before)
    _first_hello: dict[str, float] = attrs.Factory(dict)
    # node -> when the world crashed it; when a survivor swept its expired lease (from then
    # on the deployment counts its devices as disconnected, PROTOCOL "Several nodes")
    _crashed_at: dict[str, float] = attrs.Factory(dict)
    _swept_at: dict[str, list[float]] = attrs.Factory(lambda: defaultdict(list))
    # node -> [(from, to)] while it could not learn from its feed or write to the store
    _lags: dict[str, list[tuple[float, float]]] = attrs.Factory(lambda: defaultdict(list))

    def _told(self, user: str, device: str, conv: str, before: float | None = None) -> int | None:
        """The latest departure of ``user`` from ``conv`` pushed to ``device`` (read before
        ``before``, if given)."""
        told = self._departures.get((user, device, conv))
        seqs = [seq for seq, at in told or () if before is None or at < before - TOLERANCE_S]
        return max(seqs) if seqs else None

    def _departed(self, conv: ConvTruth, user: str, told: int | None, at: float) -> bool:
        """True if ``user`` had been told of departure ``told`` and no (re)add the node could
        know of by ``at`` followed it: the node then knew ``user`` was out (G7)."""
        if told is None:
            return False
        at_ms = self.epoch_ms + int(at * 1000)
        return conv.joined_by(user, at_ms, after_seq=told) is None

    def _claimed_until(self, s: _Session) -> float | None:
        """When the deployment stopped counting session ``s`` as connected (None: it still
        does): its close, or the sweep of its node's lease if that came first (a node
        declared dead while alive keeps its connections until it learns so)."""
        for swept in self._swept_at.get(s.node, ()):
            if s.opened <= swept and (s.closed is None or swept < s.closed):
                return swept
        return s.closed

    def _unknown_to(self, node: str, s: _Session, at: float) -> bool:
        """True if ``node`` could not know by ``at`` that session ``s`` (on another node) was
        open: it opened less than ``PROPAGATION_S`` before, or one of the two nodes lagged
        (stalled feed, store cut off) since it opened or up to ``PROPAGATION_S`` before (a
        node back on the store first reopens its feed and catches up)."""
        if not node or s.node == node:
            return False
        if s.opened > at - PROPAGATION_S:
            return True
        return any(
            lo <= at and hi + PROPAGATION_S >= s.opened
            for n in (node, s.node)
            for lo, hi in self._lags.get(n, ())
        )

    def _counted_until(self, s: _Session) -> float | None:
        """When the deployment stopped counting ``s`` as connected, for G8: a session its
        node's crash ended counts until that node's lease was swept (None: not yet)."""
        crashed = self._crashed_at.get(s.node)
        if s.closed is not None and crashed is not None and s.closed >= crashed - TOLERANCE_S:
            return next((t for t in self._swept_at.get(s.node, ()) if t >= crashed), None)
        return s.closed

    def _offline_throughout(self, user: str, lo: float, hi: float) -> bool:
        for s in self._sessions.values():
            if s.user != user or s.opened > hi:
                continue
            until = self._counted_until(s)
            if until is None or until >= lo:
                return False
        return True
