"""The JSON codec: wire text → frame values and back.

Decoding never lets a ``KeyError``, ``TypeError`` or JSON error escape: anything malformed
raises :class:`RemoteProtocolError` whose ``code`` is the wire error code to answer with and
whose message names the problem. A ``send`` that carries a valid ``cmid`` but is otherwise
bad raises :class:`SendError`, whose ``cmid`` lets the server answer with a ``nack`` for it.

Unknown fields are ignored in both directions, including unknown reply fields of ``result``.
An optional field sent as ``null`` counts as absent (its default applies, as for ``history``
with ``"limit": null``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import attrs
import orjson

from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._frames import (
    CLIENT_FRAMES,
    CODE,
    SERVER_FRAMES,
    ClientFrame,
    ConvRow,
    Frame,
    MemberMarks,
    Msg,
    Result,
    Send,
    ServerFrame,
)
from ._limits import MAX_FRAME_BYTES, MAX_RESULT_BYTES, MAX_SERVER_FRAME_BYTES, is_valid_id

_T = TypeVar("_T")
_Parser = Callable[[str, Any], Any]


class SendError(RemoteProtocolError):
    """A ``send`` frame with a valid ``cmid`` that is bad otherwise: answer with ``nack``."""

    def __init__(self, code: ErrorCode, message: str, *, cmid: str, rid: str | None = None) -> None:
        super().__init__(code, message, rid=rid, frame_type=Send.TYPE)
        self.cmid = cmid


def _bad(name: str, reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.BAD_FRAME, f"field '{name}' {reason}")


def _bad_frame(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.BAD_FRAME, message)


def _p_str(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        raise _bad(name, "must be a string")
    return value


def _p_int(name: str, value: Any) -> Any:
    if type(value) is not int:
        raise _bad(name, "must be an integer")
    return value


def _p_bool(name: str, value: Any) -> Any:
    if type(value) is not bool:
        raise _bad(name, "must be true or false")
    return value


def _optional(parse: _Parser) -> _Parser:
    def parse_optional(name: str, value: Any) -> Any:
        return None if value is None else parse(name, value)

    return parse_optional


def _p_str_tuple(name: str, value: Any) -> Any:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(name, "must be a list of strings")
    return tuple(value)


def _one_of(*choices: str) -> _Parser:
    def parse_choice(name: str, value: Any) -> Any:
        if value not in choices:
            raise _bad(name, "must be one of " + ", ".join(repr(c) for c in choices))
        return value

    return parse_choice


def _p_error_code(name: str, value: Any) -> Any:
    return ErrorCode(_one_of(*(c.value for c in ErrorCode))(name, value))


def _nested(cls: type[_T]) -> _Parser:
    def parse_list(name: str, value: Any) -> Any:
        if not isinstance(value, list):
            raise _bad(name, "must be a list")
        return tuple(_build(cls, item, what=f"an item of '{name}'") for item in value)

    return parse_list


# Parsers by the (string) annotation of a frame field: one place says what each type means.
_PARSERS: Final[dict[str, _Parser]] = {
    "str": _p_str,
    "str | None": _optional(_p_str),
    "int": _p_int,
    "int | None": _optional(_p_int),
    "bool": _p_bool,
    "tuple[str, ...]": _p_str_tuple,
    "ErrorCode": _p_error_code,
    # The frames' own validators check the choices of these.
    "MessageKind": _p_str,
    "ConvKind": _p_str,
    "PresenceStatus": _p_str,
    "tuple[MemberMarks, ...]": _nested(MemberMarks),
}


@attrs.frozen
class _FieldSpec:
    name: str
    wire: str
    parse: _Parser
    required: bool
    omit_none: bool
    code: ErrorCode


def _specs(cls: type) -> tuple[_FieldSpec, ...]:
    specs = []
    for field in attrs.fields(cls):
        if field.name == "fields":  # Result's free-form reply fields are handled apart
            continue
        specs.append(
            _FieldSpec(
                name=field.name,
                wire=field.metadata.get("wire", field.name),
                parse=_PARSERS[str(field.type)],
                required=field.default is attrs.NOTHING,
                omit_none=bool(field.metadata.get("omit_none")),
                code=field.metadata.get(CODE, ErrorCode.BAD_FRAME),
            )
        )
    return tuple(specs)


_SPECS: Final[dict[type, tuple[_FieldSpec, ...]]] = {
    cls: _specs(cls) for cls in (*CLIENT_FRAMES, *SERVER_FRAMES, MemberMarks, ConvRow)
}
_CLIENT_BY_TYPE: Final[dict[str, type[ClientFrame]]] = {cls.TYPE: cls for cls in CLIENT_FRAMES}
_SERVER_BY_TYPE: Final[dict[str, type[ServerFrame]]] = {cls.TYPE: cls for cls in SERVER_FRAMES}


def _build(cls: type[_T], obj: Any, *, what: str = "a frame") -> _T:
    if not isinstance(obj, dict):
        raise _bad_frame(f"{what} must be a JSON object")
    kwargs: dict[str, Any] = {}
    for spec in _SPECS[cls]:
        if obj.get(spec.wire) is None and not spec.required:
            continue  # null for an optional field means absent: its default applies
        if spec.wire in obj:
            try:
                kwargs[spec.name] = spec.parse(spec.wire, obj[spec.wire])
            except RemoteProtocolError as exc:
                raise RemoteProtocolError(spec.code, exc.message) from None
        elif spec.required:
            raise RemoteProtocolError(spec.code, f"missing field '{spec.wire}'")
    try:
        return cls(**kwargs)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(exc.code, exc.message) from None


def _load(data: str | bytes, limit: int) -> dict[str, Any]:
    if not isinstance(data, str):
        raise _bad_frame("binary frames are not accepted; send JSON as a text frame")
    if len(data) > limit // 4 and len(data.encode("utf-8", "replace")) > limit:
        raise RemoteProtocolError(ErrorCode.TOO_LARGE, f"frame is over the {limit} byte limit")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _bad_frame(f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _bad_frame("frame must be a JSON object")
    return obj


def _read_rid(obj: Mapping[str, Any]) -> str | None:
    rid = obj.get("rid")
    return rid if is_valid_id(rid) else None


def _read_type(obj: Mapping[str, Any], rid: str | None) -> str:
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "frame has no string field 'type'", rid=rid)
    return kind


def decode_client_frame(data: str | bytes) -> ClientFrame:
    """Decode one frame a client sent. Raises :class:`RemoteProtocolError` (or its
    subclass :class:`SendError` for a ``send`` with a usable ``cmid``)."""
    obj = _load(data, MAX_FRAME_BYTES)
    rid = _read_rid(obj)
    cls = _CLIENT_BY_TYPE.get(_read_type(obj, rid))
    if cls is None:
        raise RemoteProtocolError(
            ErrorCode.BAD_FRAME, f"unknown frame type {obj['type']!r}", rid=rid
        )
    try:
        return _build(cls, obj)
    except RemoteProtocolError as exc:
        cmid = obj.get("cmid")
        if cls is Send and is_valid_id(cmid):
            raise SendError(exc.code, exc.message, cmid=cmid, rid=rid) from None
        exc.rid = rid
        exc.frame_type = cls.TYPE
        raise


# The reply fields a ``result`` may carry, by name; any other is ignored like any unknown field.
_RESULT_FIELDS: Final[dict[str, _Parser]] = {
    "messages": _nested(Msg),
    "more": _p_bool,
    "convs": _nested(ConvRow),
    "cursor": _optional(_p_str),
    "conv": _p_str,
}


def _build_result(obj: dict[str, Any]) -> Result:
    fields = tuple(
        (key, _RESULT_FIELDS[key](key, value))
        for key, value in obj.items()
        if key in _RESULT_FIELDS
    )
    try:
        return Result(rid=_optional(_p_str)("rid", obj.get("rid")), fields=fields)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(exc.code, exc.message) from None


def decode_server_frame(data: str | bytes) -> ServerFrame:
    """Decode one frame a server sent (the client's side of the codec; server frames may be
    up to :data:`MAX_SERVER_FRAME_BYTES`). Raises :class:`RemoteProtocolError`, whose
    ``rid`` is the frame's own when it had one: the reply to that request is unusable."""
    obj = _load(data, MAX_SERVER_FRAME_BYTES)
    rid = _read_rid(obj)
    kind = _read_type(obj, rid)
    cls = _SERVER_BY_TYPE.get(kind)
    if cls is None:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"unknown frame type {kind!r}", rid=rid)
    try:
        if cls is Result:
            return _build_result(obj)
        return _build(cls, obj)
    except RemoteProtocolError as exc:
        exc.rid = rid
        exc.frame_type = cls.TYPE
        raise


def _wire_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_wire_value(v) for v in value]
    if attrs.has(type(value)):
        return _to_dict(value)
    return value


def _to_dict(value: Any) -> dict[str, Any]:
    cls = type(value)
    out: dict[str, Any] = {}
    frame_type = getattr(cls, "TYPE", None)
    if frame_type is not None:
        out["type"] = frame_type
    for spec in _SPECS[cls]:
        item = getattr(value, spec.name)
        if item is None and spec.omit_none:
            continue
        out[spec.wire] = _wire_value(item)
    if isinstance(value, Result):
        for key, item in value.fields:
            out[key] = _wire_value(item)
    return out


def frame_to_dict(frame: Frame) -> dict[str, Any]:
    """The JSON object of ``frame`` as it goes on the wire."""
    return _to_dict(frame)


def encode(frame: Frame) -> str:
    """Encode a frame (either direction) as the text of one WebSocket message."""
    return orjson.dumps(_to_dict(frame)).decode()


#: Room left in a result for everything but its list: type, rid, more, cursor.
_RESULT_OVERHEAD: Final = 4096


def count_within(items: Sequence[Any], budget: int = MAX_RESULT_BYTES - _RESULT_OVERHEAD) -> int:
    """How many of ``items`` (frame values: ``Msg``, ``ConvRow``), taken from the first, fit
    in ``budget`` bytes of encoded JSON together -- never fewer than one, so a reply that
    must shrink still makes progress. Results use it to stay under the limit."""
    used = 0
    for count, item in enumerate(items):
        used += len(orjson.dumps(_to_dict(item))) + 1  # the comma between list items
        if used > budget and count > 0:
            return count
    return len(items)
