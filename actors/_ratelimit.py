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


@attrs.define
class UserBudgets:
    """Per-user token buckets, shared by all of a user's connections on one node, so that a
    user's many devices together get one budget (each connection also has its own bucket).

    Owned by the node (through its context) and changed only synchronously. A user's bucket
    is dropped when their last connection here closes with the bucket full again (it holds
    nothing then); the table is capped at ``max_users`` all the same (oldest dropped first).
    """

    rate: float
    burst: float
    max_users: int = 100_000
    _buckets: dict[str, TokenBucket] = attrs.field(factory=dict)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, user: str, now: float) -> bool:
        """Spend one of ``user``'s tokens; False means the user is over their budget."""
        bucket = self._buckets.get(user)
        if bucket is None:
            if len(self._buckets) >= self.max_users:
                del self._buckets[next(iter(self._buckets))]
            bucket = self._buckets[user] = TokenBucket.full(self.rate, self.burst, now)
        return bucket.take(now)

    def release(self, user: str, now: float) -> None:
        """``user``'s last connection here closed: forget the bucket if it is full by now."""
        bucket = self._buckets.get(user)
        if (
            bucket is not None
            and bucket.tokens + (now - bucket.updated) * bucket.rate >= bucket.burst
        ):
            del self._buckets[user]
