"""A bounded, thread-safe least-recently-used map for MongoStore's hints and caches.

Every cache of the store holds hints only (a stale or evicted entry costs a read or a
duplicate-key round, never a wrong answer), so evicting the least recently used entry is
always safe. Worker threads share them, hence the lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most ``limit`` entries; inserting beyond it evicts the least recently used."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a cache holds at least one entry, not {limit}")
        self.limit = limit
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.limit:
                self._data.popitem(last=False)

    def raise_to(self, key: K, value: V) -> None:
        """Store ``max(current, value)`` (for values that only grow: chunk ends)."""
        with self._lock:
            current = self._data.get(key)
            if current is None or current < value:  # type: ignore[operator]
                self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.limit:
                self._data.popitem(last=False)

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._data.pop(key, None)

    def items(self) -> list[tuple[K, V]]:
        """A snapshot of the entries (least recently used first)."""
        with self._lock:
            return list(self._data.items())
