"""The client side of the wire protocol as a sans-IO state machine (no sockets, no clock).

A :class:`ClientSession` is driven like h11's ``Connection``: the driver feeds it what
arrives (:meth:`~ClientSession.receive_text`), tells it about the connection
(:meth:`~ClientSession.connect`, :meth:`~ClientSession.connection_lost`) and the time
(every input takes ``now``, in seconds of whatever clock the driver uses), then drains
:meth:`~ClientSession.data_to_send` (wire texts, in order) and
:meth:`~ClientSession.next_events` (frozen event values).

Rules -- everything that decides what the session does lives in this file, the lifecycle
tables and per-conversation records it consults in ``_client_state``:

1. **Lifecycle.** ``IDLE --connect--> CONNECTING --welcome--> OPEN --synced--> SYNCED``;
   ``connection_lost`` takes any connected state to ``DISCONNECTED``, from which ``connect``
   starts again. The table ``TRANSITIONS`` is the whole of it; a trigger missing from it is
   a :class:`LocalProtocolError` when the driver caused it (``connect`` twice) and a
   :class:`RemoteProtocolError` when the server did (a second ``welcome``). Which server
   frames are legal in which state is the table ``ACCEPTS``.
2. **Outbox.** Every :meth:`~ClientSession.send` gets a ``cmid`` from the injected RNG and
   stays in the outbox until its ``ack`` or a ``nack`` with ``retry: false``. After every
   ``welcome`` each entry is resent, oldest first, with the same ``cmid``, body and target
   (``conv`` or ``to``). A ``nack`` with ``retry: true`` schedules a resend on the same
   connection after a jittered exponential backoff (``retry_base_s`` doubling up to
   ``retry_max_s``). Each ``cmid`` yields exactly one :class:`Acked` or one
   :class:`SendFailed`, never both, never twice.
3. **Holding messages.** Per conversation the session keeps a watermark ``w`` (every seq up
   to ``w`` is held) and the set of seqs held above it. A pushed ``msg`` whose seq is held
   is a duplicate and is dropped; any other becomes one :class:`NewMessage`. An ``ack`` counts
   as holding its (conv, seq) (G4). A ``msg`` that carries a ``cmid`` still in our outbox,
   sent by our user, *is* that send's acknowledgement (same seq and id by G2): it resolves
   the send with :class:`Acked` and is not displayed. A conversation the session has not
   seen gets its base ``w`` from the first thing it learns: a ``convs`` row's
   ``delivered``; a ``msg`` pushed during the initial sync (``OPEN``: the server pushes
   everything above its watermark for this device, in order, so the first push is the
   first thing this device lacks) or the member event that added us: ``seq - 1``;
   otherwise ``w = 0`` (seq 1, or once ``SYNCED``), and gap filling (rule 5) fetches or
   skips what lies below. A fresh process for an existing device should therefore ask for
   ``convs`` first, or it will be shown recent history again.
4. **Reporting ``recv``.** When ``w`` rises past what was reported, a ``recv {conv, w}`` is
   due ``recv_delay_s`` later (batched: one frame per conversation however many messages
   arrived); :meth:`~ClientSession.tick` sends what is due. ``w`` only ever covers a
   contiguous prefix, so the report is cumulative and true. An ``ack`` that raises ``w`` is
   reported like a push: the server moves its watermark on an ack only if it already had
   ``seq - 1``, and the client cannot know whether its earlier ``recv`` got there first. A
   duplicate push means the server believes we lack that seq (a lost ``recv``): the current
   ``w`` is reported again. :attr:`~ClientSession.duplicates` counts the pushes dropped as
   duplicates (what the wire cost beyond exactly-once; the benchmark reports it).
5. **Gaps.** When a pushed or acked seq leaves a hole above ``w`` (live pushes arrive in
   order on the connection that carries our acks, so a hole means a lost push), the
   session asks for the lowest missing run ``[w+1, h-1]`` (``h`` = lowest held seq above
   ``w``) with ``history {conv, before: h, limit: min(h-w-1, history_page)}``, one request
   per conversation at a time. The reply is the newest visible messages below ``h``; seqs
   in ``[lowest returned, h)`` that it does not contain are invisible to us (we were out of
   the group then) and so is everything below the page when ``more`` is false: those seqs
   are skipped as held, never displayed. If a run remains (the page was full), the next
   request asks below the page, so each round strictly shrinks the hole. Gaps are looked
   for only once ``SYNCED`` (the initial sync is itself the in-order catch-up), and all
   of them at ``synced``. A failed gap request is given up until the next jump.
6. **Requests.** ``history``, ``convs``, ``group_*`` and ``presence_*`` carry a ``rid`` from
   a counter and are matched to their ``result`` or ``error``. A request made while not
   open waits and goes out after the next ``welcome``. A request on the wire when the
   connection drops fails with :class:`RequestFailed` (``error`` None): it is *not*
   re-issued, because ``group_create`` is not idempotent and only the caller knows whether
   repeating is safe. Presence subscriptions belong to a connection, so the session
   re-subscribes after every ``welcome``; ``read`` watermarks are resent then too (the
   server max-merges them). The caller's own ``history`` results are scrollback: they are
   handed over as they came and do not count as holding or displaying anything.
   A request that expects a ``result`` fails, never hangs: when its reply cannot be decoded
   (:class:`RequestFailed` with a ``bad_frame`` error naming the problem), and when no reply
   came within ``request_timeout_s`` of its first :meth:`~ClientSession.tick` on the wire
   (:class:`RequestFailed` with ``timed_out``). A gap fill that fails either way is given up
   like one the server refused. A reply that comes after its request expired, or after the
   driver abandoned it (:meth:`~ClientSession.abandon_request`), is dropped silently.
7. **Time** only enters as the ``now`` argument; :meth:`~ClientSession.next_deadline` says
   when the driver must call :meth:`~ClientSession.tick` next. Keep-alive belongs to the
   driver (WebSocket pings are preferred; :meth:`~ClientSession.ping` queues a JSON ping).
"""

from __future__ import annotations

import random

import attrs

from ._backoff import jittered_backoff
from ._client_events import (
    Acked,
    ConvStatus,
    Event,
    GapDetected,
    NewMessage,
    PresenceChanged,
    ReceiptUpdated,
    RequestCompleted,
    RequestFailed,
    SendFailed,
    ServerError,
    StateChanged,
    TypingStarted,
)
from ._client_state import (
    ACCEPTS,
    TRANSITIONS,
    ClientState,
    ConvState,
    OutboxEntry,
    PendingRequest,
    Trigger,
)
from ._codec import decode_server_frame, encode
from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._frames import (
    REQUEST_FRAMES,
    Ack,
    ClientFrame,
    Convs,
    Error,
    Hello,
    History,
    Msg,
    Nack,
    Ping,
    Pong,
    Presence,
    PresenceSub,
    PresenceUnsub,
    Read,
    Receipt,
    Recv,
    RequestFrame,
    Result,
    Send,
    ServerFrame,
    Synced,
    Typing,
    TypingNotice,
    Welcome,
    history_messages,
)
from ._limits import MAX_FRAME_BYTES, MAX_HISTORY_LIMIT, MAX_PRESENCE_USERS
from ._member import MemberEvent

# -------------------------------------------------------------------------------- session


class ClientSession:
    """One device's protocol state across any number of connections.

    ``rng`` is the only source of randomness (cmids and retry jitter), so a seeded
    ``random.Random`` makes the session deterministic. ``recv_delay_s`` batches ``recv``
    reports; 0 reports on every rise. ``request_timeout_s`` bounds the wait for a reply.
    """

    def __init__(
        self,
        *,
        token: str,
        device: str,
        rng: random.Random,
        recv_delay_s: float = 0.05,
        history_page: int = MAX_HISTORY_LIMIT,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        request_timeout_s: float = 30.0,
    ) -> None:
        self._hello = Hello(token=token, device=device)
        self._rng = rng
        self.recv_delay_s = recv_delay_s
        self.history_page = history_page
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.request_timeout_s = request_timeout_s
        self._state = ClientState.IDLE
        self._welcome: Welcome | None = None
        self._outbox: dict[str, OutboxEntry] = {}
        self._requests: dict[str, PendingRequest] = {}
        #: rids given up on while on this connection: their late replies are dropped.
        self._abandoned: set[str] = set()
        self._next_rid = 0
        self._convs: dict[str, ConvState] = {}
        self._presence: dict[str, None] = {}  # ordered set of subscribed users
        self._out: list[str] = []
        self._events: list[Event] = []
        self._duplicates = 0

    # ------------------------------------------------------------------ introspection

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def device(self) -> str:
        return self._hello.device

    @property
    def welcome(self) -> Welcome | None:
        """The latest ``welcome`` (None before the first)."""
        return self._welcome

    @property
    def user(self) -> str | None:
        """Our user id as the server named it in ``welcome``."""
        return None if self._welcome is None else self._welcome.user

    @property
    def is_open(self) -> bool:
        return self._state in (ClientState.OPEN, ClientState.SYNCED)

    @property
    def outbox(self) -> tuple[Send, ...]:
        """Sends not yet acknowledged, oldest first."""
        return tuple(entry.frame for entry in self._outbox.values())

    @property
    def pending_requests(self) -> dict[str, RequestFrame]:
        """Requests awaiting a reply (or a connection), by rid; gap fills excluded."""
        return {rid: p.frame for rid, p in self._requests.items() if not p.internal}

    def conversation(self, conv: str) -> ConvStatus:
        """What the session holds of ``conv``."""
        state = self._convs.get(conv, ConvState())
        return ConvStatus(
            conv=conv,
            watermark=state.watermark,
            held_above=frozenset(state.above),
            reported=state.reported,
            read=state.read,
            gap_request=state.gap_rid,
        )

    def conversations(self) -> tuple[str, ...]:
        """Every conversation the session has state for, in the order it learned them."""
        return tuple(self._convs)

    @property
    def duplicates(self) -> int:
        """Pushed ``msg`` frames dropped because their (conv, seq) was already held (rule 3)."""
        return self._duplicates

    def holds(self, conv: str, seq: int) -> bool:
        """True once (conv, seq) was displayed, acked, or skipped as invisible."""
        state = self._convs.get(conv)
        return state is not None and state.holds(seq)

    # ---------------------------------------------------------------------- output

    def data_to_send(self) -> list[str]:
        """Drain the wire texts to send, in order."""
        out, self._out = self._out, []
        return out

    def next_events(self) -> list[Event]:
        """Drain the events produced so far, in order."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """The earliest ``now`` at which :meth:`tick` has work, or None."""
        times: list[float] = []
        if self.is_open:
            times += [c.recv_due for c in self._convs.values() if c.recv_due is not None]
            times += [e.retry_at for e in self._outbox.values() if e.retry_at is not None]
            times += [p.deadline for p in self._requests.values() if p.deadline is not None]
        return min(times, default=None)

    # ---------------------------------------------------------------------- lifecycle

    def connect(self) -> None:
        """A new connection is up: queue ``hello``."""
        self._transition(Trigger.CONNECT, local=True)
        self._out.clear()
        self._emit(StateChanged(state=self._state))
        self._write(self._hello)

    def connection_lost(self, close_code: int | None = None, reason: str = "") -> None:
        """The connection is gone. Unsent output is discarded; the outbox stays; requests on
        the wire fail (rule 6)."""
        self._transition(Trigger.LOST, local=True)
        self._out.clear()
        for entry in self._outbox.values():
            entry.on_wire = False
            entry.retry_at = None
        for conv in self._convs.values():
            conv.gap_rid = None
        self._abandoned.clear()
        for rid, pending in list(self._requests.items()):
            if not pending.on_wire:
                continue
            del self._requests[rid]
            if pending.expects_result and not pending.internal:
                self._emit(RequestFailed(rid=rid, request=pending.frame, error=None))
        self._emit(StateChanged(state=self._state, close_code=close_code, reason=reason))

    # ---------------------------------------------------------------------- local actions

    def send(self, body: str, *, conv: str | None = None, to: str | None = None) -> str:
        """Queue a text message to ``conv`` or to user ``to``; returns its ``cmid``.

        Raises :class:`LocalProtocolError` for a frame the contract forbids (both or neither
        target, a body over the limit, a frame over the client-frame limit: a body of
        characters JSON must escape can be under 16 KiB and its frame still over 64 KiB)."""
        cmid = self._new_cmid()
        frame = Send(cmid=cmid, body=body, conv=conv, to=to)
        if len(body) > MAX_FRAME_BYTES // 8:
            size = len(encode(frame).encode())
            if size > MAX_FRAME_BYTES:
                raise LocalProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"this send is {size} bytes of JSON, over the {MAX_FRAME_BYTES} byte limit "
                    "of a client frame (control characters escape to 6 bytes each)",
                )
        entry = OutboxEntry(frame)
        self._outbox[cmid] = entry
        if self.is_open:
            self._put_on_wire(entry)
        return cmid

    def request(self, frame: RequestFrame) -> str:
        """Queue a request; returns the ``rid`` its reply will carry. ``frame``'s own rid is
        replaced."""
        if not isinstance(frame, REQUEST_FRAMES):
            raise LocalProtocolError(
                ErrorCode.BAD_FRAME, f"{type(frame).__name__} is not a request frame"
            )
        rid = self._new_rid()
        pending = PendingRequest(
            frame=attrs.evolve(frame, rid=rid),
            expects_result=not isinstance(frame, PresenceSub | PresenceUnsub),
        )
        self._requests[rid] = pending
        if isinstance(frame, PresenceSub):
            self._presence.update(dict.fromkeys(frame.users))
        elif isinstance(frame, PresenceUnsub):
            for user in frame.users:
                self._presence.pop(user, None)
        if self.is_open:
            self._send_request(pending)
        return rid

    def renew_token(self, token: str) -> None:
        """Use ``token`` in every later ``hello`` (the old one expired or was refused)."""
        self._hello = attrs.evolve(self._hello, token=token)

    def abandon_request(self, rid: str) -> None:
        """The driver gave up on request ``rid``: not sent if it is still queued, and its
        reply, should one come, is dropped. No event follows."""
        pending = self._requests.pop(rid, None)
        if pending is not None and pending.on_wire:
            self._abandoned.add(rid)

    def mark_read(self, conv: str, seq: int) -> None:
        """The user has read ``conv`` up to ``seq``; sends ``read`` if it rose."""
        state = self._conv(conv)
        if seq <= state.read:
            return
        state.read = seq
        if self.is_open:
            self._write(Read(conv=conv, seq=seq))

    def typing(self, conv: str) -> None:
        """Tell the other members we are typing. Ephemeral: dropped when not connected."""
        if self.is_open:
            self._write(Typing(conv=conv))

    def ping(self) -> None:
        """Queue a JSON ``ping`` (drivers without WebSocket pings use it for keep-alive)."""
        if self.is_open:
            self._write(Ping())

    def flush_recv(self) -> None:
        """Report every pending ``recv`` watermark now, whatever the batching delay."""
        if self.is_open:
            for conv, state in self._convs.items():
                self._report(conv, state)

    def tick(self, now: float) -> None:
        """Do what is due at ``now``: batched ``recv`` reports, backed-off resends, and
        requests whose reply is overdue (rule 6)."""
        if not self.is_open:
            return
        for conv, state in self._convs.items():
            if state.recv_due is not None and state.recv_due <= now:
                self._report(conv, state)
        for entry in self._outbox.values():
            if entry.retry_at is not None and entry.retry_at <= now:
                self._put_on_wire(entry)
        for rid, pending in list(self._requests.items()):
            if not (pending.on_wire and pending.expects_result):
                continue
            if pending.deadline is None:
                pending.deadline = now + self.request_timeout_s
            elif pending.deadline <= now:
                self._abandoned.add(rid)
                self._fail_request(rid, None, timed_out=True)

    # ---------------------------------------------------------------------- input

    def receive_text(self, text: str, now: float) -> None:
        """Feed one text message from the server. Raises :class:`RemoteProtocolError` when
        it breaks the contract; the session is unchanged then, except that a pending
        request whose reply it was fails (rule 6)."""
        try:
            frame = decode_server_frame(text)
        except RemoteProtocolError as exc:
            if exc.rid in self._abandoned:
                self._abandoned.discard(exc.rid)
            elif exc.rid is not None:
                what = f"the reply to {exc.rid} could not be decoded: {exc.message}"
                error = Error(code=ErrorCode.BAD_FRAME, message=what, rid=exc.rid)
                self._fail_request(exc.rid, error)
            raise
        self.receive_frame(frame, now)

    def receive_frame(self, frame: ServerFrame, now: float) -> None:
        """Feed one decoded server frame (see :meth:`receive_text`)."""
        accepted = ACCEPTS.get(self._state)
        if accepted is None:
            raise LocalProtocolError(
                ErrorCode.BAD_FRAME,
                f"received {frame.TYPE!r} while {self._state.value}: no connection to read from",
            )
        if type(frame) not in accepted:
            raise RemoteProtocolError(
                ErrorCode.BAD_FRAME, f"server sent {frame.TYPE!r} while {self._state.value}"
            )
        match frame:
            case Welcome():
                self._on_welcome(frame)
            case Synced():
                self._on_synced()
            case Msg():
                self._on_msg(frame, now, pushed=True)
            case Ack():
                self._on_ack(frame, now)
            case Nack():
                self._on_nack(frame, now)
            case Receipt():
                self._emit(ReceiptUpdated(receipt=frame))
            case Presence():
                self._emit(PresenceChanged(presence=frame))
            case TypingNotice():
                self._emit(TypingStarted(notice=frame))
            case Result():
                self._on_result(frame, now)
            case Error():
                self._on_error(frame)
            case Pong():
                pass
        self.tick(now)

    # ---------------------------------------------------------------------- handlers

    def _on_welcome(self, frame: Welcome) -> None:
        if frame.device != self.device:
            raise RemoteProtocolError(
                ErrorCode.BAD_FRAME, f"welcome names device {frame.device!r}, not {self.device!r}"
            )
        self._transition(Trigger.WELCOME, local=False)
        self._welcome = frame
        self._emit(StateChanged(state=self._state, welcome=frame))
        for entry in self._outbox.values():
            self._put_on_wire(entry)
        for conv, state in self._convs.items():
            if state.read:
                self._write(Read(conv=conv, seq=state.read))
        # Queued presence requests are subsumed by re-subscribing to the current set.
        for rid, pending in list(self._requests.items()):
            if isinstance(pending.frame, PresenceSub | PresenceUnsub):
                del self._requests[rid]
        users = tuple(self._presence)
        for start in range(0, len(users), MAX_PRESENCE_USERS):
            self.request(PresenceSub(users=users[start : start + MAX_PRESENCE_USERS]))
        for pending in self._requests.values():
            self._send_request(pending)

    def _on_synced(self) -> None:
        self._transition(Trigger.SYNCED, local=False)
        self._emit(StateChanged(state=self._state))
        for conv, state in self._convs.items():
            if state.watermark is None:
                state.watermark = 0
                state.advance()
            self._check_gap(conv, state)

    def _on_msg(self, msg: Msg, now: float, *, pushed: bool) -> None:
        entry = self._outbox.get(msg.cmid) if msg.cmid is not None else None
        if entry is not None and msg.sender == self.user:
            ack = Ack(cmid=entry.frame.cmid, conv=msg.conv, seq=msg.seq, id=msg.id, ts=msg.ts)
            self._on_ack(ack, now)
            return
        state = self._conv(msg.conv)
        if state.watermark is None:
            state.watermark = self._base_at(msg)
        if state.holds(msg.seq):
            if pushed:
                self._duplicates += 1
                if state.reported >= msg.seq:
                    state.reported = msg.seq - 1
                    state.schedule_recv(now, self.recv_delay_s)
            return
        state.hold({msg.seq}, now, self.recv_delay_s)
        self._emit(NewMessage(message=msg))
        if pushed:
            self._check_gap(msg.conv, state)

    def _on_ack(self, ack: Ack, now: float) -> None:
        state = self._conv(ack.conv)
        if state.watermark is None and (ack.seq == 1 or self._state is ClientState.SYNCED):
            state.watermark = 0
        if not state.holds(ack.seq):
            state.hold({ack.seq}, now, self.recv_delay_s)
        entry = self._outbox.pop(ack.cmid, None)
        if entry is not None:
            self._emit(Acked(cmid=ack.cmid, ack=ack, send=entry.frame))
        self._check_gap(ack.conv, state)

    def _on_nack(self, nack: Nack, now: float) -> None:
        entry = self._outbox.get(nack.cmid)
        if entry is None:
            return
        entry.on_wire = False
        if nack.retry:
            entry.attempts += 1
            entry.retry_at = now + jittered_backoff(
                entry.attempts, base_s=self.retry_base_s, max_s=self.retry_max_s, rng=self._rng
            )
        else:
            del self._outbox[nack.cmid]
            self._emit(SendFailed(cmid=nack.cmid, nack=nack, send=entry.frame))

    def _on_result(self, result: Result, now: float) -> None:
        if result.rid in self._abandoned:
            self._abandoned.discard(result.rid)
            return
        pending = self._requests.pop(result.rid, None) if result.rid is not None else None
        if pending is None:
            raise RemoteProtocolError(
                ErrorCode.BAD_FRAME, f"result for rid {result.rid!r}, which is not pending"
            )
        if pending.internal:
            assert isinstance(pending.frame, History)
            self._fill_gap(pending.frame, result, now)
            return
        if isinstance(pending.frame, Convs):
            self._learn_bases(result)
        assert result.rid is not None
        self._emit(RequestCompleted(rid=result.rid, request=pending.frame, result=result))

    def _on_error(self, error: Error) -> None:
        if error.rid in self._abandoned:
            self._abandoned.discard(error.rid)
            return
        if error.rid is None or error.rid not in self._requests:
            self._emit(ServerError(error=error))
        else:
            self._fail_request(error.rid, error)

    def _fail_request(self, rid: str, error: Error | None, *, timed_out: bool = False) -> None:
        """Request ``rid`` (if pending) is over without a result."""
        pending = self._requests.pop(rid, None)
        if pending is None:
            return
        if pending.internal:
            assert isinstance(pending.frame, History)
            self._conv(pending.frame.conv).gap_rid = None
            if error is not None:
                self._emit(ServerError(error=error))
        else:
            self._emit(
                RequestFailed(rid=rid, request=pending.frame, error=error, timed_out=timed_out)
            )

    # ---------------------------------------------------------------------- watermarks, gaps

    def _base_at(self, msg: Msg) -> int:
        """The watermark of a conversation first seen at ``msg`` (rule 3)."""
        if self._state is ClientState.OPEN or _adds_user(msg, self.user):
            return msg.seq - 1
        return 0

    def _report(self, conv: str, state: ConvState) -> None:
        seq = state.take_report()
        if seq is not None:
            self._write(Recv(conv=conv, seq=seq))

    def _check_gap(self, conv: str, state: ConvState) -> None:
        run = state.missing_run()
        if run is None or self._state is not ClientState.SYNCED:
            return
        first, last = run
        limit = min(last - first + 1, self.history_page)
        self._emit(GapDetected(conv=conv, first=first, last=last))
        rid = self._new_rid()
        pending = PendingRequest(
            frame=History(conv=conv, before=last + 1, limit=limit, rid=rid), internal=True
        )
        self._requests[rid] = pending
        state.gap_rid = rid
        self._send_request(pending)

    def _fill_gap(self, request: History, result: Result, now: float) -> None:
        state = self._conv(request.conv)
        state.gap_rid = None
        messages = history_messages(result)
        for msg in messages:
            if msg.conv == request.conv:
                self._on_msg(msg, now, pushed=False)
        assert request.before is not None
        seqs = {m.seq for m in messages if m.conv == request.conv and m.seq < request.before}
        more = bool(result.get("more", False))
        state.hold(state.invisible(request.before, seqs, more), now, self.recv_delay_s)
        self._check_gap(request.conv, state)

    def _learn_bases(self, result: Result) -> None:
        rows = result.get("convs", ())
        for row in rows if isinstance(rows, tuple) else ():
            self._conv(row.conv).learn_base(row.delivered, row.read)

    # ---------------------------------------------------------------------- plumbing

    def _transition(self, trigger: Trigger, *, local: bool) -> None:
        new = TRANSITIONS.get((self._state, trigger))
        if new is None:
            error = LocalProtocolError if local else RemoteProtocolError
            raise error(
                ErrorCode.BAD_FRAME,
                f"client session cannot {trigger.value} while {self._state.value}",
            )
        self._state = new

    def _conv(self, conv: str) -> ConvState:
        state = self._convs.get(conv)
        if state is None:
            state = self._convs[conv] = ConvState()
        return state

    def _put_on_wire(self, entry: OutboxEntry) -> None:
        entry.on_wire = True
        entry.retry_at = None
        self._write(entry.frame)

    def _send_request(self, pending: PendingRequest) -> None:
        if not pending.on_wire:
            pending.on_wire = True
            self._write(pending.frame)

    def _write(self, frame: ClientFrame) -> None:
        self._out.append(encode(frame))

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _new_cmid(self) -> str:
        while True:
            cmid = f"{self._rng.getrandbits(64):016x}"
            if cmid not in self._outbox:
                return cmid

    def _new_rid(self) -> str:
        self._next_rid += 1
        return f"r{self._next_rid}"


def _adds_user(msg: Msg, user: str | None) -> bool:
    """True for the member event that created the group with ``user`` in it or added them."""
    if msg.kind != "member" or user is None:
        return False
    try:
        return MemberEvent.parse(msg.body).adds(user)
    except RemoteProtocolError:
        return False
