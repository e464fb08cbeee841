"""The browser client's side of the gateway: its static files, their headers, the Origin rule.

The files are the ``web`` package's data (plain HTML, JavaScript modules and CSS, no build
step), read once per process: they are small, and a node never serves a file that changed
under it halfway through a page load. ``GET /`` is ``index.html``.

Every HTTP answer of the node carries :data:`SECURITY_HEADERS`. The policy allows scripts,
styles and connections from the node's own origin only: ``connect-src 'self'`` covers the
WebSocket to the same host and port (CSP Level 3 matches ``ws:`` to an ``http:`` self), so
no inline script, no foreign script and no exfiltrating connection can run even if a body
were ever rendered as HTML.

Origin (PROTOCOL.md v1.1, Transport): an upgrade that carries ``Origin`` is accepted only
from the node's own origin — ``http://`` or ``https://`` (a TLS-terminating proxy in front)
followed by the request's ``Host`` — or from one the operator allowed (``--allow-origin``).
No ``Origin`` at all is a non-browser client and is let through: the token in ``hello`` is
what authenticates; the Origin check only keeps foreign pages from driving a browser's
connection.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

__all__ = [
    "SECURITY_HEADERS",
    "normalize_origin",
    "origin_allowed",
    "web_routes",
]

SECURITY_HEADERS: Final[tuple[tuple[str, str], ...]] = (
    (
        "content-security-policy",
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
)

_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

StaticRoute = Callable[[], Awaitable[tuple[int, str, bytes]]]


def web_routes() -> dict[str, StaticRoute]:
    """``GET`` routes for every file of the web client, ``/`` being ``index.html``."""
    return dict(_load_routes())


@functools.cache
def _load_routes() -> tuple[tuple[str, StaticRoute], ...]:
    routes: dict[str, StaticRoute] = {}
    for entry in importlib.resources.files("web").iterdir():
        content_type = _CONTENT_TYPES.get(_suffix(entry.name))
        if content_type is None or not entry.is_file():
            continue
        route = _constant(content_type, entry.read_bytes())
        routes[f"/{entry.name}"] = route
        if entry.name == "index.html":
            routes["/"] = route
    return tuple(sorted(routes.items()))


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def _constant(content_type: str, body: bytes) -> StaticRoute:
    async def route() -> tuple[int, str, bytes]:
        return 200, content_type, body

    return route


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` lower-cased, without a trailing slash (as browsers send it).

    Raises :class:`ValueError` for anything that is not an http(s) origin."""
    value = origin.strip().rstrip("/").lower()
    scheme, sep, host = value.partition("://")
    if not sep or scheme not in ("http", "https") or not host or "/" in host:
        raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    return value


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str]) -> bool:
    """The Origin rule (module docstring): may an upgrade with these headers proceed?"""
    if origin is None:
        return True
    value = origin.strip().lower()
    if host and value in (f"http://{host.lower()}", f"https://{host.lower()}"):
        return True
    return value in allowed
