"""``messenger bench store``: durable appends per second against the embedded SecantusDB.

Starts an embedded server in a temporary directory (``--sync-on-commit``, as a node runs it)
and talks to it through :class:`persistence.MongoStore`, the node's own store, in two shapes:

* one conversation, one appender, batch sizes 1, 10, 50 and 200 (each ``append`` call is one
  batch; nothing else is in flight, so each call is one durable commit);
* ``--convs N`` (default 1,000) conversations appended at once, one appender task each
  sending batches of 1 in a loop — the chat node's shape (thousands of 1:1 conversations
  with a message or two in flight each). The store merges concurrent calls into one durable
  commit (group commit across conversations); the report says how many calls a commit
  carried on average.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import attrs
import trio

from persistence import Draft, EmbeddedServer, MongoStore, StoredMessage

from ._stats import Latency, LatencyHistogram

BATCH_SIZES = (1, 10, 50, 200)
CONVS = 1000


@attrs.frozen(kw_only=True)
class StoreRun:
    """One shape: ``convs`` conversations appending batches of ``batch`` at once."""

    convs: int
    batch: int
    seconds: float
    appends: int
    commits: int
    #: ``append`` calls the commits carried (calls per commit: the group-commit batch).
    calls: int
    append_latency: Latency

    @property
    def appends_per_s(self) -> float:
        return self.appends / self.seconds

    @property
    def calls_per_commit(self) -> float:
        return self.calls / max(self.commits, 1)

    @property
    def ms_per_commit(self) -> float:
        return 1000 * self.seconds / max(self.commits, 1)

    def line(self) -> str:
        lat = self.append_latency
        p50 = "-" if lat.p50_ms is None else f"{lat.p50_ms:.1f} ms"
        p99 = "-" if lat.p99_ms is None else f"{lat.p99_ms:.1f} ms"
        return (
            f"{self.convs:>5} conv(s), batch {self.batch:>3}: "
            f"{self.appends_per_s:8,.0f} durable appends/s ({self.commits / self.seconds:6,.0f} "
            f"commits/s, {self.ms_per_commit:6.2f} ms/commit, {self.calls_per_commit:6.1f} "
            f"appends/commit; append latency p50 {p50}, p99 {p99})"
        )


@attrs.frozen(kw_only=True)
class StoreResult:
    sync_on_commit: bool
    body_bytes: int
    runs: tuple[StoreRun, ...]


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _appenders(
    store: MongoStore, convs: list[str], tag: str, batch: int, seconds: float, body: str
) -> StoreRun:
    """One appender task per conversation (``tag``'s user ``u<i>`` sending to the i-th),
    each appending ``batch`` drafts in a loop."""
    latency = LatencyHistogram()
    appended = 0
    commits_before, calls_before = store.stats.commits, store.stats.calls
    began = time.perf_counter()
    deadline = began + seconds

    async def appender(i: int, conv: str) -> None:
        nonlocal appended
        k = 0
        while time.perf_counter() < deadline:
            drafts = [
                Draft(sender=f"{tag}u{i}", device="d1", cmid=f"m{k + j}", body=body, ts=0)
                for j in range(batch)
            ]
            t0 = time.perf_counter_ns()
            results = await store.append(conv, drafts)
            latency.record(time.perf_counter_ns() - t0)
            bad = [r for r in results if not isinstance(r, StoredMessage)]
            if bad:
                raise RuntimeError(f"append failed: {bad[0]!r}")
            appended += batch
            k += batch

    async def progress() -> None:
        while True:
            await trio.sleep(1.0)
            _progress(
                f"  {len(convs)} conv(s), batch {batch}: {appended:,} appends so far, "
                f"{store.stats.commits - commits_before:,} commits ..."
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress)
        async with trio.open_nursery() as appending:
            for i, conv in enumerate(convs):
                appending.start_soon(appender, i, conv)
        nursery.cancel_scope.cancel()
    return StoreRun(
        convs=len(convs),
        batch=batch,
        seconds=time.perf_counter() - began,
        appends=appended,
        commits=store.stats.commits - commits_before,
        calls=store.stats.calls - calls_before,
        append_latency=latency.summary(),
    )


async def _conversations(store: MongoStore, count: int, tag: str, body: str) -> list[str]:
    """``count`` direct conversations, each appended to once (the first append reads where a
    conversation ends and its membership; afterwards both are cached)."""
    _progress(f"  creating {count:,} conversations ...")
    ids = [(await store.direct_conversation(f"{tag}u{i}", f"{tag}v{i}")).id for i in range(count)]
    async with trio.open_nursery() as nursery:
        for i, conv in enumerate(ids):
            draft = Draft(sender=f"{tag}u{i}", device="d1", cmid="warm", body=body, ts=0)
            nursery.start_soon(store.append, conv, [draft])
    return ids


async def _run(
    uri: str, seconds: float, sizes: list[int], convs: list[int], body: str
) -> list[StoreRun]:
    store = await MongoStore.connect(uri, "bench")
    runs = []
    try:
        for size in sizes:
            ids = await _conversations(store, 1, f"b{size}", body)
            runs.append(await _appenders(store, ids, f"b{size}", size, seconds, body))
            print(runs[-1].line(), flush=True)
        for count in convs:
            ids = await _conversations(store, count, f"n{count}", body)
            runs.append(await _appenders(store, ids, f"n{count}", 1, seconds, body))
            print(runs[-1].line(), flush=True)
    finally:
        await store.aclose()
    return runs


def store_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messenger bench store",
        description="Durable appends per second against the embedded store.",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per shape (default 5 s)")
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
    parser.add_argument("--body-bytes", type=int, default=100, help="message size (default 100 B)")
    parser.add_argument(
        "--no-sync-on-commit",
        action="store_true",
        help="run SecantusDB without --sync-on-commit (not crash-durable; comparison only)",
    )
    return parser


def run_store(args: argparse.Namespace) -> StoreResult:
    sizes = [b for b in (args.batch or BATCH_SIZES) if b > 0]
    convs = [c for c in (args.convs or [CONVS]) if c > 0]
    sync = not args.no_sync_on_commit
    with tempfile.TemporaryDirectory(prefix="messenger-bench-") as data_dir:
        _progress(f"starting embedded SecantusDB in {data_dir} ...")
        with EmbeddedServer(data_dir, sync_on_commit=sync) as server:
            _progress(f"sync-on-commit {'on' if sync else 'off'}; {args.seconds:g} s per shape")
            runs = trio.run(_run, server.uri, args.seconds, sizes, convs, "x" * args.body_bytes)
    return StoreResult(sync_on_commit=sync, body_bytes=args.body_bytes, runs=tuple(runs))
