"""End-to-end G8 for groups: a creation owes its offline founders their jobs in its write."""

from __future__ import annotations

import orjson
import pytest
from wsclient import Chat, wall_ms

from protocol import MAX_RESULT_BYTES


async def test_group_create_records_every_offline_founders_job_with_the_group(
    chat: Chat,
) -> None:
    ann = await chat.connect("ann")
    offline = [f"u{i:03}" for i in range(254)]
    created = await ann.request(
        {"type": "group_create", "title": "all", "members": offline, "rid": "g"}
    )
    # Written with the creation, so there the moment the result is: one per offline founder.
    assert await chat.store.pending_notifications() == 254
    jobs = await chat.store.claim_notifications("test", wall_ms(), 60_000, 300)
    assert sorted(j.user for j in jobs) == offline
    assert {(j.conv, j.seq) for j in jobs} == {(created["conv"], 1)}
    await ann.request({"type": "group_add", "conv": created["conv"], "user": "zed", "rid": "a"})
    assert await chat.store.pending_notifications() == 255
    [zeds] = [
        j
        for j in await chat.store.claim_notifications("test", wall_ms(), 60_000, 300)
        if j.user == "zed"
    ]
    assert (zeds.conv, zeds.seq) == (created["conv"], 2)


@pytest.mark.slow
async def test_convs_pages_stay_under_the_result_limit(chat: Chat) -> None:
    """Rows of big groups (255 long member ids each, ~40 KiB a row): a page is cut to fit in
    512 KiB, and its cursor continues right after the last row sent."""
    ann = await chat.connect("ann")
    members = [f"{'m' * 58}{i:03}" for i in range(255)]
    groups = set()
    for g in range(14):
        created = await ann.request(
            {"type": "group_create", "title": f"g{g}", "members": members, "rid": f"g{g}"},
            within=60,
        )
        groups.add(created["conv"])
    seen: list[str] = []
    cursor = None
    for page in range(14):
        frame: dict[str, object] = {"type": "convs", "limit": 500, "rid": f"c{page}"}
        if cursor is not None:
            frame["cursor"] = cursor
        await ann.send(frame)
        reply = await ann.wait_for("result", 60, rid=f"c{page}")
        assert len(orjson.dumps(reply)) <= MAX_RESULT_BYTES
        seen += [row["conv"] for row in reply["convs"]]
        cursor = reply.get("cursor")
        if not reply["more"]:
            break
        assert page == 0 or reply["convs"], "every page makes progress"
    assert page >= 1  # the first page was cut
    assert sorted(seen) == sorted(groups) and len(seen) == len(set(seen))
