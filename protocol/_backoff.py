"""Retry timing: the one jittered exponential backoff of the project.

Pure arithmetic on an injected RNG, so the client session, the SDK's reconnect loop and the
node's notifier stay deterministic under a seeded ``random.Random``.
"""

from __future__ import annotations

import random


def jittered_backoff(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    The ceiling doubles from ``base_s`` per attempt up to ``max_s``; "equal jitter" then waits
    half of it plus a random part of the other half, so many clients that failed together
    spread out while each one's backoff keeps growing. Draws one ``rng.random()``.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    # The exponent is capped so that a client retrying for hours never overflows a float.
    ceiling = min(max_s, base_s * 2.0 ** min(attempt - 1, 1000))
    return ceiling * (0.5 + 0.5 * rng.random())
