"""PresenceRegistry on its own: its mailbox in, frames pushed to fake connections out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import pytest
import trio
import trio.testing
from unit import fake_connection, make_context

from actors._messages import DeviceConnected, DeviceDisconnected, Subscribe
from actors._presence import PresenceRegistry
from persistence import MemoryStore
from protocol import Presence

GRACE_S = 5.0


class GatedStore(MemoryStore):
    """A MemoryStore whose ``last_seen`` waits until the test opens ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def last_seen(self, users: Iterable[str]) -> dict[str, int | None]:
        await self.gate.wait()
        return await super().last_seen(users)


#: Tests using it take ``autojump_clock`` (pytest-trio reads the clock off the test itself).
@pytest.fixture
async def registry() -> AsyncIterator[tuple[PresenceRegistry, GatedStore]]:
    store = GatedStore()
    registry = PresenceRegistry(make_context(store, presence_grace_s=GRACE_S))
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        await trio.sleep(GRACE_S)  # virtual time: past the start grace
        yield registry, store
        nursery.cancel_scope.cancel()


async def test_a_grace_timer_firing_mid_request_does_not_cancel_the_request(
    registry: tuple[PresenceRegistry, GatedStore], autojump_clock: trio.testing.MockClock
) -> None:
    presence, store = registry
    alice = fake_connection(1, "alice")
    # bob goes offline: his grace timer ends GRACE_S from now.
    await presence.mailbox.send(DeviceConnected(user="bob", conn_id=2))
    await presence.mailbox.send(DeviceDisconnected(user="bob", conn_id=2, ts=1))
    # alice's subscription waits on the store across bob's timer.
    await presence.mailbox.send(
        Subscribe(origin=alice.handle, allowed=("carol",), denied=(), rid=None)
    )
    await trio.sleep(2 * GRACE_S)
    store.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert alice.frames == [Presence(user="carol", status="offline", last_seen=None)]


async def test_a_reconnect_within_grace_is_invisible_and_a_longer_absence_is_offline(
    registry: tuple[PresenceRegistry, GatedStore], autojump_clock: trio.testing.MockClock
) -> None:
    presence, store = registry
    store.gate.set()
    alice = fake_connection(1, "alice")
    await presence.mailbox.send(DeviceConnected(user="bob", conn_id=2))
    await presence.mailbox.send(
        Subscribe(origin=alice.handle, allowed=("bob",), denied=(), rid="r")
    )
    await trio.testing.wait_all_tasks_blocked()
    assert alice.frames == [Presence(user="bob", status="online", last_seen=None)]

    await presence.mailbox.send(DeviceDisconnected(user="bob", conn_id=2, ts=10))
    await trio.sleep(GRACE_S / 2)
    await presence.mailbox.send(DeviceConnected(user="bob", conn_id=3))
    await trio.sleep(2 * GRACE_S)
    assert len(alice.frames) == 1  # the flap was never announced

    await presence.mailbox.send(DeviceDisconnected(user="bob", conn_id=3, ts=20))
    await trio.sleep(GRACE_S / 2)
    assert len(alice.frames) == 1
    await trio.sleep(GRACE_S)
    assert alice.frames[1:] == [Presence(user="bob", status="offline", last_seen=20)]
    assert await store.last_seen(["bob"]) == {"bob": 20}


async def test_right_after_a_start_an_absent_user_is_answered_when_the_start_grace_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    await store.set_last_seen("bob", 5)
    presence = PresenceRegistry(make_context(store, presence_grace_s=GRACE_S))
    alice = fake_connection(1, "alice")
    async with trio.open_nursery() as nursery:
        await nursery.start(presence.run)
        started = trio.current_time()
        await presence.mailbox.send(
            Subscribe(origin=alice.handle, allowed=("bob",), denied=("eve",), rid="r")
        )
        await trio.testing.wait_all_tasks_blocked()
        assert [type(f).__name__ for f in alice.frames] == ["Error"]  # eve; bob deferred
        await trio.sleep_until(started + GRACE_S * 0.9)
        assert len(alice.frames) == 1
        await trio.sleep_until(started + GRACE_S * 1.1)
        assert alice.frames[1:] == [Presence(user="bob", status="offline", last_seen=5)]
        nursery.cancel_scope.cancel()
