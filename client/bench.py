"""``messenger bench load`` and ``messenger bench conns``: measure a node from the outside.

Both start the node under test as a process of its own (``python -m messenger serve`` on a
fresh data directory, embedded store, port 0) unless ``--url`` names a running one, mint
tokens with one ``messenger token`` process, and run the clients in worker processes
(``multiprocessing``, spawn), each a trio event loop holding its share of the clients, so the
load generator never shares a process (or an fd limit) with the node. This process only
coordinates: it starts the workers, samples the node's CPU and RSS with psutil every second,
prints progress, scrapes the node's ``/metrics`` before and after, and reports.

Clock: latencies are ``time.monotonic_ns()`` differences (Linux ``CLOCK_MONOTONIC``, one
system-wide clock); the members of a conversation are always in the same worker, so every
latency is measured within one process anyway.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import multiprocessing
import platform
import queue
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._bench_conns import ConnsPlan, conns_worker
from ._bench_load import LoadPlan, load_worker
from ._bench_node import (
    BenchSetupError,
    ProcessWatcher,
    cpu_count,
    find_listener_pid,
    mint_tokens,
    own_node,
    raise_fd_limit,
    scrape_metrics,
    ws_host_port,
)
from ._bench_report import MIB, latency_line, metric_deltas, plot_load, write_json
from ._bench_stats import LatencyHistogram

__all__ = ["conns_main", "load_main"]

#: Clients per worker process by default (well under the 20,000 open-files limit).
CLIENTS_PER_WORKER = 5_000
#: Seconds between the start order and the first scheduled send (workers get ready).
START_DELAY_S = 1.0
#: Extra seconds a worker may take beyond duration + drain before the run is failed.
GRACE_S = 60.0
_EXIT_FAILED = 1
_EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a non-negative number")
    return value


def _add_node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=None,
        help="ws://HOST:PORT/v1/ws of a running node (default: start a node of our own)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="with --url: the node's data directory, whose secret signs the tokens",
    )
    parser.add_argument(
        "--node-pid", type=int, default=None, help="with --url: the node's pid (for CPU/RSS)"
    )
    parser.add_argument(
        "--workers", type=_positive_int, default=None, help="client processes (default: auto)"
    )
    parser.add_argument(
        "--no-source-addresses",
        action="store_true",
        help="do not bind each worker to its own 127.0.0.x source address",
    )
    parser.add_argument(
        "--node-log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )


def _load_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messenger bench load",
        description="Open-loop load: send→ack and send→delivery latency, throughput, and a "
        "check that no message was lost or duplicated.",
    )
    _add_node_options(parser)
    parser.add_argument("--clients", type=_positive_int, required=True, help="connected clients")
    parser.add_argument(
        "--rate", type=_non_negative_float, required=True, help="messages per second, in all"
    )
    parser.add_argument(
        "--duration", type=_non_negative_float, required=True, help="seconds of load"
    )
    parser.add_argument(
        "--group-size",
        type=_positive_int,
        default=2,
        help="members per conversation (2: direct conversations)",
    )
    parser.add_argument("--body-bytes", type=_positive_int, default=100, help="bytes per body")
    parser.add_argument("--schedule", choices=["poisson", "uniform"], default="poisson")
    parser.add_argument(
        "--drain",
        type=_non_negative_float,
        default=15.0,
        help="seconds to wait after the load for outstanding acks and deliveries",
    )
    parser.add_argument("--seed", type=int, default=None, help="schedule seed (default: random)")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG here")
    return parser


def _conns_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messenger bench conns",
        description="Idle connections: node memory per connection, handshakes per second, "
        "and the node's CPU while they are kept alive with WebSocket pings.",
    )
    _add_node_options(parser)
    parser.add_argument("--count", type=_positive_int, required=True, help="connections")
    parser.add_argument(
        "--hold", type=_non_negative_float, default=30.0, help="seconds to hold them idle"
    )
    parser.add_argument(
        "--settle",
        type=_non_negative_float,
        default=3.0,
        help="seconds to wait after connecting before measuring RSS",
    )
    parser.add_argument("--no-ping", action="store_true", help="do not send keep-alive pings")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    return parser


# ----------------------------------------------------------------------------- plumbing


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the node we started is stopped on the way out."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _source_address(host: str, worker: int, enabled: bool) -> str | None:
    """127.0.0.(10+worker) for a loopback IPv4 node, so each worker has its own port range."""
    if not enabled:
        return None
    try:
        address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        return None
    if address.version != 4 or not address.is_loopback:
        return None
    return f"127.0.0.{10 + worker}"


@contextmanager
def _node(args: argparse.Namespace) -> Iterator[tuple[str, int | None, Path | None]]:
    """(url, pid, data dir for tokens) of the node under test, started here if no ``--url``."""
    if args.url is not None:
        ws_host_port(args.url)
        yield args.url, args.node_pid or find_listener_pid(args.url), args.data_dir
        return
    _progress("starting a node (embedded store, fresh data directory)...")
    with own_node(log_level=args.node_log_level) as node:
        _progress(f"node pid {node.pid} listening on {node.url}")
        yield node.url, node.pid, node.data_dir


class _Workers:
    """Worker processes and the queues between them and this coordinator."""

    def __init__(self, target: Callable[..., None], plans: list[Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.results: Any = ctx.Queue()
        self.controls: list[Any] = [ctx.Queue() for _ in plans]
        self.processes = [
            ctx.Process(target=target, args=(plan, control, self.results), daemon=True)
            for plan, control in zip(plans, self.controls, strict=True)
        ]
        #: The latest ``("progress", worker, connected)`` of each worker.
        self.connected = [0] * len(plans)
        for process in self.processes:
            process.start()

    def broadcast(self, *message: Any) -> None:
        for control in self.controls:
            control.put(message)

    def next_message(self, timeout_s: float) -> tuple[Any, ...] | None:
        """The next worker message within ``timeout_s``; raises if a worker died silently."""
        try:
            message: tuple[Any, ...] = self.results.get(timeout=timeout_s)
        except queue.Empty:
            for process in self.processes:
                if process.exitcode not in (None, 0):
                    raise BenchSetupError(
                        f"worker pid {process.pid} exited with status {process.exitcode}"
                    ) from None
            return None
        if message[0] == "failed":
            raise BenchSetupError(f"worker {message[1]} failed:\n{message[2]}")
        return message

    def collect(self, kind: str, timeout_s: float, on_wait: Callable[[], None]) -> list[Any]:
        """The ``kind`` message of every worker (payload by worker index)."""
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        while len(got) < len(self.processes):
            if time.monotonic() > deadline:
                raise BenchSetupError(f"workers did not all report {kind!r} in {timeout_s:.0f} s")
            message = self.next_message(1.0)
            if message is None:
                on_wait()
            elif message[0] == kind:
                got[message[1]] = message[2]
            elif message[0] == "progress":
                self.connected[message[1]] = message[2]
        return [got[i] for i in range(len(self.processes))]

    def close(self) -> None:
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` into ``parts`` contiguous runs of near-equal length."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def _groups(clients: int, size: int) -> list[list[int]]:
    """Client indices chunked into conversations of ``size`` (a lone leftover joins the last)."""
    groups = [list(range(i, min(i + size, clients))) for i in range(0, clients, size)]
    if len(groups) > 1 and len(groups[-1]) == 1:
        leftover = groups.pop()
        groups[-1] += leftover
    return groups


def _default_workers(clients: int) -> int:
    return max(1, min(max(2, cpu_count()), math.ceil(clients / CLIENTS_PER_WORKER)))


def _machine() -> dict[str, Any]:
    return {
        "cpus": cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


class _Sampler:
    """Node (and embedded store) CPU % and RSS, sampled on demand, kept for the report."""

    def __init__(self, pid: int | None) -> None:
        self.watcher = ProcessWatcher(pid) if pid is not None else None
        self.rows: list[dict[str, float | None]] = []

    def sample(self) -> dict[str, float | None]:
        row: dict[str, float | None] = {
            "node_cpu_percent": None,
            "node_rss_mib": None,
            "store_cpu_percent": None,
            "store_rss_mib": None,
        }
        if self.watcher is not None:
            node, store = self.watcher.sample()
            if node is not None:
                row["node_cpu_percent"] = node.cpu_percent
                row["node_rss_mib"] = node.rss_bytes / MIB
            if store is not None:
                row["store_cpu_percent"] = store.cpu_percent
                row["store_rss_mib"] = store.rss_bytes / MIB
        self.rows.append(row)
        return row

    def summary(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for key in ("node_cpu_percent", "store_cpu_percent"):
            values = [v for row in self.rows if (v := row[key]) is not None]
            out[key + "_mean"] = sum(values) / len(values) if values else None
            out[key + "_max"] = max(values, default=None)
        for key in ("node_rss_mib", "store_rss_mib"):
            values = [v for row in self.rows if (v := row[key]) is not None]
            out[key + "_start"] = values[0] if values else None
            out[key + "_end"] = values[-1] if values else None
            out[key + "_max"] = max(values, default=None)
        return out


def _cpu_text(row: dict[str, float | None]) -> str:
    node_cpu, rss = row["node_cpu_percent"], row["node_rss_mib"]
    if node_cpu is None or rss is None:
        return "node: not observed"
    text = f"node {node_cpu:5.0f}% CPU {rss:7.1f} MiB"
    if row["store_cpu_percent"] is not None:
        text += f" | store {row['store_cpu_percent']:4.0f}% CPU"
    return text


# ----------------------------------------------------------------------------- load


def load_main(argv: list[str]) -> int:
    """Entry point of ``messenger bench load``; the exit status (1 if the check failed)."""
    args = _load_parser().parse_args(argv)
    args.argv = list(argv)
    _exit_on_sigterm()
    if args.group_size < 2 or args.group_size > 256:
        print("messenger bench load: --group-size must be from 2 to 256", file=sys.stderr)
        return _EXIT_USAGE
    if args.clients < args.group_size:
        print("messenger bench load: --clients must be at least --group-size", file=sys.stderr)
        return _EXIT_USAGE
    if not 40 <= args.body_bytes <= 16 * 1024:
        print("messenger bench load: --body-bytes must be from 40 to 16384", file=sys.stderr)
        return _EXIT_USAGE
    raise_fd_limit()
    try:
        with _node(args) as (url, pid, data_dir):
            result, histograms = _run_load(args, url, pid, data_dir)
    except BenchSetupError as exc:
        print(f"messenger bench load: {exc}", file=sys.stderr)
        return _EXIT_FAILED
    _print_load(result)
    if args.json is not None:
        write_json(args.json, result)
        _progress(f"wrote {args.json}")
    if args.plot is not None:
        plot_load(args.plot, result, histograms)
        _progress(f"wrote {args.plot}")
    return 0 if result["check"]["ok"] else _EXIT_FAILED


def _load_plans(
    args: argparse.Namespace, url: str, users: list[str], tokens: list[str]
) -> list[LoadPlan]:
    groups = _groups(args.clients, args.group_size)
    workers = min(args.workers or _default_workers(args.clients), len(groups))
    host, _port, _path = ws_host_port(url)
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    plans = []
    for worker, share in enumerate(_split(groups, workers)):
        members = [index for group in share for index in group]
        local = {index: i for i, index in enumerate(members)}
        plans.append(
            LoadPlan(
                worker=worker,
                url=url,
                users=tuple(users[i] for i in members),
                tokens=tuple(tokens[i] for i in members),
                groups=tuple(tuple(local[i] for i in group) for group in share),
                rate_per_s=args.rate * len(members) / args.clients,
                duration_s=args.duration,
                body_bytes=args.body_bytes,
                schedule=args.schedule,
                drain_s=args.drain,
                local_address=_source_address(host, worker, not args.no_source_addresses),
                seed=seed + worker,
            )
        )
    return plans


def _user_ids(count: int) -> list[str]:
    run = secrets.token_hex(3)
    return [f"b{run}-{i}" for i in range(count)]


def _run_load(
    args: argparse.Namespace, url: str, pid: int | None, data_dir: Path | None
) -> tuple[dict[str, Any], dict[str, LatencyHistogram]]:
    users = _user_ids(args.clients)
    _progress(f"minting {len(users):,} tokens...")
    tokens = mint_tokens(users, data_dir)
    plans = _load_plans(args, url, users, tokens)
    sampler = _Sampler(pid)
    _progress(
        f"starting {len(plans)} worker processes; connecting {args.clients:,} clients "
        f"in conversations of {args.group_size}..."
    )
    began = time.monotonic()
    workers = _Workers(load_worker, plans)
    try:

        def report() -> None:
            _progress(
                f"  ... setting up: {sum(workers.connected):,} connected "
                f"({time.monotonic() - began:.0f} s)"
            )

        ready = workers.collect("ready", 600, report)
        setup_s = time.monotonic() - began
        _progress(f"{args.clients:,} clients connected and conversations set up in {setup_s:.1f} s")
        metrics_before = scrape_metrics(url)
        sampler.sample()
        t0_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
        workers.broadcast("start", t0_ns)
        done, timeline = _watch_load(args, workers, sampler, t0_ns)
        metrics_after = scrape_metrics(url)
    finally:
        workers.close()
    return _load_result(
        args, url, pid, ready, done, timeline, sampler, metrics_before, metrics_after, setup_s
    )


def _watch_load(
    args: argparse.Namespace, workers: _Workers, sampler: _Sampler, t0_ns: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Print a line a second until every worker is done; the results and the timeline."""
    count = len(workers.processes)
    latest: list[dict[str, int]] = [{} for _ in range(count)]
    per_second: dict[int, list[dict[str, int] | None]] = {}
    done: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + START_DELAY_S + args.duration + args.drain + GRACE_S
    next_line = time.monotonic() + START_DELAY_S + 1.0
    cpu_by_second: dict[int, float | None] = {}
    while len(done) < count:
        if time.monotonic() > deadline:
            raise BenchSetupError("workers did not finish in time")
        message = workers.next_message(max(0.01, next_line - time.monotonic()))
        if message is not None:
            match message:
                case ("tick", worker, second, totals):
                    latest[worker] = totals
                    per_second.setdefault(second, [None] * count)[worker] = totals
                case ("done", worker, result):
                    done[worker] = result
        if time.monotonic() >= next_line:
            next_line += 1.0
            elapsed = (time.monotonic_ns() - t0_ns) / 1e9
            row = sampler.sample()
            cpu_by_second[round(elapsed)] = row["node_cpu_percent"]
            totals = {k: sum(t.get(k, 0) for t in latest) for k in ("sent", "acked")}
            delivered = sum(t.get("delivered", 0) for t in latest)
            errors = sum(t.get("errors", 0) for t in latest)
            phase = "load " if elapsed <= args.duration else "drain"
            _progress(
                f"[{phase} {elapsed:5.0f}/{args.duration:.0f} s] sent {totals['sent']:>9,}  "
                f"acked {totals['acked']:>9,}  delivered {delivered:>10,}  errors {errors:>5,}"
                f"  | {_cpu_text(row)}"
            )
    return [done[i] for i in range(count)], _timeline(per_second, count, cpu_by_second)


def _timeline(
    per_second: dict[int, list[dict[str, int] | None]],
    count: int,
    cpu_by_second: dict[int, float | None],
) -> list[dict[str, Any]]:
    """Per-second rates (events in second t-1..t) from the workers' cumulative totals."""
    rows = []
    previous = [dict.fromkeys(("sent", "acked", "delivered", "errors"), 0) for _ in range(count)]
    for second in sorted(per_second):
        totals = per_second[second]
        row: dict[str, Any] = {"t_s": second}
        for key in ("sent", "acked", "delivered", "errors"):
            rate = 0
            for worker, part in enumerate(totals):
                if part is not None:
                    rate += part[key] - previous[worker][key]
            row[key] = rate
        for worker, part in enumerate(totals):
            if part is not None:
                previous[worker] = part
        row["node_cpu_percent"] = cpu_by_second.get(second)
        rows.append(row)
    return rows


def _load_result(
    args: argparse.Namespace,
    url: str,
    pid: int | None,
    ready: list[dict[str, Any]],
    done: list[dict[str, Any]],
    timeline: list[dict[str, Any]],
    sampler: _Sampler,
    metrics_before: dict[str, float],
    metrics_after: dict[str, float],
    setup_s: float,
) -> tuple[dict[str, Any], dict[str, LatencyHistogram]]:
    def total(key: str) -> int:
        return sum(int(part[key]) for part in done)

    histograms = {
        name: LatencyHistogram.merged(LatencyHistogram.from_wire(p[key]) for p in done)
        for name, key in (
            ("send→ack", "ack_latency"),
            ("send→delivery", "delivery_latency"),
            ("schedule lag", "schedule_lag"),
            ("handshake", "handshake"),
        )
    }
    errors: dict[str, int] = {}
    for part in done:
        for code, n in part["errors"].items():
            errors[code] = errors.get(code, 0) + n
    window = {k: sum(p["window"][k] for p in done) for k in ("sent", "acked", "delivered")}
    duration = args.duration or 1.0
    check = {
        key: total(key)
        for key in (
            "lost_messages",
            "lost_deliveries",
            "duplicates",
            "seq_conflicts",
            "unexpected",
            "out_of_order",
            "unacked",
            "delivered_unacked",
            "redundant_pushes",
            "reconnects",
        )
    }
    check["drain_s"] = max(p["drain_s"] for p in done)
    check["ok"] = (
        check["lost_messages"] == 0
        and check["duplicates"] == 0
        and check["seq_conflicts"] == 0
        and check["unexpected"] == 0
    )
    connect_s = max(r["connect_s"] for r in ready)
    result: dict[str, Any] = {
        "bench": "load",
        "command": "messenger bench load " + " ".join(args.argv),
        "config": {
            "clients": args.clients,
            "rate": args.rate,
            "duration_s": args.duration,
            "group_size": args.group_size,
            "body_bytes": args.body_bytes,
            "schedule": args.schedule,
            "workers": len(done),
            "drain_s": args.drain,
        },
        "machine": _machine(),
        "node": {"url": url, "pid": pid, "own": args.url is None},
        "setup": {
            "seconds": setup_s,
            "connect_s": connect_s,
            "handshakes_per_s": args.clients / connect_s if connect_s > 0 else None,
            "handshake_latency": histograms["handshake"].summary(),
        },
        "sent": total("sent"),
        "acked": total("acked"),
        "failed": total("failed"),
        "delivered": total("delivered"),
        "expected_deliveries": total("expected_deliveries"),
        "throughput": {
            "sent_per_s": window["sent"] / duration,
            "acked_per_s": window["acked"] / duration,
            "delivered_per_s": window["delivered"] / duration,
        },
        "latency_ms": {
            "ack": histograms["send→ack"].summary(),
            "delivery": histograms["send→delivery"].summary(),
            "schedule_lag": histograms["schedule lag"].summary(),
        },
        "errors": errors,
        "check": check,
        "client": {
            "recv_frames": total("recv_frames"),
            "pings": total("pings"),
            "pongs": total("pongs"),
        },
        "resources": sampler.summary(),
        "node_metrics": metric_deltas(metrics_before, metrics_after),
        "timeline": timeline,
        "cdf_ms": {
            name: [[round(ms, 4), round(frac, 6)] for ms, frac in histograms[name].cdf_ms()]
            for name in ("send→ack", "send→delivery")
        },
    }
    plotted = {k: histograms[k] for k in ("send→ack", "send→delivery")}
    return result, plotted


def _print_load(result: dict[str, Any]) -> None:
    config, th, check = result["config"], result["throughput"], result["check"]
    res, setup = result["resources"], result["setup"]
    print()
    print(
        f"load: {config['clients']:,} clients in {config['workers']} worker processes, "
        f"conversations of {config['group_size']}, {config['rate']:,.0f} msgs/s "
        f"({config['schedule']}) for {config['duration_s']:.0f} s, "
        f"{config['body_bytes']} B bodies"
    )
    print(f"setup: {setup['seconds']:.1f} s ({setup['handshakes_per_s'] or 0:,.0f} handshakes/s)")
    print(
        f"sent {result['sent']:,}  acked {result['acked']:,}  failed {result['failed']:,}  "
        f"delivered {result['delivered']:,} of {result['expected_deliveries']:,} expected"
    )
    print(
        f"throughput (load window): sent {th['sent_per_s']:,.0f} msgs/s  "
        f"acked {th['acked_per_s']:,.0f} msgs/s  delivered {th['delivered_per_s']:,.0f} msgs/s"
    )
    lat = result["latency_ms"]
    print(latency_line("send→ack", lat["ack"]))
    print(latency_line("send→delivery", lat["delivery"]))
    print(latency_line("schedule lag", lat["schedule_lag"]))
    errors = ", ".join(f"{k} {v:,}" for k, v in sorted(result["errors"].items())) or "none"
    print(f"errors: {errors}")

    def pct(key: str) -> str:
        value = res.get(key)
        return "-" if value is None else f"{value:.0f}%"

    def mib(key: str) -> str:
        value = res.get(key)
        return "-" if value is None else f"{value:,.1f} MiB"

    print(
        f"node: CPU mean {pct('node_cpu_percent_mean')} max {pct('node_cpu_percent_max')} "
        f"(of one core), RSS {mib('node_rss_mib_start')} → {mib('node_rss_mib_end')}; "
        f"store: CPU mean {pct('store_cpu_percent_mean')}, RSS {mib('store_rss_mib_end')}"
    )
    batch = result["node_metrics"].get("group_commit_batch_mean")
    if batch is not None:
        print(f"node: group commit mean batch {batch:.1f} sends")
    verdict = "OK" if check["ok"] else "FAILED"
    print(
        f"check: {verdict} — lost {check['lost_messages']:,} messages "
        f"({check['lost_deliveries']:,} deliveries), duplicated {check['duplicates']:,}, "
        f"seq conflicts {check['seq_conflicts']:,}, unexpected {check['unexpected']:,}, "
        f"unacked at end {check['unacked']:,}, out of order {check['out_of_order']:,}, "
        f"redundant pushes {check['redundant_pushes']:,}, reconnects {check['reconnects']:,} "
        f"(drain {check['drain_s']:.1f} s)"
    )


# ----------------------------------------------------------------------------- conns


def conns_main(argv: list[str]) -> int:
    """Entry point of ``messenger bench conns``; the exit status."""
    args = _conns_parser().parse_args(argv)
    args.argv = list(argv)
    _exit_on_sigterm()
    raise_fd_limit()
    try:
        with _node(args) as (url, pid, data_dir):
            result = _run_conns(args, url, pid, data_dir)
    except BenchSetupError as exc:
        print(f"messenger bench conns: {exc}", file=sys.stderr)
        return _EXIT_FAILED
    _print_conns(result)
    if args.json is not None:
        write_json(args.json, result)
        _progress(f"wrote {args.json}")
    return 0 if result["failed_connects"] == 0 else _EXIT_FAILED


def _run_conns(
    args: argparse.Namespace, url: str, pid: int | None, data_dir: Path | None
) -> dict[str, Any]:
    users = _user_ids(args.count)
    _progress(f"minting {len(users):,} tokens...")
    tokens = mint_tokens(users, data_dir)
    host, _port, _path = ws_host_port(url)
    count = args.workers or _default_workers(args.count)
    plans = [
        ConnsPlan(
            worker=worker,
            url=url,
            users=tuple(users[i] for i in share),
            tokens=tuple(tokens[i] for i in share),
            local_address=_source_address(host, worker, not args.no_source_addresses),
            ping=not args.no_ping,
        )
        for worker, share in enumerate(_split(list(range(args.count)), count))
    ]
    sampler = _Sampler(pid)
    workers = _Workers(conns_worker, plans)
    try:
        workers.collect("idle", 120, lambda: None)
        time.sleep(1.0)
        rss_0 = sampler.watcher.rss_bytes() if sampler.watcher else None
        metrics_0 = scrape_metrics(url)
        _progress(f"node RSS at 0 connections: {_mib(rss_0)}; connecting {args.count:,}...")
        began = time.monotonic()
        workers.broadcast("connect")

        def report() -> None:
            _progress(
                f"  ... {sum(workers.connected):,} connected ({time.monotonic() - began:.0f} s)"
            )

        connected = workers.collect("connected", 300, report)
        connect_s = time.monotonic() - began
        opened = sum(c["clients"] - c["failed"] for c in connected)
        _progress(f"{opened:,} connections open in {connect_s:.1f} s; settling {args.settle} s")
        settle_began = time.monotonic()
        time.sleep(args.settle)
        rss_n = sampler.watcher.rss_bytes() if sampler.watcher else None
        metrics_n = scrape_metrics(url)
        sampler.sample()
        hold_began = time.monotonic()
        while time.monotonic() - hold_began < args.hold:
            time.sleep(min(1.0, max(0.0, args.hold - (time.monotonic() - hold_began))))
            row = sampler.sample()
            _progress(
                f"[hold {time.monotonic() - hold_began:4.0f}/{args.hold:.0f} s] {_cpu_text(row)}"
            )
        hold_s = time.monotonic() - hold_began
        workers.broadcast("stop")
        done = workers.collect("done", 120, lambda: None)
    finally:
        workers.close()
    handshake = LatencyHistogram.merged(
        LatencyHistogram.from_wire(c["handshake"]) for c in connected
    )
    sampler.rows = sampler.rows[1:]  # CPU since the hold began
    problems: dict[str, int] = {}
    for part in done:
        for code, n in part["problems"].items():
            problems[code] = problems.get(code, 0) + n
    pings = sum(p["pings"] for p in done) - sum(c["pings"] for c in connected)
    idle_s = hold_s + (hold_began - settle_began)
    per_conn_kib = (rss_n - rss_0) / opened / 1024 if rss_0 and rss_n and opened else None
    return {
        "bench": "conns",
        "command": "messenger bench conns " + " ".join(args.argv),
        "config": {
            "count": args.count,
            "workers": count,
            "hold_s": args.hold,
            "settle_s": args.settle,
            "ping": not args.no_ping,
        },
        "machine": _machine(),
        "node": {"url": url, "pid": pid, "own": args.url is None},
        "opened": opened,
        "failed_connects": sum(c["failed"] for c in connected),
        "connect_s": connect_s,
        "handshakes_per_s": opened / connect_s if connect_s > 0 else None,
        "handshake_latency": handshake.summary(),
        "node_rss_mib_at_0": rss_0 / MIB if rss_0 else None,
        "node_rss_mib_at_n": rss_n / MIB if rss_n else None,
        "rss_kib_per_connection": per_conn_kib,
        "hold_s": hold_s,
        "pings_while_idle": pings,
        "pongs": sum(p["pongs"] for p in done),
        "pings_per_s": pings / idle_s if idle_s > 0 else None,
        "reconnects": sum(p["reconnects"] for p in done),
        "problems": problems,
        "resources_during_hold": sampler.summary(),
        "node_connections_gauge": metrics_n.get("messenger_connections"),
        "node_metrics_at_0": {k: v for k, v in metrics_0.items() if k == "messenger_connections"},
    }


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:,.1f} MiB"


def _print_conns(result: dict[str, Any]) -> None:
    res = result["resources_during_hold"]
    print()
    print(
        f"conns: {result['opened']:,} of {result['config']['count']:,} connections opened "
        f"({result['failed_connects']:,} failed) from {result['config']['workers']} processes"
    )
    hs = result["handshake_latency"]
    print(
        f"handshakes: {result['handshakes_per_s'] or 0:,.0f} handshakes/s "
        f"({result['connect_s']:.1f} s in all); {latency_line('per handshake', hs)}"
    )
    per_conn = result["rss_kib_per_connection"]
    print(
        f"node RSS: {result['node_rss_mib_at_0'] or 0:,.1f} MiB at 0 → "
        f"{result['node_rss_mib_at_n'] or 0:,.1f} MiB at {result['opened']:,}: "
        + ("-" if per_conn is None else f"{per_conn:.1f} KiB per connection")
    )
    cpu = res.get("node_cpu_percent_mean")
    print(
        f"idle hold {result['hold_s']:.0f} s with {result['pings_per_s'] or 0:,.0f} WebSocket "
        f"pings/s: node CPU mean "
        + ("-" if cpu is None else f"{cpu:.1f}%")
        + " of one core"
        + (
            ""
            if res.get("store_cpu_percent_mean") is None
            else f", store {res['store_cpu_percent_mean']:.1f}%"
        )
    )
    problems = ", ".join(f"{k} {v:,}" for k, v in sorted(result["problems"].items())) or "none"
    print(f"problems: {problems}; reconnects {result['reconnects']:,}")
