"""Value types that go in and out of the Store: frozen attrs classes with small queries."""

from __future__ import annotations

import types
from collections.abc import Mapping

import attrs

# The wire's vocabulary and the ``convs`` row, re-exported for the Store's signatures.
from protocol import ConvKind as ConvKind
from protocol import ConvRow as ConvRow
from protocol import MemberMarks as MemberMarks
from protocol import MemberOp as MemberOp
from protocol import MessageKind as MessageKind


def _frozen_map(value: Mapping[str, object]) -> Mapping[str, object]:
    # Sorted keys so iteration order never depends on insertion history or hash seed.
    return types.MappingProxyType({k: value[k] for k in sorted(value)})


@attrs.frozen(kw_only=True)
class BacklogRange:
    """Seqs ``lo`` to ``hi`` (inclusive, ``lo <= hi``) of ``conv``: messages a device may see
    and has not acknowledged, which the node pushes after ``welcome`` (reading them with
    :meth:`Store.range` a page at a time)."""

    conv: str
    lo: int
    hi: int


@attrs.frozen(kw_only=True)
class StoredMessage:
    """A message as stored: a text message or a membership event (``kind="member"``).

    ``seq`` is the position in the conversation (1, 2, 3, ... with no gap), ``id`` the server
    message id, ``ts`` server milliseconds since the epoch. Member events have ``cmid=None``
    and a JSON body ``{"op": ..., "by": ..., "users": [...]}``.
    """

    conv: str
    seq: int
    id: str
    sender: str
    device: str
    cmid: str | None
    body: str
    ts: int
    kind: MessageKind = "text"


@attrs.frozen(kw_only=True)
class Draft:
    """A text message a device asks to store; ``(sender, device, cmid)`` identifies it forever."""

    sender: str
    device: str
    cmid: str
    body: str
    ts: int


@attrs.frozen(kw_only=True)
class Conversation:
    """A conversation and its membership.

    ``members`` maps each current member to the seq of the event that (last) added them
    (1 for both users of a direct conversation and for group founders). ``departed`` maps each
    former member to ``(added, removed)``: the seq that last added them and the seq of the
    event that removed them (or of their leave). A re-added user moves back to ``members``.
    """

    id: str
    kind: ConvKind
    title: str | None = None
    creator: str | None = None
    members: Mapping[str, int] = attrs.field(converter=_frozen_map)
    departed: Mapping[str, tuple[int, int]] = attrs.field(factory=dict, converter=_frozen_map)

    def is_member(self, user: str) -> bool:
        """True if ``user`` is a current member."""
        return user in self.members

    def visible_range(self, user: str) -> tuple[int, int | None] | None:
        """The seqs ``user`` may see: ``(lo, hi)`` inclusive, ``hi=None`` while still a member.

        ``None`` if the user never belonged to the conversation (or only before a later
        re-add, which the ``members`` entry then supersedes).
        """
        if user in self.members:
            return (self.members[user], None)
        if user in self.departed:
            added, removed = self.departed[user]
            return (added, removed)
        return None

    def can_see(self, user: str, seq: int) -> bool:
        """True if ``user`` may see the message at ``seq``."""
        span = self.visible_range(user)
        if span is None:
            return False
        lo, hi = span
        return lo <= seq and (hi is None or seq <= hi)

    def peer(self, user: str) -> str:
        """The other user of a direct conversation."""
        if self.kind != "direct" or user not in self.members:
            raise ValueError(f"{user!r} is not a user of direct conversation {self.id!r}")
        return next(u for u in self.members if u != user)


@attrs.frozen(kw_only=True)
class ConvPage:
    """A page of the ``convs`` listing; ``cursor`` continues it (None: this is the last)."""

    rows: tuple[ConvRow, ...]
    cursor: str | None


@attrs.frozen(kw_only=True)
class RecvMark:
    """Device ``device`` of ``user`` has received everything of ``conv`` up to ``seq``."""

    user: str
    device: str
    conv: str
    seq: int


@attrs.frozen(kw_only=True)
class ReadMark:
    """``user`` has read ``conv`` up to ``seq``."""

    user: str
    conv: str
    seq: int


@attrs.frozen(kw_only=True)
class NotificationJob:
    """A push-notification job for a user who was offline when messages arrived.

    One job per user per offline period: ``count`` messages arrived during it, the latest at
    ``(conv, seq)``. A claimed job is leased to ``owner`` until ``lease_until`` (ms); after that
    another notifier may claim it again, so a crashed notifier loses nothing.
    """

    id: str
    user: str
    conv: str
    seq: int
    count: int
    first_ts: int
    last_ts: int
    owner: str | None = None
    lease_until: int | None = None
