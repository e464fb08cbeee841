"""The frames a client sends (client → server), as frozen, self-validating values."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from ._errors import ErrorCode, LocalProtocolError
from ._fields import (
    CODE,
    OMIT_NONE,
    _conv,
    _fail,
    _id,
    _ids,
    _nonempty_str,
    _opt_id,
    _opt_seq,
    _rid,
    _seq,
    _str,
    _title,
)
from ._limits import (
    DEFAULT_CONVS_LIMIT,
    DEFAULT_HISTORY_LIMIT,
    MAX_BODY_BYTES,
    MAX_CONVS_LIMIT,
    MAX_CURSOR_LEN,
    MAX_GROUP_MEMBERS,
    MAX_HISTORY_LIMIT,
    MAX_PRESENCE_USERS,
    MIN_CONVS_LIMIT,
    MIN_HISTORY_LIMIT,
    body_size,
)


@attrs.frozen(kw_only=True)
class Hello:
    """First frame of a session: who the client is (``token``) and which device."""

    TYPE: ClassVar[str] = "hello"
    token: str = attrs.field(
        validator=_nonempty_str, metadata={CODE: ErrorCode.UNAUTHENTICATED}, repr=False
    )
    device: str = attrs.field(validator=_id)
    rid: str | None = _rid()


def _body(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _str(inst, attribute, value)
    assert isinstance(value, str)
    if body_size(value) > MAX_BODY_BYTES:
        raise _fail(attribute, f"is over {MAX_BODY_BYTES} bytes of UTF-8", ErrorCode.TOO_LARGE)


@attrs.frozen(kw_only=True)
class Send:
    """Send a text message to ``conv``, or to the 1:1 conversation with user ``to``."""

    TYPE: ClassVar[str] = "send"
    cmid: str = attrs.field(validator=_id)
    body: str = attrs.field(validator=_body)
    conv: str | None = attrs.field(default=None, metadata=OMIT_NONE)
    to: str | None = attrs.field(default=None, validator=_opt_id, metadata=OMIT_NONE)
    rid: str | None = _rid()

    @conv.validator
    def _check_target(self, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None:
            _conv(self, attribute, value)
        if (value is None) == (self.to is None):
            raise LocalProtocolError(
                ErrorCode.BAD_FRAME, "a send names exactly one of 'conv' and 'to'"
            )


@attrs.frozen(kw_only=True)
class Recv:
    """This device holds every message of ``conv`` up to ``seq`` (cumulative)."""

    TYPE: ClassVar[str] = "recv"
    conv: str = attrs.field(validator=_conv)
    seq: int = attrs.field(validator=_seq)
    rid: str | None = _rid()


@attrs.frozen(kw_only=True)
class Read:
    """The user has read ``conv`` up to ``seq`` (cumulative)."""

    TYPE: ClassVar[str] = "read"
    conv: str = attrs.field(validator=_conv)
    seq: int = attrs.field(validator=_seq)
    rid: str | None = _rid()


def _limit(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not int or not MIN_HISTORY_LIMIT <= value <= MAX_HISTORY_LIMIT:
        raise _fail(attribute, f"must be from {MIN_HISTORY_LIMIT} to {MAX_HISTORY_LIMIT}")


@attrs.frozen(kw_only=True)
class History:
    """Ask for up to ``limit`` messages of ``conv`` with seq below ``before`` (newest page)."""

    TYPE: ClassVar[str] = "history"
    conv: str = attrs.field(validator=_conv)
    before: int | None = attrs.field(default=None, validator=_opt_seq, metadata=OMIT_NONE)
    limit: int = attrs.field(default=DEFAULT_HISTORY_LIMIT, validator=_limit)
    rid: str | None = _rid()


def _convs_limit(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not int or not MIN_CONVS_LIMIT <= value <= MAX_CONVS_LIMIT:
        raise _fail(attribute, f"must be from {MIN_CONVS_LIMIT} to {MAX_CONVS_LIMIT}")


def _opt_cursor(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CURSOR_LEN:
        reason = f"must be a cursor from a previous result (1-{MAX_CURSOR_LEN} chars)"
        raise _fail(attribute, reason)


@attrs.frozen(kw_only=True)
class Convs:
    """List a page of the caller's conversations, latest activity first; ``cursor`` (from the
    previous page's result) continues after that page."""

    TYPE: ClassVar[str] = "convs"
    limit: int = attrs.field(default=DEFAULT_CONVS_LIMIT, validator=_convs_limit)
    cursor: str | None = attrs.field(default=None, validator=_opt_cursor, metadata=OMIT_NONE)
    rid: str | None = _rid()


def _members(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _ids(inst, attribute, value)
    assert isinstance(value, tuple)
    if len(value) > MAX_GROUP_MEMBERS:
        raise _fail(attribute, f"must list at most {MAX_GROUP_MEMBERS} users")


@attrs.frozen(kw_only=True)
class GroupCreate:
    """Create a group titled ``title`` with ``members`` (the creator is added)."""

    TYPE: ClassVar[str] = "group_create"
    title: str = attrs.field(validator=_title)
    members: tuple[str, ...] = attrs.field(validator=_members)
    rid: str | None = _rid()


@attrs.frozen(kw_only=True)
class GroupAdd:
    """Add ``user`` to group ``conv``."""

    TYPE: ClassVar[str] = "group_add"
    conv: str = attrs.field(validator=_conv)
    user: str = attrs.field(validator=_id)
    rid: str | None = _rid()


@attrs.frozen(kw_only=True)
class GroupRemove:
    """Remove ``user`` from group ``conv`` (creator only)."""

    TYPE: ClassVar[str] = "group_remove"
    conv: str = attrs.field(validator=_conv)
    user: str = attrs.field(validator=_id)
    rid: str | None = _rid()


@attrs.frozen(kw_only=True)
class GroupLeave:
    """Leave group ``conv``."""

    TYPE: ClassVar[str] = "group_leave"
    conv: str = attrs.field(validator=_conv)
    rid: str | None = _rid()


def _presence_users(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _ids(inst, attribute, value)
    assert isinstance(value, tuple)
    if not 1 <= len(value) <= MAX_PRESENCE_USERS:
        raise _fail(attribute, f"must list 1 to {MAX_PRESENCE_USERS} users")


@attrs.frozen(kw_only=True)
class PresenceSub:
    """Subscribe to the presence of ``users``."""

    TYPE: ClassVar[str] = "presence_sub"
    users: tuple[str, ...] = attrs.field(validator=_presence_users)
    rid: str | None = _rid()


@attrs.frozen(kw_only=True)
class PresenceUnsub:
    """Stop presence updates for ``users`` (a no-op for users not subscribed)."""

    TYPE: ClassVar[str] = "presence_unsub"
    users: tuple[str, ...] = attrs.field(validator=_presence_users)
    rid: str | None = _rid()


@attrs.frozen(kw_only=True)
class Typing:
    """The user is typing in ``conv`` (relayed, never stored)."""

    TYPE: ClassVar[str] = "typing"
    conv: str = attrs.field(validator=_conv)
    rid: str | None = _rid()


@attrs.frozen(kw_only=True)
class Ping:
    """Keep-alive; answered with ``pong``."""

    TYPE: ClassVar[str] = "ping"
    rid: str | None = _rid()


ClientFrame = (
    Hello
    | Send
    | Recv
    | Read
    | History
    | Convs
    | GroupCreate
    | GroupAdd
    | GroupRemove
    | GroupLeave
    | PresenceSub
    | PresenceUnsub
    | Typing
    | Ping
)

CLIENT_FRAMES: tuple[type[ClientFrame], ...] = (
    Hello,
    Send,
    Recv,
    Read,
    History,
    Convs,
    GroupCreate,
    GroupAdd,
    GroupRemove,
    GroupLeave,
    PresenceSub,
    PresenceUnsub,
    Typing,
    Ping,
)

#: Request frames that are matched to a reply by ``rid``.
RequestFrame = (
    History
    | Convs
    | GroupCreate
    | GroupAdd
    | GroupRemove
    | GroupLeave
    | PresenceSub
    | PresenceUnsub
)
REQUEST_FRAMES: tuple[type[RequestFrame], ...] = (
    History,
    Convs,
    GroupCreate,
    GroupAdd,
    GroupRemove,
    GroupLeave,
    PresenceSub,
    PresenceUnsub,
)
