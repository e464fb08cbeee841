"""``messenger bench``: dispatch to the benchmark that owns each measurement."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

#: bench name → (module, function, one-line help)
BENCHES: dict[str, tuple[str, str, str]] = {
    "store": ("persistence.bench", "main", "durable appends per second against the embedded store"),
    "load": ("client.bench", "load_main", "open-loop load: latency and throughput of a node"),
    "conns": (
        "client.bench",
        "conns_main",
        "idle connections: memory per connection, handshakes/s",
    ),
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="messenger bench")
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (_module, _function, help_text) in BENCHES.items():
        cmd = sub.add_parser(name, help=help_text, add_help=False)
        cmd.add_argument("args", nargs=argparse.REMAINDER)
    if not argv or argv[0] not in BENCHES:
        parser.parse_args(argv)  # prints help or a usage error and exits
        return 2
    module_name, function_name, _help = BENCHES[argv[0]]
    function: Callable[[list[str]], int] = getattr(
        importlib.import_module(module_name), function_name
    )
    return function(argv[1:])
