"""Helpers of the client tests: a real node process, an event log, a pseudo-terminal."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import orjson
import trio
import trio_websocket
from nodeprocess import Serve, kill_leftover_store, mint_tokens

from client import Client, ClientEvent


class NodeProcess:
    """``messenger serve`` on a data directory; restarts keep the directory and the port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self._serve: Serve | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def start(self) -> None:
        """Start and block until it listens (blocking: call through ``to_thread``)."""
        self._serve = Serve(["--port", str(self.port), "--data-dir", str(self.data_dir)])
        self.port = self._serve.port

    def kill(self) -> None:
        assert self._serve is not None
        self._serve.kill()

    def stop(self) -> None:
        """SIGTERM (SIGKILL if it hangs), then kill the store if the node left it behind."""
        if self._serve is not None and self._serve.proc.poll() is None:
            try:
                self._serve.terminate()
            except subprocess.TimeoutExpired:
                self.kill()
        kill_leftover_store(self.data_dir)

    def tokens(self, *users: str) -> list[str]:
        return mint_tokens(self.data_dir, *users)


@contextlib.contextmanager
def running_node(data_dir: Path) -> Iterator[NodeProcess]:
    """A started :class:`NodeProcess`, stopped (its store too) at the end."""
    node = NodeProcess(data_dir)
    node.start()
    try:
        yield node
    finally:
        node.stop()


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

    @classmethod
    def following(cls, nursery: trio.Nursery, client: Client) -> EventLog:
        """A log that a task in ``nursery`` fills with ``client``'s events."""
        log = cls(client)
        nursery.start_soon(log.run)
        return log

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
