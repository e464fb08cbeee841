"""The browser's client session (web/session.js) under its own unit tests, run by Node.js.

``node --test`` runs tests/web/session.test.mjs: the protocol rules of the JavaScript
session, driven with no socket and no DOM. Skipped, saying so, where no Node.js 18+ is
installed (the browser tests in test_browser.py still cover the session end to end)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _node() -> str:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("no Node.js on PATH: the JavaScript unit tests need `node --test` (18+)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    if major < 18:
        pytest.skip(f"Node.js {version.stdout.strip()} has no `node --test` (18+ needed)")
    return node


def test_session_js_unit_tests_pass() -> None:
    done = subprocess.run(
        [_node(), "--test", str(HERE / "session.test.mjs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout and "# pass 0" not in done.stdout
