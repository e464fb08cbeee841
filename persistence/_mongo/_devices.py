"""Devices and presence facts of MongoStore: the ``devices`` and ``users`` collections.

Nothing is acknowledged on them, so they are written ``w: 1``.
"""

from __future__ import annotations

from pymongo.database import Database
from pymongo.errors import BulkWriteError

from ._cache import BoundedCache
from ._schema import DUPLICATE_KEY, Doc, device_id

#: Devices one store remembers having registered (a later connect then writes nothing).
REGISTERED_MAX = 100_000


class Devices:
    """The blocking operations on ``devices`` and ``users`` (run in worker threads)."""

    def __init__(self, db: Database[Doc], light: Database[Doc]) -> None:
        self._db = db
        self._light = light
        #: ``device_id``s registered by this instance since it started (see
        #: :meth:`registered`): the registry only answers "which devices ever connected", so
        #: a later connect of one of them changes nothing it answers.
        self._registered: BoundedCache[str, bool] = BoundedCache(REGISTERED_MAX)

    def registered(self, user: str, device: str) -> bool:
        return device_id(user, device) in self._registered

    def register_many(self, devices: list[tuple[str, str, int]]) -> list[None]:
        """Register (user, device, ts) of many hellos at once."""
        # Insert, not upsert: on SecantusDB every upsert statement of a bulk write is a
        # transaction of its own (a commit, an fsync with --sync-on-commit: ~3 ms each), while
        # one unordered insert_many is ~0.4 ms per new device. Devices registered before
        # (e.g. by a previous node) fail as duplicates and get their ts raised by one
        # update_many (one statement) to the latest ts of the batch.
        latest: dict[str, tuple[str, str, int]] = {}
        for u, d, ts in devices:
            key = device_id(u, d)
            if key not in latest or latest[key][2] < ts:
                latest[key] = (u, d, ts)
        docs = [{"_id": k, "u": u, "d": d, "ts": ts} for k, (u, d, ts) in latest.items()]
        try:
            self._light.devices.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            known = [docs[e["index"]]["_id"] for e in errors]
            ts = max(latest[k][2] for k in known)
            self._light.devices.update_many({"_id": {"$in": known}}, {"$max": {"ts": ts}})
        for key in latest:
            self._registered.put(key, True)
        return [None] * len(devices)

    def devices(self, user: str) -> list[str]:
        return sorted(d["d"] for d in self._db.devices.find({"u": user}))

    def set_last_seen(self, user: str, ts: int) -> None:
        self._light.users.update_one({"_id": user}, {"$max": {"last_seen": ts}}, upsert=True)

    def last_seen(self, users: list[str]) -> dict[str, int | None]:
        found = {d["_id"]: d.get("last_seen") for d in self._db.users.find({"_id": {"$in": users}})}
        return {u: None if (t := found.get(u)) is None else int(t) for u in users}
