"""A client session's requests (rule 6 of ``_client``): rids from a counter, each request
matched to its ``result`` or ``error``, failed when its connection drops or its reply is
overdue, and the replies of abandoned requests recognised and dropped."""

from __future__ import annotations

import attrs

from ._client_events import RequestFailed
from ._client_output import Output
from ._frames import Error, PresenceSub, PresenceUnsub, RequestFrame


@attrs.define
class PendingRequest:
    frame: RequestFrame
    on_wire: bool = False
    #: presence_sub/unsub get no ``result`` on success; only an ``error`` resolves them.
    expects_result: bool = True
    #: a gap-fill ``history`` issued by the session itself, not by the caller.
    internal: bool = False
    #: when it fails for want of a reply; set by the first ``tick`` after it went out.
    deadline: float | None = None


class Requests:
    """The requests awaiting a reply or a connection, by rid, in the order they were made."""

    def __init__(self, out: Output, *, timeout_s: float) -> None:
        self._out = out
        self._timeout_s = timeout_s
        self._pending: dict[str, PendingRequest] = {}
        #: rids given up on while on this connection: their late replies are dropped.
        self._abandoned: set[str] = set()
        self._next_rid = 0

    def callers(self) -> dict[str, RequestFrame]:
        """The caller's requests by rid (gap fills excluded)."""
        return {rid: p.frame for rid, p in self._pending.items() if not p.internal}

    def deadlines(self) -> list[float]:
        return [p.deadline for p in self._pending.values() if p.deadline is not None]

    def __contains__(self, rid: str | None) -> bool:
        return rid in self._pending

    def add(self, frame: RequestFrame, *, internal: bool = False) -> PendingRequest:
        """``frame`` under a fresh rid (its own rid is replaced), not yet sent."""
        self._next_rid += 1
        rid = f"r{self._next_rid}"
        pending = PendingRequest(
            frame=attrs.evolve(frame, rid=rid),
            expects_result=not isinstance(frame, PresenceSub | PresenceUnsub),
            internal=internal,
        )
        self._pending[rid] = pending
        return pending

    def send(self, pending: PendingRequest) -> None:
        if not pending.on_wire:
            pending.on_wire = True
            self._out.write(pending.frame)

    def send_all(self) -> None:
        for pending in self._pending.values():
            self.send(pending)

    def drop_presence(self) -> None:
        """Forget queued presence requests (re-subscribing to the current set subsumes them)."""
        for rid, pending in list(self._pending.items()):
            if isinstance(pending.frame, PresenceSub | PresenceUnsub):
                del self._pending[rid]

    def abandon(self, rid: str) -> None:
        """Not sent if still queued; its reply, should one come, is dropped."""
        pending = self._pending.pop(rid, None)
        if pending is not None and pending.on_wire:
            self._abandoned.add(rid)

    def was_abandoned(self, rid: str | None) -> bool:
        """True (once) for the reply of a request given up on: drop it."""
        if rid in self._abandoned:
            self._abandoned.discard(rid)
            return True
        return False

    def take(self, rid: str | None) -> PendingRequest | None:
        return self._pending.pop(rid, None) if rid is not None else None

    def disconnected(self) -> None:
        """Requests on the wire fail (the caller's, with ``error`` None); queued ones wait."""
        self._abandoned.clear()
        for rid, pending in list(self._pending.items()):
            if not pending.on_wire:
                continue
            del self._pending[rid]
            if pending.expects_result and not pending.internal:
                self._out.emit(RequestFailed(rid=rid, request=pending.frame, error=None))

    def overdue(self, now: float) -> list[str]:
        """Start the reply clock of requests newly on the wire; the rids whose reply is
        overdue at ``now``, now abandoned (a late reply is dropped)."""
        expired: list[str] = []
        for rid, pending in self._pending.items():
            if not (pending.on_wire and pending.expects_result):
                continue
            if pending.deadline is None:
                pending.deadline = now + self._timeout_s
            elif pending.deadline <= now:
                self._abandoned.add(rid)
                expired.append(rid)
        return expired

    def fail(
        self, rid: str, error: Error | None, *, timed_out: bool = False
    ) -> PendingRequest | None:
        """Request ``rid`` (if pending) is over without a result: a caller's request fails
        with :class:`RequestFailed`; a gap fill is returned for the session to give up."""
        pending = self._pending.pop(rid, None)
        if pending is None or pending.internal:
            return pending
        self._out.emit(
            RequestFailed(rid=rid, request=pending.frame, error=error, timed_out=timed_out)
        )
        return None
