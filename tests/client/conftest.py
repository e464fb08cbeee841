"""A real ``messenger serve`` process for the client tests: start, SIGKILL, restart."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A node process (not started); stopped, and its embedded store killed, afterwards."""
    process = NodeProcess(tmp_path / "node")
    try:
        yield process
    finally:
        process.stop()
        pid_file = process.data_dir / "secantusd.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
