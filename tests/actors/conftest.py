"""Fixtures for end-to-end node tests: a Node on MongoStore (a fresh database on the shared
SecantusDB server), listening on a real TCP port, and raw-JSON WebSocket clients."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import trio
from wsclient import SECRET, TEST_CONFIG, Chat, StartChat, wall_ms

from actors import Node, NodeConfig, TokenIssuer
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


@pytest.fixture
async def start_chat(
    mongo_uri: str, mongo_db_name: str, nursery: trio.Nursery
) -> AsyncIterator[StartChat]:
    """Start a node with a config of the test's own (limits, timeouts) on a fresh database."""
    started: list[Chat] = []

    async def start(config: NodeConfig) -> Chat:
        store = await MongoStore.connect(mongo_uri, mongo_db_name)
        issuer = TokenIssuer(SECRET)
        node = Node(
            store=store,
            verify_token=issuer.verify,
            rng=random.Random(7),
            wall_ms=wall_ms,
            config=config,
        )
        await nursery.start(node.run)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(node.serve_listeners, listeners)
        port = listeners[0].socket.getsockname()[1]
        chat = Chat(node=node, store=store, port=port, nursery=nursery, issuer=issuer)
        started.append(chat)
        return chat

    yield start
    for chat in started:
        await chat.node.shutdown()
        await chat.store.aclose()
