"""The cluster tests' timings and clients: separate ``serve --mongo-uri`` nodes on one
database, or one ``serve --workers N`` parent (both :class:`nodeprocess.Serve`); clients
pinned to a node by ``welcome.node``."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio
from nodeprocess import mint_tokens
from wsclient import WsClient

#: Fast cluster timings: a dead node's devices go offline within LEASE_S + GRACE_S.
LEASE_S = 2.0
LEASE_REFRESH_S = 0.3
GRACE_S = 1.0
TIMINGS = [
    "--lease",
    str(LEASE_S),
    "--lease-refresh",
    str(LEASE_REFRESH_S),
    "--presence-grace",
    str(GRACE_S),
]


def tokens(data_dir: Path, *users: str) -> dict[str, str]:
    return dict(zip(users, mint_tokens(data_dir, *users), strict=True))


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


async def connect_on(
    nursery: trio.Nursery, port: int, token: str, device: str, node: str | None = None
) -> WsClient:
    """A client welcomed by ``node`` (any node if None): with several workers on one port the
    kernel picks the worker, so connect again until the wanted one answers."""
    with trio.fail_after(30):
        while True:
            client = await WsClient.open(nursery, port)
            welcome = await client.hello(token, device)
            if node is None or welcome["node"] == node:
                return client
            await client.aclose()
