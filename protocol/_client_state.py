"""A client session's lifecycle (rule 1 of ``_client``): its states, the transitions
between them and the server frames each state accepts."""

from __future__ import annotations

import enum
from typing import Final

from ._frames import (
    Ack,
    Error,
    Msg,
    Nack,
    Pong,
    Presence,
    Receipt,
    Result,
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
