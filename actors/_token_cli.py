"""``messenger token``: mint access tokens for user ids with the node's secret.

Prints one token per line, in the order the users were given, so load generators and tests
mint thousands of tokens with one process start. The secret comes from ``$MESSENGER_SECRET``
or from ``DATA_DIR/secret.key`` (created if missing), exactly as ``messenger serve`` finds it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from protocol import is_valid_id

from ._auth import SECRET_ENV, SecretError, TokenIssuer, resolve_secret

__all__ = ["DEFAULT_DATA_DIR", "DEFAULT_TTL_S", "token_main"]

DEFAULT_TTL_S = 30 * 24 * 3600
DEFAULT_DATA_DIR = Path("messenger-data")

_USAGE_ERROR = 2
_SECRET_ERROR = 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messenger token",
        description="Print an access token for each USER, one per line, in the given order.",
        epilog=f"The secret is ${SECRET_ENV} when set, else DATA_DIR/secret.key.",
    )
    parser.add_argument("users", nargs="+", metavar="USER", help="user id(s) to mint tokens for")
    parser.add_argument(
        "--ttl",
        type=_positive_int,
        default=DEFAULT_TTL_S,
        metavar="S",
        help=f"lifetime in seconds (default {DEFAULT_TTL_S}, 30 days)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"the node's data directory, holding secret.key (default ./{DEFAULT_DATA_DIR})",
    )
    return parser


def token_main(argv: list[str]) -> int:
    """Entry point of ``messenger token``; returns the exit status.

    0: one token printed per user. 2: usage error or an invalid user id (nothing printed).
    1: the secret cannot be read or created.
    """
    args = _parser().parse_args(argv)
    invalid = [user for user in args.users if not is_valid_id(user)]
    if invalid:
        names = ", ".join(repr(user) for user in invalid)
        print(
            f"messenger token: invalid user id {names}: "
            "a user id is 1-64 characters of [A-Za-z0-9_.-]",
            file=sys.stderr,
        )
        return _USAGE_ERROR
    try:
        issuer = TokenIssuer(resolve_secret(args.data_dir))
    except SecretError as exc:
        print(f"messenger token: {exc}", file=sys.stderr)
        return _SECRET_ERROR
    now_s = time.time()  # the command line is not an actor: the wall clock is the right one
    sys.stdout.write("".join(issuer.mint(user, args.ttl, now_s) + "\n" for user in args.users))
    sys.stdout.flush()
    return 0
