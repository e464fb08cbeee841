"""The ``messenger`` command line: one entry point dispatching to the packages that do the work.

Each subcommand is a ``main(argv) -> int`` function in the package that owns it; this module
only picks the function and hands it the rest of the command line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence

#: subcommand → (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("actors", "serve_main", "run a chat node (embedded store unless --mongo-uri)"),
    "token": ("actors", "token_main", "mint access tokens for user ids, one per line"),
    "chat": ("client", "chat_main", "the terminal chat client"),
    "sim": ("sim", "main", "the deterministic simulator (run, explore, mutants)"),
    "bench": ("bench", "main", "benchmarks: load, conns, store (the [bench] extra)"),
}

#: subcommand → (the extra it needs, the modules that extra installs)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bench": ("bench", ("psutil", "matplotlib")),
}

_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messenger",
        description="An instant-messaging node with a provable acknowledgement protocol.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, _function, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, add_help=False)
        cmd.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _missing_extra(name: str) -> str | None:
    """A one-line error if ``name`` needs an optional extra that is not installed."""
    if name not in EXTRAS:
        return None
    extra, modules = EXTRAS[name]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"messenger {name}: needs the [{extra}] extra (missing: {', '.join(missing)}); "
        f"install it with: pip install -e '.[{extra}]'"
    )


def _resolve(name: str) -> Callable[[list[str]], int]:
    module_name, function_name = COMMANDS[name][:2]
    function: Callable[[list[str]], int] = getattr(
        importlib.import_module(module_name), function_name
    )
    return function


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help or a usage error and exits
        return _USAGE
    missing = _missing_extra(argv[0])
    if missing is not None:
        print(missing, file=sys.stderr)
        return 1
    return _resolve(argv[0])(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
