"""The readable, deterministic trace of a simulation run, and its hash.

A trace is a list of lines ``"<virtual seconds> <actor> <event>"``. Everything written to it
must be a pure function of the seed: virtual time (never wall time), names chosen by the
workload, frame fields -- never object ids, wall clocks or set iteration order. The trace hash
(SHA-256 of the canonical text) is what the determinism tests compare across runs, processes
and hash seeds.
"""

from __future__ import annotations

import hashlib

import attrs
import trio


@attrs.frozen(kw_only=True)
class TraceLine:
    """One event: when (virtual seconds since the start of the run), who, and what."""

    at: float
    actor: str
    event: str

    def render(self) -> str:
        return f"{self.at:10.3f} {self.actor:<10} {self.event}"


@attrs.define
class Trace:
    """An append-only trace; :meth:`add` stamps lines with Trio's (virtual) clock."""

    lines: list[TraceLine] = attrs.Factory(list)
    #: Lines are always hashed; keeping them is optional (``--trace`` or a failure needs them).
    _hasher: hashlib._Hash = attrs.field(factory=hashlib.sha256, init=False, repr=False)

    def add(self, actor: str, event: str) -> None:
        """Record ``event`` by ``actor`` at the current virtual time."""
        line = TraceLine(at=trio.current_time(), actor=actor, event=event)
        self.lines.append(line)
        self._hasher.update(line.render().encode())
        self._hasher.update(b"\n")

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical trace text: every rendered line plus a newline."""
        return self._hasher.hexdigest()

    def render(self, last: int | None = None) -> str:
        """The trace as text; only the ``last`` lines when given."""
        lines = self.lines if last is None else self.lines[-last:]
        return "\n".join(line.render() for line in lines)

    def __len__(self) -> int:
        return len(self.lines)
