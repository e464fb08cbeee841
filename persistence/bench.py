"""Store benchmark: durable appends per second against the embedded SecantusDB.

Not a test. ``python -m persistence.bench`` (or ``messenger bench store``) starts an embedded
server in a temporary directory and runs two kinds of load:

* one conversation, one appender, batch sizes 1, 10, 50 and 200 (each ``append`` call is one
  batch; nothing else is in flight, so each call is one durable commit);
* ``--convs N`` (default 1000): N conversations appended at once, one appender task per
  conversation sending batches of 1 in a loop — the chat node's load shape (thousands of 1:1
  conversations with a message or two in flight each). The store merges concurrent calls into
  one durable commit (group commit across conversations); the line reports how many calls a
  commit carried on average.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import trio

from ._embedded import EmbeddedServer
from ._mongo_cluster import MongoStore
from ._types import Draft, StoredMessage

BATCH_SIZES = (1, 10, 50, 200)
CONVS = 1000


async def _single(store: MongoStore, seconds: float, size: int, body: str) -> None:
    conv = await store.direct_conversation("alice", f"bob{size}")
    appended, batches = 0, 0
    start = last_report = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        drafts = [
            Draft(sender="alice", device="d1", cmid=f"b{size}-{appended + i}", body=body, ts=0)
            for i in range(size)
        ]
        await store.append(conv.id, drafts)
        appended += size
        batches += 1
        if now - last_report >= 1.0:
            print(f"  batch {size:>3}: {appended} messages so far ...", flush=True)
            last_report = now
    elapsed = time.perf_counter() - start
    print(
        f"1 conv, batch {size:>3}: {appended / elapsed:8.0f} durable appends/s "
        f"({batches / elapsed:6.0f} commits/s, {1000 * elapsed / batches:6.2f} ms/commit)",
        flush=True,
    )


async def _many(store: MongoStore, seconds: float, convs: int, body: str) -> None:
    print(f"  creating {convs} conversations ...", flush=True)
    ids = [
        (await store.direct_conversation(f"n{convs}u{i}", f"n{convs}v{i}")).id for i in range(convs)
    ]
    # Warm-up, reported apart: the first append a store makes to a conversation reads where
    # the conversation ends and its membership; afterwards both are cached.
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i, conv in enumerate(ids):
            nursery.start_soon(
                store.append,
                conv,
                [Draft(sender=f"n{convs}u{i}", device="d1", cmid="w", body=body, ts=0)],
            )
    print(
        f"  warm-up: first append to each of {convs} conversations took "
        f"{time.perf_counter() - t0:.2f} s",
        flush=True,
    )
    latencies: list[float] = []
    appended = 0
    commits0, calls0 = store.commits, store.committed_calls
    start = time.perf_counter()
    deadline = start + seconds

    async def appender(i: int, conv: str) -> None:
        nonlocal appended
        k = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            [result] = await store.append(
                conv, [Draft(sender=f"n{convs}u{i}", device="d1", cmid=f"m{k}", body=body, ts=0)]
            )
            latencies.append(time.perf_counter() - t0)
            if not isinstance(result, StoredMessage):
                raise RuntimeError(f"append failed: {result!r}")
            appended += 1
            k += 1

    async def progress() -> None:
        last_count, last_t = 0, start
        while True:
            await trio.sleep(1.0)
            now = time.perf_counter()
            commits = store.commits - commits0
            print(
                f"  {convs} convs: {appended} messages so far, "
                f"{(appended - last_count) / (now - last_t):6.0f} appends/s in the last "
                f"{now - last_t:.1f} s, {commits} commits ...",
                flush=True,
            )
            last_count, last_t = appended, now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress)
        async with trio.open_nursery() as appenders:
            for i, conv in enumerate(ids):
                appenders.start_soon(appender, i, conv)
        nursery.cancel_scope.cancel()
    elapsed = time.perf_counter() - start
    commits = store.commits - commits0
    calls = store.committed_calls - calls0
    ms = sorted(1000 * x for x in latencies)
    print(
        f"{convs} convs, batch 1: {appended / elapsed:8.0f} durable appends/s "
        f"({commits / elapsed:5.0f} commits/s, {1000 * elapsed / max(commits, 1):6.2f} ms/commit, "
        f"{calls / max(commits, 1):6.1f} appends/commit; append latency p50 "
        f"{statistics.median(ms):.1f} ms, p99 {ms[int(0.99 * (len(ms) - 1))]:.1f} ms)",
        flush=True,
    )


async def _run(
    uri: str, seconds: float, sizes: list[int], convs: list[int], body_bytes: int
) -> None:
    store = await MongoStore.connect(uri, "bench")
    body = "x" * body_bytes
    try:
        for size in sizes:
            await _single(store, seconds, size, body)
        for n in convs:
            await _many(store, seconds, n, body)
    finally:
        await store.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="messenger bench store", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per run (default 5)")
    parser.add_argument(
        "--batch",
        type=int,
        action="append",
        help="single-conversation batch size (repeatable; default 1 10 50 200; 0 = none)",
    )
    parser.add_argument(
        "--convs",
        type=int,
        action="append",
        help=f"concurrent conversations, batch 1 each (repeatable; default {CONVS}; 0 = none)",
    )
    parser.add_argument("--body-bytes", type=int, default=100, help="message size (default 100)")
    parser.add_argument(
        "--no-sync-on-commit",
        action="store_true",
        help="run SecantusDB without --sync-on-commit (not crash-durable; comparison only)",
    )
    args = parser.parse_args(argv)
    sizes = [b for b in (args.batch or BATCH_SIZES) if b > 0]
    convs = [c for c in (args.convs or [CONVS]) if c > 0]
    with tempfile.TemporaryDirectory(prefix="messenger-bench-") as data_dir:
        print(f"starting embedded SecantusDB in {data_dir} ...", flush=True)
        with EmbeddedServer(data_dir, sync_on_commit=not args.no_sync_on_commit) as server:
            mode = "off" if args.no_sync_on_commit else "on"
            print(f"sync-on-commit {mode}; {args.seconds:g} s per run", flush=True)
            trio.run(_run, server.uri, args.seconds, sizes, convs, args.body_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
