"""The node-wide keep-alive timer: each watched connection expires just past its own
deadline, however its deadline moved meanwhile, and never before it."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from actors._keepalive import DEADLINE_SLACK_S, KeepAlive


class FakeConnection:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired_at: float | None = None

    def keepalive_deadline(self) -> float:
        return self.deadline

    def keepalive_check(self, now: float) -> bool:
        if now <= self.deadline:
            return False
        self.expired_at = now
        return True


async def test_expiries_follow_moving_deadlines(autojump_clock: trio.testing.MockClock) -> None:
    rng = random.Random(5)
    timer = KeepAlive()
    connections = {i: FakeConnection(rng.uniform(1, 60)) for i in range(300)}
    gone = set(rng.sample(sorted(connections), 20))
    async with trio.open_nursery() as nursery:
        await nursery.start(timer.run)
        for conn_id, connection in connections.items():
            timer.watch(conn_id, connection)
        for conn_id in gone:  # closed before their deadline
            timer.unwatch(conn_id)
        for _ in range(50):  # traffic: some connections are heard from, later deadlines
            await trio.sleep(rng.uniform(0, 2))
            for connection in rng.sample(list(connections.values()), 30):
                if connection.expired_at is None:
                    connection.deadline = max(connection.deadline, trio.current_time() + 60)
        late = FakeConnection(trio.current_time() + 0.5)  # earlier than every other deadline
        timer.watch(1000, late)
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    for conn_id, connection in [*connections.items(), (1000, late)]:
        if conn_id in gone:
            assert connection.expired_at is None
        else:
            assert connection.expired_at == pytest.approx(
                connection.deadline + DEADLINE_SLACK_S, abs=1e-6
            )
    assert len(timer) == 0
