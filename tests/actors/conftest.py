"""Fixtures for end-to-end node tests: a Node on MongoStore (a fresh database on the shared
SecantusDB server), listening on a real TCP port, and raw-JSON WebSocket clients."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from wsclient import SECRET, TEST_CONFIG, Chat, StartChat, serve_node

from actors import NodeConfig, TokenIssuer
from persistence import MongoStore


@pytest.fixture
async def start_chat(
    mongo_uri: str, mongo_db_name: str, nursery: trio.Nursery
) -> AsyncIterator[StartChat]:
    """Start a node with a config of the test's own (limits, timeouts) on a fresh database."""
    started: list[Chat] = []

    async def start(config: NodeConfig) -> Chat:
        store = await MongoStore.connect(mongo_uri, mongo_db_name)
        issuer = TokenIssuer(SECRET)
        node, port = await serve_node(nursery, store, config, issuer.verify)
        chat = Chat(node=node, store=store, port=port, nursery=nursery, issuer=issuer)
        started.append(chat)
        return chat

    yield start
    for chat in started:
        await chat.node.shutdown()
        await chat.store.aclose()


@pytest.fixture
async def chat(start_chat: StartChat) -> Chat:
    """A node with the tests' config (:data:`wsclient.TEST_CONFIG`)."""
    return await start_chat(TEST_CONFIG)
