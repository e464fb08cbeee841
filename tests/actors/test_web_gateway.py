"""The node's HTTP side for browsers: the web client's files and their headers, the Origin
rule on the WebSocket upgrade, ``/metrics`` only when enabled, and ``messenger token --web``.

Raw bytes over a real TCP socket to a real node on MongoStore, so the tests see exactly
what a browser would get."""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio
from wsclient import SECRET, TEST_CONFIG, Chat, serve_node

from actors import Node, NodeConfig, TokenIssuer
from actors._serve import _parser as serve_parser
from actors._token_cli import token_main
from actors._web import normalize_origin, web_routes
from persistence import MongoStore

UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def fetch(port: int, path: str, extra: str = "", host: str | None = None) -> Reply:
    """One request (``extra``: raw header lines); the status, headers and body (none for a
    101, after which the socket is closed without a word)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    host = host or f"127.0.0.1:{port}"
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
    data = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += await stream.receive_some(65536)
    await stream.aclose()
    return Reply(int(status_line.split()[1]), headers, body)


NodeFactory = Callable[[NodeConfig], Awaitable[int]]


@pytest.fixture
async def start_node(
    mongo_uri: str, mongo_db_name: str, nursery: trio.Nursery
) -> AsyncIterator[NodeFactory]:
    """Start a node with a given config on a TCP port (its port); all stopped afterwards."""
    store = await MongoStore.connect(mongo_uri, mongo_db_name)
    nodes: list[Node] = []

    async def start(config: NodeConfig) -> int:
        node, port = await serve_node(nursery, store, config, TokenIssuer(SECRET).verify)
        nodes.append(node)
        return port

    yield start
    for node in nodes:
        await node.shutdown()
    await store.aclose()


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/", "text/html; charset=utf-8", b'<script type="module" src="/main.js">'),
        ("/index.html", "text/html; charset=utf-8", b"<title>messenger</title>"),
        ("/main.js", "text/javascript; charset=utf-8", b'from "./view.js"'),
        ("/session.js", "text/javascript; charset=utf-8", b"export class ClientSession"),
        ("/style.css", "text/css; charset=utf-8", b".messages"),
        ("/favicon.svg", "image/svg+xml", b"<svg"),
    ],
)
async def test_web_client_files_are_served_with_their_types(
    chat: Chat, path: str, content_type: str, marker: bytes
) -> None:
    reply = await fetch(chat.port, path)
    assert reply.status == 200
    assert reply.headers["content-type"] == content_type
    assert marker in reply.body
    assert int(reply.headers["content-length"]) == len(reply.body)


async def test_every_answer_carries_the_security_headers(chat: Chat) -> None:
    for path in ("/", "/view.js", "/healthz", "/nope", "/__init__.py"):
        reply = await fetch(chat.port, path)
        assert reply.headers["x-content-type-options"] == "nosniff", path
        policy = reply.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy, path
        assert "frame-ancestors 'none'" in policy
    assert (await fetch(chat.port, "/__init__.py")).status == 404  # only the client's files


async def test_metrics_are_served_only_when_enabled(chat: Chat, start_node: NodeFactory) -> None:
    assert (await fetch(chat.port, "/metrics")).status == 404
    port = await start_node(attrs.evolve(TEST_CONFIG, metrics=True))
    reply = await fetch(port, "/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    assert b"messenger_connections" in reply.body
    assert b"messenger_group_commit_batch" in reply.body


async def test_upgrade_from_a_foreign_origin_is_refused(chat: Chat) -> None:
    reply = await fetch(chat.port, "/v1/ws", UPGRADE + "Origin: http://evil.example\r\n")
    assert reply.status == 403
    assert b"forbidden" in reply.body and b"evil.example" in reply.body
    # "null" (a sandboxed or file: page) is not the node's origin either.
    assert (await fetch(chat.port, "/v1/ws", UPGRADE + "Origin: null\r\n")).status == 403
    # Same host, other port: another origin.
    other = f"Origin: http://127.0.0.1:{chat.port + 1}\r\n"
    assert (await fetch(chat.port, "/v1/ws", UPGRADE + other)).status == 403


async def test_upgrade_from_the_own_origin_or_without_origin_is_accepted(chat: Chat) -> None:
    own = f"Origin: http://127.0.0.1:{chat.port}\r\n"
    assert (await fetch(chat.port, "/v1/ws", UPGRADE + own)).status == 101
    behind_tls = "Origin: https://chat.example\r\n"  # a TLS proxy forwarding Host
    proxied = await fetch(chat.port, "/v1/ws", UPGRADE + behind_tls, host="chat.example")
    assert proxied.status == 101
    assert (await fetch(chat.port, "/v1/ws", UPGRADE)).status == 101  # not a browser


async def test_allowed_origins_are_accepted(start_node: NodeFactory) -> None:
    allowed = frozenset({normalize_origin("https://App.example/")})
    port = await start_node(attrs.evolve(TEST_CONFIG, allowed_origins=allowed))
    ok = UPGRADE + "Origin: https://app.example\r\n"
    assert (await fetch(port, "/v1/ws", ok)).status == 101
    assert (await fetch(port, "/v1/ws", UPGRADE + "Origin: http://app.example\r\n")).status == 403


def test_serve_flags_parse_and_validate_origins(capsys: pytest.CaptureFixture[str]) -> None:
    args = serve_parser().parse_args(
        ["--allow-origin", "https://A.example", "--allow-origin", "http://b.example:8080/"]
    )
    assert args.allow_origin == ["https://a.example", "http://b.example:8080"]
    assert args.metrics is False
    assert serve_parser().parse_args(["--metrics"]).metrics is True
    for bad in ("a.example", "ftp://a.example", "https://a.example/path"):
        with pytest.raises(SystemExit):
            serve_parser().parse_args(["--allow-origin", bad])
        assert "not an origin" in capsys.readouterr().err


def test_token_web_prints_sign_in_links(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESSENGER_SECRET", raising=False)
    data = str(tmp_path / "data")
    assert token_main(["alice", "bob", "--data-dir", data]) == 0
    tokens = capsys.readouterr().out.split()
    assert token_main(["alice", "bob", "--web", "--data-dir", data]) == 0
    links = capsys.readouterr().out.split()
    assert [link.split("#token=")[0] for link in links] == ["http://127.0.0.1:8765/"] * 2
    issuer = TokenIssuer((tmp_path / "data" / "secret.key").read_bytes())
    users = [issuer.verify(link.split("#token=")[1], 1e9).user for link in links]
    assert users == ["alice", "bob"] and len(tokens) == 2
    url = ["--url", "http://chat.example:9000/"]
    assert token_main(["carol", "--web", *url, "--data-dir", data]) == 0
    assert capsys.readouterr().out.startswith("http://chat.example:9000/#token=v1.")
    with pytest.raises(SystemExit):
        token_main(["carol", *url, "--data-dir", data])
    assert "--url is for --web links" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        token_main(["carol", "--web", "--url", "chat.example", "--data-dir", data])
    assert "not an http(s) URL" in capsys.readouterr().err


def test_every_web_client_file_is_package_data() -> None:
    """A wheel carries what the node serves: each file of web/ matches the package data."""
    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["web"]
    files = [p.name for p in (root / "web").iterdir() if p.is_file() and p.suffix != ".py"]
    assert files and all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files)
    assert {f"/{name}" for name in files} <= set(web_routes())
