"""The body of a member event (a ``msg`` of kind ``member``): who changed whose membership.

PROTOCOL.md fixes it as the JSON text ``{"op": ..., "by": user, "users": [...]}``. The store
writes it with :meth:`MemberEvent.to_body`; everyone who reads it back -- node, client,
simulator -- uses :meth:`MemberEvent.parse`.
"""

from __future__ import annotations

from typing import Literal

import attrs
import orjson

from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._fields import _id, _ids, _one_of

MemberOp = Literal["create", "add", "remove", "leave"]


@attrs.frozen(kw_only=True)
class MemberEvent:
    """``by`` did ``op`` to ``users`` (for ``create``: the founders, creator first)."""

    op: MemberOp = attrs.field(validator=_one_of("create", "add", "remove", "leave"))
    by: str = attrs.field(validator=_id)
    users: tuple[str, ...] = attrs.field(validator=_ids)

    def to_body(self) -> str:
        """The wire body: compact JSON with the keys in contract order."""
        body = {"op": self.op, "by": self.by, "users": list(self.users)}
        return orjson.dumps(body).decode()

    @classmethod
    def parse(cls, body: str) -> MemberEvent:
        """The event a member ``msg`` body carries; :class:`RemoteProtocolError`
        (``bad_frame``) when it is not one."""
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "member event is not JSON") from exc
        if not isinstance(value, dict) or set(value) != {"op", "by", "users"}:
            raise RemoteProtocolError(
                ErrorCode.BAD_FRAME, "member event must be an object of 'op', 'by' and 'users'"
            )
        users = value["users"]
        if not isinstance(users, list):
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "member event 'users' must be a list")
        try:
            return cls(op=value["op"], by=value["by"], users=tuple(users))
        except LocalProtocolError as exc:
            raise RemoteProtocolError(exc.code, f"member event {exc.message}") from exc

    def adds(self, user: str) -> bool:
        """True when this event made ``user`` a member (creation with them, or adding them)."""
        return self.op in ("create", "add") and user in self.users
