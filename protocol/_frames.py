"""Every frame of the wire contract as a frozen, keyword-only, self-validating value.

A frame class knows its wire ``type`` (``TYPE``) and its fields. Field names follow the wire
names except ``from``, a Python keyword, which is ``sender`` here. Constructing a frame
with a value the contract forbids raises :class:`LocalProtocolError` -- a bug on our side;
the codec turns the same problems in *incoming* frames into :class:`RemoteProtocolError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import attrs

from ._errors import ErrorCode, LocalProtocolError
from ._limits import (
    DEFAULT_HISTORY_LIMIT,
    MAX_BODY_BYTES,
    MAX_GROUP_MEMBERS,
    MAX_HEARTBEAT_S,
    MAX_HISTORY_LIMIT,
    MAX_PRESENCE_USERS,
    MAX_SEQ,
    MAX_TITLE_LEN,
    MIN_HEARTBEAT_S,
    MIN_HISTORY_LIMIT,
    body_size,
    is_valid_conv_id,
    is_valid_id,
)

MessageKind = Literal["text", "member"]
ConvKind = Literal["direct", "group"]
PresenceStatus = Literal["online", "offline"]


#: Field metadata: leave the field out of the encoded frame when it is None.
OMIT_NONE = {"omit_none": True}
#: Field metadata key: the wire error code for any problem with this field (default
#: ``bad_frame``), so that, say, a missing ``hello.token`` is ``unauthenticated``.
CODE = "code"


def _fail(
    attribute: attrs.Attribute[Any], reason: str, code: ErrorCode | None = None
) -> LocalProtocolError:
    name = attribute.metadata.get("wire", attribute.name)
    if code is None:
        code = attribute.metadata.get(CODE, ErrorCode.BAD_FRAME)
    return LocalProtocolError(code, f"field '{name}' {reason}")


def _id(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not is_valid_id(value):
        raise _fail(attribute, "must be 1-64 characters of [A-Za-z0-9_.-]")


def _opt_id(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _id(inst, attribute, value)


def _conv(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not is_valid_conv_id(value):
        raise _fail(attribute, "must be a conversation id")


def _seq(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise _fail(attribute, "must be a non-negative integer")


def _msg_seq(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not int or not 1 <= value <= MAX_SEQ:
        raise _fail(attribute, "must be a positive integer (seqs start at 1)")


def _opt_seq(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _seq(inst, attribute, value)


def _str(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise _fail(attribute, "must be a string")


def _ids(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not all(is_valid_id(v) for v in value):
        raise _fail(attribute, "must be a list of user ids")


def _nonempty_str(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise _fail(attribute, "must be a non-empty string")


def _ms(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise _fail(attribute, "must be a non-negative integer of milliseconds since the epoch")


def _opt_ms(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _ms(inst, attribute, value)


def _bool(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not bool:
        raise _fail(attribute, "must be true or false")


def _one_of(*choices: str) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check_choice(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            raise _fail(attribute, "must be one of " + ", ".join(repr(c) for c in choices))

    return check_choice


def _error_code(value: object) -> ErrorCode:
    if isinstance(value, str) and value in ErrorCode.__members__.values():
        return ErrorCode(value)
    raise LocalProtocolError(ErrorCode.BAD_FRAME, f"{value!r} is not an error code")


def _rid() -> Any:
    return attrs.field(default=None, validator=_opt_id, metadata=OMIT_NONE)


# --------------------------------------------------------------------------- client → server


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


@attrs.frozen(kw_only=True)
class Convs:
    """List the caller's conversations."""

    TYPE: ClassVar[str] = "convs"
    rid: str | None = _rid()


def _title(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TITLE_LEN:
        raise _fail(attribute, f"must be a string of 1 to {MAX_TITLE_LEN} characters")


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

# --------------------------------------------------------------------------- server → client


def _heartbeat(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not int or not MIN_HEARTBEAT_S <= value <= MAX_HEARTBEAT_S:
        raise _fail(attribute, f"must be an integer from {MIN_HEARTBEAT_S} to {MAX_HEARTBEAT_S}")


@attrs.frozen(kw_only=True)
class Welcome:
    """The session is open: who the server took the client to be."""

    TYPE: ClassVar[str] = "welcome"
    user: str = attrs.field(validator=_id)
    device: str = attrs.field(validator=_id)
    session: str = attrs.field(validator=_nonempty_str)
    heartbeat_s: int = attrs.field(validator=_heartbeat)
    #: The chat node serving this connection (v1.1); empty from a server that did not say.
    node: str = attrs.field(default="", validator=_str)
    rid: str | None = _rid()


@attrs.frozen(kw_only=True)
class Msg:
    """A stored message (``kind`` text) or membership event (``kind`` member).

    A text message always carries the ``cmid`` it was sent with; a member event never does.
    """

    TYPE: ClassVar[str] = "msg"
    conv: str = attrs.field(validator=_conv)
    seq: int = attrs.field(validator=_msg_seq)
    id: str = attrs.field(validator=_nonempty_str)
    sender: str = attrs.field(validator=_id, metadata={"wire": "from"})
    cmid: str | None = attrs.field(validator=_opt_id)
    body: str = attrs.field(validator=_str)
    ts: int = attrs.field(validator=_ms)
    kind: MessageKind = attrs.field(default="text", validator=_one_of("text", "member"))

    @kind.validator
    def _check_cmid(self, _attribute: attrs.Attribute[Any], value: str) -> None:
        if (value == "text") != (self.cmid is not None):
            raise LocalProtocolError(
                ErrorCode.BAD_FRAME,
                "a text msg carries a 'cmid' and a member msg carries 'cmid': null",
            )


@attrs.frozen(kw_only=True)
class Synced:
    """Every message pending at ``hello`` has been pushed."""

    TYPE: ClassVar[str] = "synced"


@attrs.frozen(kw_only=True)
class Ack:
    """The send ``cmid`` is durably stored as ``(conv, seq)``."""

    TYPE: ClassVar[str] = "ack"
    cmid: str = attrs.field(validator=_id)
    conv: str = attrs.field(validator=_conv)
    seq: int = attrs.field(validator=_msg_seq)
    id: str = attrs.field(validator=_nonempty_str)
    ts: int = attrs.field(validator=_ms)
    rid: str | None = _rid()


@attrs.frozen(kw_only=True)
class Nack:
    """The send ``cmid`` was not stored; ``retry`` says whether the same frame may succeed."""

    TYPE: ClassVar[str] = "nack"
    cmid: str = attrs.field(validator=_id)
    code: ErrorCode = attrs.field(converter=_error_code)
    message: str = attrs.field(validator=_str)
    retry: bool = attrs.field(default=False, validator=_bool)
    rid: str | None = _rid()


@attrs.frozen(kw_only=True)
class Receipt:
    """``user``'s watermarks in ``conv`` rose: ``delivered`` and/or ``read``.

    A watermark that did not change is left out, so at least one of the two is present.
    """

    TYPE: ClassVar[str] = "receipt"
    conv: str = attrs.field(validator=_conv)
    user: str = attrs.field(validator=_id)
    delivered: int | None = attrs.field(default=None, validator=_opt_seq, metadata=OMIT_NONE)
    read: int | None = attrs.field(default=None, validator=_opt_seq, metadata=OMIT_NONE)

    @read.validator
    def _check_some(self, _attribute: attrs.Attribute[Any], value: int | None) -> None:
        if value is None and self.delivered is None:
            raise LocalProtocolError(
                ErrorCode.BAD_FRAME, "a receipt carries 'delivered', 'read' or both"
            )


@attrs.frozen(kw_only=True)
class Presence:
    """``user`` is online or offline; ``last_seen`` is ms of the latest disconnect."""

    TYPE: ClassVar[str] = "presence"
    user: str = attrs.field(validator=_id)
    status: PresenceStatus = attrs.field(validator=_one_of("online", "offline"))
    last_seen: int | None = attrs.field(default=None, validator=_opt_ms)


@attrs.frozen(kw_only=True)
class TypingNotice:
    """``user`` is typing in ``conv`` (wire type ``typing``)."""

    TYPE: ClassVar[str] = "typing"
    conv: str = attrs.field(validator=_conv)
    user: str = attrs.field(validator=_id)


def _marks(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, MemberMarks) for v in value):
        raise _fail(attribute, "must be a list of {user, delivered, read} objects")


@attrs.frozen(kw_only=True)
class MemberMarks:
    """Another member's watermarks, as listed in a ``convs`` row."""

    user: str = attrs.field(validator=_id)
    delivered: int = attrs.field(validator=_seq)
    read: int = attrs.field(validator=_seq)


@attrs.frozen(kw_only=True)
class ConvRow:
    """One row of the ``convs`` result; ``title`` is None exactly for direct conversations."""

    conv: str = attrs.field(validator=_conv)
    kind: ConvKind = attrs.field(validator=_one_of("direct", "group"))
    title: str | None = attrs.field()
    members: tuple[str, ...] = attrs.field(validator=_ids)
    last_seq: int = attrs.field(validator=_seq)
    delivered: int = attrs.field(validator=_seq)
    read: int = attrs.field(validator=_seq)
    unread: int = attrs.field(validator=_seq)
    others: tuple[MemberMarks, ...] = attrs.field(default=(), validator=_marks)

    @title.validator
    def _check_title(self, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if self.kind == "direct":
            if value is not None:
                raise _fail(attribute, "must be null for a direct conversation")
        else:
            _title(self, attribute, value)


def _sorted_fields(fields: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(fields, key=lambda item: str(item[0])))


def _reply_fields(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    assert isinstance(value, tuple)
    names = [name for name, _ in value]
    if len(set(names)) != len(names) or {"type", "rid"} & set(names):
        raise _fail(attribute, "must name each reply field once, and never 'type' or 'rid'")


@attrs.frozen(kw_only=True)
class Result:
    """The reply to a request frame (``history``, ``convs``, ``group_*``).

    Its reply fields depend on the request, so they are a tuple of ``(name, value)`` pairs,
    values being JSON-ready or frames, kept sorted by name so that equal results compare equal.
    Use the constructors below rather than building one. ``rid`` is always on the wire (null
    when the request had none).
    """

    TYPE: ClassVar[str] = "result"
    rid: str | None = attrs.field(default=None, validator=_opt_id)
    fields: tuple[tuple[str, Any], ...] = attrs.field(
        default=(), converter=_sorted_fields, validator=_reply_fields
    )

    def get(self, name: str, default: Any = None) -> Any:
        for key, value in self.fields:
            if key == name:
                return value
        return default


def history_result(rid: str | None, messages: tuple[Msg, ...], more: bool) -> Result:
    return Result(rid=rid, fields=(("messages", messages), ("more", more)))


def convs_result(rid: str | None, rows: tuple[ConvRow, ...]) -> Result:
    return Result(rid=rid, fields=(("convs", rows),))


def group_created_result(rid: str | None, conv: str) -> Result:
    return Result(rid=rid, fields=(("conv", conv),))


def empty_result(rid: str | None) -> Result:
    return Result(rid=rid)


@attrs.frozen(kw_only=True)
class Error:
    """A request failed, or a frame broke the contract."""

    TYPE: ClassVar[str] = "error"
    code: ErrorCode = attrs.field(converter=_error_code)
    message: str = attrs.field(validator=_str)
    rid: str | None = _rid()


@attrs.frozen(kw_only=True)
class Pong:
    """The reply to ``ping``."""

    TYPE: ClassVar[str] = "pong"
    rid: str | None = _rid()


ServerFrame = (
    Welcome | Msg | Synced | Ack | Nack | Receipt | Presence | TypingNotice | Result | Error | Pong
)

SERVER_FRAMES: tuple[type[ServerFrame], ...] = (
    Welcome,
    Msg,
    Synced,
    Ack,
    Nack,
    Receipt,
    Presence,
    TypingNotice,
    Result,
    Error,
    Pong,
)

Frame = ClientFrame | ServerFrame
