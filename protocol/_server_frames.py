"""The frames a server sends (server → client), as frozen, self-validating values."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._fields import (
    OMIT_NONE,
    ConvKind,
    MessageKind,
    PresenceStatus,
    _bool,
    _conv,
    _error_code,
    _fail,
    _id,
    _ids,
    _ms,
    _msg_seq,
    _nonempty_str,
    _one_of,
    _opt_id,
    _opt_ms,
    _opt_seq,
    _rid,
    _seq,
    _str,
    _title,
)
from ._limits import MAX_HEARTBEAT_S, MIN_HEARTBEAT_S


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


def _plain_int(value: object) -> object:
    """An ``int`` subclass other than ``bool`` (a Store's BSON ``Int64``) as a plain int;
    anything else unchanged, for the validator to judge."""
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _count() -> Any:
    return attrs.field(converter=_plain_int, validator=_seq)


@attrs.frozen(kw_only=True)
class MemberMarks:
    """A member's watermarks in a conversation: ``delivered`` (the best of their devices'
    ``recv``) and ``read``. The Store returns them; a ``convs`` row lists the others'."""

    user: str = attrs.field(validator=_id)
    delivered: int = _count()
    read: int = _count()


@attrs.frozen(kw_only=True)
class ConvRow:
    """One row of the ``convs`` listing for one (user, device) -- the Store builds it, the
    node sends it; ``title`` is None exactly for direct conversations."""

    conv: str = attrs.field(validator=_conv)
    kind: ConvKind = attrs.field(validator=_one_of("direct", "group"))
    title: str | None = attrs.field()
    members: tuple[str, ...] = attrs.field(validator=_ids)
    last_seq: int = _count()
    delivered: int = _count()
    read: int = _count()
    unread: int = _count()
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


def convs_result(
    rid: str | None, rows: tuple[ConvRow, ...], more: bool, cursor: str | None
) -> Result:
    """A page of ``convs``: ``more`` says further rows exist, fetched by sending ``cursor``
    (None exactly when there are no more) back."""
    if more != (cursor is not None):
        raise LocalProtocolError(
            ErrorCode.BAD_FRAME, "a convs result carries a cursor exactly when more is true"
        )
    return Result(rid=rid, fields=(("convs", rows), ("cursor", cursor), ("more", more)))


def group_created_result(rid: str | None, conv: str) -> Result:
    return Result(rid=rid, fields=(("conv", conv),))


def history_messages(result: Result) -> tuple[Msg, ...]:
    """The messages of a ``history`` result, oldest first."""
    value = result.get("messages", ())
    if not isinstance(value, tuple):
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "history result without 'messages' list")
    return tuple(m for m in value if isinstance(m, Msg))


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
