"""``messenger bench load|conns|store``: parse the command line, run, report.

Reports go to stdout (text, or JSON with ``--json``); progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from ._conns import PER_PROC, ConnsConfig, conns_text, run_conns
from ._load import LoadConfig, run_sweep
from ._load_plan import PLACEMENTS
from ._node import BenchSetupError, NodesConfig
from ._report import plot_sweep, sweep_text, to_json
from ._store import run_store, store_parser

_EXIT_FAILED = 1
_EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a non-negative number of seconds")
    return value


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of rates: {text!r}") from None
    if not rates or any(not math.isfinite(r) or r <= 0 for r in rates):
        raise argparse.ArgumentTypeError("rates must be positive numbers of msgs/s")
    return rates


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("nodes under test (default: start one of our own)")
    target.add_argument(
        "--url",
        action="append",
        default=[],
        help="ws://HOST:PORT/v1/ws of a running node (repeat for several nodes of one cluster)",
    )
    target.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="with --url: the data directory holding the nodes' secret (or set MESSENGER_SECRET)",
    )
    target.add_argument(
        "--node-pid",
        type=int,
        action="append",
        default=[],
        help="with --url: a node process to read CPU and memory of (repeatable)",
    )
    target.add_argument(
        "--store-pid",
        type=int,
        action="append",
        default=[],
        help="with --url: the store process to read CPU and memory of (repeatable)",
    )
    target.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="without --url: start the node as `messenger serve --workers N`",
    )
    target.add_argument(
        "--heartbeat",
        type=_positive_int,
        default=None,
        metavar="S",
        help="without --url: our node's `serve --heartbeat` (clients ping every half; "
        "default serve's 30)",
    )
    target.add_argument(
        "--node-log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write every number as JSON to FILE, or to stdout instead of the text report",
    )


def _check_target(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.url and args.workers is not None:
        parser.error("--workers starts a node of our own; it cannot go with --url")
    if args.url and args.heartbeat is not None:
        parser.error("--heartbeat configures a node of our own; it cannot go with --url")
    if not args.url and (args.node_pid or args.store_pid or args.data_dir):
        parser.error("--node-pid, --store-pid and --data-dir describe nodes given by --url")


def _nodes(args: argparse.Namespace) -> NodesConfig:
    return NodesConfig(
        urls=tuple(args.url),
        data_dir=args.data_dir,
        workers=args.workers,
        node_pids=tuple(args.node_pid),
        store_pids=tuple(args.store_pid),
        log_level=args.node_log_level,
        heartbeat_s=args.heartbeat,
    )


def load_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messenger bench load",
        description="Open-loop load at each rate of a sweep: send→delivery, send→receipt and "
        "send→ack latency, throughput, server CPU per message, a check that nothing was lost "
        "or duplicated, and the knee.",
    )
    parser.add_argument(
        "--rates",
        type=_rates,
        default=(200.0, 500.0, 1000.0, 2000.0),
        help="messages per second in all, comma-separated (default 200,500,1000,2000)",
    )
    parser.add_argument(
        "--pairs", type=_positive_int, default=200, help="conversations (default 200)"
    )
    parser.add_argument(
        "--group-size",
        type=_positive_int,
        default=2,
        help="members per conversation (default 2: direct conversations)",
    )
    parser.add_argument("--body-bytes", type=_positive_int, default=100, help="default 100 B")
    parser.add_argument("--warmup", type=_seconds, default=3.0, help="seconds (default 3)")
    parser.add_argument(
        "--duration", type=_seconds, default=15.0, help="measured seconds (default 15)"
    )
    parser.add_argument(
        "--drain",
        type=_seconds,
        default=10.0,
        help="at most this many seconds after the load for acks, deliveries and receipts",
    )
    parser.add_argument(
        "--recv-delay",
        type=_seconds,
        default=0.05,
        help="seconds recipients batch their cumulative recv (default 0.05)",
    )
    parser.add_argument("--schedule", choices=["poisson", "uniform"], default="poisson")
    parser.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="mixed",
        help="with several --url or --workers: members on the same node, on different nodes, "
        "or half each (default mixed)",
    )
    parser.add_argument(
        "--procs", type=_positive_int, default=None, help="load-generator processes"
    )
    parser.add_argument("--seed", type=int, default=None, help="schedule seed (default: random)")
    parser.add_argument("--plot", type=Path, default=None, help="write a latency-vs-rate PNG")
    _add_target_options(parser)
    return parser


def conns_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messenger bench conns",
        description="Idle connections: server memory per connection, handshakes per second, "
        "server CPU while they are kept alive.",
    )
    parser.add_argument("--count", type=_positive_int, required=True, help="connections")
    parser.add_argument("--hold", type=_seconds, default=10.0, help="seconds held idle")
    parser.add_argument(
        "--settle", type=_seconds, default=3.0, help="seconds after connecting before reading RSS"
    )
    parser.add_argument(
        "--per-proc",
        type=_positive_int,
        default=PER_PROC,
        help=f"connections per load-generator process (default {PER_PROC:,})",
    )
    _add_target_options(parser)
    return parser


def _emit(json_to: str | None, data: bytes, text: str) -> None:
    if json_to == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    print(text, flush=True)
    if json_to is not None:
        Path(json_to).write_bytes(data)
        print(f"wrote {json_to}", file=sys.stderr)


def load_main(argv: list[str]) -> int:
    parser = load_parser()
    args = parser.parse_args(argv)
    _check_target(parser, args)
    config = LoadConfig(
        rates=args.rates,
        clients=args.pairs * args.group_size,
        group_size=args.group_size,
        body_bytes=args.body_bytes,
        warmup_s=args.warmup,
        duration_s=args.duration,
        drain_s=args.drain,
        recv_delay_s=args.recv_delay,
        poisson=args.schedule == "poisson",
        placement=args.placement,
        procs=args.procs,
        seed=args.seed,
        nodes=_nodes(args),
    )
    sweep = run_sweep(config, "messenger bench load " + " ".join(argv))
    _emit(args.json, to_json(sweep), sweep_text(sweep))
    if args.plot is not None:
        plot_sweep(args.plot, sweep)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0 if all(rate.check.ok for rate in sweep.rates) else _EXIT_FAILED


def conns_main(argv: list[str]) -> int:
    parser = conns_parser()
    args = parser.parse_args(argv)
    _check_target(parser, args)
    config = ConnsConfig(
        count=args.count,
        hold_s=args.hold,
        settle_s=args.settle,
        per_proc=args.per_proc,
        nodes=_nodes(args),
    )
    result = run_conns(config, "messenger bench conns " + " ".join(argv))
    _emit(args.json, to_json(result), conns_text(result))
    return 0 if result.failed == 0 else _EXIT_FAILED


def store_main(argv: list[str]) -> int:
    parser = store_parser()
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE")
    args = parser.parse_args(argv)
    result = run_store(args)
    text = "\n".join(run.line() for run in result.runs)
    _emit(args.json, to_json(result), text)
    return 0


#: bench name → (function, one-line help)
BENCHES: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "load": (load_main, "open-loop rate sweep: latency, throughput, CPU per message, the knee"),
    "conns": (conns_main, "idle connections: memory per connection, handshakes/s"),
    "store": (store_main, "durable appends per second against the embedded store"),
}


def main(argv: list[str]) -> int:
    """Entry point of ``messenger bench``; the exit status."""
    parser = argparse.ArgumentParser(prog="messenger bench", description="The benchmarks.")
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (_function, help_text) in BENCHES.items():
        cmd = sub.add_parser(name, help=help_text, add_help=False)
        cmd.add_argument("args", nargs=argparse.REMAINDER)
    if not argv or argv[0] not in BENCHES:
        parser.parse_args(argv)  # prints help or a usage error and exits
        return _EXIT_USAGE
    # SIGTERM becomes SystemExit, so the nodes and processes we started are stopped.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    function = BENCHES[argv[0]][0]
    try:
        return function(argv[1:])
    except BenchSetupError as exc:
        print(f"messenger bench {argv[0]}: {exc}", file=sys.stderr)
        return _EXIT_FAILED
