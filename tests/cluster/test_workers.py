"""``messenger serve --workers 2`` as real processes on one port over one embedded store:
cross-worker delivery, and a worker SIGKILLed mid-traffic."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from clusterhelpers import GRACE_S, LEASE_S, TIMINGS, connect_on, kill, tokens
from nodeprocess import Serve, kill_leftover_store, serving
from wsclient import Traffic

pytestmark = pytest.mark.slow


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[Serve]:
    data_dir = tmp_path / "node"
    try:
        with serving(
            ["--workers", "2", "--port", "0", "--data-dir", str(data_dir), *TIMINGS]
        ) as serve:
            yield serve
    finally:
        kill_leftover_store(data_dir)


async def test_workers_share_one_port_and_deliver_across_each_other(
    parent: Serve, tmp_path: Path, nursery: trio.Nursery
) -> None:
    toks = tokens(tmp_path / "node", "alice", "bob")
    nodes = parent.workers()
    assert len(set(nodes.values())) == 2
    alice = await connect_on(nursery, parent.port, toks["alice"], "phone", nodes[1])
    bob = await connect_on(nursery, parent.port, toks["bob"], "laptop", nodes[2])
    await alice.send({"type": "send", "cmid": "c1", "to": "bob", "body": "across"})
    ack = await alice.wait_for("ack", cmid="c1")
    msg = await bob.wait_for("msg", conv=ack["conv"])
    assert (msg["seq"], msg["body"]) == (1, "across")


async def test_a_killed_worker_is_restarted_and_loses_nothing_acked(
    parent: Serve, tmp_path: Path, nursery: trio.Nursery
) -> None:
    toks = tokens(tmp_path / "node", "alice", "bob", "watcher")
    nodes = parent.workers()
    doomed, survivor = nodes[1], nodes[2]
    watcher = await connect_on(nursery, parent.port, toks["watcher"], "w", survivor)
    alice = await connect_on(nursery, parent.port, toks["alice"], "phone", doomed)
    bob = await connect_on(nursery, parent.port, toks["bob"], "laptop", survivor)
    # watcher shares a conversation with alice, so it may watch her presence.
    await watcher.send({"type": "send", "cmid": "w1", "to": "alice", "body": "hi"})
    await watcher.wait_for("ack", cmid="w1")
    await watcher.send({"type": "presence_sub", "rid": "s", "users": ["alice"]})
    assert (await watcher.wait_for("presence", user="alice"))["status"] == "online"

    traffic = Traffic(alice, "bob")
    acked = traffic.acked

    mark = len(parent.lines)
    async with trio.open_nursery() as inner:
        inner.start_soon(traffic.run)
        with trio.fail_after(30):
            await traffic.enough.wait()
        killed_at = trio.current_time()
        kill(int(doomed.rsplit("-", 1)[1]))  # SIGKILL: traffic keeps sending meanwhile
    assert acked

    # The parent restarts worker 1 as a new node.
    line = await trio.to_thread.run_sync(parent.wait_line, "messenger worker 1 node", mark)
    assert line.split()[-1] != doomed
    # The dead node's device goes offline after its lease expired, then the grace.
    offline = await watcher.wait_for("presence", user="alice", within=30)
    assert offline["status"] == "offline"
    # The restarted worker sweeps its predecessor at once, so this may come before the lease
    # expiry; it never comes before the grace.
    assert trio.current_time() - killed_at >= GRACE_S * 0.9
    assert trio.current_time() - killed_at <= LEASE_S + GRACE_S + 10

    # Alice reconnects to whichever node: everything acked is in the history, gap-free; bob
    # (on the surviving worker) was pushed all of it live.
    alice = await connect_on(nursery, parent.port, toks["alice"], "phone")
    conv = "d:alice:bob"
    result = await alice.request(
        {"type": "history", "rid": "h", "conv": conv, "limit": 200}, within=10
    )
    seqs = {m["cmid"]: m["seq"] for m in result["messages"]}
    assert {c: seqs.get(c) for c in acked} == acked
    assert sorted(seqs.values()) == list(range(1, len(seqs) + 1))
    pushed: set[int] = set()
    with trio.fail_after(10):
        while not set(acked.values()) <= pushed:
            pushed.add((await bob.wait_for("msg", conv=conv))["seq"])
    last = max(acked, key=acked.__getitem__)
    await alice.send({"type": "send", "cmid": last, "to": "bob", "body": f"#{last[1:]}"})
    assert (await alice.wait_for("ack", cmid=last))["seq"] == acked[last]


def test_workers_stop_when_their_parent_is_killed(parent: Serve) -> None:
    """A worker notices its parent's death by the end of its stdin (not PR_SET_PDEATHSIG,
    which fired when trio's forking thread idled out, 10 s after each start)."""
    pids = [int(node.rsplit("-", 1)[1]) for node in parent.workers().values()]
    exits = [os.pidfd_open(pid) for pid in pids]  # readable once that process has ended
    try:
        kill(parent.proc.pid)
        parent.proc.wait(timeout=30)
        for fd in exits:
            readable, _, _ = select.select([fd], [], [], 30)
            assert readable, "a worker outlived its killed parent"
    finally:
        for fd in exits:
            os.close(fd)
