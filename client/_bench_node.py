"""The node under test, seen from the benchmark: start one, mint tokens, watch its resources.

The benchmarks never import the node: they start ``python -m messenger serve`` as a child
process (its own process, as in production), mint tokens with ``python -m messenger token``
and read the node's CPU and memory with psutil and its counters from ``GET /metrics``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import psutil
import trio

_LISTENING = re.compile(r"messenger listening on (ws://\S+)")
#: Seconds a node gets to start (the embedded store included) and to shut down.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class BenchSetupError(Exception):
    """The benchmark could not start the node, mint tokens or reach the node."""


@attrs.define(eq=False)
class NodeProcess:
    """A node this benchmark started: its URL, pid and data directory."""

    url: str
    process: subprocess.Popen[str]
    data_dir: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def own_node(*, log_level: str = "warning", keep_data: bool = False) -> Iterator[NodeProcess]:
    """Start a node on 127.0.0.1, a free port and a fresh data directory; stop it on exit.

    The node gets SIGINT (graceful shutdown, which stops its embedded store) and is killed if
    it has not exited after :data:`STOP_TIMEOUT_S` seconds.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="messenger-bench-"))
    command = [
        sys.executable,
        "-m",
        "messenger",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--log-level",
        log_level,
        "--metrics",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=None, text=True, start_new_session=True
    )
    try:
        url = _wait_listening(process)
        yield NodeProcess(url=url, process=process, data_dir=data_dir)
    finally:
        _stop(process)
        if not keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)


def _wait_listening(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise BenchSetupError(f"the node exited (status {process.wait()}) before listening")
        match = _LISTENING.search(line)
        if match:
            return match.group(1)
    raise BenchSetupError(f"the node did not listen within {START_TIMEOUT_S:.0f} s")


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def mint_tokens(users: Sequence[str], data_dir: Path | None) -> list[str]:
    """One token per user, in order, from one ``messenger token`` process.

    ``data_dir`` is the node's data directory (where its secret lives); None leaves the
    choice to ``messenger token`` (its default directory or ``$MESSENGER_SECRET``).
    """
    command = [sys.executable, "-m", "messenger", "token", *users]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    tokens = result.stdout.split()
    if result.returncode != 0 or len(tokens) != len(users):
        raise BenchSetupError(
            f"messenger token failed (status {result.returncode}): {result.stderr.strip()}"
        )
    return tokens


def http_base(ws_url: str) -> str:
    """``ws://host:port/v1/ws`` → ``http://host:port`` (the node's HTTP endpoints)."""
    parts = urllib.parse.urlsplit(ws_url)
    return f"http://{parts.netloc}"


def ws_host_port(ws_url: str) -> tuple[str, int, str]:
    """Host, port and resource (path) of a ``ws://`` URL."""
    parts = urllib.parse.urlsplit(ws_url)
    if parts.scheme != "ws" or not parts.hostname:
        raise BenchSetupError(f"only ws:// URLs are supported, got {ws_url!r}")
    return parts.hostname, parts.port or 80, parts.path or "/"


def scrape_metrics(ws_url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """The node's ``/metrics``, as {sample name with labels: value}; empty if unreachable."""
    try:
        with urllib.request.urlopen(http_base(ws_url) + "/metrics", timeout=timeout_s) as reply:
            text = reply.read().decode("utf-8")
    except OSError:
        return {}
    return parse_prometheus(text)


def parse_prometheus(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition: ``{'name{label="v"}': value}``."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            samples[name] = float(value)
    return samples


def find_listener_pid(ws_url: str) -> int | None:
    """The pid of the local process listening on the URL's port, if we may see it."""
    _host, port, _path = ws_host_port(ws_url)
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return int(conn.pid) if conn.pid is not None else None
    return None


@attrs.define
class ResourceSample:
    """CPU (% of one core since the previous sample) and RSS (bytes) of one process."""

    cpu_percent: float
    rss_bytes: int


@attrs.define(eq=False)
class ProcessWatcher:
    """Samples one process (and, separately, its children: the embedded store) with psutil."""

    pid: int
    _process: psutil.Process | None = attrs.field(init=False, default=None)
    _children: dict[int, psutil.Process] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        with contextlib.suppress(psutil.Error):
            self._process = psutil.Process(self.pid)
            self._process.cpu_percent(None)
            self._refresh_children()

    def _refresh_children(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(psutil.Error):
            for child in self._process.children(recursive=True):
                if child.pid not in self._children:
                    child.cpu_percent(None)
                    self._children[child.pid] = child

    def sample(self) -> tuple[ResourceSample | None, ResourceSample | None]:
        """(the node, its children summed) since the previous call; None where unreadable."""
        if self._process is None:
            return None, None
        try:
            node = ResourceSample(
                cpu_percent=self._process.cpu_percent(None),
                rss_bytes=self._process.memory_info().rss,
            )
        except psutil.Error:
            return None, None
        self._refresh_children()
        cpu, rss = 0.0, 0
        for pid, child in list(self._children.items()):
            try:
                cpu += child.cpu_percent(None)
                rss += child.memory_info().rss
            except psutil.Error:
                del self._children[pid]
        return node, ResourceSample(cpu_percent=cpu, rss_bytes=rss) if self._children else None

    def rss_bytes(self) -> int | None:
        """The node's resident memory now, in bytes."""
        if self._process is None:
            return None
        try:
            return int(self._process.memory_info().rss)
        except psutil.Error:
            return None


def raise_fd_limit() -> int:
    """Raise this process's soft open-files limit to its hard limit; the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def run_worker_process(worker: int, main: Callable[[], Awaitable[None]], results: Any) -> None:
    """Body of a bench worker process: run ``main`` under trio; report a crash as ``failed``."""
    raise_fd_limit()
    try:
        trio.run(main)
    except BaseException as exc:
        results.put(("failed", worker, "".join(traceback.format_exception(exc))))
        raise


def cpu_count() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0))
