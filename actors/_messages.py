"""Typed messages between actors: small frozen values matched with ``match``/``case``.

Every request carries the :class:`~actors._router.ConnectionHandle` it came from (``origin``)
so the receiving actor can reply by pushing a frame, and the ``rid`` to echo.
"""

from __future__ import annotations

from typing import Literal

import attrs

from persistence import FeedMarks, StoredMessage
from protocol import MemberOp

from ._router import ConnectionHandle

MarkKind = Literal["recv", "read"]


# --------------------------------------------------------------------- to a conversation actor


@attrs.frozen(kw_only=True)
class SendRequest:
    """Store ``body`` from ``origin``'s device under ``cmid`` (the Store dedupes on it)."""

    origin: ConnectionHandle
    cmid: str
    body: str
    rid: str | None


@attrs.frozen(kw_only=True)
class MarkRequest:
    """A ``recv`` or ``read`` watermark from ``origin``."""

    origin: ConnectionHandle
    kind: MarkKind
    seq: int
    rid: str | None


@attrs.frozen(kw_only=True)
class TypingRequest:
    """``origin``'s user is typing: relay to the other members."""

    origin: ConnectionHandle
    rid: str | None


@attrs.frozen(kw_only=True)
class MemberRequest:
    """``group_add`` / ``group_remove`` / ``group_leave`` (``user`` is the caller for leave)."""

    origin: ConnectionHandle
    op: MemberOp
    user: str
    rid: str | None


@attrs.frozen(kw_only=True)
class Announce:
    """A message stored outside the actor (a group's creation event): fan it out."""

    message: StoredMessage


@attrs.frozen(kw_only=True)
class RemoteMessages:
    """Messages another node (or this one) stored, from the change feed, in seq order."""

    messages: tuple[StoredMessage, ...]


@attrs.frozen(kw_only=True)
class RemoteMarks:
    """A receipt earned on another node: merge it and pass it on to the local devices."""

    event: FeedMarks


@attrs.frozen(kw_only=True)
class RemoteTyping:
    """``user`` is typing, through another node."""

    user: str


@attrs.frozen(kw_only=True)
class Resync:
    """The change feed lost history: reload from the Store and push what was missed."""


ConversationRequest = (
    SendRequest
    | MarkRequest
    | TypingRequest
    | MemberRequest
    | Announce
    | RemoteMessages
    | RemoteMarks
    | RemoteTyping
    | Resync
)


# ----------------------------------------------------------------- to the presence registry


@attrs.frozen(kw_only=True)
class DeviceConnected:
    user: str
    conn_id: int


@attrs.frozen(kw_only=True)
class DeviceDisconnected:
    user: str
    conn_id: int
    ts: int


@attrs.frozen(kw_only=True)
class Subscribe:
    """Subscribe ``origin`` to ``allowed``; ``denied`` get one ``error forbidden`` after."""

    origin: ConnectionHandle
    allowed: tuple[str, ...]
    denied: tuple[str, ...]
    rid: str | None


@attrs.frozen(kw_only=True)
class Unsubscribe:
    origin: ConnectionHandle
    users: tuple[str, ...]


@attrs.frozen(kw_only=True)
class SubscriberGone:
    """``origin`` closed: drop all its subscriptions."""

    origin: ConnectionHandle


@attrs.frozen(kw_only=True)
class RemoteChanged:
    """``user``'s sessions on other nodes changed: had some ``before``, has some ``after``.

    ``ts``: when (the disconnect time, for an end: ``last_seen``).
    """

    user: str
    before: bool
    after: bool
    ts: int


@attrs.frozen(kw_only=True)
class Parted:
    """``users`` left a conversation (removal or leave): their subscriptions may end (G6)."""

    users: tuple[str, ...]


PresenceRequest = (
    DeviceConnected
    | DeviceDisconnected
    | Subscribe
    | Unsubscribe
    | SubscriberGone
    | RemoteChanged
    | Parted
)
