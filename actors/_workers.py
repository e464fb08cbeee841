"""``messenger serve --workers N``: N node processes on one port over one store, supervised.

The parent starts the embedded store once (unless ``--mongo-uri``), reserves the port (a bound,
never listening socket with ``SO_REUSEPORT``, so ``--port 0`` picks one port for everyone),
then runs N worker processes — ``messenger serve`` itself, with ``--worker``: each listens on
that port with ``SO_REUSEPORT`` (the kernel spreads new connections over them), has its own
node id (``host-pid``) and joins the cluster through the shared store like any other node.

Supervision (OTP terms: ``one_for_one``, every worker ``permanent``): a worker that exits while
the parent is not stopping is restarted after a backoff (0.1 s, doubling to 5 s, reset once a
worker ran for 30 s), its replacement told its predecessor's node id so the dead node's
device sessions end at once instead of at its lease expiry. SIGINT/SIGTERM: forwarded to every
worker (each shuts down gracefully), waited for (bounded by ``STOP_TIMEOUT_S``, then SIGKILL),
then the embedded store stops and the parent exits. Workers stop with the parent: each one's
stdin is a pipe whose only writer is the parent, so its end of file means the parent is gone
(even SIGKILLed) and the worker stops as on SIGTERM (:func:`exit_with_parent`). Not Linux's
``PR_SET_PDEATHSIG``: that fires when the *thread* that forked exits, and trio forks from a
worker thread that its thread cache ends after 10 idle seconds.

The parent prints ``messenger listening on ws://HOST:PORT/v1/ws`` once every worker listens,
and ``messenger worker N node ID`` for each worker start (operators and tests read them).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence

import attrs
import trio

log = logging.getLogger("actors.workers")

#: Restart backoff of a crashed worker: first pause, cap, and the run time that resets it.
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
BACKOFF_RESET_S = 30.0
#: Bound on a graceful stop of the workers before they are killed.
STOP_TIMEOUT_S = 20.0
#: A worker that does not listen within this long after its start is killed and restarted.
START_TIMEOUT_S = 60.0
READY_PREFIX = "messenger listening on ws://"


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with ``SO_REUSEPORT`` (not listening)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def exit_with_parent(
    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """In a worker: wait for the end of stdin (the parent is gone), then stop as on SIGTERM."""
    async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
        task_status.started()
        while await stdin.receive_some(4096):
            pass
    log.error("the parent of this worker is gone; stopping")
    os.kill(os.getpid(), signal.SIGTERM)


@attrs.define(eq=False)
class Worker:
    """One worker slot: its current process and node id, and how often it was restarted."""

    index: int
    process: trio.Process | None = None
    node: str | None = None
    restarts: int = 0


class WorkerSupervisor:
    """Runs and restarts the workers of one ``serve --workers`` parent (module docstring)."""

    def __init__(self, args: argparse.Namespace, argv: Sequence[str], uri: str, port: int) -> None:
        self._args = args
        self._serve_argv = tuple(argv)
        self._uri = uri
        self._port = port
        self.workers = [Worker(index=i + 1) for i in range(args.workers)]
        self._stopping = False

    def _argv(self, predecessor: str | None) -> list[str]:
        """The parent's own ``serve`` command line, made a worker's: every option the
        operator gave means the same for each worker (argparse keeps the last of a repeated
        option, so the overrides go at the end)."""
        argv = [sys.executable, "-m", "messenger", "serve", *self._serve_argv]
        argv += ["--worker", "--workers", "1", "--port", str(self._port)]
        if predecessor is not None:
            argv += ["--predecessor", predecessor]
        return argv

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every worker (reporting ``started`` once all listen), then keep them up."""
        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                await nursery.start(self._keep_running, worker)
            task_status.started()

    async def _keep_running(
        self, worker: Worker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        backoff = BACKOFF_FIRST_S
        predecessor: str | None = None
        first = True
        while not self._stopping:
            started_at = trio.current_time()
            env = {**os.environ, "MESSENGER_MONGO_URI": self._uri}
            process = await trio.lowlevel.open_process(
                self._argv(predecessor),
                stdin=subprocess.PIPE,  # held open until the worker ends: exit_with_parent
                stdout=subprocess.PIPE,
                env=env,
                # Signals reach the workers only through the parent (which forwards them).
                start_new_session=True,
            )
            worker.process = process
            worker.node = f"{socket.gethostname()}-{process.pid}"
            print(f"messenger worker {worker.index} node {worker.node}", flush=True)
            ready = await self._wait_ready(process)
            if first and ready:
                first = False
                task_status.started()
            code = await process.wait()
            assert process.stdin is not None
            await process.stdin.aclose()
            worker.process = None
            if self._stopping:
                return
            log.error(
                "worker %d (node %s) exited with %s; restarting", worker.index, worker.node, code
            )
            worker.restarts += 1
            predecessor = worker.node
            if trio.current_time() - started_at >= BACKOFF_RESET_S:
                backoff = BACKOFF_FIRST_S
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _wait_ready(self, process: trio.Process) -> bool:
        """Read the worker's stdout until it listens (a worker prints nothing else there: its
        logs go to stderr, which it shares with the parent)."""
        assert process.stdout is not None
        buffer = b""
        with trio.move_on_after(START_TIMEOUT_S):
            while True:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    return False
                buffer += chunk
                if READY_PREFIX.encode() in buffer:
                    return True
        log.error(
            "worker pid %d did not listen in %.0f s; killing it", process.pid, START_TIMEOUT_S
        )
        process.kill()
        return False

    async def stop(self) -> None:
        """Forward SIGTERM to every worker and wait for them (bounded; then SIGKILL)."""
        self._stopping = True
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT_S):
            for worker in self.workers:
                if worker.process is not None:
                    await worker.process.wait()
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                log.error("worker %d did not stop in time; killing it", worker.index)
                worker.process.kill()
                await worker.process.wait()


async def run_workers(
    args: argparse.Namespace, argv: Sequence[str], uri: str, signals: AsyncIterator[int]
) -> None:
    """The parent of ``serve --workers N`` (``args`` parsed from ``argv``) once the store is
    up: run until a signal."""
    reserved = reuse_port_socket(args.host, args.port)
    try:
        port = reserved.getsockname()[1]
        supervisor = WorkerSupervisor(args, argv, uri, port)
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            print(f"{READY_PREFIX}{args.host}:{port}/v1/ws", flush=True)
            async for signum in signals:
                log.warning("stopping %d workers on signal %d", args.workers, signum)
                break
            await supervisor.stop()
            nursery.cancel_scope.cancel()
    finally:
        reserved.close()
