"""The benchmark's arithmetic and reports, without a node: knee, placement, histograms, the
typed results as text, JSON and a PNG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench import (
    CpuPerMessage,
    Latency,
    LatencyHistogram,
    LoadConfig,
    LossCheck,
    RateResult,
    SweepResult,
    knee,
)
from bench._conns import connect_limit_s
from bench._load_plan import arrange, conversations, place
from bench._node import serve_command
from bench._procs import source_address, split
from bench._report import plot_sweep, sweep_text, to_json
from messenger.__main__ import main as messenger_main


def latency(p99_ms: float | None, count: int = 100) -> Latency:
    value = None if p99_ms is None else p99_ms / 2
    return Latency(
        count=0 if p99_ms is None else count,
        mean_ms=value,
        p50_ms=value,
        p90_ms=value,
        p99_ms=p99_ms,
        p999_ms=p99_ms,
        max_ms=p99_ms,
    )


def check(*, lost: int = 0, unacked: int = 0, duplicated: int = 0) -> LossCheck:
    return LossCheck(
        sent=100,
        acked=100 - unacked,
        failed=0,
        delivered=100 - lost,
        expected_deliveries=100,
        lost_messages=lost,
        lost_deliveries=lost,
        unacked=unacked,
        duplicated=duplicated,
        seq_conflicts=0,
        unexpected=0,
        out_of_order=0,
        redundant_pushes=3,
        reconnects=0,
        receipts_missing=0,
    )


def rate_result(
    rate: float, p99_ms: float | None, loss: LossCheck | None = None, cross_ms: float | None = None
) -> RateResult:
    return RateResult(
        rate=rate,
        load_average=(0.5, 0.4, 0.3),
        setup_s=1.0,
        handshakes_per_s=400.0,
        window_s=15.0,
        acked_per_s=rate,
        delivered_per_s=rate,
        delivery=latency(p99_ms),
        receipt=latency(None if p99_ms is None else p99_ms * 3),
        ack=latency(p99_ms),
        delivery_same_node=latency(p99_ms),
        delivery_cross_node=latency(cross_ms),
        schedule_lag=latency(1.0),
        check=loss or check(),
        cpu=CpuPerMessage(node_us=600.0, store_us=None, node_cores=0.6, store_cores=None),
        group_commit_batch_mean=2.5,
        errors=(("reconnect:1006", 1),),
        drain_s=0.2,
    )


def sweep(*rates: RateResult) -> SweepResult:
    config = LoadConfig(rates=tuple(r.rate for r in rates), clients=400)
    return SweepResult(command="messenger bench load", machine="test", cpus=2, config=config,
                       rates=rates)  # fmt: skip


def test_knee_is_the_highest_rate_under_the_limit_with_nothing_lost() -> None:
    rates = [
        rate_result(200, 10.0),
        rate_result(500, 30.0),
        rate_result(1000, 49.0, check(lost=1)),  # fast but lost a message
        rate_result(2000, 49.9, check(unacked=2)),  # never acked counts as lost too
        rate_result(4000, 80.0),
    ]
    assert knee(rates) == 500
    assert knee(rates, p99_limit_ms=100.0) == 4000
    assert knee([rate_result(200, 50.0)]) is None  # the limit itself is not under it
    assert knee([rate_result(200, None)]) is None  # nothing delivered, nothing to judge
    assert knee([]) is None


def test_knee_is_literal_not_the_first_failure() -> None:
    rates = [rate_result(200, 60.0), rate_result(500, 20.0)]
    assert knee(rates) == 500


def test_loss_check_verdicts() -> None:
    assert check().ok and check().nothing_lost
    assert not check(duplicated=1).ok and check(duplicated=1).nothing_lost
    assert not check(lost=1).nothing_lost


def test_text_report_gives_every_number_a_unit_and_the_knee_last() -> None:
    text = sweep_text(sweep(rate_result(200, 10.0), rate_result(1000, 70.0)))
    lines = text.splitlines()
    assert lines[-1].startswith("knee: 200 msgs/s")
    assert "send→delivery" in text and "send→receipt" in text
    assert "p50 5.00 ms  p90 5.00 ms  p99 10.00 ms" in text
    assert "node 600 µs, store unknown, total unknown" in text
    assert "acked 200.0 msgs/s" in text
    assert "cross node" not in text  # nothing crossed nodes: no split shown
    crossed = sweep_text(sweep(rate_result(500, 10.0, cross_ms=25.0)))
    assert "delivery same node" in crossed and "delivery cross node" in crossed
    assert "p99 25.00 ms" in crossed


def test_no_knee_is_said_plainly() -> None:
    text = sweep_text(sweep(rate_result(200, 90.0)))
    assert text.splitlines()[-1].startswith("knee: none of the 1 rates qualifies")


def test_json_is_the_typed_result_with_verdicts() -> None:
    data = orjson.loads(to_json(sweep(rate_result(200, 10.0), rate_result(500, 60.0))))
    assert data["knee_msgs_per_s"] == 200
    assert [r["rate"] for r in data["rates"]] == [200, 500]
    first = data["rates"][0]
    assert first["delivery"]["p99_ms"] == 10.0
    assert first["check"]["ok"] is True and first["check"]["nothing_lost"] is True
    assert first["cpu"] == {
        "node_us": 600.0, "store_us": None, "node_cores": 0.6, "store_cores": None,
        "total_us": None,
    }  # fmt: skip
    assert data["config"]["clients"] == 400


def test_plot_is_written(tmp_path: Path) -> None:
    path = tmp_path / "sweep.png"
    plot_sweep(path, sweep(rate_result(200, 10.0, cross_ms=12.0), rate_result(500, 40.0)))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histogram_percentiles_are_within_one_percent() -> None:
    hist = LatencyHistogram()
    for ms in range(1, 1001):
        hist.record(ms * 1_000_000)
    summary = hist.summary()
    for value, expected_ms in (
        (summary.p50_ms, 500),
        (summary.p90_ms, 900),
        (summary.p99_ms, 990),
        (summary.p999_ms, 999),
    ):
        assert value is not None
        assert abs(value - expected_ms) <= expected_ms * 0.011
    assert summary.max_ms == 1000.0 and summary.count == 1000
    merged = LatencyHistogram.merged([hist, hist])
    assert merged.count == 2000 and merged.percentile_ms(0.5) == hist.percentile_ms(0.5)
    assert LatencyHistogram().summary().p99_ms is None


def test_conversations_placement_and_shares() -> None:
    assert conversations(7, 3) == [[0, 1, 2], [3, 4, 5, 6]]
    assert conversations(6, 2) == [[0, 1], [2, 3], [4, 5]]
    assert [len(part) for part in split(range(10), 3)] == [4, 3, 3]
    # same: both members on one node, conversations spread over the nodes
    assert [(place(g, 0, 2, "same"), place(g, 1, 2, "same")) for g in range(4)] == [
        (0, 0), (0, 0), (1, 1), (1, 1)
    ]  # fmt: skip
    assert all(place(g, 0, 3, "cross") != place(g, 1, 3, "cross") for g in range(9))
    mixed = [place(g, 0, 2, "mixed") == place(g, 1, 2, "mixed") for g in range(4)]
    assert mixed == [True, False, True, False]
    assert {place(g, p, 1, "cross") for g in range(5) for p in range(2)} == {0}
    assert source_address("127.0.0.1", 3, True) == "127.0.0.13"
    assert source_address("10.1.2.3", 3, True) is None


def test_arrange_places_clients_by_the_node_they_landed_on() -> None:
    """One URL over `serve --workers`: the kernel chose each client's node; the generator
    regroups its clients so the placement holds as far as those nodes allow."""
    nodes = ["a", "b", "a", "b", "b", "a", "a", "b"]

    def on(groups: list[tuple[int, ...]], nodes: list[str] = nodes) -> list[set[str]]:
        assert sorted(i for g in groups for i in g) == list(range(len(nodes)))
        return [{nodes[i] for i in g} for g in groups]

    assert [len(s) for s in on(arrange([2] * 4, nodes, "same"))] == [1, 1, 1, 1]
    assert [len(s) for s in on(arrange([2] * 4, nodes, "cross"))] == [2, 2, 2, 2]
    assert [len(s) for s in on(arrange([2] * 4, nodes, "mixed"))] == [1, 2, 1, 2]
    # all on one node: cross is impossible, every member is still placed once
    assert on(arrange([3, 2], ["a"] * 5, "cross"), ["a"] * 5) == [{"a"}, {"a"}]
    assert [len(s) for s in on(arrange([3, 3], nodes[:6], "cross"), nodes[:6])] == [2, 2]


def test_conns_connect_limit_grows_with_the_count() -> None:
    assert connect_limit_s(2_000) == 900.0
    assert connect_limit_s(50_000) == 2_500.0  # 50,000 at 20/s: the shared box's worst


def test_missing_bench_extra_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "psutil" else real(name)
    )
    assert messenger_main(["bench", "load"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install -e '.[bench]'" in err and "psutil" in err


def test_workers_cannot_go_with_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        messenger_main(["bench", "conns", "--count", "1", "--url", "ws://h:1/v1/ws",
                        "--workers", "3"])  # fmt: skip
    assert exited.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_nothing_but_bench_needs_the_bench_extra() -> None:
    """`pip install -e .` alone must run a node: no production package imports the extra."""
    code = """
import importlib.abc, sys
class NoExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("psutil", "matplotlib"):
            raise ImportError(f"{name} is in the [bench] extra")
sys.meta_path.insert(0, NoExtra())
import actors, actors._serve, client, persistence, protocol, sim, messenger.__main__
sys.argv = ["messenger", "serve", "--help"]
messenger.__main__.main()
"""
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert "--mongo-uri" in run.stdout


def test_own_node_passes_workers_and_store_on_to_serve(tmp_path: Path) -> None:
    command = serve_command(tmp_path, log_level="warning", workers=3, mongo_uri=None)
    assert command[1:4] == ["-m", "messenger", "serve"]
    assert command[command.index("--workers") + 1] == "3"
    assert command[command.index("--port") + 1] == "0"
    assert "--mongo-uri" not in command
    single = serve_command(tmp_path, log_level="info", workers=None, mongo_uri="mongodb://x")
    assert "--workers" not in single
    assert single[single.index("--mongo-uri") + 1] == "mongodb://x"
    assert "--heartbeat" not in single
    slow = serve_command(tmp_path, log_level="info", workers=3, mongo_uri=None, heartbeat_s=60)
    assert slow[slow.index("--heartbeat") + 1] == "60"
