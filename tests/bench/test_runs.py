"""``messenger bench`` end to end against real nodes (own processes, real WebSockets).

No timing is asserted: these tests prove the sweep, the cluster placement and the
connection benchmark run, produce every field the docs quote, and that the no-loss /
no-duplicate check holds on a tiny load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from bench._node import NodeProcess, mint_tokens, own_node, scrape_metrics
from client import Client

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
TINY = ["--pairs", "3", "--warmup", "0.3", "--duration", "1", "--drain", "10"]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "messenger", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )


@pytest.fixture(scope="module")
def node() -> Iterator[NodeProcess]:
    """One node (own process, embedded store) for the tests that pass ``--url``."""
    with own_node() as running:
        yield running


def test_sweep_with_a_node_of_its_own(tmp_path: Path) -> None:
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep.png"
    run = bench("load", "--rates", "15,30", *TINY, "--json", str(out), "--plot", str(plot))
    assert run.returncode == 0, run.stderr
    assert "[15 msgs/s" in run.stderr and "[30 msgs/s" in run.stderr  # progress lines
    assert run.stdout.strip().splitlines()[-1].startswith("knee: ")
    result = json.loads(out.read_text())
    assert [r["rate"] for r in result["rates"]] == [15, 30]
    for rate in result["rates"]:
        check = rate["check"]
        assert check["ok"] is True, check
        assert check["acked"] == check["sent"] > 0
        assert check["delivered"] == check["expected_deliveries"] == check["acked"]
        assert check["duplicated"] == check["lost_messages"] == 0
        for kind in ("delivery", "receipt", "ack"):
            assert isinstance(rate[kind]["p99_ms"], float), kind
        assert rate["delivery_cross_node"]["count"] == 0
        # the bench started the node, so it knows the node's and the store's processes
        assert rate["cpu"]["node_us"] > 0 and rate["cpu"]["store_us"] > 0
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_json_on_stdout_against_a_running_node(node: NodeProcess) -> None:
    run = bench(
        "load", "--url", node.url, "--data-dir", str(node.data_dir), "--rates", "20",
        "--group-size", "3", *TINY, "--procs", "2", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    [rate] = result["rates"]
    assert rate["check"]["delivered"] == 2 * rate["check"]["acked"] > 0  # two others each
    assert rate["cpu"]["node_us"] is None  # no --node-pid: CPU unknown, not guessed


def test_two_nodes_on_one_store(tmp_path: Path, mongo_uri: str) -> None:
    """Node B runs on node A's store; conversations alternate between the nodes."""
    secret_dir = tmp_path / "secret"
    with (
        own_node(mongo_uri=mongo_uri, data_dir=secret_dir) as a,
        own_node(mongo_uri=mongo_uri, data_dir=secret_dir) as b,
    ):
        run = bench(
            "load", "--url", a.url, "--url", b.url, "--data-dir", str(secret_dir),
            "--placement", "same", "--rates", "20", *TINY, "--pairs", "4",
            "--node-pid", str(a.pid), "--node-pid", str(b.pid), "--json",
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    [rate] = json.loads(run.stdout)["rates"]
    assert rate["check"]["ok"] is True
    assert rate["delivery_same_node"]["count"] == rate["delivery"]["count"] > 0
    assert rate["delivery_cross_node"]["count"] == 0
    assert rate["cpu"]["node_us"] > 0 and rate["cpu"]["store_us"] is None


def test_workers_placement_mixed_splits_same_and_cross_node() -> None:
    """One URL over `serve --workers 2`: the generator regroups its clients by the node each
    landed on, so both kinds of delivery are measured (and CPU is read over every worker)."""
    run = bench(
        "load", "--workers", "2", "--placement", "mixed", "--rates", "20", *TINY,
        "--pairs", "6", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    [rate] = json.loads(run.stdout)["rates"]
    assert rate["check"]["ok"] is True
    same, cross = rate["delivery_same_node"]["count"], rate["delivery_cross_node"]["count"]
    assert same > 0 and cross > 0 and same + cross == rate["delivery"]["count"]
    assert rate["cpu"]["node_us"] > 0 and rate["cpu"]["store_us"] > 0


def test_conns_from_several_processes(node: NodeProcess) -> None:
    run = bench(
        "conns", "--url", node.url, "--data-dir", str(node.data_dir), "--node-pid",
        str(node.pid), "--count", "30", "--per-proc", "12", "--hold", "1", "--settle", "0.5",
        "--json", "-",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["procs"] == 3
    assert result["opened"] == 30 and result["failed"] == 0
    assert result["handshakes_per_s"] > 0
    assert result["node_rss_after_bytes"] > 0 and result["node_processes"] == 1
    assert result["store_rss_after_bytes"] is None


def test_conns_text_report(node: NodeProcess) -> None:
    run = bench(
        "conns", "--url", node.url, "--data-dir", str(node.data_dir), "--node-pid",
        str(node.pid), "--count", "5", "--hold", "0.5", "--settle", "0",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "handshakes/s" in run.stdout and "KiB per connection" in run.stdout
    assert "5 of 5 connections opened (0 failed)" in run.stdout


def test_store_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "store.json"
    run = bench("store", "--seconds", "0.5", "--batch", "10", "--convs", "20", "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert "durable appends/s" in run.stdout
    result = json.loads(out.read_text())
    assert [(r["convs"], r["batch"]) for r in result["runs"]] == [(1, 10), (20, 1)]
    assert all(r["appends"] > 0 and r["commits"] > 0 for r in result["runs"])


async def test_node_metrics_move_when_traffic_flows(node: NodeProcess) -> None:
    """The counters the report quotes (group commit batch) come from the node's /metrics."""
    users = ["metrics-a", "metrics-b"]
    tokens = await trio.to_thread.run_sync(mint_tokens, users, node.data_dir)
    before = await trio.to_thread.run_sync(scrape_metrics, node.url)
    assert "messenger_connections" in before
    async with (
        Client(node.url, token=tokens[0], device="d", keep_events=False) as alice,
        Client(node.url, token=tokens[1], device="d", keep_events=False) as bob,
    ):
        await alice.wait_synced()
        await bob.wait_synced()
        for i in range(5):
            await alice.send(f"hello {i}", to=users[1])
        after = await trio.to_thread.run_sync(scrape_metrics, node.url)
    for name in ("messenger_messages_in_total", "messenger_acks_total"):
        assert after.get(name, 0.0) >= before.get(name, 0.0) + 5, name
    batches = "messenger_group_commit_batch_count"
    assert after.get(batches, 0.0) > before.get(batches, 0.0)
