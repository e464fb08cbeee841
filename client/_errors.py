"""Exceptions the SDK raises to its callers."""

from __future__ import annotations

from protocol import Error, Nack


class ClientError(Exception):
    """Base of every error the SDK raises."""


class SendRefused(ClientError):
    """The node refused a send for good (``nack`` with ``retry: false``)."""

    def __init__(self, nack: Nack) -> None:
        super().__init__(f"send {nack.cmid} refused: {nack.code.value}: {nack.message}")
        self.nack = nack
        self.code = nack.code


class RequestError(ClientError):
    """The node answered a request with ``error``."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code.value}: {error.message}")
        self.error = error
        self.code = error.code


class RequestInterrupted(ClientError):
    """The connection dropped while a request that is unsafe to repeat was on the wire;
    whether the node carried it out is unknown."""


class RequestTimeout(ClientError):
    """No usable reply to a request came within the client's ``request_timeout_s`` (the
    node is slow or unreachable). For a request that is unsafe to repeat, whether the node
    carried it out is unknown."""


class ClientClosed(ClientError):
    """The client stopped for good: closed by its owner, or the node refused the session
    (bad token 4401, replaced by another connection of the same device 4409, ...)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
