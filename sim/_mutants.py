"""The mutant registry: every deliberately broken variant the simulator can switch on.

One list, imported by the CLI (``messenger sim mutants``, ``--mutant``, ``score``), by the
world (which switches each one on) and by the tests (which require each to be caught with
one of its :attr:`Mutant.caught_as` categories). A mutant is a plausible slip, each breaking
one clause of PROTOCOL.md, and is switched on in one of three ways:

* ``node``: a guarded branch in the node, named in ``NodeConfig.mutants``
  (``actors._config.MUTANTS`` lists exactly these);
* ``config``: an ordinary node setting with a wrong value (no code in the node);
* ``store``: a wrapper between the node and the Store (:mod:`sim._store`).
"""

from __future__ import annotations

from typing import Literal

import attrs


@attrs.frozen(kw_only=True)
class Mutant:
    """One broken variant: what it breaks and what the checker must report."""

    name: str
    #: The clause it breaks, in a line.
    breaks: str
    #: Report categories one of which must appear for the mutant to count as caught.
    caught_as: frozenset[str]
    switch: Literal["node", "config", "store"] = "node"
    #: Nodes a run needs for the slip to matter (``score`` runs it with at least these).
    nodes: int = 1


def _m(
    name: str,
    breaks: str,
    *caught_as: str,
    switch: Literal["node", "config", "store"] = "node",
    nodes: int = 1,
) -> Mutant:
    return Mutant(
        name=name, breaks=breaks, caught_as=frozenset(caught_as), switch=switch, nodes=nodes
    )


#: Every mutant, by name (in the order ``score`` prints them).
MUTANTS: dict[str, Mutant] = {
    m.name: m
    for m in (
        _m(
            "ack_before_write",
            "G1: acks a send before the durable write, with seqs guessed from memory",
            "wrong_ack",
            "lost",
        ),
        _m(
            "no_cmid_dedupe",
            "G2: the Store sees every resend of a cmid as a new message",
            "duplicated",
            "lost",
            "unexpected",
            switch="store",
        ),
        _m(
            "watermark_backwards",
            "G5: assigns recv/read watermarks instead of max-merging them",
            "untruthful_receipts",
        ),
        _m(
            "seq_reuse_after_restart",
            "G3: acks with a seq counter that restarts stale after a restart",
            "wrong_ack",
        ),
        _m(
            "no_presence_grace",
            "G6: presence_grace_s=0, a user is offline the moment the last device drops",
            "presence_mismatches",
            switch="config",
        ),
        _m(
            "deliver_to_removed",
            "G7: keeps pushing a group's messages to removed members",
            "authorization_leaks",
        ),
        _m(
            "push_out_of_order",
            "G4: a batch of messages is pushed newest first",
            "out_of_order",
        ),
        _m(
            "no_offline_notification",
            "G8: a text message records no notification job for offline members",
            "notification_misses",
        ),
        _m(
            "receipts_to_removed",
            "G7: receipts of a group still reach members it removed",
            "authorization_leaks",
        ),
        _m(
            "receipts_from_departed",
            "G7: a departed member's (clamped) recv/read marks still send receipts",
            "authorization_leaks",
        ),
        _m(
            "typing_to_removed",
            "G7: typing notices of a group still reach members it removed",
            "authorization_leaks",
        ),
        _m(
            "typing_from_departed",
            "G7: a departed member's typing is relayed instead of refused",
            "authorization_leaks",
        ),
        _m(
            "history_for_departed",
            "Visibility: a departed member's history request is answered, not forbidden",
            "authorization_leaks",
        ),
        _m(
            "history_before_join",
            "Visibility: history pages reach below the event that last added the caller",
            "authorization_leaks",
            switch="store",
        ),
        # The cluster paths: caught only with several nodes.
        _m(
            "presence_local_only",
            "G6: presence decided from this node's connections only, not the deployment's",
            "presence_mismatches",
            nodes=3,
        ),
        _m(
            "push_before_membership",
            "G7: a follower pushes another node's messages before re-reading the membership "
            "event before them",
            "authorization_leaks",
            "lost",
            nodes=3,
        ),
        _m(
            "resume_token_not_advanced",
            "G4/G7: the feed's resume token is never kept, so a reopened feed misses what "
            "happened while it was down",
            "lost",
            "authorization_leaks",
            nodes=3,
        ),
        _m(
            "notify_per_node",
            "G8: 'no connected device' decided on this node only: jobs for users connected "
            "to another node",
            "notification_misses",
            nodes=3,
        ),
        _m(
            "claims_after_lease_lost",
            "Several nodes: a node declared dead while alive keeps its connections (and so "
            "its claim on those devices) instead of closing them",
            "presence_mismatches",
            nodes=3,
        ),
    )
}


def node_mutants(names: frozenset[str]) -> frozenset[str]:
    """The names among ``names`` that are switched on inside the node."""
    return frozenset(n for n in names if MUTANTS[n].switch == "node")
