"""One process of the connection benchmark: open idle authenticated connections (each kept
alive by the SDK's WebSocket pings), hold them, close them.

Messages with the coordinator: :class:`Idle` once the process runs; :class:`Command`
``connect`` in; :class:`Connected`; :class:`Command` ``stop`` in; :class:`Closed`.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import attrs
import trio

from client import ClientClosed, ClientEvent, Reconnecting
from protocol import ServerError

from ._device import Device
from ._procs import run_worker
from ._stats import LatencyHistogram

#: Handshakes in flight at once, per process.
CONNECT_CONCURRENCY = 128
#: Seconds one connection may take to reach ``synced`` before it counts as failed.
CONNECT_TIMEOUT_S = 60.0


@attrs.frozen(kw_only=True)
class ConnsPlan:
    """One process's share of a connection run (plain data: it crosses a process boundary)."""

    worker: int
    urls: tuple[str, ...]
    users: tuple[str, ...]
    tokens: tuple[str, ...]
    local_address: str | None


@attrs.frozen(kw_only=True)
class Command:
    name: str  # "connect" or "stop"


@attrs.frozen(kw_only=True)
class Idle:
    worker: int


@attrs.frozen(kw_only=True)
class Progress:
    worker: int
    connected: int


@attrs.frozen(kw_only=True)
class Connected:
    worker: int
    opened: int
    failed: int
    connect_s: float
    handshake: LatencyHistogram


@attrs.frozen(kw_only=True)
class Closed:
    worker: int
    reconnects: int
    problems: tuple[tuple[str, int], ...]


def conns_worker(plan: ConnsPlan, control: Any, results: Any) -> None:
    """Process entry point."""
    run_worker(plan.worker, _ConnsWorker(plan, control, results).run, results)


@attrs.define(eq=False)
class _ConnsWorker:
    plan: ConnsPlan
    control: Any
    results: Any
    problems: Counter[str] = attrs.Factory(Counter)
    handshake: LatencyHistogram = attrs.Factory(LatencyHistogram)
    failed: int = 0

    def on_event(self, device: Device, event: ClientEvent, now_ns: int) -> None:
        match event:
            case Reconnecting(close_code=code):
                self.problems[f"reconnect:{code}"] += 1
            case ServerError(error=error):
                self.problems[f"error:{error.code.value}"] += 1

    async def _command(self, expected: str) -> None:
        message = await trio.to_thread.run_sync(self.control.get, abandon_on_cancel=True)
        if message != Command(name=expected):
            raise RuntimeError(f"expected {expected}, got {message!r}")

    async def run(self) -> None:
        plan = self.plan
        devices = [
            Device(index=i, user=user, token=token, url=url, local_address=plan.local_address)
            for i, (user, token, url) in enumerate(
                zip(plan.users, plan.tokens, plan.urls, strict=True)
            )
        ]
        self.results.put(Idle(worker=plan.worker))
        await self._command("connect")
        async with trio.open_nursery() as nursery:
            began = time.monotonic()
            await self._connect_all(nursery, devices)
            self.results.put(
                Connected(
                    worker=plan.worker,
                    opened=self.handshake.count,
                    failed=self.failed,
                    connect_s=time.monotonic() - began,
                    handshake=self.handshake,
                )
            )
            await self._command("stop")
            self.results.put(
                Closed(
                    worker=plan.worker,
                    reconnects=sum(max(0, d.opens - 1) for d in devices),
                    problems=tuple(sorted(self.problems.items())),
                )
            )
            nursery.cancel_scope.cancel()

    async def _connect_all(self, nursery: trio.Nursery, devices: list[Device]) -> None:
        limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)

        async def connect(device: Device) -> None:
            async with limiter:
                with trio.move_on_after(CONNECT_TIMEOUT_S) as scope:
                    try:
                        await nursery.start(device.run, self)
                    except ClientClosed as exc:  # refused for good (4401, 4400, 4409)
                        self.failed += 1
                        self.problems[f"refused:{exc.code}"] += 1
                        return
            if scope.cancelled_caught or device.handshake_s is None:
                self.failed += 1
                self.problems["connect:timeout"] += 1
                return
            self.handshake.record(int(device.handshake_s * 1e9))

        async def report_progress() -> None:
            while True:
                await trio.sleep(1.0)
                self.results.put(Progress(worker=self.plan.worker, connected=self.handshake.count))

        async with trio.open_nursery() as progress:
            progress.start_soon(report_progress)
            async with trio.open_nursery() as connecting:
                for device in devices:
                    connecting.start_soon(connect, device)
            progress.cancel_scope.cancel()
