"""The Store contract, run against MemoryStore and MongoStore (real SecantusDB over a socket)."""

from __future__ import annotations

import json
import random

import pytest

from persistence import (
    BacklogRange,
    BadInput,
    Conflict,
    Draft,
    Forbidden,
    MemoryStore,
    NotFound,
    ReadMark,
    RecvMark,
    Store,
    StoredMessage,
    TooLarge,
    Unavailable,
)
from protocol import ErrorCode
from sim._store import FaultyStore, StoreFaults


def draft(sender: str, cmid: str, body: str = "hi", device: str = "d1", ts: int = 1000) -> Draft:
    return Draft(sender=sender, device=device, cmid=cmid, body=body, ts=ts)


async def test_direct_conversation_is_stable_and_idempotent(store: Store) -> None:
    one = await store.direct_conversation("bob", "alice")
    two = await store.direct_conversation("alice", "bob")
    assert one == two
    assert one.id == "d:alice:bob"
    assert dict(one.members) == {"alice": 1, "bob": 1}
    assert await store.get_conversation(one.id) == one


async def test_direct_conversation_with_yourself_is_forbidden(store: Store) -> None:
    with pytest.raises(Forbidden) as info:
        await store.direct_conversation("alice", "alice")
    assert info.value.code == ErrorCode.FORBIDDEN


async def test_append_assigns_gap_free_seqs_in_input_order(store: Store) -> None:
    conv = await store.direct_conversation("alice", "bob")
    first = await store.append(conv.id, [draft("alice", "c1"), draft("bob", "c1", "yo")])
    second = await store.append(conv.id, [draft("alice", "c2", "again")])
    messages = [*first, *second]
    assert all(isinstance(m, StoredMessage) for m in messages)
    assert [m.seq for m in messages if isinstance(m, StoredMessage)] == [1, 2, 3]
    assert await store.last_seq(conv.id) == 3
    assert await store.range(conv.id, 1, 3) == messages
    assert await store.range(conv.id, 2, 2) == [messages[1]]


async def test_replay_returns_the_original_message(store: Store) -> None:
    conv = await store.direct_conversation("alice", "bob")
    [original] = await store.append(conv.id, [draft("alice", "c1", ts=5)])
    [again] = await store.append(conv.id, [draft("alice", "c1", ts=99)])
    assert again == original
    assert await store.last_seq(conv.id) == 1


async def test_replay_within_one_batch_is_stored_once(store: Store) -> None:
    conv = await store.direct_conversation("alice", "bob")
    a, b = await store.append(conv.id, [draft("alice", "c1"), draft("alice", "c1")])
    assert a == b
    assert await store.last_seq(conv.id) == 1


async def test_cmid_reuse_with_other_body_or_conversation_conflicts(store: Store) -> None:
    conv = await store.direct_conversation("alice", "bob")
    other = await store.direct_conversation("alice", "carol")
    await store.append(conv.id, [draft("alice", "c1", "hello")])
    [body_clash] = await store.append(conv.id, [draft("alice", "c1", "changed")])
    [conv_clash] = await store.append(other.id, [draft("alice", "c1", "hello")])
    assert isinstance(body_clash, Conflict) and body_clash.code == ErrorCode.CONFLICT
    assert isinstance(conv_clash, Conflict)
    assert "d:alice:bob" in conv_clash.message
    # The same cmid from another device is another message.
    [other_device] = await store.append(conv.id, [draft("alice", "c1", "hello", device="d2")])
    assert isinstance(other_device, StoredMessage) and other_device.seq == 2


async def test_bad_slots_fail_alone(store: Store) -> None:
    conv = await store.direct_conversation("alice", "bob")
    results = await store.append(
        conv.id,
        [
            draft("alice", "ok1"),
            draft("alice", "bad cmid"),
            draft("alice", "big", "x" * (16 * 1024 + 1)),
            draft("mallory", "m1"),
            draft("bob", "ok2", "é" * (8 * 1024)),  # exactly 16 KiB of UTF-8
        ],
    )
    ok1, bad, big, outsider, ok2 = results
    assert isinstance(ok1, StoredMessage) and ok1.seq == 1
    assert isinstance(bad, BadInput) and bad.code == ErrorCode.BAD_FRAME
    assert isinstance(big, TooLarge) and big.code == ErrorCode.TOO_LARGE
    assert isinstance(outsider, Forbidden)
    assert outsider.message == "user 'mallory' is not a member of conversation 'd:alice:bob'"
    assert isinstance(ok2, StoredMessage) and ok2.seq == 2


async def test_unknown_conversation_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as info:
        await store.append("g:nope", [draft("alice", "c1")])
    assert info.value.code == ErrorCode.NOT_FOUND
    for call in (store.get_conversation("g:nope"), store.last_seq("g:nope")):
        with pytest.raises(NotFound):
            await call


async def test_invalid_ids_are_bad_input(store: Store) -> None:
    for a, b in (("", "bob"), ("al:ice", "bob"), ("x" * 65, "bob")):
        with pytest.raises(BadInput):
            await store.direct_conversation(a, b)
    with pytest.raises(BadInput):
        await store.create_group("alice", "", ["bob"], 1)
    with pytest.raises(BadInput):
        await store.create_group("alice", "t" * 101, ["bob"], 1)
    with pytest.raises(BadInput):
        await store.create_group("alice", "ok", ["bo b"], 1)


async def test_group_create_records_the_creation_event(store: Store) -> None:
    conv, event = await store.create_group("alice", "Team", ["bob", "carol", "bob"], 42)
    assert conv.id.startswith("g:") and conv.kind == "group" and conv.title == "Team"
    assert conv.creator == "alice"
    assert dict(conv.members) == {"alice": 1, "bob": 1, "carol": 1}
    assert (event.seq, event.kind, event.cmid, event.sender, event.ts) == (
        1,
        "member",
        None,
        "alice",
        42,
    )
    assert json.loads(event.body) == {
        "op": "create",
        "by": "alice",
        "users": ["alice", "bob", "carol"],
    }
    assert await store.get_conversation(conv.id) == conv
    assert await store.range(conv.id, 1, 1) == [event]


async def test_group_size_limit(store: Store) -> None:
    with pytest.raises(Forbidden, match="group is full"):
        await store.create_group("alice", "big", [f"u{i}" for i in range(256)], 1)
    conv, _ = await store.create_group("alice", "big", [f"u{i}" for i in range(255)], 1)
    with pytest.raises(Forbidden, match="group is full"):
        await store.add_member(conv.id, "alice", "one_more", 2)


async def test_membership_rules(store: Store) -> None:
    conv, _ = await store.create_group("alice", "Team", ["bob"], 1)
    added = await store.add_member(conv.id, "bob", "carol", 2)
    assert added is not None and added.seq == 2 and added.sender == "bob"
    assert json.loads(added.body) == {"op": "add", "by": "bob", "users": ["carol"]}
    assert await store.add_member(conv.id, "alice", "carol", 3) is None  # already in: no event
    with pytest.raises(Forbidden):
        await store.remove_member(conv.id, "bob", "carol", 3)  # only the creator removes
    with pytest.raises(Forbidden):
        await store.remove_member(conv.id, "bob", "nobody", 3)  # authorization first
    with pytest.raises(NotFound):
        await store.remove_member(conv.id, "alice", "nobody", 3)
    with pytest.raises(Forbidden):
        await store.add_member(conv.id, "mallory", "eve", 3)
    removed = await store.remove_member(conv.id, "alice", "carol", 4)
    assert removed is not None and removed.seq == 3
    left = await store.leave(conv.id, "bob", 5)
    assert left.seq == 4 and json.loads(left.body)["op"] == "leave"
    with pytest.raises(Forbidden):
        await store.leave(conv.id, "bob", 6)
    now = await store.get_conversation(conv.id)
    assert dict(now.members) == {"alice": 1}
    assert dict(now.departed) == {"bob": (1, 4), "carol": (2, 3)}
    direct = await store.direct_conversation("alice", "bob")
    with pytest.raises(Forbidden):
        await store.add_member(direct.id, "alice", "carol", 7)


async def test_visibility_of_history_follows_membership(store: Store) -> None:
    conv, _ = await store.create_group("alice", "Team", ["bob"], 1)
    await store.append(conv.id, [draft("alice", f"a{i}") for i in range(3)])  # seq 2..4
    await store.add_member(conv.id, "alice", "carol", 2)  # seq 5
    await store.append(conv.id, [draft("carol", "c1")])  # seq 6
    await store.remove_member(conv.id, "alice", "carol", 3)  # seq 7
    await store.append(conv.id, [draft("alice", "after")])  # seq 8
    page, more = await store.history(conv.id, "carol", None, 50)
    assert [m.seq for m in page] == [5, 6, 7] and not more
    page, more = await store.history(conv.id, "bob", None, 3)
    assert [m.seq for m in page] == [6, 7, 8] and more
    page, more = await store.history(conv.id, "bob", 6, 3)
    assert [m.seq for m in page] == [3, 4, 5] and more
    page, more = await store.history(conv.id, "bob", 3, 50)
    assert [m.seq for m in page] == [1, 2] and not more
    # ``before`` is exclusive: 1 and 0 leave nothing below them (docs/protocol.md §8.5).
    for before in (1, 0):
        assert await store.history(conv.id, "bob", before, 50) == ([], False)
    with pytest.raises(BadInput):
        await store.history(conv.id, "bob", -1, 50)
    with pytest.raises(Forbidden):
        await store.history(conv.id, "mallory", None, 10)
    for bad in (0, 201):
        with pytest.raises(BadInput):
            await store.history(conv.id, "bob", None, bad)
    # A departed member's replay still returns the original; a new send is forbidden.
    [replayed, new] = await store.append(conv.id, [draft("carol", "c1"), draft("carol", "c2")])
    assert isinstance(replayed, StoredMessage) and replayed.seq == 6
    assert isinstance(new, Forbidden)


async def test_watermarks_max_merge_and_clamp(store: Store) -> None:
    conv, _ = await store.create_group("alice", "Team", ["bob"], 1)
    await store.append(conv.id, [draft("alice", f"a{i}") for i in range(4)])  # seq 2..5
    await store.merge_recv(
        [
            RecvMark(user="bob", device="p", conv=conv.id, seq=3),
            RecvMark(user="bob", device="l", conv=conv.id, seq=99),  # clamped to 5
            RecvMark(user="mallory", device="x", conv=conv.id, seq=3),  # ignored
            RecvMark(user="bob", device="p", conv="g:nope", seq=3),  # ignored
        ]
    )
    await store.merge_recv([RecvMark(user="bob", device="p", conv=conv.id, seq=2)])  # no-op
    await store.merge_read([ReadMark(user="bob", conv=conv.id, seq=4)])
    await store.merge_read([ReadMark(user="bob", conv=conv.id, seq=1)])
    assert await store.device_recv("bob", "p", conv.id) == 3
    assert await store.device_recv("bob", "l", conv.id) == 5
    marks = await store.marks(conv.id)
    assert sorted(marks) == ["alice", "bob"]
    assert (marks["bob"].delivered, marks["bob"].read) == (5, 4)
    assert (marks["alice"].delivered, marks["alice"].read) == (0, 0)
    await store.leave(conv.id, "bob", 9)  # seq 6
    await store.append(conv.id, [draft("alice", "later")])  # seq 7
    await store.merge_read([ReadMark(user="bob", conv=conv.id, seq=7)])
    assert (await store.marks(conv.id))["bob"].read == 6  # clamped to the leave event


async def test_merge_marks_writes_recv_and_read_at_once(store: Store) -> None:
    """Ids with dots (a MongoDB path separator) and several devices of one user."""
    conv, _ = await store.create_group("a.lice", "Team", ["b.ob", "carol"], 1)
    await store.append(conv.id, [draft("a.lice", f"m{i}") for i in range(3)])  # seq 2..4
    await store.merge_marks(
        [
            RecvMark(user="b.ob", device="ph.one", conv=conv.id, seq=3),
            RecvMark(user="b.ob", device="lap", conv=conv.id, seq=2),
            RecvMark(user="carol", device="x", conv=conv.id, seq=4),
        ],
        [ReadMark(user="b.ob", conv=conv.id, seq=2)],
    )
    await store.fold_marks()  # housekeeping: no read changes
    await store.merge_marks([RecvMark(user="b.ob", device="ph.one", conv=conv.id, seq=1)], [])
    assert await store.device_recv("b.ob", "ph.one", conv.id) == 3
    assert await store.device_recv("b.ob", "lap", conv.id) == 2
    assert await store.device_recv("b.ob", "other", conv.id) == 0
    marks = await store.marks(conv.id)
    assert [(u, m.delivered, m.read) for u, m in sorted(marks.items())] == [
        ("a.lice", 0, 0),
        ("b.ob", 3, 2),
        ("carol", 4, 0),
    ]
    [backlog] = await store.unsynced("b.ob", "lap")
    assert (backlog.conv, backlog.lo, backlog.hi) == (conv.id, 3, 4)
    [row] = (await store.conversations("b.ob", "ph.one")).rows
    assert (row.delivered, row.read, row.unread) == (3, 2, 2)
    assert [(o.user, o.delivered) for o in row.others] == [("a.lice", 0), ("carol", 4)]
    await store.merge_marks([], [])  # nothing to write
    await store.fold_marks()
    assert (await store.marks(conv.id))["b.ob"].delivered == 3


async def test_unsynced_and_conversation_rows(store: Store) -> None:
    direct = await store.direct_conversation("alice", "bob")
    group, _ = await store.create_group("carol", "Team", ["bob"], 1)
    await store.append(direct.id, [draft("alice", "a1"), draft("bob", "b1"), draft("alice", "a2")])
    await store.append(group.id, [draft("carol", "c1")])
    await store.merge_recv([RecvMark(user="bob", device="phone", conv=direct.id, seq=1)])
    await store.merge_read([ReadMark(user="bob", conv=direct.id, seq=1)])
    pending = await store.unsynced("bob", "phone")
    assert [(r.conv, r.lo, r.hi) for r in pending] == sorted([(direct.id, 2, 3), (group.id, 1, 2)])
    every = [m for r in pending for m in await store.range(r.conv, r.lo, r.hi)]
    assert await store.read_ranges(pending) == every and len(every) == 4
    assert await store.read_ranges([BacklogRange(conv="g:nope", lo=1, hi=3)]) == []
    rows = {r.conv: r for r in (await store.conversations("bob", "phone")).rows}
    assert sorted(rows) == sorted([direct.id, group.id])
    row = rows[direct.id]
    assert (row.kind, row.last_seq, row.delivered, row.read, row.unread) == ("direct", 3, 1, 1, 1)
    assert [(o.user, o.delivered, o.read) for o in row.others] == [("alice", 0, 0)]
    grow = rows[group.id]
    assert (grow.title, grow.members, grow.unread) == ("Team", ("bob", "carol"), 1)
    assert await store.contacts("bob") == {"alice", "carol"}


async def test_presence_facts(store: Store) -> None:
    await store.set_last_seen("alice", 50)
    await store.set_last_seen("alice", 20)  # never moves back
    assert await store.last_seen(["alice", "bob"]) == {"alice": 50, "bob": None}


async def test_notification_outbox_coalesces_and_leases(store: Store) -> None:
    await store.notify_offline("bob", "d:alice:bob", 1, 100)
    await store.notify_offline("bob", "d:alice:bob", 2, 110)
    await store.notify_offline("carol", "g:x", 5, 120)
    assert await store.pending_notifications() == 2
    jobs = await store.claim_notifications("n1", 1_000, 500, 10)
    assert [(j.user, j.conv, j.seq, j.count) for j in jobs] == [
        ("bob", "d:alice:bob", 2, 2),
        ("carol", "g:x", 5, 1),
    ]
    assert await store.claim_notifications("n2", 1_200, 500, 10) == []  # still leased
    # The lease of a crashed notifier expires: the job is claimable again.
    reclaimed = await store.claim_notifications("n2", 1_500, 500, 1)
    assert [j.user for j in reclaimed] == ["bob"] and reclaimed[0].owner == "n2"
    await store.complete_notification(reclaimed[0].id)
    await store.complete_notification(reclaimed[0].id)  # idempotent
    assert await store.pending_notifications() == 1
    await store.notify_offline("bob", "d:alice:bob", 3, 130)  # same offline period: no new job
    assert await store.pending_notifications() == 1
    await store.user_online("bob")
    await store.notify_offline("bob", "d:alice:bob", 4, 140)  # a new period: a new job
    assert await store.pending_notifications() == 2
    await store.complete_notification("no-such-job")  # gone or never there: no error


async def test_notification_claims_take_the_oldest_in_one_batch(store: Store) -> None:
    for i in range(40):
        await store.notify_offline(f"u{i:02}", "g:x", i + 1, 1_000 + i)
    first = await store.claim_notifications("n1", 5_000, 1_000, 16)
    assert [j.user for j in first] == [f"u{i:02}" for i in range(16)]
    assert {j.owner for j in first} == {"n1"} and {j.lease_until for j in first} == {6_000}
    rest = await store.claim_notifications("n2", 5_000, 1_000, 100)
    assert [j.user for j in rest] == [f"u{i:02}" for i in range(16, 40)]
    for job in first:
        await store.complete_notification(job.id)
    assert await store.pending_notifications() == 24
    # Expired leases are claimable again, still oldest first.
    again = await store.claim_notifications("n3", 7_000, 1_000, 5)
    assert [j.user for j in again] == [f"u{i:02}" for i in range(16, 21)]


async def test_a_delivered_job_coalesces_its_period_then_goes(store: Store) -> None:
    await store.notify_offline("bob", "g:x", 1, 100)
    [job] = await store.claim_notifications("n", 1_000, 500, 10)
    await store.complete_notification(job.id)
    await store.notify_offline("bob", "g:x", 2, 110)  # still offline: delivered already
    assert await store.pending_notifications() == 0
    assert await store.claim_notifications("n", 2_000, 500, 10) == []
    await store.user_online("bob")
    await store.complete_notification(job.id)  # idempotent after it is gone too
    await store.notify_offline("bob", "g:x", 3, 120)  # a new period: a new job
    [new] = await store.claim_notifications("n", 3_000, 500, 10)
    assert new.id != job.id and (new.seq, new.count) == (3, 1)
    # A job completed after its user came back online goes at once.
    await store.user_online("bob")
    await store.complete_notification(new.id)
    await store.notify_offline("bob", "g:x", 4, 130)
    [newer] = await store.claim_notifications("n", 4_000, 500, 10)
    assert newer.id not in (job.id, new.id) and (newer.seq, newer.count) == (4, 1)


async def test_append_with_notify_records_one_job_per_user(store: Store) -> None:
    conv, _ = await store.create_group("alice", "team", ["bob", "carol"], 100)
    first = await store.append(
        conv.id, [draft("alice", "n1", ts=200), draft("alice", "n2", ts=200)], notify=["bob"]
    )
    assert [m.seq for m in first if isinstance(m, StoredMessage)] == [2, 3]
    jobs = await store.claim_notifications("n", 1_000, 500, 10)
    assert [(j.user, j.conv, j.seq, j.count, j.first_ts, j.last_ts) for j in jobs] == [
        ("bob", conv.id, 2, 2, 200, 200)
    ]
    # A second append in the same offline period coalesces into the same job.
    await store.append(conv.id, [draft("alice", "n3", ts=300)], notify=["bob", "carol"])
    assert await store.pending_notifications() == 2
    jobs = await store.claim_notifications("n", 2_000, 500, 10)
    by_user = {j.user: j for j in jobs}
    assert sorted(by_user) == ["bob", "carol"]
    assert by_user["bob"].id == jobs[0].id and (by_user["bob"].seq, by_user["bob"].count) == (4, 3)
    assert by_user["bob"].last_ts == 300
    assert (by_user["carol"].seq, by_user["carol"].count) == (4, 1)


async def test_append_replay_with_notify_records_no_job(store: Store) -> None:
    conv = await store.direct_conversation("alice", "bob")
    [original] = await store.append(conv.id, [draft("alice", "c1")], notify=["bob"])
    assert await store.pending_notifications() == 1
    # The resend after an ambiguous failure replays: no second job, no coalesced count.
    [again] = await store.append(conv.id, [draft("alice", "c1")], notify=["bob"])
    assert again == original
    [job] = await store.claim_notifications("n", 1_000, 500, 10)
    assert (job.user, job.seq, job.count) == ("bob", 1, 1)
    # Nor after the user came back online: a replay stores nothing new.
    await store.user_online("bob")
    await store.append(conv.id, [draft("alice", "c1")], notify=["bob"])
    assert await store.pending_notifications() == 1
    # Non-members and an empty ``notify`` record nothing.
    await store.append(conv.id, [draft("alice", "c2")], notify=["zed"])
    await store.append(conv.id, [draft("alice", "c3")])
    assert await store.pending_notifications() == 1


async def test_ambiguous_append_writes_its_jobs_with_the_messages() -> None:
    # The simulator's ambiguous fault: the write (messages and jobs) happened, then Unavailable.
    faults = StoreFaults()
    store = FaultyStore(MemoryStore(rng=random.Random(7)), faults).as_store()
    conv = await store.direct_conversation("alice", "bob")
    faults.ambiguous_next()
    with pytest.raises(Unavailable):
        await store.append(conv.id, [draft("alice", "c1")], notify=["bob"])
    assert await store.pending_notifications() == 1
    await store.append(conv.id, [draft("alice", "c1")], notify=["bob"])  # the resend replays
    [job] = await store.claim_notifications("n", 1_000, 500, 10)
    assert (job.seq, job.count) == (1, 1)
    # A failure before the write stores neither the message nor the job.
    faults.fail_next()
    with pytest.raises(Unavailable):
        await store.append(conv.id, [draft("alice", "c2")], notify=["bob"])
    assert await store.last_seq(conv.id) == 1
    [job] = await store.claim_notifications("n", 2_000, 500, 10)
    assert job.count == 1


async def test_reads_across_small_and_big_batches(store: Store) -> None:
    # Chunks of 1 message, then one batch of 300 (split in two chunks), then small ones
    # again: every range, history page, last seq and sync must see the same messages.
    conv = await store.direct_conversation("alice", "bob")
    stored: list[StoredMessage] = []
    for i in range(40):
        stored += [
            m
            for m in await store.append(conv.id, [draft("alice", f"s{i}")])
            if isinstance(m, StoredMessage)
        ]
    batch = await store.append(conv.id, [draft("bob", f"b{i}") for i in range(300)])
    stored += [m for m in batch if isinstance(m, StoredMessage)]
    for i in range(5):
        stored += [
            m
            for m in await store.append(conv.id, [draft("alice", f"t{i}")])
            if isinstance(m, StoredMessage)
        ]
    assert [m.seq for m in stored] == list(range(1, 346))
    assert await store.last_seq(conv.id) == 345
    for lo, hi in [
        (1, 1),
        (30, 45),
        (41, 41),
        (100, 120),
        (280, 300),
        (330, 345),
        (340, 400),
        (346, 350),
    ]:
        assert await store.range(conv.id, lo, hi) == stored[lo - 1 : hi], (lo, hi)
    page, more = await store.history(conv.id, "bob", 200, 50)
    assert page == stored[149:199] and more
    page, more = await store.history(conv.id, "bob", None, 10)
    assert page == stored[-10:] and more
    await store.merge_recv([RecvMark(user="bob", device="p", conv=conv.id, seq=150)])
    [backlog] = await store.unsynced("bob", "p")
    assert (backlog.conv, backlog.lo, backlog.hi) == (conv.id, 151, len(stored))
    messages = await store.range(conv.id, backlog.lo, backlog.hi)
    assert messages == stored[150:]
    # Returned numbers are plain ints (not a driver's own int type).
    for value in (stored[0].seq, stored[0].ts, messages[0].seq, messages[0].ts):
        assert type(value) is int
    [row] = (await store.conversations("bob", "p")).rows
    assert (type(row.last_seq), type(row.delivered), type(row.unread)) == (int, int, int)


async def test_direct_conversation_lookup_does_not_change_it(store: Store) -> None:
    first = await store.direct_conversation("alice", "bob")
    await store.append(first.id, [draft("alice", "c1")])
    assert await store.direct_conversation("bob", "alice") == first
    assert await store.last_seq(first.id) == 1


async def test_conversations_are_paged_by_latest_activity(store: Store) -> None:
    groups = []
    for i in range(5):
        conv, _ = await store.create_group("alice", f"g{i}", ["bob"], 100 + i)
        groups.append(conv.id)
    # Activity is the time of the last message: g1 spoke last, then g3; the others did not.
    await store.append(groups[3], [draft("bob", "b3", ts=500)])
    await store.append(groups[1], [draft("bob", "b1", ts=600)])
    expected = [groups[1], groups[3], groups[4], groups[2], groups[0]]
    first = await store.conversations("alice", "d1", limit=2)
    assert [r.conv for r in first.rows] == expected[:2] and first.cursor is not None
    second = await store.conversations("alice", "d1", limit=2, cursor=first.cursor)
    assert [r.conv for r in second.rows] == expected[2:4] and second.cursor is not None
    last = await store.conversations("alice", "d1", limit=2, cursor=second.cursor)
    assert [r.conv for r in last.rows] == expected[4:] and last.cursor is None
    everything = await store.conversations("alice", "d1")
    assert [r.conv for r in everything.rows] == expected and everything.cursor is None
    assert [r.unread for r in everything.rows] == [1, 1, 0, 0, 0]
    for bad_limit in (0, 501):
        with pytest.raises(BadInput):
            await store.conversations("alice", "d1", limit=bad_limit)
    for bad_cursor in ("nonsense", ":g:1", "x:g:1"):
        with pytest.raises(BadInput):
            await store.conversations("alice", "d1", cursor=bad_cursor)


async def test_a_direct_conversation_is_stored_with_its_first_message(store: Store) -> None:
    conv = await store.direct_conversation("alice", "bob")
    # Before its first message it reads as empty and is listed nowhere.
    assert await store.get_conversation(conv.id) == conv
    assert await store.last_seq(conv.id) == 0
    assert await store.history(conv.id, "alice", None, 50) == ([], False)
    assert await store.range(conv.id, 1, 10) == []
    assert (await store.conversations("alice", "d1")).rows == ()
    assert await store.contacts("bob") == set()
    assert await store.unsynced("bob", "d1") == []
    with pytest.raises(Forbidden):
        await store.add_member(conv.id, "alice", "carol", 1)
    # A refused first message (a reused cmid) stores nothing either.
    other = await store.direct_conversation("alice", "carol")
    await store.append(other.id, [draft("alice", "c1", "to carol")])
    [refused] = await store.append(conv.id, [draft("alice", "c1", "to bob")])
    assert isinstance(refused, Conflict)
    assert [r.conv for r in (await store.conversations("bob", "d1")).rows] == []
    assert await store.contacts("bob") == set()
    # Its first message stores it, for both sides.
    [first] = await store.append(conv.id, [draft("bob", "b1", ts=2000)])
    assert isinstance(first, StoredMessage) and first.seq == 1
    assert [r.conv for r in (await store.conversations("alice", "d1")).rows] == [
        conv.id,
        other.id,
    ]
    assert await store.contacts("bob") == {"alice"}
    # Ids that name no direct conversation are still unknown.
    for bad in ("d:bob:alice", "d:alice", "d:alice:alice", "d:a b:c"):
        with pytest.raises(NotFound):
            await store.get_conversation(bad)


async def test_membership_events_record_their_jobs_with_them(store: Store) -> None:
    """G8 for member events: ``notify`` is written with the event, members only."""
    founders = [f"u{i:03}" for i in range(255)]
    conv, _ = await store.create_group("alice", "big", founders, 500, notify=founders)
    assert await store.pending_notifications() == 255
    jobs = await store.claim_notifications("n", 1_000, 500, 300)
    assert sorted(j.user for j in jobs) == founders
    assert {(j.conv, j.seq, j.count) for j in jobs} == {(conv.id, 1, 1)}
    small, _ = await store.create_group("alice", "t", ["bob"], 600, notify=["bob", "zed"])
    [bobs] = await store.claim_notifications("n", 1_000, 500, 10)  # zed is no founder
    assert (bobs.user, bobs.conv) == ("bob", small.id)
    added = await store.add_member(small.id, "alice", "carol", 700, notify=["bob", "carol"])
    assert added is not None
    assert await store.pending_notifications() == 257  # carol's new job; bob's coalesces
    await store.leave(small.id, "bob", 800, notify=["bob", "carol"])  # bob is out: no job
    removed = await store.remove_member(small.id, "alice", "carol", 900, notify=["carol"])
    assert removed is not None and await store.pending_notifications() == 257
    rest = await store.claim_notifications("n", 2_000, 500, 300)
    carol = next(j for j in rest if j.user == "carol")
    assert (carol.conv, carol.seq, carol.count) == (small.id, 3, 2)  # add, then bob's leave
