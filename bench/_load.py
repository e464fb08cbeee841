"""``messenger bench load``: an open-loop rate sweep against one node or a cluster.

For each rate of ``--rates`` the benchmark starts a node of its own (``messenger serve`` on a
fresh data directory, embedded store; ``--workers N`` is passed on) unless ``--url`` names
running nodes, mints tokens, starts the load-generator processes, connects the clients,
creates the conversations, sends for ``--warmup`` + ``--duration`` seconds, drains and
reports; the knee (the highest rate with delivery p99 under the limit and nothing lost)
comes last. This process only coordinates: it prints a progress line a second, reads the CPU
time of the node processes and the store process at the edges of the measured window, and
turns what the generators measured into a :class:`SweepResult`.

With several ``--url``s the members of a conversation are placed on the same node or on
different nodes (``--placement``) by the URL each dials; with one URL served by ``serve
--workers N`` (the benchmark's own ``--workers``), each generator regroups its clients once
they are connected, by the node each one's ``welcome`` named. Delivery latency is reported
for same-node and cross-node deliveries apart; a client's node is the one ``welcome`` names
when the node names itself, else the URL.
"""

from __future__ import annotations

import math
import os
import platform
import secrets
import sys
import time
from collections.abc import Sequence

import attrs

from ._load_plan import (
    Done,
    LoadPlan,
    Ready,
    Start,
    Tick,
    Totals,
    WorkerResult,
    conversations,
    place,
)
from ._load_worker import load_worker
from ._node import (
    BenchSetupError,
    CpuSeconds,
    Nodes,
    NodesConfig,
    ServerProcesses,
    cpu_count,
    mint_tokens,
    nodes_under_test,
    scrape_metrics,
    ws_host_port,
)
from ._procs import Pool, source_address, split
from ._stats import Latency, LatencyHistogram

#: Clients per load-generator process by default (the fd limit here is 20,000 a process).
CLIENTS_PER_PROC = 5_000
#: Seconds between the start order and the first scheduled send (processes get ready).
START_DELAY_S = 1.0
#: Seconds a generator may take beyond its schedule and drain before the run is failed.
GRACE_S = 60.0
#: The knee's latency limit: delivery p99 below this many ms.
KNEE_P99_MS = 50.0


@attrs.frozen(kw_only=True)
class LoadConfig:
    """The shape of a sweep (every rate runs this shape)."""

    rates: tuple[float, ...]
    clients: int
    group_size: int = 2
    body_bytes: int = 100
    warmup_s: float = 3.0
    duration_s: float = 15.0
    drain_s: float = 10.0
    recv_delay_s: float = 0.05
    poisson: bool = True
    placement: str = "mixed"
    procs: int | None = None
    seed: int | None = None
    nodes: NodesConfig = attrs.Factory(NodesConfig)


@attrs.frozen(kw_only=True)
class CpuPerMessage:
    """Server CPU in the measured window: µs per acked message and cores busy, for the node
    processes and the store apart (None: those processes are unknown to the benchmark)."""

    node_us: float | None
    store_us: float | None
    node_cores: float | None
    store_cores: float | None

    @property
    def total_us(self) -> float | None:
        if self.node_us is None or self.store_us is None:
            return None
        return self.node_us + self.store_us


@attrs.frozen(kw_only=True)
class LossCheck:
    """Did every acked message reach every other member exactly once?"""

    sent: int
    acked: int
    failed: int
    delivered: int
    expected_deliveries: int
    lost_messages: int
    lost_deliveries: int
    unacked: int
    duplicated: int
    seq_conflicts: int
    unexpected: int
    out_of_order: int
    redundant_pushes: int
    reconnects: int
    receipts_missing: int

    @property
    def nothing_lost(self) -> bool:
        return self.lost_messages == 0 and self.unacked == 0

    @property
    def ok(self) -> bool:
        return (
            self.nothing_lost
            and self.duplicated == 0
            and self.seq_conflicts == 0
            and self.unexpected == 0
        )


@attrs.frozen(kw_only=True)
class RateResult:
    """One rate of the sweep."""

    rate: float
    load_average: tuple[float, float, float]
    setup_s: float
    handshakes_per_s: float | None
    window_s: float
    acked_per_s: float
    delivered_per_s: float
    delivery: Latency
    receipt: Latency
    ack: Latency
    delivery_same_node: Latency
    delivery_cross_node: Latency
    schedule_lag: Latency
    check: LossCheck
    cpu: CpuPerMessage
    group_commit_batch_mean: float | None
    errors: tuple[tuple[str, int], ...]
    drain_s: float


@attrs.frozen(kw_only=True)
class SweepResult:
    """Every rate of a sweep, in order, and the knee."""

    command: str
    machine: str
    cpus: int
    config: LoadConfig
    rates: tuple[RateResult, ...]

    @property
    def knee(self) -> float | None:
        return knee(self.rates)


def knee(rates: Sequence[RateResult], p99_limit_ms: float = KNEE_P99_MS) -> float | None:
    """The highest rate whose delivery p99 is under ``p99_limit_ms`` with nothing lost (and
    something delivered); None when no rate qualifies."""
    good = [
        r.rate
        for r in rates
        if r.check.nothing_lost
        and r.delivery.p99_ms is not None
        and r.delivery.p99_ms < p99_limit_ms
    ]
    return max(good, default=None)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _plans(config: LoadConfig, rate: float, seed: int, target: Nodes) -> list[LoadPlan]:
    run = secrets.token_hex(3)
    users = [f"b{run}-{i}" for i in range(config.clients)]
    _progress(f"minting {len(users):,} tokens...")
    tokens = mint_tokens(users, target.data_dir)
    groups = conversations(config.clients, config.group_size)
    procs = config.procs or max(1, math.ceil(config.clients / CLIENTS_PER_PROC))
    procs = min(procs, len(groups))
    host = ws_host_port(target.urls[0])[0]
    plans = []
    for worker, share in enumerate(split(range(len(groups)), procs)):
        local: list[int] = []
        urls: list[str] = []
        local_groups = []
        for gid in share:
            members = []
            for position, index in enumerate(groups[gid]):
                members.append(len(local))
                local.append(index)
                node = place(gid, position, len(target.urls), config.placement)
                urls.append(target.urls[node])
            local_groups.append(tuple(members))
        plans.append(
            LoadPlan(
                worker=worker,
                users=tuple(users[i] for i in local),
                tokens=tuple(tokens[i] for i in local),
                urls=tuple(urls),
                groups=tuple(local_groups),
                local_address=source_address(host, worker, True),
                rate_per_s=rate * len(local) / config.clients,
                warmup_s=config.warmup_s,
                duration_s=config.duration_s,
                drain_s=config.drain_s,
                body_bytes=config.body_bytes,
                poisson=config.poisson,
                seed=seed + worker,
                recv_delay_s=config.recv_delay_s,
                placement=config.placement,
                arrange=len(target.urls) == 1 and (config.nodes.workers or 1) > 1,
            )
        )
    return plans


def run_rate(config: LoadConfig, rate: float, seed: int) -> RateResult:
    """One rate: nodes, generators, load, drain, verdict."""
    load_average = os.getloadavg()
    with nodes_under_test(config.nodes, _progress) as target:
        plans = _plans(config, rate, seed, target)
        _progress(
            f"[{rate:,.0f} msgs/s] {len(plans)} load-generator processes connecting "
            f"{config.clients:,} clients..."
        )
        began = time.monotonic()
        pool = Pool(load_worker, plans)
        try:
            ready = pool.collect(Ready, 600.0)
            setup_s = time.monotonic() - began
            connect_s = max(r.connect_s for r in ready)
            _progress(f"[{rate:,.0f} msgs/s] {config.clients:,} clients ready in {setup_s:.1f} s")
            metrics_before = scrape_metrics(target.urls[0])
            t0_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
            pool.broadcast(Start(t0_ns=t0_ns))
            done, cpu = _watch(config, rate, pool, target.servers, t0_ns)
            metrics_after = scrape_metrics(target.urls[0])
        finally:
            pool.close()
    handshake = LatencyHistogram.merged(r.handshake for r in ready)
    return _rate_result(
        config,
        rate,
        load_average,
        setup_s,
        handshake.count / connect_s if connect_s > 0 else None,
        [d.result for d in done],
        cpu,
        _batch_mean(metrics_before, metrics_after),
    )


def _watch(
    config: LoadConfig, rate: float, pool: Pool, servers: ServerProcesses, t0_ns: int
) -> tuple[list[Done], tuple[CpuSeconds, CpuSeconds]]:
    """Progress lines until every generator is done; CPU time read at the window's edges."""
    latest = [Totals() for _ in range(len(pool))]
    done: dict[int, Done] = {}
    t0 = t0_ns / 1e9
    edges_at = [t0 + config.warmup_s, t0 + config.warmup_s + config.duration_s]
    edges: list[CpuSeconds] = []
    next_line = t0 + 1.0
    deadline = edges_at[1] + config.drain_s + GRACE_S
    while len(done) < len(pool):
        now = time.monotonic()
        if now > deadline:
            raise BenchSetupError("the load generators did not finish in time")
        wake = min([next_line, *edges_at[len(edges) :]])
        message = pool.next_message(wake - now)
        if isinstance(message, Tick):
            latest[message.worker] = message.totals
        elif isinstance(message, Done):
            done[message.worker] = message
        now = time.monotonic()
        if len(edges) < 2 and now >= edges_at[len(edges)]:
            edges.append(servers.cpu_seconds())
        if now >= next_line:
            next_line += 1.0
            phase = "warm-up" if now < edges_at[0] else "measure" if now < edges_at[1] else "drain"
            total = sum(latest, Totals())
            _progress(
                f"[{rate:,.0f} msgs/s {phase} {now - t0:4.0f} s] sent {total.sent:,}  "
                f"acked {total.acked:,}  delivered {total.delivered:,}  errors {total.errors:,}"
            )
    while len(edges) < 2:
        edges.append(servers.cpu_seconds())
    return [done[i] for i in range(len(pool))], (edges[0], edges[1])


def _batch_mean(before: dict[str, float], after: dict[str, float]) -> float | None:
    name = "messenger_group_commit_batch"
    batches = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    if batches <= 0:
        return None
    return (after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)) / batches


def _cpu(edges: tuple[CpuSeconds, CpuSeconds], messages: int, window_s: float) -> CpuPerMessage:
    def delta(first: float | None, last: float | None) -> float | None:
        return None if first is None or last is None else max(0.0, last - first)

    node = delta(edges[0].node_s, edges[1].node_s)
    store = delta(edges[0].store_s, edges[1].store_s)
    per = max(messages, 1)
    return CpuPerMessage(
        node_us=None if node is None else 1e6 * node / per,
        store_us=None if store is None else 1e6 * store / per,
        node_cores=None if node is None else node / window_s,
        store_cores=None if store is None else store / window_s,
    )


def _rate_result(
    config: LoadConfig,
    rate: float,
    load_average: tuple[float, float, float],
    setup_s: float,
    handshakes_per_s: float | None,
    parts: list[WorkerResult],
    cpu: tuple[CpuSeconds, CpuSeconds],
    batch_mean: float | None,
) -> RateResult:
    def total(name: str) -> int:
        return sum(int(getattr(part, name)) for part in parts)

    def merged(name: str) -> Latency:
        return LatencyHistogram.merged(getattr(part, name) for part in parts).summary()

    window_s = config.duration_s or 1.0
    errors: dict[str, int] = {}
    for part in parts:
        for code, n in part.errors:
            errors[code] = errors.get(code, 0) + n
    check = LossCheck(
        **{
            field.name: total("duplicates" if field.name == "duplicated" else field.name)
            for field in attrs.fields(LossCheck)
        }
    )
    window_acked = total("window_acked")
    return RateResult(
        rate=rate,
        load_average=load_average,
        setup_s=setup_s,
        handshakes_per_s=handshakes_per_s,
        window_s=window_s,
        acked_per_s=window_acked / window_s,
        delivered_per_s=total("window_delivered") / window_s,
        delivery=merged("delivery"),
        receipt=merged("receipt"),
        ack=merged("ack"),
        delivery_same_node=merged("delivery_same"),
        delivery_cross_node=merged("delivery_cross"),
        schedule_lag=merged("schedule_lag"),
        check=check,
        cpu=_cpu(cpu, window_acked, window_s),
        group_commit_batch_mean=batch_mean,
        errors=tuple(sorted(errors.items())),
        drain_s=max(part.drain_s for part in parts),
    )


def run_sweep(config: LoadConfig, command: str) -> SweepResult:
    """Every rate of ``config``, one after the other."""
    seed = config.seed if config.seed is not None else secrets.randbits(32)
    results = []
    for index, rate in enumerate(config.rates):
        _progress(f"=== rate {index + 1} of {len(config.rates)}: {rate:,.0f} msgs/s ===")
        results.append(run_rate(config, rate, seed + 1000 * index))
    return SweepResult(
        command=command,
        machine=platform.platform(),
        cpus=cpu_count(),
        config=config,
        rates=tuple(results),
    )


def knee_text(sweep: SweepResult) -> str:
    found = sweep.knee
    rule = f"the highest rate with delivery p99 < {KNEE_P99_MS:.0f} ms and nothing lost"
    if found is None:
        return f"knee: none of the {len(sweep.rates)} rates qualifies ({rule})"
    return f"knee: {found:,.0f} msgs/s ({rule})"
