"""The client side of the wire protocol as a sans-IO state machine (no sockets, no clock).

A :class:`ClientSession` is driven like h11's ``Connection``: the driver feeds it what
arrives (:meth:`~ClientSession.receive_text`), tells it about the connection
(:meth:`~ClientSession.connect`, :meth:`~ClientSession.connection_lost`) and the time
(every input takes ``now``, in seconds of whatever clock the driver uses), then drains
:meth:`~ClientSession.data_to_send` (wire texts, in order) and
:meth:`~ClientSession.next_events` (frozen event values).

Rules -- everything the session does is stated here; this file routes each input to the part
that carries its rule out: the lifecycle tables in ``_client_state`` (rule 1), the outbox in
``_client_outbox`` (rule 2), what is held of each conversation in ``_client_inbox`` (rules
3-5) and the request table in ``_client_requests`` (rule 6):

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

from ._client_events import (
    ConvStatus,
    Event,
    PresenceChanged,
    ReceiptUpdated,
    RequestCompleted,
    ServerError,
    StateChanged,
    TypingStarted,
)
from ._client_inbox import Inbox
from ._client_outbox import Outbox
from ._client_output import Output
from ._client_requests import Requests
from ._client_state import ACCEPTS, TRANSITIONS, ClientState, Trigger
from ._codec import decode_server_frame
from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._frames import (
    REQUEST_FRAMES,
    Ack,
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
    Receipt,
    RequestFrame,
    Result,
    Send,
    ServerFrame,
    Synced,
    Typing,
    TypingNotice,
    Welcome,
)
from ._limits import MAX_HISTORY_LIMIT, MAX_PRESENCE_USERS


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
        self._state = ClientState.IDLE
        self._welcome: Welcome | None = None
        self._io = Output()
        self._outbox = Outbox(self._io, rng, retry_base_s=retry_base_s, retry_max_s=retry_max_s)
        self._requests = Requests(self._io, timeout_s=request_timeout_s)
        self._inbox = Inbox(
            self._io,
            self._outbox,
            self._requests,
            recv_delay_s=recv_delay_s,
            history_page=history_page,
        )
        self._presence: dict[str, None] = {}  # ordered set of subscribed users

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
        return self._outbox.frames()

    @property
    def pending_requests(self) -> dict[str, RequestFrame]:
        """Requests awaiting a reply (or a connection), by rid; gap fills excluded."""
        return self._requests.callers()

    def conversation(self, conv: str) -> ConvStatus:
        """What the session holds of ``conv``."""
        return self._inbox.status(conv)

    def conversations(self) -> tuple[str, ...]:
        """Every conversation the session has state for, in the order it learned them."""
        return self._inbox.names()

    @property
    def duplicates(self) -> int:
        """Pushed ``msg`` frames dropped because their (conv, seq) was already held (rule 3)."""
        return self._inbox.duplicates

    def holds(self, conv: str, seq: int) -> bool:
        """True once (conv, seq) was displayed, acked, or skipped as invisible."""
        return self._inbox.holds(conv, seq)

    # ---------------------------------------------------------------------- output

    def data_to_send(self) -> list[str]:
        """Drain the wire texts to send, in order."""
        return self._io.take_texts()

    def next_events(self) -> list[Event]:
        """Drain the events produced so far, in order."""
        return self._io.take_events()

    def next_deadline(self) -> float | None:
        """The earliest ``now`` at which :meth:`tick` has work, or None."""
        if not self.is_open:
            return None
        times = self._inbox.deadlines() + self._outbox.deadlines() + self._requests.deadlines()
        return min(times, default=None)

    # ---------------------------------------------------------------------- lifecycle

    def connect(self) -> None:
        """A new connection is up: queue ``hello``."""
        self._transition(Trigger.CONNECT, local=True)
        self._io.texts.clear()
        self._io.emit(StateChanged(state=self._state))
        self._io.write(self._hello)

    def connection_lost(self, close_code: int | None = None, reason: str = "") -> None:
        """The connection is gone. Unsent output is discarded; the outbox stays; requests on
        the wire fail (rule 6)."""
        self._transition(Trigger.LOST, local=True)
        self._io.texts.clear()
        self._outbox.disconnected()
        self._inbox.disconnected()
        self._requests.disconnected()
        self._io.emit(StateChanged(state=self._state, close_code=close_code, reason=reason))

    # ---------------------------------------------------------------------- local actions

    def send(self, body: str, *, conv: str | None = None, to: str | None = None) -> str:
        """Queue a text message to ``conv`` or to user ``to``; returns its ``cmid``.

        Raises :class:`LocalProtocolError` for a frame the contract forbids (both or neither
        target, a body over the limit, a frame over the client-frame limit: a body of
        characters JSON must escape can be under 16 KiB and its frame still over 64 KiB)."""
        entry = self._outbox.add(body, conv=conv, to=to)
        if self.is_open:
            self._outbox.put_on_wire(entry)
        return entry.frame.cmid

    def request(self, frame: RequestFrame) -> str:
        """Queue a request; returns the ``rid`` its reply will carry. ``frame``'s own rid is
        replaced."""
        if not isinstance(frame, REQUEST_FRAMES):
            raise LocalProtocolError(
                ErrorCode.BAD_FRAME, f"{type(frame).__name__} is not a request frame"
            )
        pending = self._requests.add(frame)
        if isinstance(frame, PresenceSub):
            self._presence.update(dict.fromkeys(frame.users))
        elif isinstance(frame, PresenceUnsub):
            for user in frame.users:
                self._presence.pop(user, None)
        if self.is_open:
            self._requests.send(pending)
        assert pending.frame.rid is not None
        return pending.frame.rid

    def renew_token(self, token: str) -> None:
        """Use ``token`` in every later ``hello`` (the old one expired or was refused)."""
        self._hello = attrs.evolve(self._hello, token=token)

    def abandon_request(self, rid: str) -> None:
        """The driver gave up on request ``rid``: not sent if it is still queued, and its
        reply, should one come, is dropped. No event follows."""
        self._requests.abandon(rid)

    def mark_read(self, conv: str, seq: int) -> None:
        """The user has read ``conv`` up to ``seq``; sends ``read`` if it rose."""
        self._inbox.mark_read(conv, seq, send=self.is_open)

    def typing(self, conv: str) -> None:
        """Tell the other members we are typing. Ephemeral: dropped when not connected."""
        if self.is_open:
            self._io.write(Typing(conv=conv))

    def ping(self) -> None:
        """Queue a JSON ``ping`` (drivers without WebSocket pings use it for keep-alive)."""
        if self.is_open:
            self._io.write(Ping())

    def flush_recv(self) -> None:
        """Report every pending ``recv`` watermark now, whatever the batching delay."""
        if self.is_open:
            self._inbox.report_all()

    def tick(self, now: float) -> None:
        """Do what is due at ``now``: batched ``recv`` reports, backed-off resends, and
        requests whose reply is overdue (rule 6)."""
        if not self.is_open:
            return
        self._inbox.report_due(now)
        self._outbox.resend_due(now)
        for rid in self._requests.overdue(now):
            self._fail_request(rid, None, timed_out=True)

    # ---------------------------------------------------------------------- input

    def receive_text(self, text: str, now: float) -> None:
        """Feed one text message from the server. Raises :class:`RemoteProtocolError` when
        it breaks the contract; the session is unchanged then, except that a pending
        request whose reply it was fails (rule 6)."""
        try:
            frame = decode_server_frame(text)
        except RemoteProtocolError as exc:
            if not self._requests.was_abandoned(exc.rid) and exc.rid is not None:
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
                self._transition(Trigger.SYNCED, local=False)
                self._io.emit(StateChanged(state=self._state))
                self._inbox.synced()
            case Msg():
                self._inbox.on_msg(frame, now, pushed=True, phase=self._state, user=self.user)
            case Ack():
                self._inbox.on_ack(frame, now, self._state)
            case Nack():
                self._outbox.nacked(frame, now)
            case Receipt():
                self._io.emit(ReceiptUpdated(receipt=frame))
            case Presence():
                self._io.emit(PresenceChanged(presence=frame))
            case TypingNotice():
                self._io.emit(TypingStarted(notice=frame))
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
        self._io.emit(StateChanged(state=self._state, welcome=frame))
        self._outbox.resend_all()
        self._inbox.resend_reads()
        # Queued presence requests are subsumed by re-subscribing to the current set.
        self._requests.drop_presence()
        users = tuple(self._presence)
        for start in range(0, len(users), MAX_PRESENCE_USERS):
            self.request(PresenceSub(users=users[start : start + MAX_PRESENCE_USERS]))
        self._requests.send_all()

    def _on_result(self, result: Result, now: float) -> None:
        if self._requests.was_abandoned(result.rid):
            return
        pending = self._requests.take(result.rid)
        if pending is None:
            raise RemoteProtocolError(
                ErrorCode.BAD_FRAME, f"result for rid {result.rid!r}, which is not pending"
            )
        if pending.internal:
            assert isinstance(pending.frame, History)
            self._inbox.fill_gap(pending.frame, result, now, self._state, self.user)
            return
        if isinstance(pending.frame, Convs):
            self._inbox.learn_bases(result)
        assert result.rid is not None
        self._io.emit(RequestCompleted(rid=result.rid, request=pending.frame, result=result))

    def _on_error(self, error: Error) -> None:
        if self._requests.was_abandoned(error.rid):
            return
        if error.rid is None or error.rid not in self._requests:
            self._io.emit(ServerError(error=error))
        else:
            self._fail_request(error.rid, error)

    def _fail_request(self, rid: str, error: Error | None, *, timed_out: bool = False) -> None:
        """Request ``rid`` (if pending) is over without a result."""
        gap_fill = self._requests.fail(rid, error, timed_out=timed_out)
        if gap_fill is not None:
            assert isinstance(gap_fill.frame, History)
            self._inbox.gap_failed(gap_fill.frame, error)

    def _transition(self, trigger: Trigger, *, local: bool) -> None:
        new = TRANSITIONS.get((self._state, trigger))
        if new is None:
            error = LocalProtocolError if local else RemoteProtocolError
            raise error(
                ErrorCode.BAD_FRAME,
                f"client session cannot {trigger.value} while {self._state.value}",
            )
        self._state = new
