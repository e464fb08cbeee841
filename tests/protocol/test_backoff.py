"""The one jittered backoff: doubling ceilings, equal jitter, deterministic under a seed."""

from __future__ import annotations

import random

import pytest

from protocol import jittered_backoff


def test_each_delay_lies_between_half_and_all_of_a_doubling_capped_ceiling() -> None:
    rng = random.Random(3)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (50, 5.0)]:
        for _ in range(50):
            delay = jittered_backoff(attempt, base_s=0.5, max_s=5.0, rng=rng)
            assert ceiling / 2 <= delay <= ceiling


def test_same_seed_same_delays_and_no_overflow_after_hours_of_retries() -> None:
    def delays(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [jittered_backoff(a, base_s=0.25, max_s=10, rng=rng) for a in range(1, 5000)]

    assert delays(1) == delays(1)
    assert max(delays(1)) <= 10


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        jittered_backoff(0, base_s=1, max_s=2, rng=random.Random(0))
