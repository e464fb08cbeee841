"""A token bucket: the per-connection rate limit, driven by the caller's clock."""

from __future__ import annotations

import attrs


@attrs.define
class TokenBucket:
    """``rate`` tokens per second up to ``burst``; each frame takes one.

    Owned by one connection actor; ``now`` comes from trio's clock, so the simulator's
    virtual time governs refills.
    """

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate=rate, burst=burst, tokens=burst, updated=now)

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means the frame is over the limit."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
