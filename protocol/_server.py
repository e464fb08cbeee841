"""The server side of one connection: which frames are legal when, and when it must close.

A :class:`ServerSession` is sans-IO. The node that owns the WebSocket feeds it what arrived
(:meth:`ServerSession.receive`, :meth:`ServerSession.note_ping`), tells it what it decided
(:meth:`~ServerSession.accept`, :meth:`~ServerSession.reject`, :meth:`~ServerSession.replaced`,
:meth:`~ServerSession.shutdown`), asks it for the time by which the peer must speak
(:meth:`~ServerSession.deadline`, :meth:`~ServerSession.expired`), and encodes every outgoing
frame through :meth:`~ServerSession.send`. Time is always an argument; nothing here reads a
clock, touches a socket or verifies a token.

The rules of the state machine (as in h11/_state.py):

Rule 1: every transition lives in ``_TRANSITIONS`` below, keyed by (phase, event). The session
        classifies what happened into an :class:`_Event`, looks it up, and applies the entry;
        no method changes the phase any other way.
Rule 2: every misbehaviour of the peer has an entry, saying whether the connection closes (and
        with which close code) and what to complain about. A *missing* entry is therefore
        always a misuse by our own node, and raises :class:`LocalProtocolError` naming the
        event, the role that caused it and the phase.
Rule 3: the node sees three states (:class:`ServerState`); the table works on finer phases
        that say what must happen next (verify the hello, send the welcome, send the farewell
        error). Each phase belongs to exactly one public state (``_PUBLIC``).
Rule 4: the first close code sticks. Closing a closed session again (a replacement racing a
        shutdown) changes nothing and reports the code it closed with.
Rule 5: any frame that arrives, even a malformed one, and any WebSocket ping, is keep-alive.
        Pongs are not. The hello deadline is not moved by anything.
"""

from __future__ import annotations

import enum
import math
from typing import Final

import attrs

from ._codec import SendError, decode_client_frame, encode
from ._errors import CloseCode, ErrorCode, LocalProtocolError, RemoteProtocolError
from ._frames import ClientFrame, Error, Hello, Nack, ServerFrame, Welcome
from ._limits import HELLO_TIMEOUT_S


class ServerState(enum.Enum):
    """What the node needs to know about a connection."""

    #: Connected; no hello accepted yet. Only ``error`` may be sent.
    AWAITING_HELLO = enum.auto()
    #: ``welcome`` given; every frame of the contract flows.
    OPEN = enum.auto()
    #: Closed (or closing: the farewell ``error`` may still be sent). Nothing is received.
    CLOSED = enum.auto()


class _Phase(enum.Enum):
    AWAITING_HELLO = enum.auto()
    #: A hello arrived; the node is checking its token and must accept or reject it.
    VERIFYING = enum.auto()
    #: Accepted; the next frame out must be the ``welcome``.
    WELCOMING = enum.auto()
    OPEN = enum.auto()
    #: Closed with a reason the client should read: one ``error`` may still go out.
    CLOSING = enum.auto()
    CLOSED = enum.auto()


_PUBLIC: Final[dict[_Phase, ServerState]] = {
    _Phase.AWAITING_HELLO: ServerState.AWAITING_HELLO,
    _Phase.VERIFYING: ServerState.AWAITING_HELLO,
    _Phase.WELCOMING: ServerState.OPEN,
    _Phase.OPEN: ServerState.OPEN,
    _Phase.CLOSING: ServerState.CLOSED,
    _Phase.CLOSED: ServerState.CLOSED,
}


class _Event(enum.Enum):
    """Everything that can happen to a session."""

    # Caused by the client:
    HELLO = enum.auto()
    FRAME = enum.auto()  # any well-formed frame but hello
    BAD_TOKEN_HELLO = enum.auto()  # a hello whose token is missing, empty or not a string
    MALFORMED_HELLO = enum.auto()
    MALFORMED_FRAME = enum.auto()  # a frame of a known type other than hello, but invalid
    UNDECODABLE = enum.auto()  # not JSON, not an object, binary, no or unknown type, too big
    PING = enum.auto()  # a WebSocket ping
    # Caused by the server (the node's decisions and what it sends):
    ACCEPT = enum.auto()
    REJECT = enum.auto()
    TIMEOUT = enum.auto()
    REPLACED = enum.auto()
    SHUTDOWN = enum.auto()
    SEND_WELCOME = enum.auto()
    SEND_ERROR = enum.auto()
    SEND_FRAME = enum.auto()  # any frame but welcome and error

    @property
    def role(self) -> str:
        return "the client" if self in _CLIENT_EVENTS else "the server"


_CLIENT_EVENTS: Final = frozenset(
    {
        _Event.HELLO,
        _Event.FRAME,
        _Event.BAD_TOKEN_HELLO,
        _Event.MALFORMED_HELLO,
        _Event.MALFORMED_FRAME,
        _Event.UNDECODABLE,
        _Event.PING,
    }
)


@attrs.frozen
class _Transition:
    to: _Phase
    #: The close code when this transition closes the connection.
    close: CloseCode | None = None
    #: When set, the received frame is rejected with ``bad_frame`` and this message
    #: (formatted with ``type``, the frame's wire type) instead of the codec's own.
    complaint: str | None = None


_NOT_HELLO_FIRST: Final = "the first frame must be 'hello', not {type!r}"
_HELLO_AGAIN: Final = "hello already received: this session is open"

_A, _V, _W, _O, _CG, _CD = (
    _Phase.AWAITING_HELLO,
    _Phase.VERIFYING,
    _Phase.WELCOMING,
    _Phase.OPEN,
    _Phase.CLOSING,
    _Phase.CLOSED,
)

_TRANSITIONS: Final[dict[tuple[_Phase, _Event], _Transition]] = {
    # Waiting for the first frame, which must be a hello.
    (_A, _Event.HELLO): _Transition(_V),
    (_A, _Event.FRAME): _Transition(_CG, CloseCode.BAD_FRAME, _NOT_HELLO_FIRST),
    (_A, _Event.MALFORMED_FRAME): _Transition(_CG, CloseCode.BAD_FRAME, _NOT_HELLO_FIRST),
    (_A, _Event.MALFORMED_HELLO): _Transition(_CG, CloseCode.BAD_FRAME),
    (_A, _Event.BAD_TOKEN_HELLO): _Transition(_CG, CloseCode.UNAUTHENTICATED),
    (_A, _Event.UNDECODABLE): _Transition(_CG, CloseCode.BAD_FRAME),
    (_A, _Event.PING): _Transition(_A),
    (_A, _Event.SEND_ERROR): _Transition(_A),
    (_A, _Event.TIMEOUT): _Transition(_CD, CloseCode.TIMEOUT),
    (_A, _Event.SHUTDOWN): _Transition(_CD, CloseCode.GOING_AWAY),
    # The node is checking the token; it reads nothing more until it has decided.
    (_V, _Event.ACCEPT): _Transition(_W),
    (_V, _Event.REJECT): _Transition(_CG, CloseCode.UNAUTHENTICATED),
    (_V, _Event.PING): _Transition(_V),
    (_V, _Event.SEND_ERROR): _Transition(_V),
    (_V, _Event.TIMEOUT): _Transition(_CD, CloseCode.TIMEOUT),
    (_V, _Event.SHUTDOWN): _Transition(_CD, CloseCode.GOING_AWAY),
    # Accepted: the welcome goes out before anything else.
    (_W, _Event.SEND_WELCOME): _Transition(_O),
    (_W, _Event.PING): _Transition(_W),
    (_W, _Event.TIMEOUT): _Transition(_CD, CloseCode.TIMEOUT),
    (_W, _Event.REPLACED): _Transition(_CD, CloseCode.REPLACED),
    (_W, _Event.SHUTDOWN): _Transition(_CD, CloseCode.GOING_AWAY),
    # Open: bad frames are answered and the connection stays open.
    (_O, _Event.FRAME): _Transition(_O),
    (_O, _Event.HELLO): _Transition(_O, complaint=_HELLO_AGAIN),
    (_O, _Event.MALFORMED_HELLO): _Transition(_O, complaint=_HELLO_AGAIN),
    (_O, _Event.BAD_TOKEN_HELLO): _Transition(_O, complaint=_HELLO_AGAIN),
    (_O, _Event.MALFORMED_FRAME): _Transition(_O),
    (_O, _Event.UNDECODABLE): _Transition(_O),
    (_O, _Event.PING): _Transition(_O),
    (_O, _Event.SEND_FRAME): _Transition(_O),
    (_O, _Event.SEND_ERROR): _Transition(_O),
    (_O, _Event.TIMEOUT): _Transition(_CD, CloseCode.TIMEOUT),
    (_O, _Event.REPLACED): _Transition(_CD, CloseCode.REPLACED),
    (_O, _Event.SHUTDOWN): _Transition(_CD, CloseCode.GOING_AWAY),
    # Closing: the one error explaining why, then nothing.
    (_CG, _Event.SEND_ERROR): _Transition(_CD),
    (_CG, _Event.REPLACED): _Transition(_CG),
    (_CG, _Event.SHUTDOWN): _Transition(_CG),
    (_CD, _Event.REPLACED): _Transition(_CD),
    (_CD, _Event.SHUTDOWN): _Transition(_CD),
}

#: The phases in which the deadline is the hello deadline, not the keep-alive one.
_HELLO_PHASES: Final = frozenset({_A, _V})
_CLOSED_PHASES: Final = frozenset({_CG, _CD})


def _classify_error(exc: RemoteProtocolError) -> _Event:
    if exc.frame_type == Hello.TYPE:
        if exc.code is ErrorCode.UNAUTHENTICATED:
            return _Event.BAD_TOKEN_HELLO
        return _Event.MALFORMED_HELLO
    if exc.frame_type is None:
        return _Event.UNDECODABLE
    return _Event.MALFORMED_FRAME


def _complaint(
    transition: _Transition, complaint: str, frame_type: str | None, rid: str | None
) -> RemoteProtocolError:
    return RemoteProtocolError(
        ErrorCode.BAD_FRAME,
        complaint.format(type=frame_type),
        rid=rid,
        frame_type=frame_type,
        close_code=transition.close,
    )


def _classify_send(frame: ServerFrame) -> _Event:
    if isinstance(frame, Welcome):
        return _Event.SEND_WELCOME
    if isinstance(frame, Error):
        return _Event.SEND_ERROR
    return _Event.SEND_FRAME


class ServerSession:
    """One connection's protocol state on the server side.

    Owned by the node's connection actor, which alone calls it; it is not thread-safe and
    needs no lock. It decides nothing about users, tokens or conversations: the node
    verifies the hello's token and then calls :meth:`accept` or :meth:`reject`.
    """

    def __init__(self, *, now: float, hello_timeout: float = HELLO_TIMEOUT_S) -> None:
        if not hello_timeout > 0:
            raise ValueError(f"hello_timeout must be positive, not {hello_timeout!r}")
        self._phase = _Phase.AWAITING_HELLO
        self._hello_deadline = now + hello_timeout
        self._last_activity = now
        self._hello: Hello | None = None
        self._close_code: CloseCode | None = None
        #: Set by :meth:`accept`.
        self.user: str | None = None
        self.device: str | None = None
        self.heartbeat_s: int | None = None

    def __repr__(self) -> str:
        return (
            f"<ServerSession {self._phase.name} user={self.user!r} device={self.device!r} "
            f"close_code={self._close_code!r}>"
        )

    @property
    def state(self) -> ServerState:
        """The state the node sees (the finer phase stays inside)."""
        return _PUBLIC[self._phase]

    @property
    def close_code(self) -> CloseCode | None:
        """The code this session closed with, or None while it is not closed."""
        return self._close_code

    def _lookup(self, event: _Event) -> _Transition:
        transition = _TRANSITIONS.get((self._phase, event))
        if transition is None:
            raise LocalProtocolError(
                ErrorCode.INTERNAL,
                f"can't handle event {event.name} caused by {event.role} "
                f"in state {self._phase.name}",
            )
        return transition

    def _enter(self, transition: _Transition) -> _Transition:
        self._phase = transition.to
        if transition.close is not None and self._close_code is None:
            self._close_code = transition.close
        return transition

    def _apply(self, event: _Event) -> _Transition:
        return self._enter(self._lookup(event))

    # ---------------------------------------------------------------- what the client did

    def receive(self, data: str | bytes, now: float) -> ClientFrame:
        """Decode one WebSocket message from the client and check it is legal now.

        Returns the frame, or raises :class:`RemoteProtocolError` (:class:`SendError` for a
        bad ``send`` with a usable ``cmid``): answer with :meth:`reply_for`, then close with
        the error's ``close_code`` when it is not None. Receiving while the node still has
        to accept or reject the hello, or after the session closed, raises
        :class:`LocalProtocolError`.
        """
        try:
            frame = decode_client_frame(data)
        except RemoteProtocolError as exc:
            transition = self._apply(_classify_error(exc))
            self._last_activity = now
            if transition.complaint is None:
                exc.close_code = transition.close
                raise
            raise _complaint(transition, transition.complaint, exc.frame_type, exc.rid) from None
        transition = self._apply(_Event.HELLO if isinstance(frame, Hello) else _Event.FRAME)
        self._last_activity = now
        if transition.complaint is not None:
            raise _complaint(transition, transition.complaint, frame.TYPE, frame.rid)
        if isinstance(frame, Hello):
            self._hello = frame
        return frame

    def note_ping(self, now: float) -> None:
        """A WebSocket ping arrived: it counts as keep-alive (a pong does not)."""
        self._apply(_Event.PING)
        self._last_activity = now

    # ---------------------------------------------------------------- what the node decided

    def accept(
        self,
        *,
        user: str,
        device: str,
        session: str,
        heartbeat_s: int,
        now: float,
        node: str = "",
    ) -> Welcome:
        """The hello's token is good: returns the ``welcome`` to send next (it echoes the
        hello's ``rid``). From ``now`` on the keep-alive deadline applies."""
        transition = self._lookup(_Event.ACCEPT)
        hello = self._hello
        assert hello is not None  # the only way into VERIFYING is receiving one
        if device != hello.device:
            raise LocalProtocolError(
                ErrorCode.INTERNAL,
                f"accepting device {device!r} but the hello named {hello.device!r}",
            )
        welcome = Welcome(
            user=user,
            device=device,
            session=session,
            heartbeat_s=heartbeat_s,
            node=node,
            rid=hello.rid,
        )
        self._enter(transition)
        self.user, self.device, self.heartbeat_s = user, device, heartbeat_s
        self._last_activity = now
        return welcome

    def reject(self, message: str) -> tuple[Error, CloseCode]:
        """The hello's token is bad: the ``error unauthenticated`` to send, then close 4401."""
        rid = self._hello.rid if self._hello is not None else None
        error = Error(code=ErrorCode.UNAUTHENTICATED, message=message, rid=rid)
        self._apply(_Event.REJECT)
        return error, CloseCode.UNAUTHENTICATED

    def replaced(self) -> CloseCode:
        """Another connection took this (user, device): close with 4409."""
        return self._close(_Event.REPLACED)

    def shutdown(self) -> CloseCode:
        """The node is going away: close with 1001."""
        return self._close(_Event.SHUTDOWN)

    def _close(self, event: _Event) -> CloseCode:
        self._apply(event)
        assert self._close_code is not None
        return self._close_code

    # ---------------------------------------------------------------- time

    def deadline(self) -> float:
        """The absolute time by which the client must be heard from.

        Before the welcome it is the hello deadline (connection time + ``hello_timeout``; the
        whole handshake must fit in it). When open, it is the last frame or ping + 2 *
        ``heartbeat_s``. A closed session waits for nothing: ``math.inf``.
        """
        if self._phase in _HELLO_PHASES:
            return self._hello_deadline
        if self._phase in _CLOSED_PHASES:
            return math.inf
        assert self.heartbeat_s is not None
        return self._last_activity + 2 * self.heartbeat_s

    def expired(self, now: float) -> CloseCode | None:
        """``CloseCode.TIMEOUT`` (and the session closes) when ``now`` is past the deadline."""
        if now <= self.deadline():
            return None
        return self._close(_Event.TIMEOUT)

    # ---------------------------------------------------------------- what the server sends

    def reply_for(self, exc: RemoteProtocolError) -> Error | Nack:
        """The frame that answers a rejected frame: a ``nack`` for a bad ``send`` with a
        usable ``cmid`` (never to be retried as it is), an ``error`` for anything else."""
        if isinstance(exc, SendError):
            return Nack(cmid=exc.cmid, code=exc.code, message=exc.message, retry=False, rid=exc.rid)
        return Error(code=exc.code, message=exc.message, rid=exc.rid)

    def send(self, frame: ServerFrame) -> str:
        """Encode ``frame`` for the wire after checking it is legal now: only ``error``
        before the welcome, the ``welcome`` first after :meth:`accept`, one farewell
        ``error`` after a close that has one, nothing else once closed."""
        self._apply(_classify_send(frame))
        return encode(frame)
