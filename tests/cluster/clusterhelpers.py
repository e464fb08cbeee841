"""Real node processes for the cluster tests: separate ``serve --mongo-uri`` nodes on one
database, or one ``serve --workers N`` parent; clients pinned to a node by ``welcome.node``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import trio
from wsclient import WsClient

MESSENGER = [sys.executable, "-m", "messenger"]
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
    out = subprocess.run(
        [*MESSENGER, "token", *users, "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return dict(zip(users, out.stdout.split(), strict=True))


class Serve:
    """One ``messenger serve`` process; ``lines`` collects what it prints after it listens."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            [*MESSENGER, "serve", *argv], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        while True:  # blocks until the node (or parent) listens, or dies
            line = self.proc.stdout.readline()
            assert line, f"serve exited with {self.proc.wait()}"
            self.lines.append(line.strip())
            if line.startswith("messenger listening on ws://"):
                break
        self.port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.strip())
                self._changed.notify_all()

    def wait_line(self, prefix: str, after: int, timeout: float = 30.0) -> str:
        """The first line starting with ``prefix`` printed at index ``after`` or later."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((x for x in self.lines[after:] if x.startswith(prefix)), None),
                timeout=timeout,
            )
        assert found, f"no {prefix!r} line in {self.lines}"
        return found

    def workers(self) -> dict[int, str]:
        """Worker index → its current node id (from the parent's ``messenger worker`` lines)."""
        out: dict[int, str] = {}
        for line in self.lines:
            if line.startswith("messenger worker "):
                _, _, index, _, node = line.split()
                out[int(index)] = node
        return out

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@contextlib.contextmanager
def serving(argv: list[str]) -> Iterator[Serve]:
    serve = Serve(argv)
    try:
        yield serve
    finally:
        if serve.proc.poll() is None:
            assert serve.terminate() == 0


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
