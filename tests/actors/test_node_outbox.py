"""End-to-end G8 for groups: a creation owes its offline founders their jobs in its write."""

from __future__ import annotations

from wsclient import Chat, wall_ms


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
