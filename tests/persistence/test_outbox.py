"""MongoStore's outbox on a real server: claims are batched, delivered jobs are deleted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo import monitoring

from persistence._mongo._outbox import Outbox
from persistence._mongo._schema import DURABLE, create_indexes


class Commands(monitoring.CommandListener):
    """The commands a client sends, and how many documents each ``find`` returned."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.found: list[int] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == "find":
            self.found.append(len(event.reply["cursor"]["firstBatch"]))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def outbox(mongo_uri: str, mongo_db_name: str) -> Iterator[tuple[Outbox, Any, Commands]]:
    commands = Commands()
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongo_uri, event_listeners=[commands]
    )
    db = client.get_database(mongo_db_name, write_concern=DURABLE)
    create_indexes(db)
    try:
        yield Outbox(db, db), db, commands
    finally:
        client.drop_database(mongo_db_name)
        client.close()


@pytest.mark.slow
def test_claims_read_about_a_batch_whatever_the_backlog(
    outbox: tuple[Outbox, Any, Commands],
) -> None:
    """800 pending jobs drained 16 at a time: after the first claim (which looks for the
    oldest job once), each claim reads about a batch of jobs, not the backlog."""
    jobs, db, commands = outbox
    db.jobs.insert_many(
        [
            {
                "_id": f"j{i:04}",
                "user": f"u{i:04}",
                "conv": "g:x",
                "seq": 1,
                "count": 1,
                "first_ts": 1_000 + i,
                "last_ts": 1_000 + i,
                "open": True,
                "done": False,
                "owner": None,
                "lease_until": None,
                "due": 1_000 + i,
            }
            for i in range(800)
        ]
    )
    now_ms = 10_000_000
    first = jobs.claim("n", now_ms, 60_000, 16)
    order = [j.id for j in first]
    read_per_claim: list[int] = []
    while True:
        commands.found.clear()
        batch = jobs.claim("n", now_ms, 60_000, 16)
        if not batch:
            break
        order += [j.id for j in batch]
        read_per_claim.append(sum(commands.found))
    assert order == [f"j{i:04}" for i in range(800)]
    assert max(read_per_claim) <= 4 * 16 * 2  # window and read-back, about a batch each
    assert sum(read_per_claim) <= 3 * 800


def test_delivered_jobs_leave_the_collection(outbox: tuple[Outbox, Any, Commands]) -> None:
    jobs, db, _ = outbox
    for i in range(10):
        jobs.notify(f"u{i}", "g:x", 1, 100 + i)
    jobs.online_many([f"u{i}" for i in range(5)])  # back online before delivery
    for job in jobs.claim("n", 1_000, 500, 100):
        jobs.complete(job.id)
    # The five still offline keep one done marker each; the others are gone.
    assert db.jobs.count_documents({}) == 5
    assert db.jobs.count_documents({"done": True, "open": True}) == 5
    jobs.online_many([f"u{i}" for i in range(10)])
    assert db.jobs.count_documents({}) == 0
