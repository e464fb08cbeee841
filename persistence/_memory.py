"""MemoryStore: the Store contract in plain Python, for the deterministic simulator.

No threads, no wall clock, no global random, no iteration over unsorted sets: the same
operations in the same order give the same results byte for byte. One instance may be shared
by several simulated nodes. It has no fault hooks: the simulator injects faults from outside,
through a wrapper (``sim._store.FaultyStore``), so production code carries no test hooks.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import attrs

from protocol import MemberEvent

from ._contract import Store
from ._errors import StoreError
from ._memory_cluster import MemoryCluster
from ._rules import (
    GROUP_ID_HEX,
    apply_member_change,
    check_id,
    check_limit,
    check_title,
    clamp_mark,
    convs_page,
    direct_id,
    draft_error,
    group_founders,
    history_bounds,
    implicit_direct,
    member_message,
    new_group,
    no_such_conversation,
    not_member,
    plan_member_change,
    replay,
    unread_count,
)
from ._types import (
    BacklogRange,
    Conversation,
    ConvPage,
    ConvRow,
    Draft,
    MemberMarks,
    MemberOp,
    NotificationJob,
    ReadMark,
    RecvMark,
    StoredMessage,
)


@attrs.define(eq=False)
class _Job:
    id: str
    user: str
    conv: str
    seq: int
    count: int
    first_ts: int
    last_ts: int
    open: bool = True
    done: bool = False
    owner: str | None = None
    lease_until: int | None = None

    def freeze(self) -> NotificationJob:
        return NotificationJob(
            id=self.id,
            user=self.user,
            conv=self.conv,
            seq=self.seq,
            count=self.count,
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            owner=self.owner,
            lease_until=self.lease_until,
        )


class MemoryStore(MemoryCluster, Store):
    """In-memory Store; deterministic given ``rng`` (group ids and message ids come from it).

    Leases, sessions and the change feed are its base :class:`MemoryCluster`
    (:mod:`persistence._memory_cluster`).
    """

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        feed_retention: int = 100_000,
    ):
        super().__init__(feed_retention=feed_retention)
        self._rng = rng if rng is not None else random.Random(0)
        self._convs: dict[str, Conversation] = {}
        self._messages: dict[str, list[StoredMessage]] = {}
        self._keys: dict[tuple[str, str, str], StoredMessage] = {}
        self._recv: dict[tuple[str, str, str], int] = {}
        self._read: dict[tuple[str, str], int] = {}
        self._jobs: dict[str, _Job] = {}
        self._open_job: dict[str, str] = {}
        self._jobs_created = 0

    # -- plumbing ------------------------------------------------------------------------

    def _new_id(self) -> str:
        return f"{self._rng.getrandbits(4 * GROUP_ID_HEX):0{GROUP_ID_HEX}x}"

    def _conv(self, conv: str) -> Conversation:
        found = self._convs.get(conv) or implicit_direct(conv)
        if found is None:
            raise no_such_conversation(conv)
        return found

    def _store(self, message: StoredMessage) -> StoredMessage:
        self._messages[message.conv].append(message)
        return message

    # -- conversations -------------------------------------------------------------------

    async def direct_conversation(self, a: str, b: str) -> Conversation:
        conv_id = direct_id(a, b)
        await self._enter()
        return self._conv(conv_id)

    async def create_group(
        self,
        creator: str,
        title: str,
        members: Iterable[str],
        ts: int,
        *,
        notify: Iterable[str] = (),
    ) -> tuple[Conversation, StoredMessage]:
        check_title(title)
        founders = group_founders(creator, members)
        await self._enter()
        conv = new_group(f"g:{self._new_id()}", creator, title, founders)
        self._convs[conv.id] = conv
        self._messages[conv.id] = []
        creation = MemberEvent(op="create", by=creator, users=tuple(founders))
        event = self._store(member_message(conv.id, 1, self._new_id(), creation, ts))
        self._record_jobs(conv, notify, event)
        self._emit_messages(conv.id, [event])
        return conv, event

    async def get_conversation(self, conv: str) -> Conversation:
        await self._enter()
        return self._conv(conv)

    async def _member_change(
        self,
        conv_id: str,
        op: MemberOp,
        actor: str,
        user: str,
        ts: int,
        notify: Iterable[str],
    ) -> StoredMessage | None:
        await self._enter()
        conv = self._conv(conv_id)
        plan = plan_member_change(conv, op, actor, user)
        if plan is None:
            return None
        kind, target = plan
        seq = len(self._messages[conv_id]) + 1
        change = MemberEvent(op=kind, by=actor, users=(target,))
        event = self._store(member_message(conv_id, seq, self._new_id(), change, ts))
        self._convs[conv_id] = apply_member_change(conv, kind, target, seq)
        self._record_jobs(self._convs[conv_id], notify, event)
        self._emit_messages(conv_id, [event])
        return event

    def _record_jobs(self, conv: Conversation, notify: Iterable[str], event: StoredMessage) -> None:
        """G8 for a membership event: in the same step as the event (no await between)."""
        for user in sorted(set(notify)):
            if conv.is_member(user):
                self._record_job(user, conv.id, event.seq, event.ts, 1)

    async def add_member(
        self, conv: str, actor: str, user: str, ts: int, *, notify: Iterable[str] = ()
    ) -> StoredMessage | None:
        return await self._member_change(conv, "add", actor, user, ts, notify)

    async def remove_member(
        self, conv: str, actor: str, user: str, ts: int, *, notify: Iterable[str] = ()
    ) -> StoredMessage | None:
        return await self._member_change(conv, "remove", actor, user, ts, notify)

    async def leave(
        self, conv: str, user: str, ts: int, *, notify: Iterable[str] = ()
    ) -> StoredMessage:
        event = await self._member_change(conv, "leave", user, user, ts, notify)
        assert event is not None, "a leave always records an event"
        return event

    def _row(self, conv: Conversation, user: str, device: str) -> ConvRow:
        messages = self._messages[conv.id]
        read = self._read.get((user, conv.id), 0)
        marks = self._marks(conv)
        return ConvRow(
            conv=conv.id,
            kind=conv.kind,
            title=conv.title,
            members=tuple(conv.members),
            last_seq=len(messages),
            delivered=self._recv.get((user, device, conv.id), 0),
            read=read,
            unread=unread_count(conv, user, read, messages[read:]),
            others=tuple(marks[u] for u in conv.members if u != user),
        )

    async def conversations(
        self, user: str, device: str, *, limit: int = 100, cursor: str | None = None
    ) -> ConvPage:
        check_id("user id", user)
        check_id("device id", device)
        await self._enter()
        activity = [
            (log[-1].ts if (log := self._messages[c]) else 0, c)
            for c in sorted(self._convs)
            if self._convs[c].is_member(user)
        ]
        page, next_cursor = convs_page(activity, limit, cursor)
        rows = tuple(self._row(self._convs[c], user, device) for c in page)
        return ConvPage(rows=rows, cursor=next_cursor)

    async def contacts(self, user: str) -> set[str]:
        await self._enter()
        found: set[str] = set()
        for conv in self._convs.values():
            if conv.is_member(user):
                found.update(u for u in conv.members if u != user)
        return found

    # -- messages ------------------------------------------------------------------------

    async def append(
        self, conv: str, drafts: Sequence[Draft], *, notify: Sequence[str] = ()
    ) -> list[StoredMessage | StoreError]:
        await self._enter()
        current = self._conv(conv)
        log = self._messages.get(conv, [])
        results: list[StoredMessage | StoreError] = []
        new: list[StoredMessage] = []
        for draft in drafts:
            error = draft_error(draft)
            if error is not None:
                results.append(error)
                continue
            key = (draft.sender, draft.device, draft.cmid)
            original = self._keys.get(key)
            if original is not None:
                results.append(replay(original, conv, draft))
                continue
            if not current.is_member(draft.sender):
                results.append(not_member(current, draft.sender))
                continue
            message = StoredMessage(
                conv=conv,
                seq=len(log) + 1,
                id=self._new_id(),
                sender=draft.sender,
                device=draft.device,
                cmid=draft.cmid,
                body=draft.body,
                ts=draft.ts,
            )
            if conv not in self._convs:  # a direct conversation's first message stores it
                self._convs[conv] = current
                self._messages[conv] = log
            self._keys[key] = self._store(message)
            results.append(message)
            new.append(message)
        if new:
            # G8: the jobs are part of the same write as the messages (one step, no await).
            for user in sorted(set(notify)):
                if current.is_member(user):
                    self._record_job(user, conv, new[0].seq, max(m.ts for m in new), len(new))
        self._emit_messages(conv, new)
        return results

    async def history(
        self, conv: str, user: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        check_limit(limit)
        await self._enter()
        lo, hi = history_bounds(self._conv(conv), user, before)
        log = self._messages.get(conv, [])
        top = len(log) if hi is None else min(hi, len(log))
        start = max(lo, top - limit + 1)
        return log[start - 1 : top], start > lo

    async def range(self, conv: str, lo: int, hi: int) -> list[StoredMessage]:
        await self._enter()
        self._conv(conv)
        return self._messages.get(conv, [])[max(lo, 1) - 1 : max(hi, 0)]

    async def read_ranges(self, spans: Sequence[BacklogRange]) -> list[StoredMessage]:
        await self._enter()
        return [
            m
            for s in spans
            for m in self._messages.get(s.conv, [])[max(s.lo, 1) - 1 : max(s.hi, 0)]
        ]

    async def last_seq(self, conv: str) -> int:
        await self._enter()
        self._conv(conv)
        return len(self._messages.get(conv, []))

    # -- watermarks ----------------------------------------------------------------------

    def _clamped(self, conv_id: str, user: str, seq: int) -> int | None:
        conv = self._convs.get(conv_id)
        if conv is None:
            return None
        return clamp_mark(conv, user, len(self._messages[conv_id]), seq)

    async def merge_recv(self, marks: Sequence[RecvMark]) -> None:
        await self._enter()
        for mark in marks:
            seq = self._clamped(mark.conv, mark.user, mark.seq)
            if seq is not None:
                key = (mark.user, mark.device, mark.conv)
                self._recv[key] = max(self._recv.get(key, 0), seq)

    async def merge_read(self, marks: Sequence[ReadMark]) -> None:
        await self._enter()
        for mark in marks:
            seq = self._clamped(mark.conv, mark.user, mark.seq)
            if seq is not None:
                key = (mark.user, mark.conv)
                self._read[key] = max(self._read.get(key, 0), seq)

    def _marks(self, conv: Conversation) -> dict[str, MemberMarks]:
        users = sorted([*conv.members, *conv.departed])
        delivered = dict.fromkeys(users, 0)
        for (user, _device, conv_id), seq in self._recv.items():
            if conv_id == conv.id and user in delivered:
                delivered[user] = max(delivered[user], seq)
        return {
            u: MemberMarks(user=u, delivered=delivered[u], read=self._read.get((u, conv.id), 0))
            for u in users
        }

    async def marks(self, conv: str) -> dict[str, MemberMarks]:
        await self._enter()
        return self._marks(self._conv(conv))

    async def device_recv(self, user: str, device: str, conv: str) -> int:
        await self._enter()
        return self._recv.get((user, device, conv), 0)

    async def unsynced(self, user: str, device: str) -> list[BacklogRange]:
        await self._enter()
        out: list[BacklogRange] = []
        for conv_id in sorted(self._convs):
            conv = self._convs[conv_id]
            span = conv.visible_range(user)
            if span is None:
                continue
            lo = max(span[0], self._recv.get((user, device, conv_id), 0) + 1)
            last = len(self._messages[conv_id])
            hi = last if span[1] is None else min(span[1], last)
            if lo <= hi:
                out.append(BacklogRange(conv=conv_id, lo=lo, hi=hi))
        return out

    # -- presence --------------------------------------------------------------------------

    async def set_last_seen(self, user: str, ts: int) -> None:
        await self._enter()
        self._last_seen[user] = max(self._last_seen.get(user, ts), ts)

    async def last_seen(self, users: Iterable[str]) -> dict[str, int | None]:
        await self._enter()
        return {u: self._last_seen.get(u) for u in users}

    # -- notification outbox -------------------------------------------------------------

    async def notify_offline(self, user: str, conv: str, seq: int, ts: int) -> None:
        await self._enter()
        self._record_job(user, conv, seq, ts, 1)

    def _record_job(self, user: str, conv: str, seq: int, ts: int, count: int) -> None:
        """Open ``user``'s job of this offline period, or coalesce into the open one."""
        job_id = self._open_job.get(user)
        if job_id is None:
            self._jobs_created += 1
            job_id = f"n{self._jobs_created}"
            self._jobs[job_id] = _Job(job_id, user, conv, seq, 0, ts, ts)
            self._open_job[user] = job_id
        job = self._jobs[job_id]
        job.count += count
        job.conv, job.seq, job.last_ts = conv, seq, ts

    async def user_online(self, user: str) -> None:
        await self._enter()
        job_id = self._open_job.pop(user, None)
        if job_id is not None:
            job = self._jobs[job_id]
            job.open = False
            if job.done:  # the marker of a delivered job has done its work
                del self._jobs[job_id]

    async def claim_notifications(
        self, owner: str, now_ms: int, lease_ms: int, limit: int
    ) -> list[NotificationJob]:
        await self._enter()
        claimed: list[NotificationJob] = []
        for job in self._jobs.values():  # insertion order is creation order
            if len(claimed) >= limit:
                break
            if job.done or (job.lease_until is not None and job.lease_until > now_ms):
                continue
            job.owner, job.lease_until = owner, now_ms + lease_ms
            claimed.append(job.freeze())
        return claimed

    async def complete_notification(self, job_id: str) -> None:
        await self._enter()
        job = self._jobs.get(job_id)
        if job is None:
            return
        job.done = True
        if not job.open:
            del self._jobs[job_id]

    async def pending_notifications(self) -> int:
        await self._enter()
        return sum(1 for job in self._jobs.values() if not job.done)

    async def aclose(self) -> None:
        # Like a database, the state outlives any one node: a simulated node that crashes and
        # closes its handle must not take the shared store down with it.
        return None
