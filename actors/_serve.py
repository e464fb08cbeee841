"""``messenger serve``: run one chat node on TCP with the embedded store (or MongoDB).

With ``--workers N`` (N > 1) this process is instead the parent of N node processes on one
port over one store (see :mod:`actors._workers`); a worker is this command with ``--worker``
(it listens with ``SO_REUSEPORT`` and dies with its parent). Nodes on other hosts join the
same deployment with ``--mongo-uri`` (see docs/cluster.md).

Startup: resolve the token secret, start SecantusDB on ``--data-dir`` unless ``--mongo-uri``
is given (``EmbeddedServer`` first reaps one a SIGKILLed earlier node left running on the
same directory), connect the Store, start the node and its
notifier, listen, print ``messenger listening on ws://HOST:PORT/v1/ws``. SIGINT/SIGTERM:
graceful shutdown (stop accepting, finish in-flight writes, flush watermarks, close clients
with 1001), then close the Store and stop the embedded server.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from persistence import EmbeddedServer, EmbeddedServerError, MongoStore, Store, StoreError
from protocol import DEFAULT_HEARTBEAT_S, DEFAULT_PRESENCE_GRACE_S

from ._auth import SecretError, TokenIssuer, resolve_secret
from ._config import NodeConfig
from ._logging import configure_logging
from ._node import Node
from ._notifier import LogSink, Notifier, Sink, WebhookSink
from ._web import normalize_origin
from ._workers import exit_with_parent, reuse_port_socket, run_workers

log = logging.getLogger("actors.serve")

_EXIT_USAGE = 2
_EXIT_STARTUP = 1


def _heartbeat(text: str) -> int:
    value = int(text)
    if not 10 <= value <= 60:
        raise argparse.ArgumentTypeError("heartbeat must be from 10 to 60 seconds")
    return value


def _origin(text: str) -> str:
    try:
        return normalize_origin(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="messenger serve", description="Run a chat node.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0: pick a free one)")
    parser.add_argument("--data-dir", type=Path, default=Path("./messenger-data"))
    parser.add_argument("--mongo-uri", default=None, help="use this MongoDB instead of embedded")
    parser.add_argument("--database", default="messenger", help="database name")
    parser.add_argument("--notify-webhook", default=None, metavar="URL")
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--heartbeat", type=_heartbeat, default=DEFAULT_HEARTBEAT_S)
    parser.add_argument(
        "--allow-origin",
        type=_origin,
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept browser WebSockets from this origin (repeatable)",
    )
    parser.add_argument("--metrics", action="store_true", help="serve GET /metrics (Prometheus)")
    limits = NodeConfig()
    for flag, field, text in (
        (
            "--max-connections",
            "max_connections",
            "open connections beyond this are closed with 4429",
        ),
        (
            "--max-pending-hellos",
            "max_pending_hellos",
            "connections that have not said hello yet, at most",
        ),
        ("--max-devices", "max_devices_per_user", "connected devices per user on this node"),
    ):
        parser.add_argument(
            flag,
            type=_positive,
            default=getattr(limits, field),
            metavar="N",
            help=f"{text} (default %(default)s)",
        )
    parser.add_argument(
        "--workers", type=_positive, default=1, help="node processes on this port (1)"
    )
    parser.add_argument(
        "--lease",
        type=_lease,
        default=float(os.environ.get("MESSENGER_LEASE_S", "15")),
        metavar="SECONDS",
        help="node lease: a node silent this long is declared dead (<= 30; 15)",
    )
    parser.add_argument(
        "--lease-refresh",
        type=_positive_float,
        default=float(os.environ.get("MESSENGER_LEASE_REFRESH_S", "3")),
        metavar="SECONDS",
        help="renew the lease and sweep dead nodes this often (3)",
    )
    parser.add_argument(
        "--presence-grace",
        type=_positive_float,
        default=DEFAULT_PRESENCE_GRACE_S,
        metavar="SECONDS",
        help="offline is reported only after this grace (5)",
    )
    # Set by the --workers parent for its children.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--predecessor", default=None, help=argparse.SUPPRESS)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _lease(text: str) -> float:
    value = _positive_float(text)
    if value > 30:
        raise argparse.ArgumentTypeError("a lease expires after at most 30 seconds")
    return value


def serve_main(argv: list[str]) -> int:
    """Entry point of ``messenger serve``; returns the process exit status."""
    args = _parser().parse_args(argv)
    if args.mongo_uri is None:
        # How a --workers parent hands its store to its workers (not on their command line).
        args.mongo_uri = os.environ.get("MESSENGER_MONGO_URI")
    configure_logging(args.log_level)
    try:
        secret = resolve_secret(args.data_dir)
    except SecretError as exc:
        print(f"messenger serve: {exc}", file=sys.stderr)
        return _EXIT_STARTUP
    try:
        trio.run(_serve, args, argv, TokenIssuer(secret))
    except (EmbeddedServerError, OSError) as exc:
        print(f"messenger serve: {exc}", file=sys.stderr)
        return _EXIT_STARTUP
    except StoreError as exc:  # a bad --mongo-uri, or no server behind it
        print(f"messenger serve: cannot use the store: {_one_line(exc.message)}", file=sys.stderr)
        return _EXIT_STARTUP
    return 0


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, cut to ``limit`` characters (driver errors can be pages long)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def _serve(args: argparse.Namespace, argv: list[str], issuer: TokenIssuer) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        embedded = None
        if args.mongo_uri is None:
            embedded = await trio.to_thread.run_sync(_start_embedded, args.data_dir)
        try:
            uri = args.mongo_uri or (_embedded_uri(embedded.uri) if embedded else "")
            if args.workers > 1:
                await run_workers(args, argv, uri, signals)
                return
            store = await MongoStore.connect(uri, args.database)
            try:
                await _run_node(args, issuer, store, signals)
            finally:
                await store.aclose()
        finally:
            if embedded is not None:
                await trio.to_thread.run_sync(embedded.stop)


async def _run_node(
    args: argparse.Namespace,
    issuer: TokenIssuer,
    store: Store,
    signals: AsyncIterator[int],
) -> None:
    rng = random.Random(int.from_bytes(os.urandom(16), "big"))
    sink: Sink = WebhookSink(args.notify_webhook) if args.notify_webhook else LogSink()
    owner = f"{socket.gethostname()}-{os.getpid()}"
    notifier = Notifier(store, sink, owner=owner, wall_clock_ms=_wall_ms, rng=rng)
    node = Node(
        store=store,
        verify_token=issuer.verify,
        rng=rng,
        wall_ms=_wall_ms,
        config=NodeConfig(
            heartbeat_s=args.heartbeat,
            metrics=args.metrics,
            allowed_origins=frozenset(args.allow_origin),
            max_connections=args.max_connections,
            max_pending_hellos=args.max_pending_hellos,
            max_devices_per_user=args.max_devices,
            presence_grace_s=args.presence_grace,
            lease_s=args.lease,
            lease_refresh_s=args.lease_refresh,
        ),
        notifier=notifier,
        name=owner,
        predecessors=() if args.predecessor is None else (args.predecessor,),
    )
    if args.worker:
        sock = reuse_port_socket(args.host, args.port)
        sock.listen(socket.SOMAXCONN)
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
    else:
        listeners = await trio.open_tcp_listeners(args.port, host=args.host)
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        if args.worker:
            await nursery.start(exit_with_parent)
        await nursery.start(node.run)
        await nursery.start(node.serve_listeners, listeners)
        print(f"messenger listening on ws://{args.host}:{port}/v1/ws", flush=True)
        log.info("listening", extra={"host": args.host, "port": port})
        async for signum in signals:
            log.warning("shutting down on signal %d", signum)
            break
        await node.shutdown()
        nursery.cancel_scope.cancel()


def _embedded_uri(uri: str) -> str:
    """The embedded store's URI, with the driver's retryable writes off.

    SecantusDB keeps a reply per retryable write for 30 minutes, capped at 10,000, and on
    every retryable write scans them all, sorting them once over the cap: past ~10,000 light
    writes (sessions, devices, marks, leases) each one cost the store milliseconds (measured:
    ``bench conns --workers 3`` fell from 67 to under 15 handshakes/s as it passed ~10,000
    connections, the store at 80 % of a core in that sort). A single embedded server has no
    failover for the driver's one retry to ride out, and MongoStore's runner re-runs a failed
    operation anyway (every write is guarded by a unique key or is idempotent). A
    ``--mongo-uri`` is used as given.
    """
    return f"{uri}{'&' if '?' in uri else '/?'}retryWrites=false"


def _start_embedded(data_dir: Path) -> EmbeddedServer:
    """Start SecantusDB on ``data_dir`` (the server reaps one a killed node left behind)."""
    server = EmbeddedServer(data_dir)
    server.start()
    return server
