"""What the terminal chat prints for text that came from other people."""

from __future__ import annotations

import pytest

from client._render import visible


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, ünïcode and emoji 👩‍👩‍👧", "plain text, ünïcode and emoji 👩‍👩‍👧"),
        ("two\nlines\r\tand a tab", "two\\nlines\\r\\tand a tab"),
        ("title\x1b]0;pwned\x07", "title\\x1b]0;pwned\\x07"),
        ("bell\x07 del\x7f c1\x9b", "bell\\x07 del\\x7f c1\\x9b"),
        ("reorder\u202eegassem\u2066x\u2069", "reorder\\u202eegassem\\u2066x\\u2069"),
        ("separators\u2028\u2029", "separators\\u2028\\u2029"),
        ("lone surrogate \udc80", "lone surrogate \\udc80"),
    ],
)
def test_control_characters_are_spelled_out(text: str, shown: str) -> None:
    assert visible(text) == shown
