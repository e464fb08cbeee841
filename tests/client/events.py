"""A test helper: collect a client's events in the background and wait for one that fits."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

from client import Client, ClientEvent

_E = TypeVar("_E")


class EventLog:
    """Every event of one client, in order; :meth:`wait_for` blocks until a match arrives."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.events: list[ClientEvent] = []
        self._changed = trio.Event()

    async def run(self) -> None:
        async for event in self.client.events():
            self.events.append(event)
            self._changed.set()
            self._changed = trio.Event()

    def of(self, kind: type[_E]) -> list[_E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, kind: type[_E], test: Callable[[_E], bool] = lambda _: True) -> _E:
        while True:
            for event in self.events:
                if isinstance(event, kind) and test(event):
                    return event
            await self._changed.wait()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()
