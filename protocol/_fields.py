"""The vocabulary and field validators every frame class is built from.

A validator raises :class:`LocalProtocolError` naming the wire field and carrying the error
code its metadata asks for (default ``bad_frame``); the codec re-raises the same problem in an
incoming frame as :class:`RemoteProtocolError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import attrs

from ._errors import ErrorCode, LocalProtocolError
from ._limits import MAX_SEQ, MAX_TITLE_LEN, is_valid_conv_id, is_valid_id

MessageKind = Literal["text", "member"]
ConvKind = Literal["direct", "group"]
PresenceStatus = Literal["online", "offline"]


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


def _title(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TITLE_LEN:
        raise _fail(attribute, f"must be a string of 1 to {MAX_TITLE_LEN} characters")
