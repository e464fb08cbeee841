"""Fixtures for end-to-end node tests: a Node on MongoStore (a fresh database on the shared
SecantusDB server), listening on a real TCP port, and raw-JSON WebSocket clients."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import trio
from wsclient import SECRET, TEST_CONFIG, Chat, wall_ms

from actors import Node, TokenIssuer
from persistence import MongoStore


@pytest.fixture
async def chat(mongo_uri: str, mongo_db_name: str, nursery: trio.Nursery) -> AsyncIterator[Chat]:
    store = await MongoStore.connect(mongo_uri, mongo_db_name)
    issuer = TokenIssuer(SECRET)
    node = Node(
        store=store,
        verify_token=issuer.verify,
        rng=random.Random(7),
        wall_ms=wall_ms,
        config=TEST_CONFIG,
    )
    await nursery.start(node.run)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(node.serve_listeners, listeners)
    port = listeners[0].socket.getsockname()[1]
    yield Chat(node=node, store=store, port=port, nursery=nursery, issuer=issuer)
    await node.shutdown()
    await store.aclose()
