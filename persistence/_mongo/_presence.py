"""Presence facts of MongoStore: the ``users`` collection (``last_seen``).

Nothing is acknowledged on it, so it is written ``w: 1``.
"""

from __future__ import annotations

from pymongo.database import Database

from ._schema import Doc


class Presence:
    """The blocking operations on ``users`` (run in worker threads)."""

    def __init__(self, db: Database[Doc], light: Database[Doc]) -> None:
        self._db = db
        self._light = light

    def set_last_seen(self, user: str, ts: int) -> None:
        self._light.users.update_one({"_id": user}, {"$max": {"last_seen": ts}}, upsert=True)

    def last_seen(self, users: list[str]) -> dict[str, int | None]:
        found = {d["_id"]: d.get("last_seen") for d in self._db.users.find({"_id": {"$in": users}})}
        return {u: None if (t := found.get(u)) is None else int(t) for u in users}
