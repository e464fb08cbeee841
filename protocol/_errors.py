"""Error codes of the wire contract and the exceptions that carry them.

Every error names who is to blame, in the manner of h11:

* :class:`RemoteProtocolError` -- the peer sent something the contract forbids. Its
  ``code`` is the wire error code to answer with (``bad_frame``, ``too_large``, ...).
* :class:`LocalProtocolError` -- our own code tried to do something the contract forbids
  (send a frame in a state where it is illegal, build an invalid frame).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The wire error codes of PROTOCOL.md v1 (``error.code`` and ``nack.code``)."""

    BAD_FRAME = "bad_frame"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    """WebSocket close codes of the contract: RFC 6455's (1xxx) and ours (4xxx)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    #: Never sent: reported locally when the connection ended without a close frame.
    ABNORMAL_CLOSURE = 1006
    MESSAGE_TOO_BIG = 1009
    #: The server's connection actor failed.
    INTERNAL_ERROR = 1011
    #: Come back later: storage unavailable during sync, or a slow consumer was dropped.
    TRY_AGAIN_LATER = 1013
    BAD_FRAME = 4400
    UNAUTHENTICATED = 4401
    TIMEOUT = 4408
    REPLACED = 4409
    #: Over a limit of the node (connections, connections without hello) or of the user
    #: (connected devices): try another node, or later.
    OVER_LIMIT = 4429


class ProtocolError(Exception):
    """A violation of the wire contract.

    ``code`` is the wire error code a server answers with; ``rid`` is the request id of the
    offending frame when it could be read, so the reply can echo it. ``frame_type`` is the
    wire ``type`` of the offending frame when it named a known one. ``close_code`` is set when
    the connection must be closed after the reply (for example a bad first frame: 4400);
    ``None`` means the connection stays open.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        rid: str | None = None,
        frame_type: str | None = None,
        close_code: CloseCode | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.rid = rid
        self.frame_type = frame_type
        self.close_code = close_code

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.code.value!r}, {self.message!r}, rid={self.rid!r}, "
            f"frame_type={self.frame_type!r}, close_code={self.close_code!r})"
        )


class RemoteProtocolError(ProtocolError):
    """The peer broke the contract; ``code`` is what to send back."""


class LocalProtocolError(ProtocolError):
    """Our side tried to break the contract (a bug in the caller, not the peer)."""
