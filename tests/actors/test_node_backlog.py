"""The hello backlog is streamed: bounded memory whatever its length (issue 14 item 1), over
real WebSockets against a node on SecantusDB."""

from __future__ import annotations

import tracemalloc

import orjson
from wsclient import Chat

from persistence import Draft

BODY = "x" * 16384
#: Messages per append: chunks as a group commit under load writes them.
BATCH = 10


async def store_group_backlog(chat: Chat, count: int) -> str:
    """A group of ann and ben with ``count`` 16 KiB messages from ann, written directly."""
    conv, _ = await chat.store.create_group("ann", "big", ["ben"], 1)
    for start in range(0, count, BATCH):
        drafts = [
            Draft(sender="ann", device="d1", cmid=f"c{i}", body=BODY, ts=2)
            for i in range(start, min(count, start + BATCH))
        ]
        await chat.store.append(conv.id, drafts)
    return conv.id


async def test_a_long_backlog_costs_bounded_memory(chat: Chat) -> None:
    conv = await store_group_backlog(chat, 600)  # ~9.4 MiB of bodies
    client = await chat.raw()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        await client.send({"type": "hello", "token": chat.token("ben"), "device": "new"})
        seqs: list[int] = []
        while True:  # one frame at a time, as a phone on a slow network would
            frame = orjson.loads(await client.ws.get_message())
            if frame["type"] == "synced":
                break
            if frame["type"] == "msg":
                assert frame["conv"] == conv
                seqs.append(frame["seq"])
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert seqs == list(range(1, 602))  # the creation event, then the 600 messages
    # Node, store client and test client together (all traced in this process): reading the
    # whole backlog at once took more than 20 MiB.
    assert peak < 4 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


async def test_convs_are_paged_with_a_cursor(chat: Chat) -> None:
    ann = await chat.connect("ann")
    for i in range(5):
        await ann.request({"type": "group_create", "title": f"g{i}", "members": [], "rid": f"g{i}"})
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        frame = {"type": "convs", "limit": 2, "cursor": cursor, "rid": chat.rid()}
        page = await ann.request(frame)
        pages += 1
        seen += [row["conv"] for row in page["convs"]]
        assert page["more"] == (page["cursor"] is not None)
        if not page["more"]:
            break
        cursor = page["cursor"]
    assert pages == 3 and len(set(seen)) == 5
    refused = await ann.request({"type": "convs", "limit": 501, "rid": "bad"}, kind="error")
    assert refused["code"] == "bad_frame"
    refused = await ann.request({"type": "convs", "cursor": "junk", "rid": "junk"}, kind="error")
    assert refused["code"] == "bad_frame"
