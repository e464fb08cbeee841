"""The ``messenger`` command line: one entry point dispatching to the packages that do the work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

_NOT_BUILT = 2


def _not_built(name: str) -> Callable[[argparse.Namespace], int]:
    def run(_args: argparse.Namespace) -> int:
        print(f"messenger {name}: not built yet", file=sys.stderr)
        return _NOT_BUILT

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messenger",
        description="An instant-messaging node with a provable acknowledgement protocol.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in [
        ("serve", "run a chat node (embedded store unless --mongo-uri)"),
        ("token", "mint access tokens for user ids"),
        ("chat", "the terminal chat client"),
        ("sim", "the deterministic simulator"),
        ("bench", "load, capacity and store benchmarks"),
    ]:
        cmd = sub.add_parser(name, help=help_text)
        cmd.set_defaults(func=_not_built(name))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
