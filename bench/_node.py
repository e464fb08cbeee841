"""The nodes under test, seen from the benchmark: start them, mint tokens, watch their processes.

The benchmarks never import the node: they start ``python -m messenger serve`` as a child
process (its own process, as in production; ``--workers N`` for several node processes on
one port), mint tokens with one ``python -m messenger token`` process, and read CPU time and
memory of the node processes and of the store process (``secantusd-py``) apart, with psutil.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import attrs
import psutil

_LISTENING = re.compile(r"messenger listening on (ws://\S+)")
#: Seconds a node gets to start (the embedded store included) and to shut down.
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
#: What the embedded store's process is called (``pip install secantusdb``).
STORE_PROCESS = "secantusd"


class BenchSetupError(Exception):
    """The benchmark could not start a node, mint tokens or reach a node."""


@attrs.frozen(kw_only=True)
class CpuSeconds:
    """CPU time (user + system, s) used so far by the node processes and the store processes;
    None where the benchmark does not know those processes."""

    node_s: float | None
    store_s: float | None


@attrs.frozen(kw_only=True)
class Rss:
    """Resident memory (bytes) summed over the node processes and over the store processes."""

    node_bytes: int | None
    store_bytes: int | None
    node_processes: int


@attrs.define(eq=False)
class ServerProcesses:
    """The processes that serve the benchmark: nodes and store, kept apart.

    Either ``root`` (a node we started: it and its descendants, where those named
    :data:`STORE_PROCESS` are the store and the rest are nodes, so ``serve --workers N``
    counts every worker) or explicit pid lists (``--node-pid``/``--store-pid``). With
    neither, every reading is None: CPU and memory are unknown.
    """

    root: int | None = None
    node_pids: tuple[int, ...] = ()
    store_pids: tuple[int, ...] = ()
    _cache: dict[int, psutil.Process] = attrs.field(init=False, factory=dict)

    @property
    def known(self) -> bool:
        return self.root is not None or bool(self.node_pids)

    def _process(self, pid: int) -> psutil.Process | None:
        process = self._cache.get(pid)
        if process is None or not process.is_running():
            try:
                process = self._cache[pid] = psutil.Process(pid)
            except psutil.Error:
                return None
        return process

    def split(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        """(node processes, store processes) as they are now."""
        if self.root is None:
            nodes = [p for p in map(self._process, self.node_pids) if p is not None]
            stores = [p for p in map(self._process, self.store_pids) if p is not None]
            return nodes, stores
        root = self._process(self.root)
        if root is None:
            return [], []
        nodes, stores = [root], []
        with contextlib.suppress(psutil.Error):
            for child in root.children(recursive=True):
                process = self._process(child.pid)
                if process is None:
                    continue
                with contextlib.suppress(psutil.Error):
                    is_store = STORE_PROCESS in " ".join(process.cmdline()[:2])
                    (stores if is_store else nodes).append(process)
        return nodes, stores

    def cpu_seconds(self) -> CpuSeconds:
        if not self.known:
            return CpuSeconds(node_s=None, store_s=None)
        nodes, stores = self.split()
        store_known = self.root is not None or bool(self.store_pids)
        return CpuSeconds(node_s=_cpu_sum(nodes), store_s=_cpu_sum(stores) if store_known else None)

    def rss(self) -> Rss:
        if not self.known:
            return Rss(node_bytes=None, store_bytes=None, node_processes=0)
        nodes, stores = self.split()
        store_known = self.root is not None or bool(self.store_pids)
        return Rss(
            node_bytes=_rss_sum(nodes),
            store_bytes=_rss_sum(stores) if store_known else None,
            node_processes=len(nodes),
        )


def _cpu_sum(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def _rss_sum(processes: Sequence[psutil.Process]) -> int:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += int(process.memory_info().rss)
    return total


@attrs.frozen(kw_only=True)
class NodesConfig:
    """Which nodes a benchmark runs against: ``urls`` of running nodes (with the directory of
    their secret and the pids to read CPU and memory of), or none: a node of its own,
    ``serve --workers`` when ``workers`` is given."""

    urls: tuple[str, ...] = ()
    data_dir: Path | None = None
    workers: int | None = None
    node_pids: tuple[int, ...] = ()
    store_pids: tuple[int, ...] = ()
    log_level: str = "warning"
    #: Our own node's ``serve --heartbeat`` (None: serve's default); clients ping every half.
    heartbeat_s: int | None = None


@attrs.frozen(kw_only=True)
class Nodes:
    """The nodes under test, up: their URLs, the directory of their secret, their processes."""

    urls: tuple[str, ...]
    data_dir: Path | None
    servers: ServerProcesses


@contextlib.contextmanager
def nodes_under_test(config: NodesConfig, progress: Callable[[str], None]) -> Iterator[Nodes]:
    """The given nodes, or a fresh node of our own (embedded store, fresh data directory)
    for the length of the block."""
    if config.urls:
        for url in config.urls:
            ws_host_port(url)
        servers = ServerProcesses(node_pids=config.node_pids, store_pids=config.store_pids)
        yield Nodes(urls=config.urls, data_dir=config.data_dir, servers=servers)
        return
    workers = "" if config.workers is None else f", {config.workers} workers"
    progress(f"starting a node (embedded store, fresh data directory{workers})...")
    with own_node(
        log_level=config.log_level, workers=config.workers, heartbeat_s=config.heartbeat_s
    ) as node:
        progress(f"node pid {node.pid} listening on {node.url}")
        yield Nodes(
            urls=(node.url,), data_dir=node.data_dir, servers=ServerProcesses(root=node.pid)
        )


@attrs.define(eq=False)
class NodeProcess:
    """A node this benchmark started: its URL, process and data directory."""

    url: str
    process: subprocess.Popen[str]
    data_dir: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def own_node(
    *,
    log_level: str = "warning",
    workers: int | None = None,
    mongo_uri: str | None = None,
    data_dir: Path | None = None,
    heartbeat_s: int | None = None,
) -> Iterator[NodeProcess]:
    """Start a node on 127.0.0.1, a free port and (unless given) a fresh data directory, with
    the embedded store unless ``mongo_uri``; ``workers`` is passed on as ``serve --workers``.
    On exit the node gets SIGINT (graceful: it stops its store) and is killed after
    :data:`STOP_TIMEOUT_S`; a data directory made here is removed."""
    made = data_dir is None
    directory = Path(tempfile.mkdtemp(prefix="messenger-bench-")) if made else data_dir
    assert directory is not None
    command = serve_command(
        directory,
        log_level=log_level,
        workers=workers,
        mongo_uri=mongo_uri,
        heartbeat_s=heartbeat_s,
    )
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=None, text=True, start_new_session=True
    )
    try:
        url = _wait_listening(process)
        yield NodeProcess(url=url, process=process, data_dir=directory)
    finally:
        _stop(process)
        if made:
            shutil.rmtree(directory, ignore_errors=True)


def serve_command(
    data_dir: Path,
    *,
    log_level: str,
    workers: int | None,
    mongo_uri: str | None,
    heartbeat_s: int | None = None,
) -> list[str]:
    """The ``messenger serve`` command line of a node started by the benchmark."""
    command = [sys.executable, "-m", "messenger", "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--data-dir", str(data_dir), "--log-level", log_level, "--metrics"]
    if workers is not None:
        command += ["--workers", str(workers)]
    if mongo_uri is not None:
        command += ["--mongo-uri", mongo_uri]
    if heartbeat_s is not None:
        command += ["--heartbeat", str(heartbeat_s)]
    return command


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
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
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


def ws_host_port(ws_url: str) -> tuple[str, int, str]:
    """Host, port and resource (path) of a ``ws://`` URL."""
    parts = urllib.parse.urlsplit(ws_url)
    if parts.scheme != "ws" or not parts.hostname:
        raise BenchSetupError(f"only ws:// URLs are supported, got {ws_url!r}")
    return parts.hostname, parts.port or 80, parts.path or "/"


def scrape_metrics(ws_url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """The node's ``GET /metrics`` as {sample name with labels: value}; empty if unreachable."""
    parts = urllib.parse.urlsplit(ws_url)
    try:
        with urllib.request.urlopen(f"http://{parts.netloc}/metrics", timeout=timeout_s) as reply:
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


def raise_fd_limit() -> int:
    """Raise this process's soft open-files limit to its hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def cpu_count() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0))
