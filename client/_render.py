"""How the terminal chat shows text it did not write: every character a terminal would act
on written out as an escape, and member events in words."""

from __future__ import annotations

import unicodedata

from protocol import MemberEvent, Msg, RemoteProtocolError

#: Format characters that reorder or hide text (bidirectional overrides and isolates); other
#: format characters (the zero-width joiner of emoji sequences) are left alone.
_BIDI_CONTROLS = frozenset(
    [
        "\u061c",
        "\u200e",
        "\u200f",
        *map(chr, range(0x202A, 0x202F)),
        *map(chr, range(0x2066, 0x206A)),
    ]
)
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(text: str) -> str:
    """``text`` with every character a terminal would act on, rather than print, written out
    as an escape (``\\n``, ``\\x1b``, ``\\u202e``): one printed line stays one line, and a
    body cannot move the cursor, recolour, retitle the terminal or reorder what follows."""
    if text.isprintable():
        return text
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    category = unicodedata.category(char)
    if category in ("Cc", "Zl", "Zp", "Cs") or char in _BIDI_CONTROLS:
        if char in _NAMED_ESCAPES:
            return _NAMED_ESCAPES[char]
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def member_event_text(msg: Msg) -> str:
    """A member event as a sentence (its raw body when it cannot be parsed)."""
    try:
        event = MemberEvent.parse(msg.body)
    except RemoteProtocolError:
        return f"{msg.sender}: {msg.body}"
    op, users = event.op, ", ".join(event.users)
    return {
        "create": f"{msg.sender} created the group with {users}",
        "add": f"{msg.sender} added {users}",
        "remove": f"{msg.sender} removed {users}",
        "leave": f"{msg.sender} left",
    }.get(op, f"{msg.sender}: {msg.body}")
