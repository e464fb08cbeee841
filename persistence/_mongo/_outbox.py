"""The offline-notification outbox of MongoStore (G8): the ``jobs`` collection.

One open job per user and offline period (a partial unique index on ``user`` where
``open``); later notifications of the period coalesce into it. Writers that owe jobs (the
group commit, a group's creation) write them in their own transaction with
:func:`write_jobs`, one bulk write for any number of users; these are the other operations.

The collection stays as small as the work left: a delivered job is deleted, except while
its user's offline period lasts -- then it stays, ``done``, as the marker into which the
period's later messages coalesce (one notification per period), and goes when the user
comes online.

Claims go through the ``due`` index: ``due`` is when a job may next be claimed (its
creation time, then the end of each lease; none once delivered). SecantusDB reads every
index entry in a query's range before it applies ``limit`` or sorts, so "the oldest 16 of
10,000" through one range costs as much as reading all 10,000. A claim therefore reads a
*window* ``[floor, floor + width]`` of ``due``: ``floor`` is the lowest due of a claimable
job as far as this store knows (found by one full scan at the start and every
:data:`RESCAN_S` after, which also catches jobs written below it by a node whose clock is
more than :data:`RECENT_MS` slow), ``width`` adapts so a window holds about a batch; the
last :data:`RECENT_MS` are one window. A claim costs a few queries over about a batch of
jobs whatever the backlog (plus the recent jobs not yet claimed).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping

import attrs
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from .._errors import Unavailable
from .._types import NotificationJob
from ._schema import DUPLICATE_KEY, Doc

#: Seconds between full scans for the lowest ``due`` (see the module docstring).
RESCAN_S = 60.0
#: The last this many ms of ``due`` are read as one window at every claim, and the floor
#: never passes into them: a job is written with a ``due`` of its commit's timestamp,
#: taken a little before it is visible, so the recent past must be looked at again.
RECENT_MS = 10_000
#: The first window of a claim, in ms of ``due``; it widens over empty stretches.
_FIRST_WIDTH_MS = 1000


@attrs.define(eq=False)
class JobNote:
    """What a write owes one user's job: the latest (conv, seq), its time, how many."""

    conv: str
    seq: int
    ts: int
    count: int


class JobRace(Exception):
    """A concurrent writer opened a user's job inside our transaction: retry the whole."""


def write_jobs(
    db: Database[Doc], notes: Mapping[str, JobNote], session: ClientSession | None = None
) -> None:
    """Open or coalesce the jobs of ``notes`` (by user), in ``session``'s transaction if
    given: one read of the open jobs, one update per distinct note (a group event owes all
    its members the same one) and one insert of the new jobs, however many users. Raises
    :class:`JobRace` when a concurrent writer opened one of them meanwhile."""
    if not notes:
        return
    users = sorted(notes)
    found = db.jobs.find({"user": {"$in": users}, "open": True}, {"user": 1}, session=session)
    existing = {doc["user"] for doc in found}
    by_note: dict[tuple[str, int, int, int], list[str]] = {}
    for user in users:
        if user in existing:
            note = notes[user]
            by_note.setdefault((note.conv, note.seq, note.ts, note.count), []).append(user)
    for (conv, seq, ts, count), same in sorted(by_note.items()):
        db.jobs.update_many(
            {"user": {"$in": same}, "open": True},
            {"$inc": {"count": count}, "$set": {"conv": conv, "seq": seq, "last_ts": ts}},
            session=session,
        )
    new = [_new_job(user, notes[user]) for user in users if user not in existing]
    if not new:
        return
    try:
        db.jobs.insert_many(new, ordered=False, session=session)
    except BulkWriteError as exc:
        if any(e.get("code") == DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
            raise JobRace(users) from exc
        raise


def _new_job(user: str, note: JobNote) -> Doc:
    return {
        "_id": uuid.uuid4().hex,
        "user": user,
        "conv": note.conv,
        "seq": note.seq,
        "count": note.count,
        "first_ts": note.ts,
        "last_ts": note.ts,
        "open": True,
        "done": False,
        "owner": None,
        "lease_until": None,
        "due": note.ts,
    }


def _decode_job(doc: Doc) -> NotificationJob:
    return NotificationJob(
        id=doc["_id"],
        user=doc["user"],
        conv=doc["conv"],
        seq=int(doc["seq"]),
        count=int(doc["count"]),
        first_ts=int(doc["first_ts"]),
        last_ts=int(doc["last_ts"]),
        owner=doc["owner"],
        lease_until=None if doc["lease_until"] is None else int(doc["lease_until"]),
    )


class Outbox:
    """The blocking operations on ``jobs`` (run in worker threads by the store)."""

    def __init__(self, db: Database[Doc], light: Database[Doc]) -> None:
        self._db = db
        self._light = light
        #: No claimable job has a lower ``due`` (as far as we know); None: scan for it.
        self._floor: int | None = None
        self._width = _FIRST_WIDTH_MS
        self._rescan_at = 0.0

    def notify(self, user: str, conv: str, seq: int, ts: int) -> None:
        note = {user: JobNote(conv, seq, ts, 1)}
        for _ in range(3):
            try:
                write_jobs(self._db, note)
                return
            except JobRace:
                continue  # a concurrent call opened the period's job: update that one instead
        raise Unavailable(f"could not record the notification of user {user!r}")

    def online_many(self, users: list[str]) -> list[None]:
        """End the offline periods of ``users`` (one merged call of many hellos)."""
        # Read first (the partial unique index answers it): most users have no open job, and
        # then nothing is written. Nothing is acknowledged on this, so the writes are light.
        wanted = sorted(set(users))
        found = self._db.jobs.find({"user": {"$in": wanted}, "open": True}, {"user": 1})
        if open_users := sorted({d["user"] for d in found}):
            # Pending jobs close first; then the markers of delivered ones go. In this order
            # a completion racing with it either finds its job closed (and deletes it) or
            # leaves a marker the second write deletes.
            self._light.jobs.update_many(
                {"user": {"$in": open_users}, "open": True, "done": False},
                {"$set": {"open": False}},
            )
            self._light.jobs.delete_many({"user": {"$in": open_users}, "open": True, "done": True})
        return [None] * len(users)

    def claim(self, owner: str, now_ms: int, lease_ms: int, limit: int) -> list[NotificationJob]:
        """Lease the oldest ``limit`` claimable jobs (``due <= now_ms``), window by window."""
        if self._floor is None or time.monotonic() >= self._rescan_at:
            self._floor = self._lowest_due()
            self._rescan_at = time.monotonic() + RESCAN_S
        claimed: list[NotificationJob] = []
        recent = now_ms - RECENT_MS
        while self._floor is not None and self._floor <= now_ms and len(claimed) < limit:
            low = self._floor
            high = now_ms if low >= recent else min(recent, low + self._width)
            found = self._db.jobs.find(
                {"due": {"$gte": low, "$lte": high}}, {"due": 1, "first_ts": 1}
            )
            window = sorted((doc["due"], doc["first_ts"], doc["_id"]) for doc in found)
            wanted = window[: limit - len(claimed)]
            claimed += self._lease([job_id for *_, job_id in wanted], owner, now_ms, lease_ms)
            # Aim the next window at about a batch of jobs; widen fast over empty stretches.
            if window:
                self._width = max(1, (high - low + 1) * limit // len(window))
            else:
                self._width *= 16
            if len(wanted) < len(window):
                self._floor = wanted[-1][0] if wanted else low  # the window holds more
                break
            if high == now_ms:
                break
            # The window is used up (what we did not get, a concurrent claimer did).
            self._floor = high + 1
        if self._floor is not None:
            self._floor = min(self._floor, recent)  # never into the recent past
        return sorted(claimed, key=lambda job: (job.first_ts, job.id))

    def _lowest_due(self) -> int | None:
        """The lowest ``due`` of any job: a scan of the whole index (see the docstring)."""
        # Jobs written before ``due`` existed become claimable at once.
        self._db.jobs.update_many({"due": {"$exists": False}, "done": False}, {"$set": {"due": 0}})
        lowest = self._db.jobs.find_one({"due": {"$ne": None}}, {"due": 1}, sort=[("due", 1)])
        return None if lowest is None else int(lowest["due"])

    def _lease(
        self, ids: list[str], owner: str, now_ms: int, lease_ms: int
    ) -> list[NotificationJob]:
        """Lease those of ``ids`` still claimable; the ones this call got, oldest first."""
        if not ids:
            return []
        claim = uuid.uuid4().hex
        until = now_ms + lease_ms
        self._db.jobs.update_many(
            {"_id": {"$in": ids}, "due": {"$lte": now_ms}},
            {"$set": {"owner": owner, "lease_until": until, "due": until, "claim": claim}},
        )
        got = self._db.jobs.find(
            {"_id": {"$in": ids}, "claim": claim}, limit=len(ids), batch_size=len(ids)
        )
        return [_decode_job(doc) for doc in got]

    def complete(self, job_id: str) -> None:
        """Delivered: the job goes, or stays as its open period's marker (module docstring)."""
        marked = self._db.jobs.update_one(
            {"_id": job_id, "open": True}, {"$set": {"done": True, "due": None}}
        )
        if marked.matched_count == 0:
            self._db.jobs.delete_one({"_id": job_id})

    def pending(self) -> int:
        return self._db.jobs.count_documents({"done": False})
