"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, a real
``messenger serve`` process on its embedded store, and one browser context per user.

Chromium is the system one (``/usr/bin/chromium``, the Debian package ``chromium``, which
``.ci/run`` installs when it is missing); ``playwright install`` is never run. Where no
Chromium or no Playwright can be had, the browser tests skip and say why.

"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clienthelpers import NodeProcess, running_node
from webhelpers import Browsers

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Every expect() waits at most this long (ms): a node restart included, on a busy box.
EXPECT_TIMEOUT_MS = 30_000


def _playwright() -> Any:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's `chromium` package "
            "(.ci/run does when it is missing) to run the browser tests"
        )
    return pytest.importorskip(
        "playwright.sync_api", reason="Playwright for Python is not installed (the dev extra)"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = _playwright()
    sync_api.expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shared_node(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for the module's tests (each test uses users of its own)."""
    with running_node(tmp_path_factory.mktemp("web-node") / "node") as node:
        yield node


@pytest.fixture
def own_node(browser: Any, tmp_path: Path) -> Iterator[NodeProcess]:
    """A node of this test's own (started), for tests that kill and restart it."""
    with running_node(tmp_path / "node") as node:
        yield node


@pytest.fixture
def browsers(browser: Any, shared_node: NodeProcess) -> Iterator[Browsers]:
    opened = Browsers(browser, shared_node)
    yield opened
    opened.close()
    assert opened.errors == []
    assert opened.dialogs == []


@pytest.fixture
def users(request: pytest.FixtureRequest) -> Callable[..., list[str]]:
    """User ids unique to the test: ``users("alice", "bob")`` → ["alice-t3", "bob-t3"]."""
    tag = f"t{zlib.crc32(request.node.nodeid.encode()):08x}"
    return lambda *names: [f"{name}-{tag}" for name in names]
