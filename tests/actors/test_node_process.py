"""``messenger serve`` as a real process: SIGKILLed mid-traffic, restarted on the same data
directory; clients reconnect and nothing that was acked is lost."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed
from wsclient import WsClient, slow_reader

MESSENGER = [sys.executable, "-m", "messenger"]


def tokens(data_dir: Path, *users: str) -> list[str]:
    out = subprocess.run(
        [*MESSENGER, "token", *users, "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.split()


class ServeProcess:
    def __init__(self, data_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [*MESSENGER, "serve", "--port", "0", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the node listens (or dies)
        assert line.startswith("messenger listening on ws://"), line
        self.port = int(line.rsplit(":", 1)[1].split("/", 1)[0])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "node"
    pid_file = tmp_path / "node" / "secantusd.pid"
    if pid_file.exists():  # never leave a database behind, whatever happened
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.slow
async def test_killed_node_loses_nothing_acked(data_dir: Path, nursery: trio.Nursery) -> None:
    first = await trio.to_thread.run_sync(ServeProcess, data_dir)
    alice_token, bob_token = tokens(data_dir, "alice", "bob")
    alice = await WsClient.open(nursery, first.port)
    await alice.hello(alice_token, "phone")
    acked: dict[str, int] = {}
    enough = trio.Event()

    async def traffic() -> None:
        for i in range(10_000):
            cmid = f"m{i}"
            try:
                await alice.send({"type": "send", "cmid": cmid, "to": "bob", "body": f"#{i}"})
                ack = await alice.wait_for("ack", cmid=cmid)
            except (ConnectionClosed, trio.BrokenResourceError):
                return
            acked[cmid] = ack["seq"]
            if len(acked) >= 20:
                enough.set()

    async with trio.open_nursery() as inner:
        inner.start_soon(traffic)
        with trio.fail_after(30):
            await enough.wait()
        await trio.to_thread.run_sync(first.kill)  # traffic keeps sending meanwhile
    assert acked

    second = await trio.to_thread.run_sync(ServeProcess, data_dir)
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
    node = await trio.to_thread.run_sync(ServeProcess, data_dir)
    ann_token, ben_token = tokens(data_dir, "ann", "ben")
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
    ann_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    acked: set[str] = set()
    with trio.fail_after(30):
        while True:
            try:
                frame = orjson.loads(await ann.ws.get_message())
            except ConnectionClosed as exc:
                reason = exc.reason
                break
            if frame["type"] == "ack":
                acked.add(frame["cmid"])
    assert reason is not None and reason.code == 1001
    assert acked == set(cmids)
