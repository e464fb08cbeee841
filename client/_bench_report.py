"""Turning benchmark results into words, JSON and a PNG: every number carries its unit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._bench_stats import PERCENTILES, LatencyHistogram, percentile_label

MIB = 1024 * 1024


def fmt_ms(value: float | None) -> str:
    """A latency in ms with sensible precision, or ``-``."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def latency_line(name: str, summary: dict[str, Any]) -> str:
    """``send→ack  p50 1.20 ms  p90 ...  max ... ms  (n=…)``."""
    parts = [f"{name:<16}"]
    for fraction in PERCENTILES:
        label = percentile_label(fraction)
        parts.append(f"{label} {fmt_ms(summary.get(label + '_ms'))} ms")
    parts.append(f"max {fmt_ms(summary.get('max_ms'))} ms")
    parts.append(f"(n={summary.get('count', 0):,})")
    return "  ".join(parts)


def metric_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What moved in the node's ``/metrics`` between two scrapes, plus derived means.

    Buckets and ``_created`` timestamps are left out; gauges are reported as their final value.
    """
    out: dict[str, Any] = {}
    for name, value in after.items():
        base = name.split("{", 1)[0]
        if base.endswith(("_bucket", "_created")):
            continue
        delta = value - before.get(name, 0.0)
        if base.endswith(("_total", "_sum", "_count")):
            if delta:
                out[name] = delta
        elif value:
            out[name] = value
    batches = out.get("messenger_group_commit_batch_count")
    if batches:
        out["group_commit_batch_mean"] = out.get("messenger_group_commit_batch_sum", 0) / batches
    for name, count in list(out.items()):
        if name.startswith("messenger_store_seconds_count") and count:
            total = out.get(name.replace("_count", "_sum", 1), 0.0)
            label = name[len("messenger_store_seconds_count") :]
            out[f"store_ms_mean{label}"] = 1000 * total / count
    return out


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as indented JSON."""
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")


def plot_load(path: Path, result: dict[str, Any], histograms: dict[str, LatencyHistogram]) -> None:
    """Latency CDFs (log x) and throughput per second, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf_ax, rate_ax) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, hist in histograms.items():
        points = list(hist.cdf_ms())
        if points:
            cdf_ax.step([p[0] for p in points], [p[1] for p in points], where="post", label=name)
    cdf_ax.set_xscale("log")
    cdf_ax.set_xlabel("latency (ms, log scale)")
    cdf_ax.set_ylabel("fraction of messages ≤ latency")
    cdf_ax.set_title("latency CDF")
    cdf_ax.grid(True, which="both", alpha=0.3)
    cdf_ax.legend()

    timeline = result.get("timeline", [])
    seconds = [row["t_s"] for row in timeline]
    for key, label in (("sent", "sent/s"), ("acked", "acked/s"), ("delivered", "delivered/s")):
        rate_ax.plot(seconds, [row[key] for row in timeline], marker=".", label=label)
    rate_ax.set_xlabel("time since load start (s)")
    rate_ax.set_ylabel("messages per second")
    rate_ax.set_title("throughput")
    rate_ax.grid(True, alpha=0.3)
    cpu = [row.get("node_cpu_percent") for row in timeline]
    if any(v is not None for v in cpu):
        cpu_ax = rate_ax.twinx()
        cpu_ax.plot(seconds, cpu, color="grey", linestyle=":", label="node CPU %")
        cpu_ax.set_ylabel("node CPU (% of one core)")
        cpu_ax.legend(loc="lower right")
    rate_ax.legend(loc="upper left")
    config = result["config"]
    fig.suptitle(
        f"messenger bench load: {config['clients']:,} clients, {config['rate']:,.0f} msgs/s, "
        f"groups of {config['group_size']}, {config['body_bytes']} B bodies"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
