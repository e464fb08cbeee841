"""``messenger serve`` as a real process: SIGKILLed mid-traffic, restarted on the same data
directory; clients reconnect and nothing that was acked is lost."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed
from wsclient import WsClient

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
