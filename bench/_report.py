"""Benchmark results in words, as JSON and as a PNG: every number carries its unit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import orjson

from ._load import KNEE_P99_MS, RateResult, SweepResult, knee_text
from ._stats import Latency

MIB = 1024 * 1024


def fmt_ms(value: float | None) -> str:
    """A latency in ms with sensible precision, or ``-``."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def fmt_us(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.0f} µs"


def latency_line(name: str, latency: Latency) -> str:
    """``delivery  p50 1.20 ms  p90 … ms  p99 … ms  p99.9 … ms  max … ms  (n=…)``."""
    parts = [f"  {name:<20}"]
    for label, value in (
        ("p50", latency.p50_ms),
        ("p90", latency.p90_ms),
        ("p99", latency.p99_ms),
        ("p99.9", latency.p999_ms),
        ("max", latency.max_ms),
    ):
        parts.append(f"{label} {fmt_ms(value)} ms")
    parts.append(f"(n={latency.count:,})")
    return "  ".join(parts)


def rate_lines(result: RateResult) -> list[str]:
    """The text report of one rate."""
    check, cpu = result.check, result.cpu
    load = " ".join(f"{x:.2f}" for x in result.load_average)
    lines = [
        f"rate {result.rate:,.0f} msgs/s offered (load average before: {load}): "
        f"acked {result.acked_per_s:,.1f} msgs/s, delivered {result.delivered_per_s:,.1f} msgs/s "
        f"over the {result.window_s:g} s window",
        latency_line("send→delivery", result.delivery),
        latency_line("send→receipt", result.receipt),
        latency_line("send→ack", result.ack),
    ]
    if result.delivery_cross_node.count:
        lines.append(latency_line("delivery same node", result.delivery_same_node))
        lines.append(latency_line("delivery cross node", result.delivery_cross_node))
    lines.append(latency_line("schedule lag", result.schedule_lag))
    lines.append(
        f"  lost {check.lost_messages:,} messages (acked, {check.lost_deliveries:,} deliveries "
        f"missing when the drain ended), unacked {check.unacked:,}, "
        f"duplicated {check.duplicated:,}, "
        f"seq conflicts {check.seq_conflicts:,}, failed {check.failed:,}, "
        f"redundant pushes {check.redundant_pushes:,}, receipts missing "
        f"{check.receipts_missing:,}, reconnects {check.reconnects:,} "
        f"(sent {check.sent:,}, acked {check.acked:,}, delivered {check.delivered:,} of "
        f"{check.expected_deliveries:,} expected; drain {result.drain_s:.1f} s)"
    )
    cores = (
        ""
        if cpu.node_cores is None
        else f" (node {cpu.node_cores:.2f} cores"
        + ("" if cpu.store_cores is None else f", store {cpu.store_cores:.2f} cores")
        + ")"
    )
    lines.append(
        f"  server CPU per message: node {fmt_us(cpu.node_us)}, store {fmt_us(cpu.store_us)}, "
        f"total {fmt_us(cpu.total_us)}{cores}"
    )
    extra = []
    if result.group_commit_batch_mean is not None:
        extra.append(f"group commit mean batch {result.group_commit_batch_mean:.1f} sends")
    if result.handshakes_per_s is not None:
        extra.append(f"setup {result.setup_s:.1f} s at {result.handshakes_per_s:,.0f} handshakes/s")
    if result.errors:
        extra.append("errors " + ", ".join(f"{code} {n:,}" for code, n in result.errors))
    if extra:
        lines.append("  " + "; ".join(extra))
    return lines


def sweep_text(sweep: SweepResult) -> str:
    """The whole report: each rate, a table, and the knee last."""
    lines: list[str] = []
    for result in sweep.rates:
        lines += rate_lines(result)
        lines.append("")
    lines.append(
        f"{'rate':>12}  {'delivery p50':>12}  {'p99':>10}  {'receipt p99':>12}  "
        f"{'acked':>12}  {'lost+unacked':>12}  {'CPU/msg node+store':>19}"
    )
    for r in sweep.rates:
        lines.append(
            f"{r.rate:>6,.0f} msg/s  {fmt_ms(r.delivery.p50_ms):>9} ms  "
            f"{fmt_ms(r.delivery.p99_ms):>7} ms  {fmt_ms(r.receipt.p99_ms):>9} ms  "
            f"{r.acked_per_s:>6,.0f} msg/s  {r.check.lost_messages + r.check.unacked:>12,}  "
            f"{fmt_us(r.cpu.total_us):>19}"
        )
    lines.append(knee_text(sweep))
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def to_json(result: object) -> bytes:
    """Any attrs result as indented JSON, with its derived verdicts spelled out."""
    data = attrs.asdict(result)  # type: ignore[arg-type]
    if isinstance(result, SweepResult):
        data["knee_msgs_per_s"] = result.knee
        data["knee_rule"] = f"delivery p99 < {KNEE_P99_MS:g} ms and nothing lost"
        for row, rate in zip(data["rates"], result.rates, strict=True):
            row["check"]["nothing_lost"] = rate.check.nothing_lost
            row["check"]["ok"] = rate.check.ok
            row["cpu"]["total_us"] = rate.cpu.total_us
    return orjson.dumps(data, default=_plain, option=orjson.OPT_INDENT_2) + b"\n"


def plot_sweep(path: Path, sweep: SweepResult) -> None:
    """Latency against rate (log scale, with the knee's limit) and server CPU per message."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r.rate for r in sweep.rates]
    fig, (lat_ax, cpu_ax) = plt.subplots(1, 2, figsize=(13, 4.8))
    series: list[tuple[str, Callable[[RateResult], float | None], str]] = [
        ("delivery p50", lambda r: r.delivery.p50_ms, "-"),
        ("delivery p90", lambda r: r.delivery.p90_ms, "-"),
        ("delivery p99", lambda r: r.delivery.p99_ms, "-"),
        ("receipt p50", lambda r: r.receipt.p50_ms, "--"),
        ("receipt p99", lambda r: r.receipt.p99_ms, "--"),
    ]
    if any(r.delivery_cross_node.count for r in sweep.rates):
        series += [
            ("same-node delivery p99", lambda r: r.delivery_same_node.p99_ms, ":"),
            ("cross-node delivery p99", lambda r: r.delivery_cross_node.p99_ms, ":"),
        ]
    for label, value, style in series:
        points = [(x, value(r)) for x, r in zip(rates, sweep.rates, strict=True)]
        shown = [(x, y) for x, y in points if y is not None and y > 0]
        if shown:
            lat_ax.plot(*zip(*shown, strict=True), style, marker="o", label=label)
    lat_ax.axhline(KNEE_P99_MS, color="red", alpha=0.4, label=f"{KNEE_P99_MS:g} ms (knee rule)")
    lat_ax.set_yscale("log")
    lat_ax.set_xlabel("offered load (msgs/s)")
    lat_ax.set_ylabel("latency (ms, log scale)")
    lat_ax.set_title("latency vs rate")
    lat_ax.grid(True, which="both", alpha=0.3)
    lat_ax.legend(fontsize="small")
    for label, values in (
        ("node", [r.cpu.node_us for r in sweep.rates]),
        ("store", [r.cpu.store_us for r in sweep.rates]),
    ):
        shown = [(x, y) for x, y in zip(rates, values, strict=True) if y is not None]
        if shown:
            cpu_ax.plot(*zip(*shown, strict=True), marker="o", label=label)
    cpu_ax.set_xlabel("offered load (msgs/s)")
    cpu_ax.set_ylabel("server CPU per message (µs)")
    cpu_ax.set_title("CPU per message")
    cpu_ax.grid(True, alpha=0.3)
    cpu_ax.legend(fontsize="small")
    config = sweep.config
    found = sweep.knee
    fig.suptitle(
        f"messenger bench load: {config.clients:,} clients in conversations of "
        f"{config.group_size}, {config.body_bytes} B bodies, {config.duration_s:g} s measured; "
        + ("no knee" if found is None else f"knee {found:,.0f} msgs/s")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
