"""The rules every Store applies the same way: validation, membership changes, replays, clamps.

Both implementations call these pure functions, so MemoryStore and MongoStore cannot drift
apart on what is allowed; they differ only in how state is read and written.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from protocol import (
    MAX_BODY_BYTES,
    MAX_CONVS_LIMIT,
    MAX_GROUP_MEMBERS,
    MAX_HISTORY_LIMIT,
    MAX_TITLE_LEN,
    MemberEvent,
    body_size,
    is_valid_id,
)

from ._errors import (
    BadInput,
    Conflict,
    Forbidden,
    NotFound,
    StoreError,
    TooLarge,
    UnknownConversation,
)
from ._types import Conversation, Draft, MemberOp, StoredMessage

#: Hex digits of a group id after ``"g:"``.
GROUP_ID_HEX = 24


def check_id(what: str, value: object) -> str:
    """Return ``value`` if it is a valid id, else raise :class:`BadInput` naming ``what``."""
    if not is_valid_id(value):
        raise BadInput(f"invalid {what} {value!r}: expected 1-64 characters of [A-Za-z0-9_.-]")
    assert isinstance(value, str)
    return value


def implicit_direct(conv_id: str) -> Conversation | None:
    """The direct conversation ``conv_id`` names (``d:<a>:<b>``, ``a < b``), as it is before
    its first message; None if ``conv_id`` names no direct conversation.

    A direct conversation is stored only with its first message (a refused send leaves no
    trace, G7); until then it exists implicitly, like users do: empty, with its two members.
    """
    parts = conv_id.split(":")
    if len(parts) != 3 or parts[0] != "d":
        return None
    a, b = parts[1], parts[2]
    if not (is_valid_id(a) and is_valid_id(b) and a < b):
        return None
    return Conversation(id=conv_id, kind="direct", members={a: 1, b: 1})


def direct_id(a: str, b: str) -> str:
    """The stable id of the direct conversation of ``a`` and ``b``."""
    check_id("user id", a)
    check_id("user id", b)
    if a == b:
        raise Forbidden(f"user {a!r} cannot open a direct conversation with themselves")
    lo, hi = sorted((a, b))
    return f"d:{lo}:{hi}"


def draft_error(draft: Draft) -> StoreError | None:
    """The error of a draft that can be judged alone (ids, body size), or ``None``."""
    for what, value in (("sender", draft.sender), ("device id", draft.device)):
        if not is_valid_id(value):
            return BadInput(f"invalid {what} {value!r}: expected 1-64 characters of [A-Za-z0-9_.-]")
    if not is_valid_id(draft.cmid):
        return BadInput(f"invalid cmid {draft.cmid!r}: expected 1-64 characters of [A-Za-z0-9_.-]")
    if not isinstance(draft.body, str):
        return BadInput(f"message body must be a string, not {type(draft.body).__name__}")
    size = body_size(draft.body)
    if size > MAX_BODY_BYTES:
        return TooLarge(f"message body is {size} bytes of UTF-8, the limit is {MAX_BODY_BYTES}")
    return None


def replay(original: StoredMessage, conv: str, draft: Draft) -> StoredMessage | Conflict:
    """The answer to a draft whose (sender, device, cmid) is already stored as ``original``."""
    if original.conv != conv:
        return Conflict(
            f"cmid {draft.cmid!r} of device {draft.device!r} was already used in "
            f"conversation {original.conv!r}"
        )
    if original.body != draft.body:
        return Conflict(
            f"cmid {draft.cmid!r} of device {draft.device!r} was already used with a different body"
        )
    return original


def not_member(conv: Conversation, user: str) -> Forbidden:
    return Forbidden(f"user {user!r} is not a member of conversation {conv.id!r}")


def no_such_conversation(conv: str) -> UnknownConversation:
    return UnknownConversation(conv)


def check_title(title: object) -> str:
    if not isinstance(title, str) or not 1 <= len(title) <= MAX_TITLE_LEN:
        raise BadInput(f"group title must be 1-{MAX_TITLE_LEN} characters")
    return title


def group_founders(creator: str, members: Iterable[str]) -> list[str]:
    """Creator first, then the other members in the given order without duplicates."""
    check_id("user id", creator)
    founders = [creator]
    for user in members:
        check_id("user id", user)
        if user not in founders:
            founders.append(user)
    if len(founders) > MAX_GROUP_MEMBERS:
        raise Forbidden(
            f"group is full: at most {MAX_GROUP_MEMBERS} members, {len(founders)} given"
        )
    return founders


def member_message(
    conv: str, seq: int, message_id: str, event: MemberEvent, ts: int
) -> StoredMessage:
    """A member event as stored: from its actor, from no device, without a cmid."""
    return StoredMessage(
        conv=conv,
        seq=seq,
        id=message_id,
        sender=event.by,
        device="",
        cmid=None,
        body=event.to_body(),
        ts=ts,
        kind="member",
    )


def new_group(conv_id: str, creator: str, title: str, founders: list[str]) -> Conversation:
    return Conversation(
        id=conv_id, kind="group", title=title, creator=creator, members=dict.fromkeys(founders, 1)
    )


def plan_member_change(
    conv: Conversation, op: MemberOp, actor: str, user: str
) -> tuple[MemberOp, str] | None:
    """Authorize a membership change; returns ``(op, user)`` to record, or ``None`` for a no-op.

    Raises :class:`Forbidden` / :class:`NotFound` per PROTOCOL.md, authorization first.
    """
    check_id("user id", actor)
    check_id("user id", user)
    if conv.kind != "group":
        raise Forbidden(f"conversation {conv.id!r} is a direct conversation: its members are fixed")
    if not conv.is_member(actor):
        raise not_member(conv, actor)
    if op == "add":
        if conv.is_member(user):
            return None
        if len(conv.members) >= MAX_GROUP_MEMBERS:
            raise Forbidden(
                f"group is full: conversation {conv.id!r} has {MAX_GROUP_MEMBERS} members"
            )
        return ("add", user)
    if op == "remove" and actor != user:
        if actor != conv.creator:
            raise Forbidden(f"only the creator of {conv.id!r} may remove other members")
        if not conv.is_member(user):
            raise NotFound(f"user {user!r} is not a member of conversation {conv.id!r}")
        return ("remove", user)
    return ("leave", actor)


def apply_member_change(conv: Conversation, op: MemberOp, user: str, seq: int) -> Conversation:
    """The conversation after event ``op`` on ``user`` stored at ``seq``."""
    members = dict(conv.members)
    departed = dict(conv.departed)
    if op == "add":
        members[user] = seq
        departed.pop(user, None)
    else:
        departed[user] = (members.pop(user), seq)
    return attrs.evolve(conv, members=members, departed=departed)


def clamp_mark(conv: Conversation, user: str, last_seq: int, seq: int) -> int | None:
    """A watermark clamped to what ``user`` may see and to ``last_seq``; ``None`` to ignore it."""
    span = conv.visible_range(user)
    if span is None:
        return None
    hi = last_seq if span[1] is None else min(span[1], last_seq)
    return max(0, min(seq, hi))


def check_limit(limit: int) -> None:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise BadInput(f"history limit must be 1-{MAX_HISTORY_LIMIT}, not {limit!r}")


def check_convs_limit(limit: int) -> None:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_CONVS_LIMIT:
        raise BadInput(f"convs limit must be 1-{MAX_CONVS_LIMIT}, not {limit!r}")


#: A ``convs`` position: (latest activity in ms, conversation id); rows go by it, descending.
Activity = tuple[int, str]


def convs_page(
    activity: Iterable[Activity], limit: int, cursor: str | None
) -> tuple[list[str], str | None]:
    """The conversation ids of one ``convs`` page and the cursor of the next (None: last).

    Rows go newest activity first (ties: conversation id, descending); ``cursor`` names the
    last row of the previous page, ``"<activity ms>:<conv id>"``, and the page continues
    strictly after it. A cursor that does not parse is :class:`BadInput`.
    """
    check_convs_limit(limit)
    ordered = sorted(activity, reverse=True)
    if cursor is not None:
        after = _parse_cursor(cursor)
        ordered = [key for key in ordered if key < after]
    page, rest = ordered[:limit], ordered[limit:]
    if not rest:
        return [conv for _ts, conv in page], None
    ts, conv = page[-1]
    return [conv for _ts, conv in page], f"{ts}:{conv}"


def _parse_cursor(cursor: str) -> Activity:
    ts, sep, conv = cursor.partition(":")
    if not sep or not ts.isdigit() or not conv:
        raise BadInput(f"not a convs cursor: {cursor[:80]!r}")
    return int(ts), conv


def history_bounds(conv: Conversation, user: str, before: int | None) -> tuple[int, int | None]:
    """Inclusive ``(lo, hi)`` of the seqs a history request may return (hi None = open)."""
    span = conv.visible_range(user)
    if span is None:
        raise not_member(conv, user)
    lo, hi = span
    if before is not None:
        if not isinstance(before, int) or before < 0:
            raise BadInput(f"history 'before' must be a seq (0 or more), not {before!r}")
        # Exclusive: ``before`` 0 (or 1) leaves nothing below it, an empty page.
        below = max(0, before - 1)
        hi = below if hi is None else min(hi, below)
    return lo, hi


def unread_count(
    conv: Conversation, user: str, read: int, messages: Iterable[StoredMessage]
) -> int:
    """Text messages above ``read`` not sent by ``user`` and visible to them."""
    return sum(
        1
        for m in messages
        if m.kind == "text" and m.seq > read and m.sender != user and conv.can_see(user, m.seq)
    )
