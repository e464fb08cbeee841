"""End-to-end G8 for groups: a creation owes its offline founders their jobs in its write."""

from __future__ import annotations

import attrs
import orjson
import pytest
from wsclient import TEST_CONFIG, Chat, StartChat, wall_ms

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


@pytest.fixture
async def strict_chat(start_chat: StartChat) -> Chat:
    """A node that lets a user start two conversations a minute."""
    return await start_chat(attrs.evolve(TEST_CONFIG, creations_per_minute=2))


async def test_starting_conversations_is_rate_limited_per_user(strict_chat: Chat) -> None:
    """Each new conversation costs offline members' jobs: a user's starts are budgeted."""
    ann = await strict_chat.connect("ann")
    first = await ann.request({"type": "group_create", "title": "a", "members": ["u1"], "rid": "1"})
    await ann.send({"type": "send", "cmid": "d1", "to": "u2", "body": "hi"})
    assert (await ann.wait_for("ack", cmid="d1"))["seq"] == 1
    refused = await ann.request(
        {"type": "group_create", "title": "b", "members": ["u3"], "rid": "2"}, kind="error"
    )
    assert refused["code"] == "rate_limited"
    await ann.send({"type": "send", "cmid": "d2", "to": "u4", "body": "hi"})
    nack = await ann.wait_for("nack", cmid="d2")
    assert (nack["code"], nack["retry"]) == ("rate_limited", True)
    # Conversations that exist take nothing from the budget.
    await ann.send({"type": "send", "cmid": "g1", "conv": first["conv"], "body": "still here"})
    assert (await ann.wait_for("ack", cmid="g1"))["seq"] == 2
    await ann.send({"type": "send", "cmid": "d3", "to": "u2", "body": "again"})
    assert (await ann.wait_for("ack", cmid="d3"))["seq"] == 2
    assert [r.conv for r in (await strict_chat.store.conversations("u4", "d")).rows] == []
