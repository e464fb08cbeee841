"""The explicit limits of the wire contract, and validation of ids."""

from __future__ import annotations

import re
from typing import Final, TypeGuard

#: A client frame's payload above this gets ``error too_large`` (the connection stays open).
MAX_FRAME_BYTES: Final = 64 * 1024
#: Above this the server may close the connection with 1009.
HARD_FRAME_BYTES: Final = 1024 * 1024
#: A server frame may be this big: a ``msg`` whose 16 KiB body is all characters JSON must
#: escape is ~96 KiB, so clients accept far more than they may send.
MAX_SERVER_FRAME_BYTES: Final = 1024 * 1024
#: ``history`` and ``convs`` results are kept under this by returning fewer items.
MAX_RESULT_BYTES: Final = 512 * 1024
#: A message body above this (UTF-8 bytes, after JSON decoding) gets ``nack too_large``.
MAX_BODY_BYTES: Final = 16 * 1024
#: Ids (user, device, cmid, rid) are 1..64 characters of [A-Za-z0-9_.-].
MAX_ID_LEN: Final = 64
#: Group titles are 1..100 characters.
MAX_TITLE_LEN: Final = 100
#: A group holds at most this many members, the creator included.
MAX_GROUP_MEMBERS: Final = 256
#: ``history.limit`` bounds and default.
MIN_HISTORY_LIMIT: Final = 1
MAX_HISTORY_LIMIT: Final = 200
DEFAULT_HISTORY_LIMIT: Final = 50
#: ``convs.limit`` bounds and default (rows per page).
MIN_CONVS_LIMIT: Final = 1
MAX_CONVS_LIMIT: Final = 500
DEFAULT_CONVS_LIMIT: Final = 100
#: A ``convs`` cursor is an opaque string of at most this many characters.
MAX_CURSOR_LEN: Final = 256
#: ``presence_sub``/``presence_unsub`` accept at most this many users in one frame.
MAX_PRESENCE_USERS: Final = 256
#: Conversation ids are opaque to clients but still bounded, so a hostile frame cannot make
#: the server carry a megabyte-long key around.
MAX_CONV_ID_LEN: Final = 200
#: Seq numbers are JSON integers within IEEE-754 exact range.
MAX_SEQ: Final = 2**53 - 1
#: The client must send something at least every ``heartbeat_s`` seconds (10..60).
MIN_HEARTBEAT_S: Final = 10
MAX_HEARTBEAT_S: Final = 60
DEFAULT_HEARTBEAT_S: Final = 30
#: The first frame (``hello``) must arrive within this many seconds.
HELLO_TIMEOUT_S: Final = 10.0
#: Presence goes offline only after this grace period.
DEFAULT_PRESENCE_GRACE_S: Final = 5.0

_ID_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def is_valid_id(value: object) -> TypeGuard[str]:
    """True for a user id, device id, cmid or rid: 1..64 of ``[A-Za-z0-9_.-]``."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def is_valid_conv_id(value: object) -> TypeGuard[str]:
    """True for something that could be a conversation id (non-empty, bounded string)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_CONV_ID_LEN


def body_size(body: str) -> int:
    """Size of a message body in UTF-8 bytes, as the body limit counts it."""
    return len(body.encode("utf-8", "surrogatepass"))
