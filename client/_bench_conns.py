"""One worker process of the connection benchmark: open idle authenticated connections, keep
them alive with WebSocket pings at the heartbeat interval, hold them, close them.

Messages with the coordinator (multiprocessing queues): ``("idle", worker, {})`` once the
process runs; ``("connect",)`` in; ``("connected", worker, info)``; ``("stop",)`` in;
``("done", worker, info)``; or ``("failed", worker, message)`` at any point.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import attrs
import trio

from protocol import Ack, Msg, Nack

from ._bench_client import BenchClient, Endpoint, PingStats, keep_alive
from ._bench_node import run_worker_process, ws_host_port
from ._bench_stats import LatencyHistogram

#: Handshakes in flight at once, per worker.
CONNECT_CONCURRENCY = 128
CONNECT_TIMEOUT_S = 120.0


@attrs.frozen(kw_only=True)
class ConnsPlan:
    """One worker's share of a connection run (plain data: it crosses a process boundary)."""

    worker: int
    url: str
    users: tuple[str, ...]
    tokens: tuple[str, ...]
    local_address: str | None
    ping: bool


def conns_worker(plan: ConnsPlan, control: Any, results: Any) -> None:
    """Process entry point: run the worker, report any crash as ``failed``."""
    run_worker_process(plan.worker, _ConnsWorker(plan, control, results).run, results)


@attrs.define(eq=False)
class _ConnsWorker:
    plan: ConnsPlan
    control: Any
    results: Any
    problems: Counter[str] = attrs.Factory(Counter)
    handshake: LatencyHistogram = attrs.Factory(LatencyHistogram)
    ping_stats: PingStats = attrs.Factory(PingStats)
    failed_connects: int = 0

    def on_ack(self, client: BenchClient, ack: Ack, body: str) -> None:
        """Idle clients send nothing."""

    def on_msg(self, client: BenchClient, msg: Msg, redundant: bool) -> None:
        """Idle clients receive nothing (fresh users)."""

    def on_failed(self, client: BenchClient, nack: Nack, body: str) -> None:
        """Idle clients send nothing."""

    def on_problem(self, client: BenchClient, code: str) -> None:
        self.problems[code] += 1

    async def _command(self, expected: str) -> None:
        message = await trio.to_thread.run_sync(self.control.get, abandon_on_cancel=True)
        if message[0] != expected:
            raise RuntimeError(f"expected {expected}, got {message!r}")

    async def run(self) -> None:
        host, port, resource = ws_host_port(self.plan.url)
        endpoint = Endpoint(host, port, resource, self.plan.local_address)
        clients = [
            BenchClient(index=i, user=user, token=token, endpoint=endpoint, hooks=self)
            for i, (user, token) in enumerate(zip(self.plan.users, self.plan.tokens, strict=True))
        ]
        self.results.put(("idle", self.plan.worker, {}))
        await self._command("connect")
        async with trio.open_nursery() as nursery:
            if self.plan.ping:  # from the start: the first connections must not time out
                nursery.start_soon(keep_alive, clients, self.ping_stats)
            began = time.monotonic()
            await self._connect_all(nursery, clients)
            connect_s = time.monotonic() - began
            self.results.put(
                (
                    "connected",
                    self.plan.worker,
                    {
                        "clients": len(clients),
                        "failed": self.failed_connects,
                        "connect_s": connect_s,
                        "handshake": self.handshake.to_wire(),
                        "pings": self.ping_stats.pings,
                    },
                )
            )
            await self._command("stop")
            info = {
                "pings": self.ping_stats.pings,
                "pongs": self.ping_stats.pongs,
                "reconnects": sum(max(0, c.syncs - 1) for c in clients),
                "problems": dict(self.problems),
            }
            self.results.put(("done", self.plan.worker, info))
            nursery.cancel_scope.cancel()

    async def _connect_all(self, nursery: trio.Nursery, clients: list[BenchClient]) -> None:
        limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)

        async def connect(client: BenchClient) -> None:
            async with limiter:
                try:
                    await nursery.start(client.run)
                except Exception as exc:
                    self.failed_connects += 1
                    self.problems[f"connect:{type(exc).__name__}"] += 1
                    return
            self.handshake.record(int(client.handshake_s * 1e9))

        async def report_progress() -> None:
            while True:
                await trio.sleep(1.0)
                self.results.put(("progress", worker, self.handshake.count))

        worker = self.plan.worker
        with trio.fail_after(CONNECT_TIMEOUT_S):
            async with trio.open_nursery() as progress:
                progress.start_soon(report_progress)
                async with trio.open_nursery() as connecting:
                    for client in clients:
                        connecting.start_soon(connect, client)
                progress.cancel_scope.cancel()
