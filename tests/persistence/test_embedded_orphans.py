"""The embedded SecantusDB never outlives its node: SIGKILL the node, start a new one on the
same data directory, and it comes up with the data (no WiredTiger lock left behind)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pymongo
import pytest
from pymongo.write_concern import WriteConcern

from persistence import EmbeddedServer
from persistence._embedded_process import find_executable, free_port

NODE_SCRIPT = """
import sys, time
import pymongo
from pymongo.write_concern import WriteConcern
from persistence import EmbeddedServer
server = EmbeddedServer(sys.argv[1])
server.start()
client = pymongo.MongoClient(server.uri)
client.get_database("orphan", write_concern=WriteConcern(w="majority", j=True)).facts.insert_one(
    {"_id": "kept"}
)
print(server.pid, flush=True)
time.sleep(600)
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def has_fact(server: EmbeddedServer) -> bool:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(server.uri)
    try:
        return client.orphan.facts.find_one({"_id": "kept"}) is not None
    finally:
        client.close()


def test_sigkilled_node_leaves_no_server_behind(tmp_path: Path) -> None:
    data = tmp_path / "node"
    node = subprocess.Popen(
        [sys.executable, "-c", NODE_SCRIPT, str(data)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        server_pid = int(node.stdout.readline())
        assert alive(server_pid)
        node.send_signal(signal.SIGKILL)
        node.wait()
        deadline = time.monotonic() + 20
        while alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(server_pid), "the server outlived its SIGKILLed node"
        with EmbeddedServer(data) as again:
            assert has_fact(again)
    finally:
        node.kill()
        node.wait()


def test_stale_server_from_an_earlier_run_is_stopped(tmp_path: Path) -> None:
    # A server left running without PDEATHSIG (e.g. an older node version) on our directory:
    # the next start finds it through the pid file, stops it, and starts its own.
    data = tmp_path / "node"
    (data / "db").mkdir(parents=True)
    port = free_port()
    stale = subprocess.Popen(
        [
            find_executable(),
            "--storage-path",
            str(data / "db"),
            "--port",
            str(port),
            "--sync-on-commit",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=20000
        )
        client.get_database(
            "orphan", write_concern=WriteConcern(w="majority", j=True)
        ).facts.insert_one({"_id": "kept"})
        client.close()
        (data / "secantusd.pid").write_text(f"{stale.pid}\n")
        with EmbeddedServer(data) as fresh:
            assert stale.poll() is not None, "the stale server is still running"
            assert has_fact(fresh)
            assert fresh.pid != stale.pid
    finally:
        if stale.poll() is None:
            os.kill(stale.pid, signal.SIGKILL)
        stale.wait()


def test_pid_file_of_an_unrelated_process_is_ignored(tmp_path: Path) -> None:
    data = tmp_path / "node"
    data.mkdir()
    (data / "secantusd.pid").write_text(f"{os.getpid()}\n")  # this pytest: not a secantusd-py
    with EmbeddedServer(data) as server:
        assert server.pid != os.getpid()
    assert not (data / "secantusd.pid").exists()
