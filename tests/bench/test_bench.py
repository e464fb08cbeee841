"""``messenger bench``: its output parses and the node's ``/metrics`` move with traffic.

No timing is asserted anywhere: these tests prove the benchmarks run end to end, produce
every field the docs quote, and that the no-loss/no-duplicate check holds on a tiny load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from client._bench_client import BenchClient, Endpoint
from client._bench_node import NodeProcess, mint_tokens, own_node, scrape_metrics, ws_host_port
from client._bench_stats import LatencyHistogram
from client.bench import _groups, _split
from protocol import Ack, Msg, Nack

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "messenger", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


@pytest.fixture(scope="module")
def node() -> Iterator[NodeProcess]:
    """One node (own process, embedded store) shared by the tests that pass ``--url``."""
    with own_node() as running:
        yield running


def test_load_output_parses_and_nothing_is_lost(tmp_path: Path) -> None:
    out, plot = tmp_path / "load.json", tmp_path / "load.png"
    run = _bench(
        "load", "--clients", "4", "--rate", "20", "--duration", "2",
        "--json", str(out), "--plot", str(plot),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "check: OK" in run.stdout
    result = json.loads(out.read_text())
    assert result["acked"] > 0
    assert result["delivered"] == result["expected_deliveries"] == result["acked"]
    check = result["check"]
    assert check["ok"] is True
    assert check["lost_messages"] == check["duplicates"] == check["seq_conflicts"] == 0
    for kind in ("ack", "delivery"):
        summary = result["latency_ms"][kind]
        for key in ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"):
            assert isinstance(summary[key], float), (kind, key)
    assert set(result["throughput"]) == {"sent_per_s", "acked_per_s", "delivered_per_s"}
    assert result["resources"]["node_rss_mib_end"] > 0
    assert result["node_metrics"]["messenger_acks_total"] == result["acked"]
    assert plot.stat().st_size > 0


def test_group_load_against_a_running_node(node: NodeProcess, tmp_path: Path) -> None:
    out = tmp_path / "groups.json"
    run = _bench(
        "load", "--url", node.url, "--data-dir", str(node.data_dir), "--node-pid",
        str(node.pid), "--clients", "9", "--group-size", "3", "--rate", "15",
        "--duration", "1", "--workers", "2", "--json", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["config"]["workers"] == 2
    assert result["acked"] > 0
    assert result["delivered"] == 2 * result["acked"]  # two other members each
    assert result["check"]["ok"] is True


def test_conns_output_parses(node: NodeProcess, tmp_path: Path) -> None:
    out = tmp_path / "conns.json"
    run = _bench(
        "conns", "--url", node.url, "--data-dir", str(node.data_dir), "--node-pid",
        str(node.pid), "--count", "30", "--workers", "2", "--hold", "1", "--settle", "0.5",
        "--json", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["opened"] == 30
    assert result["failed_connects"] == 0
    assert result["handshakes_per_s"] > 0
    assert result["node_connections_gauge"] >= 30
    assert isinstance(result["rss_kib_per_connection"], float)
    assert "node_cpu_percent_mean" in result["resources_during_hold"]


class _Recorder:
    def __init__(self) -> None:
        self.acks: list[Ack] = []
        self.msgs: list[Msg] = []
        self.problems: list[str] = []
        self.all_in = trio.Event()

    def _check(self) -> None:
        if len(self.acks) >= 5 and len(self.msgs) >= 5:
            self.all_in.set()

    def on_ack(self, client: BenchClient, ack: Ack, body: str) -> None:
        self.acks.append(ack)
        self._check()

    def on_msg(self, client: BenchClient, msg: Msg, redundant: bool) -> None:
        self.msgs.append(msg)
        self._check()

    def on_failed(self, client: BenchClient, nack: Nack, body: str) -> None:
        self.problems.append(f"failed:{nack.code.value}")

    def on_problem(self, client: BenchClient, code: str) -> None:
        self.problems.append(code)


def _metric(samples: dict[str, float], name: str) -> float:
    return samples.get(name, 0.0)


async def test_metrics_move_when_traffic_flows(node: NodeProcess) -> None:
    host, port, resource = ws_host_port(node.url)
    users = ["metrics-a", "metrics-b"]
    tokens = await trio.to_thread.run_sync(mint_tokens, users, node.data_dir)
    recorder = _Recorder()
    before = await trio.to_thread.run_sync(scrape_metrics, node.url)
    assert "messenger_connections" in before
    clients = [
        BenchClient(index=i, user=u, token=t, endpoint=Endpoint(host, port, resource),
                    hooks=recorder)
        for i, (u, t) in enumerate(zip(users, tokens, strict=True))
    ]  # fmt: skip
    async with trio.open_nursery() as nursery:
        for client in clients:
            await nursery.start(client.run)
        connected = await trio.to_thread.run_sync(scrape_metrics, node.url)
        assert connected["messenger_connections"] >= before["messenger_connections"] + 2
        for i in range(5):
            clients[0].send(f"c{i}", f"hello {i}", to=users[1])
        with trio.fail_after(20):
            await recorder.all_in.wait()
        after = await trio.to_thread.run_sync(scrape_metrics, node.url)
        nursery.cancel_scope.cancel()
    assert recorder.problems == []
    for name in ("messenger_messages_in_total", "messenger_acks_total",
                 "messenger_messages_out_total"):  # fmt: skip
        assert _metric(after, name) >= _metric(before, name) + 5, name
    assert _metric(after, "messenger_group_commit_batch_count") > _metric(
        before, "messenger_group_commit_batch_count"
    )


def test_histogram_percentiles_are_within_one_percent() -> None:
    hist = LatencyHistogram()
    for ms in range(1, 1001):
        hist.record(ms * 1_000_000)
    for fraction, expected_ms in ((0.5, 500), (0.9, 900), (0.99, 990), (0.999, 999)):
        value = hist.percentile_ms(fraction)
        assert value is not None
        assert abs(value - expected_ms) <= expected_ms * 0.011
    assert hist.percentile_ms(1.0) == 1000.0
    merged = LatencyHistogram.merged([hist, LatencyHistogram.from_wire(hist.to_wire())])
    assert merged.count == 2000 and merged.percentile_ms(0.5) == hist.percentile_ms(0.5)


def test_conversations_and_shares() -> None:
    assert _groups(7, 3) == [[0, 1, 2], [3, 4, 5, 6]]
    assert _groups(6, 2) == [[0, 1], [2, 3], [4, 5]]
    assert [len(part) for part in _split(list(range(10)), 3)] == [4, 3, 3]
