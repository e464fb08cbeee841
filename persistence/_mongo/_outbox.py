"""The offline-notification outbox of MongoStore (G8): the ``jobs`` collection.

One open job per user and offline period (a partial unique index on ``user`` where
``open``); later notifications of the period coalesce into it. The group commit writes the
jobs it owes in its own transaction with :func:`job_update`; these are the other operations.
"""

from __future__ import annotations

import uuid

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from .._errors import NotFound, Unavailable
from .._types import NotificationJob
from ._schema import Doc


def job_update(conv: str, seq: int, ts: int, count: int) -> Doc:
    """The upsert of a user's open offline-notification job (one per offline period)."""
    return {
        "$inc": {"count": count},
        "$set": {"conv": conv, "seq": seq, "last_ts": ts},
        "$setOnInsert": {
            "_id": uuid.uuid4().hex,
            "first_ts": ts,
            "done": False,
            "owner": None,
            "lease_until": None,
        },
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

    def notify(self, user: str, conv: str, seq: int, ts: int) -> None:
        update = job_update(conv, seq, ts, 1)
        for _ in range(3):
            try:
                self._db.jobs.update_one({"user": user, "open": True}, update, upsert=True)
                return
            except DuplicateKeyError:
                continue  # a concurrent call opened the period's job: update that one instead
        raise Unavailable(f"could not record the notification of user {user!r}")

    def online_many(self, users: list[str]) -> list[None]:
        """End the offline periods of ``users`` (one merged call of many hellos)."""
        # Read first (the partial unique index answers it): most users have no open job, and
        # then nothing is written. Nothing is acknowledged on this, so the write is light.
        wanted = sorted(set(users))
        found = self._db.jobs.find({"user": {"$in": wanted}, "open": True}, {"user": 1})
        if open_users := sorted({d["user"] for d in found}):
            self._light.jobs.update_many(
                {"user": {"$in": open_users}, "open": True}, {"$set": {"open": False}}
            )
        return [None] * len(users)

    def claim(self, owner: str, now_ms: int, lease_ms: int, limit: int) -> list[NotificationJob]:
        claimed = []
        for _ in range(limit):
            doc = self._db.jobs.find_one_and_update(
                {"done": False, "$or": [{"lease_until": None}, {"lease_until": {"$lte": now_ms}}]},
                {"$set": {"owner": owner, "lease_until": now_ms + lease_ms}},
                sort=[("first_ts", 1), ("_id", 1)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            claimed.append(_decode_job(doc))
        return claimed

    def complete(self, job_id: str) -> None:
        result = self._db.jobs.update_one({"_id": job_id}, {"$set": {"done": True}})
        if result.matched_count == 0:
            raise NotFound(f"notification job {job_id!r} does not exist")

    def pending(self) -> int:
        return self._db.jobs.count_documents({"done": False})
