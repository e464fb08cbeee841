"""Fixtures of the client tests: a real ``messenger serve`` process per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clienthelpers import NodeProcess


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A node process (not started); stopped, and its embedded store killed, afterwards."""
    process = NodeProcess(tmp_path / "node")
    try:
        yield process
    finally:
        process.stop()
