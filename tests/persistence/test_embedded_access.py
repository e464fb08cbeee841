"""The embedded store is private: a 0700 directory, and a server that requires the
credentials generated into it (0600). Other local processes get nothing."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Any

import pymongo
import pytest
from pymongo.write_concern import WriteConcern

from persistence import EmbeddedServer
from persistence._embedded import CREDENTIALS_FILE
from persistence._embedded_process import find_executable, free_port

pytestmark = pytest.mark.slow


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def anonymous(port: int) -> pymongo.MongoClient[dict[str, Any]]:
    return pymongo.MongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=10000
    )


def assert_refused(port: int) -> None:
    """Without the credentials nothing can be listed, read or written."""
    client = anonymous(port)
    try:
        assert client.admin.command("ping")["ok"] == 1  # the handshake is all there is
        for attempt in (
            lambda: client.list_database_names(),
            lambda: client.orphan.facts.find_one({}),
            lambda: client.orphan.facts.insert_one({"_id": "intruder"}),
        ):
            with pytest.raises(pymongo.errors.OperationFailure) as refused:
                attempt()
            assert refused.value.code == 13  # Unauthorized
    finally:
        client.close()
    wrong = pymongo.MongoClient(
        f"mongodb://messenger:guess@127.0.0.1:{port}/?directConnection=true",
        serverSelectionTimeoutMS=10000,
    )
    try:
        with pytest.raises(pymongo.errors.OperationFailure) as failed:
            wrong.admin.command("listDatabases")
        assert failed.value.code == 18  # AuthenticationFailed
    finally:
        wrong.close()


def test_a_new_store_is_private_and_keeps_its_credentials(tmp_path: Path) -> None:
    data = tmp_path / "node"
    with EmbeddedServer(data) as server:
        assert server.port is not None
        assert mode(data) == 0o700 and mode(data / "db") == 0o700
        for name in (CREDENTIALS_FILE, "secantusd.log", "node.lock"):
            assert mode(data / name) == 0o600, name
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server.uri)
        facts = client.get_database("orphan", write_concern=WriteConcern(w="majority", j=True))
        facts.facts.insert_one({"_id": "kept"})
        client.close()
        assert_refused(server.port)
        first = (data / CREDENTIALS_FILE).read_text()
    with EmbeddedServer(data) as again:
        assert (data / CREDENTIALS_FILE).read_text() == first
        client = pymongo.MongoClient(again.uri)
        assert client.orphan.facts.find_one({"_id": "kept"}) == {"_id": "kept"}
        client.close()


def test_a_directory_from_before_gets_private_and_keeps_its_data(tmp_path: Path) -> None:
    """Made by an older version: 0755, no credentials, an open server wrote data to it."""
    data = tmp_path / "node"
    (data / "db").mkdir(parents=True)
    data.chmod(0o755)
    (data / "db").chmod(0o755)
    port = free_port()
    old = subprocess.Popen(
        [find_executable(), "--storage-path", str(data / "db"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = anonymous(port)
        facts = client.get_database("orphan", write_concern=WriteConcern(w="majority", j=True))
        facts.facts.insert_one({"_id": "old"})
        client.close()
    finally:
        old.terminate()
        old.wait(timeout=30)
    with EmbeddedServer(data) as server:
        assert server.port is not None
        assert mode(data) == 0o700 and mode(data / "db") == 0o700
        assert mode(data / CREDENTIALS_FILE) == 0o600
        client = pymongo.MongoClient(server.uri)
        assert client.orphan.facts.find_one({"_id": "old"}) == {"_id": "old"}
        client.close()
        assert_refused(server.port)
