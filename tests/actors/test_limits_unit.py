"""The admission gate's counts and the per-user rate budgets stay bounded (no sockets)."""

from __future__ import annotations

from actors._admission import Gate
from actors._ratelimit import UserBudgets


def test_gate_counts_every_connection_from_accept_to_close() -> None:
    gate = Gate(max_connections=3, max_pending=2)
    first, second = gate.enter(), gate.enter()
    assert (first.refusal, second.refusal) == (None, None)
    third = gate.enter()  # a third waiting for hello is one too many
    assert third.refusal is not None and "hello" in third.refusal
    first.welcomed()
    first.welcomed()  # idempotent
    assert (gate.open, gate.pending) == (3, 2)
    fourth = gate.enter()
    assert fourth.refusal is not None and "full" in fourth.refusal
    for ticket in (first, second, third, fourth, fourth):
        ticket.leave()
    assert (gate.open, gate.pending) == (0, 0)
    with gate.enter() as again:
        assert again.refusal is None
    assert (gate.open, gate.pending) == (0, 0)


def test_user_budgets_are_shared_forgotten_when_full_and_capped() -> None:
    budgets = UserBudgets(rate=1.0, burst=3, max_users=2)
    assert [budgets.take("ann", 0.0) for _ in range(4)] == [True, True, True, False]
    budgets.release("ann", 1.0)  # 1 token back of 3: the debt is kept
    assert len(budgets) == 1 and not budgets.take("ann", 0.5)
    budgets.release("ann", 10.0)  # full again: nothing to remember
    assert len(budgets) == 0
    for user in ("a", "b", "c"):
        budgets.take(user, 0.0)
    assert len(budgets) == 2  # the oldest went first
