"""Load-generator processes: spawn them, talk to them over queues, notice when one dies.

Each worker process runs one trio loop holding its share of the clients, so the generator
never shares a process (nor an fd limit) with the node, and its CPU spreads over the cores.
Messages both ways are small frozen attrs values (they pickle); every message from a
worker carries the worker's index in ``worker``. A worker that crashes sends
:class:`Failed` with its traceback, which the coordinator raises as a setup error.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import trio

from ._node import BenchSetupError, raise_fd_limit

#: Seconds a worker process gets to exit when asked, before it is killed.
JOIN_TIMEOUT_S = 10.0


class FromWorker(Protocol):
    @property
    def worker(self) -> int: ...


_M = TypeVar("_M", bound=FromWorker)


@attrs.frozen(kw_only=True)
class Failed:
    """A worker crashed."""

    worker: int
    traceback: str


def run_worker(worker: int, main: Callable[[], Awaitable[None]], results: Any) -> None:
    """Body of a worker process: run ``main`` under trio; report a crash as :class:`Failed`."""
    raise_fd_limit()
    try:
        trio.run(main)
    except BaseException as exc:
        results.put(Failed(worker=worker, traceback="".join(traceback.format_exception(exc))))
        raise


class Pool:
    """Worker processes started with ``target(plan, control queue, results queue)``."""

    def __init__(self, target: Callable[[Any, Any, Any], None], plans: Sequence[object]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.results: Any = ctx.Queue()
        self.controls: list[Any] = [ctx.Queue() for _ in plans]
        self.processes = [
            ctx.Process(target=target, args=(plan, control, self.results), daemon=True)
            for plan, control in zip(plans, self.controls, strict=True)
        ]
        for process in self.processes:
            process.start()

    def __len__(self) -> int:
        return len(self.processes)

    def broadcast(self, message: object) -> None:
        for control in self.controls:
            control.put(message)

    def next_message(self, timeout_s: float) -> object | None:
        """The next worker message within ``timeout_s``; raises if a worker failed."""
        try:
            message: object = self.results.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            for process in self.processes:
                if process.exitcode not in (None, 0):
                    raise BenchSetupError(
                        f"load-generator pid {process.pid} exited with status {process.exitcode}"
                    ) from None
            return None
        if isinstance(message, Failed):
            raise BenchSetupError(f"load-generator {message.worker} failed:\n{message.traceback}")
        return message

    def collect(
        self,
        kind: type[_M],
        timeout_s: float,
        on_other: Callable[[object], None] = lambda _message: None,
        every_second: Callable[[], None] = lambda: None,
    ) -> list[_M]:
        """One ``kind`` message from every worker, by worker index; other messages go to
        ``on_other``, and ``every_second`` runs about once a second while waiting."""
        got: dict[int, _M] = {}
        deadline = time.monotonic() + timeout_s
        next_second = time.monotonic() + 1.0
        while len(got) < len(self.processes):
            now = time.monotonic()
            if now > deadline:
                raise BenchSetupError(
                    f"load generators did not all report {kind.__name__} in {timeout_s:.0f} s"
                )
            message = self.next_message(min(next_second, deadline) - now)
            if isinstance(message, kind):
                got[message.worker] = message
            elif message is not None:
                on_other(message)
            if time.monotonic() >= next_second:
                next_second += 1.0
                every_second()
        return [got[i] for i in range(len(self.processes))]

    def close(self) -> None:
        for process in self.processes:
            process.join(JOIN_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()


def split(items: Sequence[int], parts: int) -> list[list[int]]:
    """``items`` into ``parts`` contiguous runs of near-equal length."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def source_address(host: str, worker: int, enabled: bool) -> str | None:
    """127.0.0.(10+worker) for a loopback IPv4 node, so each worker has its own port range."""
    if not enabled or host not in ("127.0.0.1", "localhost"):
        return None
    return f"127.0.0.{10 + worker}"
