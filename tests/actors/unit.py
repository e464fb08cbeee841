"""Helpers for testing one actor at a time: a NodeContext over a MemoryStore and fake
connection handles that record what is pushed to them (no transport, no node)."""

from __future__ import annotations

import random

import attrs
import trio

from actors import NodeConfig
from actors._context import NodeContext
from actors._metrics import NodeMetrics
from actors._router import ConnectionHandle, Router
from persistence import Store
from protocol import ServerFrame

EPOCH_MS = 1_700_000_000_000


def virtual_ms() -> int:
    return EPOCH_MS + int(trio.current_time() * 1000)


def make_context(store: Store, **config: object) -> NodeContext:
    """The seams of one node, as the node builds them, with ``config`` overrides."""
    return NodeContext(
        store=store,
        config=NodeConfig(**config),  # type: ignore[arg-type]
        wall_ms=virtual_ms,
        rng=random.Random(7),
        metrics=NodeMetrics(),
        router=Router(),
        wake_notifier=lambda: None,
    )


@attrs.define
class FakeConnection:
    """A connection actor's handle whose pushes stay in ``handle.outbox`` for the test."""

    handle: ConnectionHandle
    closes: list[tuple[int, str]] = attrs.field(factory=list)

    @property
    def frames(self) -> list[ServerFrame]:
        return list(self.handle.outbox)


def fake_connection(conn_id: int, user: str, device: str = "d1") -> FakeConnection:
    closes: list[tuple[int, str]] = []
    handle = ConnectionHandle(
        conn_id=conn_id,
        user=user,
        device=device,
        request_close=lambda code, reason: closes.append((code, reason)),
        limit=1024,
        kick=lambda: None,
        byte_limit=NodeConfig().outbox_bytes,
        syncing=False,
    )
    return FakeConnection(handle=handle, closes=closes)


def connected(ctx: NodeContext, *users: str) -> list[FakeConnection]:
    """One fake connection per user (conn ids 1, 2, ...), registered in ``ctx``'s router."""
    connections = [fake_connection(i, user) for i, user in enumerate(users, start=1)]
    for connection in connections:
        ctx.router.register(connection.handle)
    return connections
