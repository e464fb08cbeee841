"""The ``store`` fixture: every contract test runs against MemoryStore and MongoStore."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from persistence import MemoryStore, MongoStore, Store


@pytest.fixture(params=["memory", "mongo"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore(rng=random.Random(7))
        return
    uri = request.getfixturevalue("mongo_uri")
    name = request.getfixturevalue("mongo_db_name")
    mongo = await MongoStore.connect(uri, name)
    try:
        yield mongo
    finally:
        await mongo.aclose()
