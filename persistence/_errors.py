"""Typed errors of the Store contract, each carrying the wire error code it maps to.

The node turns a :class:`StoreError` into a ``nack``/``error`` frame without inspecting the
message: ``code`` is the wire code, ``message`` is a precise human sentence, ``retryable``
says whether the same request may succeed later (``nack.retry``).
"""

from __future__ import annotations

from typing import ClassVar

from protocol import ErrorCode


class StoreError(Exception):
    """Base class of every error the Store reports to its caller."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __eq__(self, other: object) -> bool:
        # Value semantics, so append() results compare equal across Store implementations.
        return type(other) is type(self) and other.message == self.message

    def __hash__(self) -> int:
        return hash((type(self), self.message))


class NotFound(StoreError):
    """The conversation (or the member to remove, or the job) does not exist."""

    code = ErrorCode.NOT_FOUND


class UnknownConversation(NotFound):
    """No conversation has this id.

    The node answers it as ``forbidden``: authorization comes before existence, and nobody is
    a member of a conversation that does not exist (so ids cannot be probed).
    """

    def __init__(self, conv: str) -> None:
        super().__init__(f"conversation {conv!r} does not exist")
        self.conv = conv


class Forbidden(StoreError):
    """The user is not allowed to do this (not a member, not the creator, group full, ...)."""

    code = ErrorCode.FORBIDDEN


class Conflict(StoreError):
    """A ``cmid`` was reused with a different body or conversation."""

    code = ErrorCode.CONFLICT


class TooLarge(StoreError):
    """A message body exceeds the 16 KiB UTF-8 limit."""

    code = ErrorCode.TOO_LARGE


class BadInput(StoreError):
    """An argument breaks the contract's limits (invalid id, title length, limit, ...)."""

    code = ErrorCode.BAD_FRAME


class Unavailable(StoreError):
    """The storage is down or overloaded; the write may be retried with the same cmid."""

    code = ErrorCode.UNAVAILABLE
    retryable = True
