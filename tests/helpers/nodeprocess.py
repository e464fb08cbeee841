"""``messenger`` as real processes, for the tests of every directory: ``messenger token``,
``messenger serve`` (one node or a ``--workers`` parent), and no embedded store left behind.

One way to run a node process in tests: the actors, cluster, client and web tests all use
:class:`Serve` (directly or through ``clienthelpers.NodeProcess``, which restarts one on its
data directory and port).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

MESSENGER = [sys.executable, "-m", "messenger"]


def mint_tokens(data_dir: Path, *users: str) -> list[str]:
    """One token per user, in order, minted with the node's secret in ``data_dir``."""
    out = subprocess.run(
        [*MESSENGER, "token", *users, "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.split()


def kill_leftover_store(data_dir: Path) -> None:
    """SIGKILL the embedded store of ``data_dir`` if its pid file is still there: a test never
    leaves a database running, whatever happened to its node."""
    pid_file = data_dir / "secantusd.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


class Serve:
    """One ``messenger serve`` process; ``lines`` collects what it prints after it listens.

    Construction blocks until the node (or parent) listens, or dies: call it through
    ``trio.to_thread`` from async code."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            [*MESSENGER, "serve", *argv], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        while True:
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

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@contextlib.contextmanager
def serving(argv: list[str]) -> Iterator[Serve]:
    """A :class:`Serve` that must exit cleanly (status 0) on SIGTERM at the end."""
    serve = Serve(argv)
    try:
        yield serve
    finally:
        if serve.proc.poll() is None:
            assert serve.terminate() == 0
