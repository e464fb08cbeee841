"""What several nodes share besides messages: device sessions, node leases and the change feed.

A deployment runs any number of chat nodes on one database. Each node holds a *lease*
(:meth:`Store.renew_lease`) and records every connected device as a :class:`DeviceSession`
with its node; a survivor sweeps the sessions of a node whose lease expired
(:meth:`Store.sweep_expired`). Each node follows ONE :class:`ChangeFeed`
(:meth:`Store.watch`) that carries, in the order the Store applied them:

* :class:`FeedMessages` — a batch of stored messages of one conversation (text or member
  events), from every node, the watcher's own included (its conversation actors drop what
  they pushed already);
* :class:`FeedMarks` — a watermark rise that earned a receipt, published by the node that
  wrote it (:meth:`Store.publish`);
* :class:`FeedTyping` — a typing notice (published, never stored for long);
* :class:`FeedSession` — a device session started (``session`` set) or ended
  (``session is None``);
* :class:`FeedNodeDown` — a node's lease expired and its sessions were swept: every session of
  ``node`` ended at ``ts``.

Events that carry a ``node`` (marks, typing, sessions) are left out of the watcher's own feed:
it knows what it did itself. A feed whose position fell out of the Store's retained history
raises :class:`FeedLost`; the watcher then opens a new one and resyncs from the Store.
"""

from __future__ import annotations

import abc

import attrs

from protocol import ErrorCode

from ._errors import StoreError
from ._types import StoredMessage


@attrs.frozen(kw_only=True)
class DeviceSession:
    """Device ``device`` of ``user`` is connected to node ``node`` as session ``session``."""

    user: str
    device: str
    session: str
    node: str
    since: int


@attrs.frozen(kw_only=True)
class FeedMessages:
    """Messages of ``conv`` stored in one write, in seq order."""

    conv: str
    messages: tuple[StoredMessage, ...]


@attrs.frozen(kw_only=True)
class FeedMarks:
    """``user``'s watermarks in ``conv`` rose (written already), from devices ``sources``."""

    conv: str
    user: str
    delivered: int | None
    read: int | None
    sources: tuple[str, ...]
    node: str


@attrs.frozen(kw_only=True)
class FeedTyping:
    """``user`` is typing in ``conv`` (on node ``node``)."""

    conv: str
    user: str
    node: str


@attrs.frozen(kw_only=True)
class FeedSession:
    """(``user``, ``device``) is now served by ``session`` on ``node``; ended if ``None``.

    An end carries ``ts``, the time of the disconnect (``last_seen``).
    """

    user: str
    device: str
    session: str | None
    node: str
    ts: int


@attrs.frozen(kw_only=True)
class FeedNodeDown:
    """Node ``node`` was declared dead: all its sessions ended at ``ts`` (its lease expiry)."""

    node: str
    ts: int


FeedEvent = FeedMessages | FeedMarks | FeedTyping | FeedSession | FeedNodeDown
#: What :meth:`Store.publish` accepts: the ephemeral events a node announces.
Ephemeral = FeedMarks | FeedTyping


class FeedLost(StoreError):
    """The feed's position is no longer in the Store's history (MongoDB error 286)."""

    code = ErrorCode.UNAVAILABLE
    retryable = True


class ChangeFeed(abc.ABC):
    """One node's change feed: what happened in the Store since it was opened.

    Owned by one task. :meth:`next` waits for events and returns them; cancelling it loses
    nothing (the next call returns what it would have). :attr:`token` is the position after
    the last event returned: a feed reopened with it (:meth:`Store.watch`) continues there.
    """

    @property
    @abc.abstractmethod
    def token(self) -> object:
        """The resume position after the events returned so far (opaque)."""

    @abc.abstractmethod
    async def next(self) -> list[FeedEvent]:
        """The next events (at least one); raises :class:`FeedLost` or :class:`Unavailable`."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop following (idempotent)."""
