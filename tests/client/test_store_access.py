"""What a local process other than the node can get from ``messenger serve``'s store."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pymongo
import pytest
import trio
from clienthelpers import NodeProcess

from client import Client

pytestmark = pytest.mark.slow


def store_port(data_dir: Path) -> int:
    """The embedded server's port, as anyone who can list processes sees it."""
    pid = int((data_dir / "secantusd.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(argv[argv.index(b"--port") + 1])


async def test_messages_are_not_readable_without_the_stores_credentials(
    node: NodeProcess,
) -> None:
    await trio.to_thread.run_sync(node.start)
    alice_token, bob_token = node.tokens("alice", "bob")
    async with Client(node.url, token=alice_token, device="a") as alice:
        with trio.fail_after(30):
            await alice.send("a secret", to="bob")
    assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700
    intruder: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{store_port(node.data_dir)}/?directConnection=true",
        serverSelectionTimeoutMS=10000,
    )
    try:
        with pytest.raises(pymongo.errors.OperationFailure) as refused:
            intruder.list_database_names()
        assert refused.value.code == 13
    finally:
        intruder.close()
    async with Client(node.url, token=bob_token, device="b") as bob:
        with trio.fail_after(30):
            (row,) = await bob.convs()
            page = await bob.history(row.conv)
    assert [m.body for m in page.messages] == ["a secret"]
