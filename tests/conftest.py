"""Shared test configuration: Hypothesis profiles (``HYPOTHESIS_PROFILE=ci`` in CI) and the
embedded SecantusDB server fixture the persistence and node tests share."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from persistence import EmbeddedServer

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def secantus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One SecantusDB child process (with test commands) for the whole session."""
    server = EmbeddedServer(tmp_path_factory.mktemp("secantus"), test_commands=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


_db_counter = itertools.count()


@pytest.fixture
def mongo_db_name(request: pytest.FixtureRequest) -> str:
    """A database name no other test uses, so tests share the server but not data."""
    name = "".join(c if c.isalnum() else "_" for c in request.node.name)
    return f"t{next(_db_counter)}_{name}"[:60]


@pytest.fixture
def mongo_uri(secantus_server: EmbeddedServer) -> str:
    return secantus_server.uri
