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

    def ever_member(self, user: str) -> bool:
        """True if ``user`` belonged to the conversation at some point."""
        return user in self.periods

    @property
    def last_seq(self) -> int:
        return len(self.messages)


def _periods(
    conv: Conversation, messages: tuple[StoredMessage, ...]
) -> dict[str, list[tuple[int, int | None]]]:
    if conv.kind == "direct":
        return {user: [(1, None)] for user in conv.members}
    periods: dict[str, list[tuple[int, int | None]]] = {}
    open_from: dict[str, int] = {}
    for message in messages:
        if message.kind != "member":
            continue
        event = MemberEvent.parse(message.body)
        op, by, users = event.op, event.by, list(event.users)
        if op == "leave" and not users:
            users = [by]
        for user in users:
            if op in ("create", "add"):
                open_from.setdefault(user, message.seq)
            elif user in open_from:
                periods.setdefault(user, []).append((open_from.pop(user), message.seq))
    for user, lo in open_from.items():
        periods.setdefault(user, []).append((lo, None))
    return periods


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


def snapshot(store: MemoryStore) -> Truth:
    """Read ``store``'s state without going through its (fault-injecting) async API."""
    convs: dict[str, ConvTruth] = {}
    by_key: dict[tuple[str, str, str], list[StoredMessage]] = {}
    for conv_id in sorted(store._convs):
        messages = tuple(store._messages.get(conv_id, ()))
        conv = store._convs[conv_id]
        periods = {u: tuple(p) for u, p in sorted(_periods(conv, messages).items())}
        convs[conv_id] = ConvTruth(conv=conv, messages=messages, periods=periods)
        for message in messages:
            if message.cmid is not None:
                key = (message.sender, message.device, message.cmid)
                by_key.setdefault(key, []).append(message)
    return Truth(
        convs=convs,
        by_key={k: tuple(v) for k, v in by_key.items()},
        recv=dict(store._recv),
        read=dict(store._read),
        jobs=tuple(job.freeze() for job in store._jobs.values()),
    )
