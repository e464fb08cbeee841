"""Typed messages between actors: small frozen values matched with ``match``/``case``.

Every request carries the :class:`~actors._router.ConnectionHandle` it came from (``origin``)
so the receiving actor can reply by pushing a frame, and the ``rid`` to echo.
"""

from __future__ import annotations

from typing import Literal

import attrs

from persistence import StoredMessage

from ._router import ConnectionHandle

MarkKind = Literal["recv", "read"]
MemberOp = Literal["add", "remove", "leave"]


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


ConversationRequest = SendRequest | MarkRequest | TypingRequest | MemberRequest | Announce


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


PresenceRequest = DeviceConnected | DeviceDisconnected | Subscribe | Unsubscribe | SubscriberGone
