"""Deterministic execution: one root seed, derived sub-seeds, and a reproducible ``trio.run``.

Facts this module relies on (checked on trio 0.35, see ``tests/sim/test_determinism.py``):

* ``trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING = True`` makes the scheduler sort each
  batch of runnable tasks by creation counter and shuffle it with ``trio._core._run._r``;
  seeding ``_r`` before every ``trio.run`` then fixes the schedule. Seeding ``_r`` alone is not
  enough (without the flag the batch order follows set iteration).
* ``MockClock(autojump_threshold=0)`` makes time virtual: whenever every task is blocked, the
  clock jumps to the next deadline, so a run is as fast as the CPU allows and independent of
  wall time.
* Importing Hypothesis sets the flag and reseeds ``_r`` to 0 on every example, which is why
  :func:`run_deterministic` (re)seeds ``_r`` itself, right before ``trio.run``.
* trio-websocket draws ping payloads from the global :mod:`random`; we seed it for the
  duration of the run and restore it afterwards. wsproto's ``os.urandom`` masking keys and
  handshake nonces change bytes but never lengths or frame boundaries, so they do not reach
  the schedule or the trace.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio
import trio.testing
from trio._core import _run as _trio_run

_T = TypeVar("_T")


def derive_seed(root: int, name: str) -> int:
    """A 64-bit seed for subsystem ``name``, stable across processes and hash seeds.

    Uses SHA-256 of the decimal root and the name, never :func:`hash`, whose value for
    strings changes with ``PYTHONHASHSEED``.
    """
    digest = hashlib.sha256(f"{root}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def derive_rng(root: int, name: str) -> random.Random:
    """A fresh :class:`random.Random` seeded with :func:`derive_seed`."""
    return random.Random(derive_seed(root, name))


def seed_scheduler(seed: int) -> None:
    """Make Trio's scheduler deterministic and seed it (call right before ``trio.run``)."""
    _trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    _trio_run._r.seed(seed)


def run_deterministic(main: Callable[[], Awaitable[_T]], seed: int) -> _T:
    """Run ``main()`` in one ``trio.run`` whose schedule and clock depend only on ``seed``.

    The scheduler is seeded with ``derive_seed(seed, "scheduler")``, the clock is a
    ``MockClock`` with ``autojump_threshold=0`` (virtual time starts at 0.0), and the global
    :mod:`random` is seeded for the duration of the run and restored afterwards.
    """
    saved = random.getstate()
    random.seed(derive_seed(seed, "global-random"))
    seed_scheduler(derive_seed(seed, "scheduler"))
    try:
        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        random.setstate(saved)
