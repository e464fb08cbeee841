"""The events a :class:`~protocol.ClientSession` hands its driver, as frozen values."""

from __future__ import annotations

import attrs

from ._client_state import ClientState
from ._frames import (
    Ack,
    Error,
    Msg,
    Nack,
    Presence,
    Receipt,
    RequestFrame,
    Result,
    Send,
    TypingNotice,
    Welcome,
)


@attrs.frozen(kw_only=True)
class StateChanged:
    """The session entered ``state``. ``welcome`` is set on OPEN; ``close_code`` and
    ``reason`` on DISCONNECTED (``close_code`` None: the connection failed or dropped
    without a close frame)."""

    state: ClientState
    welcome: Welcome | None = None
    close_code: int | None = None
    reason: str = ""


@attrs.frozen(kw_only=True)
class NewMessage:
    """A message to display: emitted exactly once per (conv, seq) for the session's life."""

    message: Msg


@attrs.frozen(kw_only=True)
class Acked:
    """The send ``cmid`` is durably stored as ``ack.conv``/``ack.seq`` (exactly once)."""

    cmid: str
    ack: Ack
    send: Send


@attrs.frozen(kw_only=True)
class SendFailed:
    """The send ``cmid`` was refused for good (``nack.retry`` false) and left the outbox."""

    cmid: str
    nack: Nack
    send: Send


@attrs.frozen(kw_only=True)
class ReceiptUpdated:
    """Another member's (or our other device's) watermarks rose."""

    receipt: Receipt


@attrs.frozen(kw_only=True)
class PresenceChanged:
    """A subscribed user went online or offline."""

    presence: Presence


@attrs.frozen(kw_only=True)
class TypingStarted:
    """Another member is typing."""

    notice: TypingNotice


@attrs.frozen(kw_only=True)
class RequestCompleted:
    """The request ``rid`` got its ``result``."""

    rid: str
    request: RequestFrame
    result: Result


@attrs.frozen(kw_only=True)
class RequestFailed:
    """The request ``rid`` failed: the server's ``error`` (or a ``bad_frame`` error made
    here when the reply could not be decoded); with ``error`` None, the connection dropped
    while it was on the wire, or (``timed_out``) no reply came in time (rule 6)."""

    rid: str
    request: RequestFrame
    error: Error | None
    timed_out: bool = False


@attrs.frozen(kw_only=True)
class ServerError:
    """An ``error`` not tied to a pending request (``unauthenticated``, ``bad_frame``, a
    failed gap fill, ...)."""

    error: Error


@attrs.frozen(kw_only=True)
class GapDetected:
    """Seqs ``first``..``last`` of ``conv`` are missing; a ``history`` request asks for them."""

    conv: str
    first: int
    last: int


Event = (
    StateChanged
    | NewMessage
    | Acked
    | SendFailed
    | ReceiptUpdated
    | PresenceChanged
    | TypingStarted
    | RequestCompleted
    | RequestFailed
    | ServerError
    | GapDetected
)


@attrs.frozen(kw_only=True)
class ConvStatus:
    """A read-only view of what the session holds of one conversation."""

    conv: str
    watermark: int | None
    held_above: frozenset[int]
    reported: int
    read: int
    gap_request: str | None
