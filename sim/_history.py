"""The history of a simulation run: what every simulated device and the world did and saw.

Events are frozen values stamped with virtual time. The world records them as they happen
(client-side wire taps, the client SDK's events, the fault injector, the node supervisor);
the checker (:mod:`sim._checker`) reads them, together with the Store's ground truth, to
decide whether G1-G9 held. Every recorded event is also written to the trace.
"""

from __future__ import annotations

from collections import Counter
from typing import TypeAlias

import attrs

from ._trace import Trace


@attrs.frozen(kw_only=True)
class SendIssued:
    """The workload asked device (``user``, ``device``) to send ``body`` with ``cmid``."""

    at: float
    user: str
    device: str
    cmid: str
    body: str
    conv: str | None
    to: str | None


@attrs.frozen(kw_only=True)
class FrameOut:
    """A client frame written on the wire by a device during ``session``."""

    at: float
    user: str
    device: str
    session: int
    type: str
    fields: tuple[tuple[str, object], ...]

    def get(self, name: str) -> object:
        return dict(self.fields).get(name)


@attrs.frozen(kw_only=True)
class AckSeen:
    """An ``ack`` reached the device."""

    at: float
    user: str
    device: str
    session: int
    cmid: str
    conv: str
    seq: int
    id: str


@attrs.frozen(kw_only=True)
class SendResolved:
    """The client SDK resolved send ``cmid`` as stored at (``conv``, ``seq``) (or failed it)."""

    at: float
    user: str
    device: str
    cmid: str
    conv: str | None
    seq: int | None
    id: str | None
    error: str | None = None


@attrs.frozen(kw_only=True)
class NackSeen:
    """A ``nack`` reached the device."""

    at: float
    user: str
    device: str
    session: int
    cmid: str
    code: str
    retry: bool


@attrs.frozen(kw_only=True)
class PushSeen:
    """A ``msg`` frame reached the device (duplicates on the wire are allowed)."""

    at: float
    user: str
    device: str
    session: int
    conv: str
    seq: int
    id: str
    sender: str
    cmid: str | None
    body: str
    kind: str
    synced: bool


@attrs.frozen(kw_only=True)
class Displayed:
    """The client SDK handed message (``conv``, ``seq``) to the application."""

    at: float
    user: str
    device: str
    conv: str
    seq: int
    id: str
    body: str


@attrs.frozen(kw_only=True)
class ReceiptSeen:
    """A ``receipt`` about ``of_user`` in ``conv`` reached the device."""

    at: float
    user: str
    device: str
    session: int
    conv: str
    of_user: str
    delivered: int | None
    read: int | None
    #: The node that sent it (each node's receipts must never go back; another node's
    #: change feed may lag behind).
    node: str = ""


@attrs.frozen(kw_only=True)
class TypingSeen:
    """A ``typing`` notice about ``of_user`` in ``conv`` reached the device."""

    at: float
    user: str
    device: str
    session: int
    conv: str
    of_user: str


@attrs.frozen(kw_only=True)
class PresenceSeen:
    """A ``presence`` frame about ``of_user`` reached the device."""

    at: float
    user: str
    device: str
    session: int
    of_user: str
    status: str
    last_seen: int | None
    #: When the node wrote the frame (``at`` is when the device read it).
    sent_at: float = 0.0
    #: The node that wrote it.
    node: str = ""


@attrs.frozen(kw_only=True)
class HistorySeen:
    """A ``history`` result for ``conv`` reached the device: the (seq, id) pairs it listed."""

    at: float
    user: str
    device: str
    session: int
    conv: str
    messages: tuple[tuple[int, str], ...]
    #: When the device asked (the node answers from the membership it knew by then).
    asked_at: float = 0.0


@attrs.frozen(kw_only=True)
class ErrorSeen:
    """An ``error`` frame reached the device."""

    at: float
    user: str
    device: str
    session: int
    code: str
    message: str
    rid: str | None = None


@attrs.frozen(kw_only=True)
class SessionOpened:
    """The device's transport to the node opened (session numbers grow per device)."""

    at: float
    user: str
    device: str
    session: int
    #: The node serving it (``welcome.node``).
    node: str = ""


@attrs.frozen(kw_only=True)
class SessionClosed:
    """The device's transport closed: ``how`` is ``clean``, ``abrupt``, ``server`` or ``node``."""

    at: float
    user: str
    device: str
    session: int
    how: str


@attrs.frozen(kw_only=True)
class NodeEvent:
    """A node started (``started``), was crashed by the world (``crashed``), died, was
    declared dead by a survivor's sweep of its expired lease (``swept``), or stopped
    (``lagging``) and resumed (``caught up``) learning from its change feed and the store."""

    at: float
    what: str
    incarnation: int
    detail: str = ""
    node: str = ""


@attrs.frozen(kw_only=True)
class FaultFired:
    """A fault of ``kind`` actually happened (not merely planned)."""

    at: float
    kind: str
    detail: str


Event: TypeAlias = (
    SendIssued
    | FrameOut
    | AckSeen
    | SendResolved
    | NackSeen
    | PushSeen
    | Displayed
    | ReceiptSeen
    | TypingSeen
    | PresenceSeen
    | HistorySeen
    | ErrorSeen
    | SessionOpened
    | SessionClosed
    | NodeEvent
    | FaultFired
)


def _short(value: object, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def _describe(event: Event) -> tuple[str, str]:
    """(actor, text) for the trace: compact, stable, one line."""
    match event:
        case NodeEvent(what=what, incarnation=inc, detail=detail, node=node):
            return node or "node", f"{what} #{inc}" + (f" {detail}" if detail else "")
        case FaultFired(kind=kind, detail=detail):
            return "fault", f"{kind} {detail}"
    actor = f"{event.user}/{event.device}"  # every other event belongs to a device
    match event:
        case SendIssued(cmid=cmid, body=body, conv=conv, to=to):
            return actor, f"send {cmid} -> {conv or 'to:' + str(to)} {body!r}"
        case FrameOut(session=s, type=t, fields=fields):
            shown = " ".join(f"{k}={_short(v)}" for k, v in fields)
            return actor, f"s{s} >> {t} {shown}".rstrip()
        case AckSeen(session=s, cmid=cmid, conv=conv, seq=seq, id=mid):
            return actor, f"s{s} << ack {cmid} {conv}#{seq} id={mid}"
        case SendResolved(cmid=cmid, conv=conv, seq=seq, error=error):
            if error is not None:
                return actor, f"send {cmid} failed: {error}"
            return actor, f"send {cmid} resolved {conv}#{seq}"
        case NackSeen(session=s, cmid=cmid, code=code, retry=retry):
            return actor, f"s{s} << nack {cmid} {code} retry={retry}"
        case PushSeen(session=s, conv=conv, seq=seq, sender=sender, cmid=cmid, kind=kind):
            return actor, f"s{s} << msg {conv}#{seq} from={sender} cmid={cmid} {kind}"
        case Displayed(conv=conv, seq=seq, id=mid):
            return actor, f"display {conv}#{seq} id={mid}"
        case ReceiptSeen(session=s, conv=conv, of_user=who, delivered=d, read=r):
            return actor, f"s{s} << receipt {conv} {who} delivered={d} read={r}"
        case TypingSeen(session=s, conv=conv, of_user=who):
            return actor, f"s{s} << typing {conv} {who}"
        case PresenceSeen(session=s, of_user=who, status=status, last_seen=seen, sent_at=sent):
            late = f" (sent {sent:.3f})" if sent < event.at else ""
            return actor, f"s{s} << presence {who} {status} last_seen={seen}{late}"
        case HistorySeen(session=s, conv=conv, messages=msgs):
            return actor, f"s{s} << history {conv} seqs={[seq for seq, _ in msgs]}"
        case ErrorSeen(session=s, code=code, message=message):
            return actor, f"s{s} << error {code} {message!r}"
        case SessionOpened(session=s, node=node):
            return actor, f"s{s} open @{node}"
        case SessionClosed(session=s, how=how):
            return actor, f"s{s} closed {how}"
    raise AssertionError(f"no trace text for {event!r}")


@attrs.define
class History:
    """Every event of a run, in the order it happened, written through to the trace."""

    trace: Trace
    events: list[Event] = attrs.Factory(list)
    faults: Counter[str] = attrs.Factory(Counter)
    #: Set when the run is over: the teardown's own disconnects are not part of the history.
    sealed: bool = False

    def record(self, event: Event) -> None:
        """Append ``event`` and write its trace line (ignored once :attr:`sealed`)."""
        if self.sealed:
            return
        self.events.append(event)
        if isinstance(event, FaultFired):
            self.faults[event.kind] += 1
        actor, text = _describe(event)
        self.trace.add(actor, text)
