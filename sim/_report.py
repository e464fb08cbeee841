"""The checker's report: findings per category, in the style of Jepsen's total-queue checker.

:data:`CATEGORIES` names each category with the guarantees it checks; the constants are the
slack the checks allow between moments seen from different places.
"""

from __future__ import annotations

from collections import Counter

import attrs

CATEGORIES: dict[str, str] = {
    "lost": "G1/G4: acked or stored messages missing from the Store or from a member device",
    "duplicated": "G2/G4: one cmid stored twice, or one (conv, seq) displayed twice",
    "unexpected": "G3/G7: stored or delivered messages nobody sent, or not as stored",
    "out_of_order": "G3/G4: seq gaps, live pushes or acks out of order",
    "wrong_ack": "G1/G2: an ack whose (conv, seq, id) is not the stored message",
    "untruthful_receipts": "G5: receipts ahead of the recipient's recv/read, or going back",
    "presence_mismatches": "G6: offline reported without grace or while connected",
    "authorization_leaks": "G7: messages, receipts, history or presence outside visibility",
    "notification_misses": "G8: a member with no connection got no notification job, or "
    "one connected all along got one",
    "uncontained": "G9: the node died, answered 'internal', or ignored a bad frame",
}

#: Virtual seconds of slack for comparisons between client-side and node-side moments.
TOLERANCE_S = 0.002
#: How long a session opened on one node may take to reach the others (it is recorded after
#: the hello's backlog, retried after a failed write, and travels through their feeds).
PROPAGATION_S = 2.0
#: A session known to every node: open this long (covers a node cut off from the store, which
#: cannot record its sessions, and a stalled change feed).
JOB_SLACK_S = 15.0


@attrs.define
class Report:
    """Findings per category (deduplicated) plus the faults that fired; see :data:`CATEGORIES`."""

    findings: dict[str, list[str]] = attrs.Factory(lambda: {c: [] for c in CATEGORIES})
    faults: Counter[str] = attrs.Factory(Counter)
    _seen: set[str] = attrs.Factory(set)

    def add(self, category: str, text: str) -> None:
        if text not in self._seen:
            self._seen.add(text)
            self.findings[category].append(text)

    @property
    def ok(self) -> bool:
        return not any(self.findings.values())

    def counts(self) -> dict[str, int]:
        return {c: len(v) for c, v in self.findings.items()}

    def render(self, limit: int = 8) -> str:
        lines = ["invariants: " + ("all hold" if self.ok else "VIOLATED")]
        for category, items in self.findings.items():
            lines.append(f"  {category:<20} {len(items):>4}   ({CATEGORIES[category]})")
            lines.extend(f"      - {text}" for text in items[:limit])
            if len(items) > limit:
                lines.append(f"      ... {len(items) - limit} more")
        fired = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        lines.append(f"  faults fired: {fired}")
        return "\n".join(lines)


def ranges(seqs: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"``."""
    out: list[str] = []
    start = prev = seqs[0]
    for seq in seqs[1:]:
        if seq != prev + 1:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = seq
        prev = seq
    out.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(out)
