"""Helpers of the client tests: a real node process, an event log, a pseudo-terminal."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import orjson
import trio
import trio_websocket

from client import Client, ClientEvent

MESSENGER = [sys.executable, "-m", "messenger"]


class NodeProcess:
    """``messenger serve`` on a data directory; restarts keep the directory and the port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def start(self) -> None:
        """Start and block until it listens (blocking: call through ``to_thread``)."""
        command = [*MESSENGER, "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("messenger listening on ws://"), f"serve printed {line!r}"
        self.port = int(line.rsplit(":", 1)[1].split("/", 1)[0])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tokens(self, *users: str) -> list[str]:
        done = subprocess.run(
            [*MESSENGER, "token", *users, "--data-dir", str(self.data_dir)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout.split()


#: Plays the node's part of one connection, given the WebSocket and the client's ``hello``.
FakeSession = Callable[[trio_websocket.WebSocketConnection, dict[str, object]], Awaitable[None]]


async def fake_node(nursery: trio.Nursery, session: FakeSession) -> str:
    """A WebSocket server on a real socket that reads each connection's ``hello`` and hands
    the rest of the connection to ``session``; returns its URL. For misbehaviour a real
    node will not show on demand (garbled or missing replies, closing at will)."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            await session(ws, orjson.loads(await ws.get_message()))

    server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}/v1/ws"


_E = TypeVar("_E")


class EventLog:
    """Every event of one client, in order; :meth:`wait_for` blocks until a match arrives."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.events: list[ClientEvent] = []
        self._changed = trio.Event()

    async def run(self) -> None:
        async for event in self.client.events():
            self.events.append(event)
            self._changed.set()
            self._changed = trio.Event()

    def of(self, kind: type[_E]) -> list[_E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, kind: type[_E], test: Callable[[_E], bool] = lambda _: True) -> _E:
        while True:
            for event in self.events:
                if isinstance(event, kind) and test(event):
                    return event
            await self._changed.wait()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


class Terminal:
    """A command running in a pseudo-terminal, read and typed into like a person would.

    :meth:`expect` waits (bounded) until ``text`` appears in the screen output produced
    since the previous match, with escape sequences and carriage returns removed.
    """

    def __init__(self, argv: list[str], *, rows: int = 50, cols: int = 160) -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.raw = b""
        self.seen = 0  # offset into the cleaned text of the end of the last match

    def text(self) -> str:
        return _ANSI.sub("", self.raw.decode("utf-8", "replace")).replace("\r", "")

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                self.raw += os.read(self.master, 65536)
            except OSError:  # the child closed the terminal
                time.sleep(timeout)

    def expect(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.text()
            found = screen.find(text, self.seen)
            if found >= 0:
                self.seen = found + len(text)
                return screen[found:]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen in {timeout} s; screen:\n{screen[-3000:]}")
            self._read(min(left, 0.2))

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def close(self) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.write(self.master, b"/quit\r")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        return self.proc.returncode
