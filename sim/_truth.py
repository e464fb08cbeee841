"""Ground truth for the checker: what the Store holds, and who may see which message.

The simulator's Store is a :class:`persistence._memory.MemoryStore`; :func:`snapshot` reads
its state directly (not through the async API, so checking fires no fault hook, takes no
virtual time and cannot be interleaved with the node). Visibility is recomputed from the
member events in each conversation's own sequence, so it is right for every seq at once --
including users removed and re-added, for whom the final membership alone would be wrong.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from persistence import Conversation, NotificationJob, StoredMessage
from persistence._memory import MemoryStore
from protocol import MemberEvent


@attrs.frozen(kw_only=True)
class ConvTruth:
    """One conversation: its messages in seq order and each user's visibility periods."""

    conv: Conversation
    messages: tuple[StoredMessage, ...]
    #: user -> list of (first seq, last seq or None while still a member)
    periods: Mapping[str, tuple[tuple[int, int | None], ...]]
    #: user -> their membership changes in seq order: (seq, joined?, ts in epoch ms)
    changes: Mapping[str, tuple[tuple[int, bool, int], ...]] = attrs.field(factory=dict)

    def can_see(self, user: str, seq: int) -> bool:
        """True if ``user`` may see the message at ``seq`` (G7, PROTOCOL "Visibility")."""
        return any(lo <= seq and (hi is None or seq <= hi) for lo, hi in self.periods.get(user, ()))

    def visible_now(self, user: str, seq: int) -> bool:
        """True if ``user`` may see ``seq`` under the current membership.

        PROTOCOL: a user sees the messages from the event that *last* added them on, so a
        re-added user no longer sees an earlier period. Liveness asks for these messages;
        :meth:`can_see` (any period) is what a past push may legitimately have carried.
        """
        return self.conv.can_see(user, seq)

    def joined_by(self, user: str, at_ms: int, after_seq: int = 0) -> int | None:
        """The seq of the latest event above ``after_seq`` that (re)added ``user`` and was
        stored by ``at_ms`` (the node could know of it then), or ``None``."""
        found = None
        for seq, joined, ts in self.changes.get(user, ()):
            if joined and seq > after_seq and ts <= at_ms:
                found = seq
        return found

    def out_at(self, user: str, at_ms: int) -> int | None:
        """The seq of the event that removed ``user``, if by ``at_ms`` their latest stored
        membership change was a removal (or leave); ``None`` while a member then."""
        out = None
        for seq, joined, ts in self.changes.get(user, ()):
            if ts <= at_ms:
                out = None if joined else seq
        return out

    def departed_at(self, user: str) -> int | None:
        """The seq of the event that removed ``user``, if they are not a member now."""
        if self.conv.is_member(user):
            return None
        ends = [hi for _lo, hi in self.periods.get(user, ()) if hi is not None]
        return max(ends) if ends else None

    def ever_member(self, user: str) -> bool:
        """True if ``user`` belonged to the conversation at some point."""
        return user in self.periods

    @property
    def last_seq(self) -> int:
        return len(self.messages)


def member_change(message: StoredMessage) -> tuple[bool, list[str]] | None:
    """``(joined, users)`` of a member event (``None`` for a text message)."""
    if message.kind != "member":
        return None
    return parse_member_body(message.body)


def parse_member_body(body: str) -> tuple[bool, list[str]]:
    """``(joined, users)`` of a member event's body (PROTOCOL: ``{"op", "by", "users"}``)."""
    event = MemberEvent.parse(body)
    users = list(event.users)
    if event.op == "leave" and not users:
        users = [event.by]
    return event.op in ("create", "add"), users


def _periods(
    conv: Conversation, messages: tuple[StoredMessage, ...]
) -> tuple[dict[str, list[tuple[int, int | None]]], dict[str, list[tuple[int, bool, int]]]]:
    if conv.kind == "direct":
        return {user: [(1, None)] for user in conv.members}, {}
    periods: dict[str, list[tuple[int, int | None]]] = {}
    changes: dict[str, list[tuple[int, bool, int]]] = {}
    open_from: dict[str, int] = {}
    for message in messages:
        change = member_change(message)
        if change is None:
            continue
        joined, users = change
        for user in users:
            changes.setdefault(user, []).append((message.seq, joined, message.ts))
            if joined:
                open_from.setdefault(user, message.seq)
            elif user in open_from:
                periods.setdefault(user, []).append((open_from.pop(user), message.seq))
    for user, lo in open_from.items():
        periods.setdefault(user, []).append((lo, None))
    return periods, changes


@attrs.frozen(kw_only=True)
class Truth:
    """A snapshot of the Store's state at one moment of virtual time."""

    convs: Mapping[str, ConvTruth]
    by_key: Mapping[tuple[str, str, str], tuple[StoredMessage, ...]]
    recv: Mapping[tuple[str, str, str], int]
    read: Mapping[tuple[str, str], int]
    jobs: tuple[NotificationJob, ...]

    def message(self, conv: str, seq: int) -> StoredMessage | None:
        truth = self.convs.get(conv)
        if truth is None or not 1 <= seq <= truth.last_seq:
            return None
        return truth.messages[seq - 1]


def _conv_truth(conv: Conversation, messages: tuple[StoredMessage, ...]) -> ConvTruth:
    spans, changes = _periods(conv, messages)
    return ConvTruth(
        conv=conv,
        messages=messages,
        periods={u: tuple(p) for u, p in sorted(spans.items())},
        changes={u: tuple(c) for u, c in sorted(changes.items())},
    )


class TruthCache:
    """Snapshots of one MemoryStore, each reusing what did not change since the previous one.

    The simulator snapshots after every step; most conversations are unchanged then (same
    conversation value, same number of messages), so their :class:`ConvTruth` is kept, and
    the cmid index only grows by the new messages. A store's messages are append-only and a
    conversation is replaced, never mutated, on a membership change, which is what makes the
    reuse safe.
    """

    def __init__(self) -> None:
        self._convs: dict[str, ConvTruth] = {}
        self._by_key: dict[tuple[str, str, str], tuple[StoredMessage, ...]] = {}

    def snapshot(self, store: MemoryStore) -> Truth:
        """Read ``store``'s state without going through its async API (no fault, no time)."""
        convs: dict[str, ConvTruth] = {}
        for conv_id in sorted(store._convs):
            log = store._messages.get(conv_id, [])
            conv = store._convs[conv_id]
            cached = self._convs.get(conv_id)
            if cached is not None and cached.conv is conv and cached.last_seq == len(log):
                convs[conv_id] = cached
                continue
            known = cached.last_seq if cached is not None else 0
            truth = convs[conv_id] = _conv_truth(conv, tuple(log))
            for message in truth.messages[known:]:
                if message.cmid is not None:
                    key = (message.sender, message.device, message.cmid)
                    self._by_key[key] = (*self._by_key.get(key, ()), message)
        self._convs = convs
        return Truth(
            convs=convs,
            by_key=self._by_key,
            recv=dict(store._recv),
            read=dict(store._read),
            jobs=tuple(job.freeze() for job in store._jobs.values()),
        )


def snapshot(store: MemoryStore) -> Truth:
    """A one-off snapshot of ``store`` (see :class:`TruthCache` for repeated ones)."""
    return TruthCache().snapshot(store)
