"""The ``convs`` row is one type for the Store and the wire: BSON's Int64 is taken as a plain
int, while a bool or a negative count is still refused."""

from __future__ import annotations

import pytest
from bson.int64 import Int64

from protocol import ConvRow, LocalProtocolError, MemberMarks


def row(**counts: object) -> ConvRow:
    fields: dict[str, object] = {"last_seq": 3, "delivered": 2, "read": 1, "unread": 2}
    fields.update(counts)
    return ConvRow(conv="d:a:b", kind="direct", title=None, members=("a", "b"), **fields)  # type: ignore[arg-type]


def test_store_integers_become_plain_ints() -> None:
    built = row(last_seq=Int64(3), delivered=Int64(2))
    marks = MemberMarks(user="b", delivered=Int64(2), read=Int64(0))
    assert type(built.last_seq) is int
    assert type(marks.delivered) is int
    assert built == row()


@pytest.mark.parametrize("bad", [True, -1, "3", 1.0])
def test_anything_else_is_still_refused(bad: object) -> None:
    with pytest.raises(LocalProtocolError, match="last_seq"):
        row(last_seq=bad)
