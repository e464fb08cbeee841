"""``messenger bench conns``: idle connections — server memory per connection, handshakes/s.

Starts a node of its own (``--workers N`` passed on: several node processes on one port)
unless ``--url`` names running nodes, mints the tokens, spreads the connections over
load-generator processes (at most ``--per-proc`` each: the fd limit here is 20,000 a
process, and each process dials from its own 127.0.0.x so one address's ephemeral ports do
not run out), reads the resident memory of the node processes (summed) and of the store
before and after connecting, holds the connections idle (the SDK pings each one every half
heartbeat) while it reads the server's CPU, then closes them.
"""

from __future__ import annotations

import math
import os
import secrets
import sys
import time

import attrs

from ._conns_worker import Closed, Command, Connected, ConnsPlan, Idle, Progress, conns_worker
from ._node import (
    NodesConfig,
    mint_tokens,
    nodes_under_test,
    raise_fd_limit,
    ws_host_port,
)
from ._procs import Pool, source_address, split
from ._report import latency_line
from ._stats import Latency, LatencyHistogram

#: Connections per load-generator process by default (under the 20,000 fd limit).
PER_PROC = 10_000
#: The connect phase fails after this long, or after a second per this many connections
#: when that is longer (50,000 took ~20 minutes on the shared 2-core box).
CONNECT_LIMIT_S = 900.0
CONNECT_LIMIT_PER_S = 20


def connect_limit_s(count: int) -> float:
    """Seconds the connect phase of ``count`` connections may take before the run fails."""
    return max(CONNECT_LIMIT_S, count / CONNECT_LIMIT_PER_S)


@attrs.frozen(kw_only=True)
class ConnsConfig:
    count: int
    hold_s: float = 10.0
    settle_s: float = 3.0
    per_proc: int = PER_PROC
    nodes: NodesConfig = attrs.Factory(NodesConfig)


@attrs.frozen(kw_only=True)
class ConnsResult:
    """Idle connections held, what they cost the server, how fast they were opened."""

    command: str
    config: ConnsConfig
    load_average: tuple[float, float, float]
    procs: int
    opened: int
    failed: int
    connect_s: float
    handshakes_per_s: float | None
    handshake: Latency
    node_processes: int
    node_rss_before_bytes: int | None
    node_rss_after_bytes: int | None
    store_rss_after_bytes: int | None
    hold_s: float
    node_cpu_cores_idle: float | None
    store_cpu_cores_idle: float | None
    reconnects: int
    problems: tuple[tuple[str, int], ...]

    @property
    def rss_per_connection_bytes(self) -> float | None:
        before, after = self.node_rss_before_bytes, self.node_rss_after_bytes
        if before is None or after is None or not self.opened:
            return None
        return (after - before) / self.opened


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_conns(config: ConnsConfig, command: str) -> ConnsResult:
    raise_fd_limit()
    load_average = os.getloadavg()
    with nodes_under_test(config.nodes, _progress) as target:
        urls, data_dir, servers = target.urls, target.data_dir, target.servers
        run = secrets.token_hex(3)
        users = [f"c{run}-{i}" for i in range(config.count)]
        _progress(f"minting {len(users):,} tokens...")
        tokens = mint_tokens(users, data_dir)
        procs = max(1, math.ceil(config.count / config.per_proc))
        host = ws_host_port(urls[0])[0]
        plans = [
            ConnsPlan(
                worker=worker,
                urls=tuple(urls[i % len(urls)] for i in share),
                users=tuple(users[i] for i in share),
                tokens=tuple(tokens[i] for i in share),
                local_address=source_address(host, worker, True),
            )
            for worker, share in enumerate(split(range(config.count), procs))
        ]
        pool = Pool(conns_worker, plans)
        try:
            pool.collect(Idle, 120.0)
            before = servers.rss()
            _progress(
                f"server RSS before: {_mib(before.node_bytes)} in {before.node_processes} "
                f"node processes; connecting {config.count:,} from {procs} processes..."
            )
            connected_now = [0] * procs

            def on_progress(message: object) -> None:
                if isinstance(message, Progress):
                    connected_now[message.worker] = message.connected

            def report() -> None:
                _progress(
                    f"  ... {sum(connected_now):,} connected ({time.monotonic() - began:.0f} s)"
                )

            began = time.monotonic()
            pool.broadcast(Command(name="connect"))
            connected = pool.collect(Connected, connect_limit_s(config.count), on_progress, report)
            connect_s = time.monotonic() - began
            opened = sum(c.opened for c in connected)
            _progress(
                f"{opened:,} connections open in {connect_s:.1f} s; settling {config.settle_s:g} s"
            )
            time.sleep(config.settle_s)
            after = servers.rss()
            cpu_before = servers.cpu_seconds()
            hold_began = time.monotonic()
            while (held := time.monotonic() - hold_began) < config.hold_s:
                _progress(
                    f"[hold {held:4.0f}/{config.hold_s:g} s] server RSS "
                    f"{_mib(servers.rss().node_bytes)}"
                )
                time.sleep(min(1.0, config.hold_s - held))
            hold_s = time.monotonic() - hold_began
            cpu_after = servers.cpu_seconds()
            pool.broadcast(Command(name="stop"))
            closed = pool.collect(Closed, 120.0)
        finally:
            pool.close()

    def cores(first: float | None, last: float | None) -> float | None:
        return None if first is None or last is None or hold_s <= 0 else (last - first) / hold_s

    problems: dict[str, int] = {}
    for part in closed:
        for code, n in part.problems:
            problems[code] = problems.get(code, 0) + n
    return ConnsResult(
        command=command,
        config=config,
        load_average=load_average,
        procs=procs,
        opened=opened,
        failed=sum(c.failed for c in connected),
        connect_s=connect_s,
        handshakes_per_s=opened / connect_s if connect_s > 0 else None,
        handshake=LatencyHistogram.merged(c.handshake for c in connected).summary(),
        node_processes=after.node_processes,
        node_rss_before_bytes=before.node_bytes,
        node_rss_after_bytes=after.node_bytes,
        store_rss_after_bytes=after.store_bytes,
        hold_s=hold_s,
        node_cpu_cores_idle=cores(cpu_before.node_s, cpu_after.node_s),
        store_cpu_cores_idle=cores(cpu_before.store_s, cpu_after.store_s),
        reconnects=sum(c.reconnects for c in closed),
        problems=tuple(sorted(problems.items())),
    )


def _mib(value: int | float | None) -> str:
    return "unknown" if value is None else f"{value / 2**20:,.1f} MiB"


def conns_text(result: ConnsResult) -> str:
    per_conn = result.rss_per_connection_bytes
    load = " ".join(f"{x:.2f}" for x in result.load_average)
    idle_cpu = (
        "unknown"
        if result.node_cpu_cores_idle is None
        else f"node {result.node_cpu_cores_idle:.3f} cores"
        + (
            ""
            if result.store_cpu_cores_idle is None
            else f", store {result.store_cpu_cores_idle:.3f} cores"
        )
    )
    problems = ", ".join(f"{code} {n:,}" for code, n in result.problems) or "none"
    lines = [
        f"conns: {result.opened:,} of {result.config.count:,} connections opened "
        f"({result.failed:,} failed) from {result.procs} processes "
        f"(load average before: {load})",
        f"handshakes: {result.handshakes_per_s or 0:,.0f} handshakes/s "
        f"({result.connect_s:.1f} s in all)",
        latency_line("per handshake", result.handshake),
        f"server RSS ({result.node_processes} node processes): "
        f"{_mib(result.node_rss_before_bytes)} before → {_mib(result.node_rss_after_bytes)} "
        f"with {result.opened:,} open: "
        + ("unknown" if per_conn is None else f"{per_conn / 1024:.1f} KiB per connection")
        + f"; store {_mib(result.store_rss_after_bytes)}",
        f"idle hold {result.hold_s:.0f} s: server CPU {idle_cpu}",
        f"problems: {problems}; reconnects {result.reconnects:,}",
    ]
    return "\n".join(lines)
