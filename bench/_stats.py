"""Latency histograms for the benchmarks: log-bucketed, mergeable across processes.

A :class:`LatencyHistogram` keeps counts in buckets whose bounds grow by 1 % each, so a
percentile is exact to within 1 % whatever the spread of values, a histogram of a million
samples is a few hundred integers, and the histograms of several worker processes merge by
adding counts (a histogram pickles as it is). Values are nanoseconds in, milliseconds out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Final

import attrs

#: Relative width of a bucket: percentiles are exact to within this fraction.
_GROWTH: Final = 1.01
_LOG_GROWTH: Final = math.log(_GROWTH)
#: Values below this many nanoseconds share bucket 0.
_FLOOR_NS: Final = 1_000


def _bucket(value_ns: int) -> int:
    if value_ns <= _FLOOR_NS:
        return 0
    return 1 + int(math.log(value_ns / _FLOOR_NS) / _LOG_GROWTH)


def _upper_ns(bucket: int) -> float:
    return _FLOOR_NS * _GROWTH**bucket


@attrs.frozen(kw_only=True)
class Latency:
    """A latency distribution summarised, in milliseconds (None where there were no samples)."""

    count: int
    mean_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None


@attrs.define
class LatencyHistogram:
    """Counts of latencies (ns) by 1 %-wide bucket, plus the exact count, sum and max."""

    counts: dict[int, int] = attrs.Factory(dict)
    count: int = 0
    total_ns: int = 0
    max_ns: int = 0

    def record(self, value_ns: int) -> None:
        """Add one latency; negative values (clock skew between processes) count as 0."""
        value_ns = max(value_ns, 0)
        bucket = _bucket(value_ns)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.count += 1
        self.total_ns += value_ns
        self.max_ns = max(self.max_ns, value_ns)

    def merge(self, other: LatencyHistogram) -> None:
        """Add every sample of ``other`` to this histogram."""
        for bucket, n in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + n
        self.count += other.count
        self.total_ns += other.total_ns
        self.max_ns = max(self.max_ns, other.max_ns)

    def percentile_ms(self, fraction: float) -> float | None:
        """The latency below which ``fraction`` of the samples lie, in ms (None if empty)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(_upper_ns(bucket), self.max_ns) / 1e6
        return self.max_ns / 1e6

    def cdf_ms(self) -> Iterator[tuple[float, float]]:
        """(latency in ms, fraction of samples at or below it), bucket by bucket."""
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            yield min(_upper_ns(bucket), self.max_ns) / 1e6, seen / self.count

    def summary(self) -> Latency:
        """Count, mean, the :data:`PERCENTILES` and max, in ms."""
        return Latency(
            count=self.count,
            mean_ms=self.total_ns / self.count / 1e6 if self.count else None,
            p50_ms=self.percentile_ms(0.50),
            p90_ms=self.percentile_ms(0.90),
            p99_ms=self.percentile_ms(0.99),
            p999_ms=self.percentile_ms(0.999),
            max_ms=self.max_ns / 1e6 if self.count else None,
        )

    @classmethod
    def merged(cls, parts: Iterable[LatencyHistogram]) -> LatencyHistogram:
        """One histogram holding every sample of ``parts``."""
        out = cls()
        for part in parts:
            out.merge(part)
        return out
