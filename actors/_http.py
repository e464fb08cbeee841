"""A tiny HTTP/1.1 client (plain ``http://`` only) on ``trio.open_tcp_stream`` and h11.

Just enough for the notification webhook: one request per connection (``Connection:
close``), a bounded response body, and one deadline for the whole exchange. The caller owns
the deadline; cancellation closes the connection, after which the request may or may not have
reached the server.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence

import attrs
import h11
import trio

__all__ = ["HttpError", "HttpResponse", "HttpUrl", "parse_http_url", "request"]

_USER_AGENT = "messenger-notifier/1"
_MAX_RESPONSE_BODY = 1 << 20
_RECEIVE_CHUNK = 64 * 1024


class HttpError(Exception):
    """The HTTP exchange failed: bad URL, connection error, timeout or a malformed response."""


@attrs.frozen(kw_only=True)
class HttpUrl:
    """A parsed ``http://host[:port]/path?query`` URL."""

    host: str
    port: int
    target: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"


@attrs.frozen(kw_only=True)
class HttpResponse:
    """A complete response: status code, headers (lower-cased names) and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def parse_http_url(url: str) -> HttpUrl:
    """Parse ``url``; :class:`ValueError` naming the problem unless it is a usable http URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in URL {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"credentials in the URL are not supported: {url!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"invalid port in URL {url!r}") from None
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return HttpUrl(host=parts.hostname, port=port, target=target)


async def request(
    method: str,
    url: HttpUrl,
    *,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    timeout_s: float,
) -> HttpResponse:
    """Send one request and read the whole response within ``timeout_s`` seconds.

    Raises :class:`HttpError` for every failure (connection refused or reset, timeout, a
    response h11 cannot parse, a body over 1 MiB); any status code is a response.
    """
    try:
        with trio.fail_after(timeout_s):
            return await _exchange(method, url, body, headers)
    except trio.TooSlowError:
        raise HttpError(f"no complete response within {timeout_s}s") from None
    except OSError as exc:  # trio.open_tcp_stream and socket errors
        raise HttpError(f"connection to {url.host}:{url.port} failed: {exc}") from exc
    except (trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise HttpError(f"HTTP exchange with {url.host}:{url.port} failed: {exc!r}") from exc


async def _exchange(
    method: str, url: HttpUrl, body: bytes, headers: Sequence[tuple[str, str]]
) -> HttpResponse:
    conn = h11.Connection(our_role=h11.CLIENT)
    all_headers = [
        ("Host", url.host_header),
        ("User-Agent", _USER_AGENT),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *headers,
    ]
    outgoing = conn.send(h11.Request(method=method, target=url.target, headers=all_headers))
    outgoing += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    stream = await trio.open_tcp_stream(url.host, url.port)
    async with stream:
        await stream.send_all(outgoing)
        response: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(_RECEIVE_CHUNK))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > _MAX_RESPONSE_BODY:
                    raise HttpError(f"response body over {_MAX_RESPONSE_BODY} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None  # h11 only ends a message it started
                return HttpResponse(
                    status=response.status_code,
                    headers=tuple(
                        (name.decode("latin-1"), value.decode("latin-1"))
                        for name, value in response.headers
                    ),
                    body=b"".join(chunks),
                )
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpError("the server closed the connection before a complete response")
            # InformationalResponse (1xx) needs nothing from us: keep reading.
