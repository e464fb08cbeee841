"""What a client session holds of each conversation (rules 3-5 of ``_client``): the
watermark and the seqs held above it, duplicate pushes, batched ``recv`` reports and the
``history`` requests that fill gaps."""

from __future__ import annotations

import attrs

from ._client_events import ConvStatus, GapDetected, NewMessage, ServerError
from ._client_outbox import Outbox
from ._client_output import Output
from ._client_requests import Requests
from ._client_state import ClientState
from ._errors import RemoteProtocolError
from ._frames import Ack, Error, History, Msg, Read, Recv, Result, history_messages
from ._member import MemberEvent


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


class Inbox:
    """Per conversation, in the order the session learned them, what it holds and reports."""

    def __init__(
        self,
        out: Output,
        outbox: Outbox,
        requests: Requests,
        *,
        recv_delay_s: float,
        history_page: int,
    ) -> None:
        self._out = out
        self._outbox = outbox
        self._requests = requests
        self._recv_delay_s = recv_delay_s
        self._history_page = history_page
        self._convs: dict[str, ConvState] = {}
        #: pushed ``msg`` frames dropped because their (conv, seq) was already held.
        self.duplicates = 0

    def names(self) -> tuple[str, ...]:
        return tuple(self._convs)

    def status(self, conv: str) -> ConvStatus:
        state = self._convs.get(conv, ConvState())
        return ConvStatus(
            conv=conv,
            watermark=state.watermark,
            held_above=frozenset(state.above),
            reported=state.reported,
            read=state.read,
            gap_request=state.gap_rid,
        )

    def holds(self, conv: str, seq: int) -> bool:
        state = self._convs.get(conv)
        return state is not None and state.holds(seq)

    def conv(self, conv: str) -> ConvState:
        state = self._convs.get(conv)
        if state is None:
            state = self._convs[conv] = ConvState()
        return state

    def deadlines(self) -> list[float]:
        return [c.recv_due for c in self._convs.values() if c.recv_due is not None]

    # ------------------------------------------------------------------ reports

    def report_due(self, now: float) -> None:
        for conv, state in self._convs.items():
            if state.recv_due is not None and state.recv_due <= now:
                self._report(conv, state)

    def report_all(self) -> None:
        for conv, state in self._convs.items():
            self._report(conv, state)

    def mark_read(self, conv: str, seq: int, *, send: bool) -> None:
        state = self.conv(conv)
        if seq <= state.read:
            return
        state.read = seq
        if send:
            self._out.write(Read(conv=conv, seq=seq))

    def resend_reads(self) -> None:
        """After a ``welcome``: the ``read`` watermarks again (the server max-merges them)."""
        for conv, state in self._convs.items():
            if state.read:
                self._out.write(Read(conv=conv, seq=state.read))

    def _report(self, conv: str, state: ConvState) -> None:
        seq = state.take_report()
        if seq is not None:
            self._out.write(Recv(conv=conv, seq=seq))

    # ------------------------------------------------------------------ holding

    def disconnected(self) -> None:
        for conv in self._convs.values():
            conv.gap_rid = None

    def synced(self) -> None:
        """The initial sync is over: unknown bases are 0, and every gap is looked for."""
        for conv, state in self._convs.items():
            if state.watermark is None:
                state.watermark = 0
                state.advance()
            self.check_gap(conv, ClientState.SYNCED)

    def on_msg(
        self, msg: Msg, now: float, *, pushed: bool, phase: ClientState, user: str | None
    ) -> None:
        """A pushed ``msg`` or one of a gap fill's page; our own send coming back is its ack."""
        entry = self._outbox.own_send(msg, user)
        if entry is not None:
            ack = Ack(cmid=entry.frame.cmid, conv=msg.conv, seq=msg.seq, id=msg.id, ts=msg.ts)
            self.on_ack(ack, now, phase)
            return
        state = self.conv(msg.conv)
        if state.watermark is None:
            state.watermark = _base_at(msg, phase, user)
        if state.holds(msg.seq):
            if pushed:
                self.duplicates += 1
                if state.reported >= msg.seq:
                    state.reported = msg.seq - 1
                    state.schedule_recv(now, self._recv_delay_s)
            return
        state.hold({msg.seq}, now, self._recv_delay_s)
        self._out.emit(NewMessage(message=msg))
        if pushed:
            self.check_gap(msg.conv, phase)

    def on_ack(self, ack: Ack, now: float, phase: ClientState) -> None:
        """An ``ack`` resolves its send and counts as holding its (conv, seq) (G4)."""
        state = self.conv(ack.conv)
        if state.watermark is None and (ack.seq == 1 or phase is ClientState.SYNCED):
            state.watermark = 0
        if not state.holds(ack.seq):
            state.hold({ack.seq}, now, self._recv_delay_s)
        self._outbox.acked(ack)
        self.check_gap(ack.conv, phase)

    def learn_bases(self, result: Result) -> None:
        rows = result.get("convs", ())
        for row in rows if isinstance(rows, tuple) else ():
            self.conv(row.conv).learn_base(row.delivered, row.read)

    # ------------------------------------------------------------------ gaps

    def check_gap(self, conv: str, phase: ClientState) -> None:
        state = self.conv(conv)
        run = state.missing_run()
        if run is None or phase is not ClientState.SYNCED:
            return
        first, last = run
        limit = min(last - first + 1, self._history_page)
        self._out.emit(GapDetected(conv=conv, first=first, last=last))
        pending = self._requests.add(
            History(conv=conv, before=last + 1, limit=limit), internal=True
        )
        state.gap_rid = pending.frame.rid
        self._requests.send(pending)

    def fill_gap(
        self, request: History, result: Result, now: float, phase: ClientState, user: str | None
    ) -> None:
        state = self.conv(request.conv)
        state.gap_rid = None
        messages = history_messages(result)
        for msg in messages:
            if msg.conv == request.conv:
                self.on_msg(msg, now, pushed=False, phase=phase, user=user)
        assert request.before is not None
        seqs = {m.seq for m in messages if m.conv == request.conv and m.seq < request.before}
        more = bool(result.get("more", False))
        state.hold(state.invisible(request.before, seqs, more), now, self._recv_delay_s)
        self.check_gap(request.conv, phase)

    def gap_failed(self, request: History, error: Error | None) -> None:
        """A gap fill got no usable reply: given up until the next jump."""
        self.conv(request.conv).gap_rid = None
        if error is not None:
            self._out.emit(ServerError(error=error))


def _base_at(msg: Msg, phase: ClientState, user: str | None) -> int:
    """The watermark of a conversation first seen at ``msg`` (rule 3)."""
    if phase is ClientState.OPEN or _adds_user(msg, user):
        return msg.seq - 1
    return 0


def _adds_user(msg: Msg, user: str | None) -> bool:
    """True for the member event that created the group with ``user`` in it or added them."""
    if msg.kind != "member" or user is None:
        return False
    try:
        return MemberEvent.parse(msg.body).adds(user)
    except RemoteProtocolError:
        return False
