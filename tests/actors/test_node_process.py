"""``messenger serve`` as a real process: SIGKILLed mid-traffic, restarted on the same data
directory; clients reconnect and nothing that was acked is lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from nodeprocess import Serve, kill_leftover_store, mint_tokens
from wsclient import Traffic, WsClient, acks_until_close, slow_reader


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "node"
    kill_leftover_store(tmp_path / "node")


def serve(data_dir: Path) -> Serve:
    return Serve(["--port", "0", "--data-dir", str(data_dir)])


@pytest.mark.slow
async def test_killed_node_loses_nothing_acked(data_dir: Path, nursery: trio.Nursery) -> None:
    first = await trio.to_thread.run_sync(serve, data_dir)
    alice_token, bob_token = mint_tokens(data_dir, "alice", "bob")
    alice = await WsClient.open(nursery, first.port)
    await alice.hello(alice_token, "phone")
    traffic = Traffic(alice, "bob")
    acked = traffic.acked

    async with trio.open_nursery() as inner:
        inner.start_soon(traffic.run)
        with trio.fail_after(30):
            await traffic.enough.wait()
        await trio.to_thread.run_sync(first.kill)  # traffic keeps sending meanwhile
    assert acked

    second = await trio.to_thread.run_sync(serve, data_dir)
    try:
        bob = await WsClient.open(nursery, second.port)
        await bob.hello(bob_token, "laptop")
        seqs = {f["cmid"]: f["seq"] for f in bob.synced_frames}
        assert {c: seqs.get(c) for c in acked} == acked
        assert sorted(seqs.values()) == list(range(1, len(seqs) + 1))  # gap-free
        alice = await WsClient.open(nursery, second.port)
        await alice.hello(alice_token, "phone")
        last = max(acked, key=acked.__getitem__)
        await alice.send({"type": "send", "cmid": last, "to": "bob", "body": f"#{last[1:]}"})
        assert (await alice.wait_for("ack", cmid=last))["seq"] == acked[last]
        await alice.aclose()
        await bob.aclose()
    finally:
        assert await trio.to_thread.run_sync(second.terminate) == 0
    assert not (data_dir / "secantusd.pid").exists()


@pytest.mark.slow
async def test_sigterm_writes_what_each_connection_is_owed_then_1001(
    data_dir: Path, nursery: trio.Nursery
) -> None:
    node = await trio.to_thread.run_sync(serve, data_dir)
    ann_token, ben_token = mint_tokens(data_dir, "ann", "ben")
    ann, ann_socket = await slow_reader(nursery, node.port, ann_token)
    ben = await WsClient.open(nursery, node.port)
    await ben.hello(ben_token, "d1")
    # About 1 MiB of pushes ann does not read: her connection's writer is stuck behind them.
    for i in range(64):
        await ben.send({"type": "send", "cmid": f"b{i}", "to": "ann", "body": "x" * 16384})
        await ben.wait_for("ack", cmid=f"b{i}")
    cmids = [f"c{i}" for i in range(50)]
    for cmid in cmids:
        await ann.send({"type": "send", "cmid": cmid, "to": "ben", "body": cmid})
    await ben.wait_for("msg", cmid=cmids[-1])  # all stored; their acks queued for ann
    exit_codes: list[int] = []

    async def terminate() -> None:
        exit_codes.append(await trio.to_thread.run_sync(node.terminate))

    nursery.start_soon(terminate)
    with trio.fail_after(30):
        acked, reason = await acks_until_close(ann, ann_socket)
    assert reason is not None and reason.code == 1001
    assert set(acked) == set(cmids)
