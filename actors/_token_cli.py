"""``messenger token``: mint access tokens for user ids with the node's secret.

Prints one token per line, in the order the users were given, so load generators and tests
mint thousands of tokens with one process start. The secret comes from ``$MESSENGER_SECRET``
or from ``DATA_DIR/secret.key`` (created if missing), exactly as ``messenger serve`` finds it.

``--web`` prints, instead of each bare token, a link to the node's web client that signs in
with it: ``URL/#token=TOKEN``. The token rides in the fragment, which a browser never sends
to the server, so it never appears in a request line, a proxy log or a ``Referer``.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from pathlib import Path

from protocol import is_valid_id

from ._auth import SECRET_ENV, SecretError, TokenIssuer, resolve_secret

__all__ = ["DEFAULT_DATA_DIR", "DEFAULT_TTL_S", "DEFAULT_WEB_URL", "token_main", "web_link"]

DEFAULT_TTL_S = 30 * 24 * 3600
DEFAULT_DATA_DIR = Path("messenger-data")
DEFAULT_WEB_URL = "http://127.0.0.1:8765"

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


def _web_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"not an http(s) URL of a node: {text!r}")
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"the node URL takes no query or fragment: {text!r}")
    return text.rstrip("/")


def web_link(url: str, token: str) -> str:
    """The link that opens the web client at ``url`` signed in with ``token``."""
    return f"{url.rstrip('/')}/#token={urllib.parse.quote(token, safe='')}"


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
    parser.add_argument(
        "--web",
        action="store_true",
        help="print a link to the node's web client that signs in (URL/#token=...)",
    )
    parser.add_argument(
        "--url",
        type=_web_url,
        default=None,
        help=f"the node's http URL for --web links (default {DEFAULT_WEB_URL})",
    )
    return parser


def token_main(argv: list[str]) -> int:
    """Entry point of ``messenger token``; returns the exit status.

    0: one token printed per user. 2: usage error or an invalid user id (nothing printed).
    1: the secret cannot be read or created.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.url is not None and not args.web:
        parser.error("--url is for --web links")
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
    tokens = [issuer.mint(user, args.ttl, now_s) for user in args.users]
    url = args.url or DEFAULT_WEB_URL
    lines = [web_link(url, token) for token in tokens] if args.web else tokens
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()
    return 0
