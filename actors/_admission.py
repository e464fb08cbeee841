"""Admission: which connections a node takes at all (PROTOCOL.md session rule 9).

A :class:`Gate` counts the node's open connections (from the TCP accept on, the WebSocket
handshake included) and those that have not said ``hello`` yet. Each accepted stream gets a
:class:`Ticket` for its whole life; a ticket issued beyond either limit carries the reason
it is refused, and the node closes that connection with 4429 once its WebSocket is up (a
WebSocket close code needs a WebSocket). The per-user device limit is the connection
actor's to check, at ``hello``, against the router.

Owned by the :class:`~actors.Node`; changed only synchronously, like the router.
"""

from __future__ import annotations

import attrs


@attrs.define(eq=False)
class Gate:
    """Counts and limits; see the module docstring."""

    max_connections: int
    max_pending: int
    #: Open connections (every live ticket).
    open: int = 0
    #: Open connections that have not been welcomed yet.
    pending: int = 0

    def enter(self) -> Ticket:
        """A ticket for a newly accepted connection; ``refusal`` is set when it is one too many."""
        refusal = None
        if self.open >= self.max_connections:
            refusal = f"node is full ({self.max_connections} connections); try another node"
        elif self.pending >= self.max_pending:
            refusal = f"too many connections waiting for hello ({self.max_pending}); try later"
        self.open += 1
        self.pending += 1
        return Ticket(self, refusal)


@attrs.define(eq=False)
class Ticket:
    """One connection's place in its :class:`Gate`'s counts, from accept to close.

    Use as a context manager (leaving it gives the place back) and call :meth:`welcomed` once
    the connection's ``hello`` is accepted.
    """

    _gate: Gate
    refusal: str | None
    _waiting: bool = True
    _left: bool = False

    def welcomed(self) -> None:
        """The hello was accepted: no longer counted as waiting for one."""
        if self._waiting:
            self._waiting = False
            self._gate.pending -= 1

    def leave(self) -> None:
        """The connection is gone (idempotent)."""
        if self._left:
            return
        self._left = True
        self.welcomed()
        self._gate.open -= 1

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.leave()
