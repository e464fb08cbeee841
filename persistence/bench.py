"""Store benchmark: durable appends per second against the embedded SecantusDB, by batch size.

Not a test. ``python -m persistence.bench`` (or ``messenger bench store``) starts an embedded
server in a temporary directory and appends batches to one conversation, each batch one
group-committed durable write, for batch sizes 1, 10, 50 and 200.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import trio

from ._embedded import EmbeddedServer
from ._mongo import MongoStore
from ._types import Draft

BATCH_SIZES = (1, 10, 50, 200)


async def _run(uri: str, seconds: float, sizes: list[int], body_bytes: int) -> None:
    store = await MongoStore.connect(uri, "bench")
    try:
        for size in sizes:
            conv = await store.direct_conversation("alice", f"bob{size}")
            body = "x" * body_bytes
            appended, batches = 0, 0
            start = last_report = time.perf_counter()
            while (now := time.perf_counter()) - start < seconds:
                drafts = [
                    Draft(
                        sender="alice", device="d1", cmid=f"b{size}-{appended + i}", body=body, ts=0
                    )
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
                f"batch {size:>3}: {appended / elapsed:8.0f} durable appends/s "
                f"({batches / elapsed:6.0f} commits/s, {1000 * elapsed / batches:6.2f} ms/commit)",
                flush=True,
            )
    finally:
        await store.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="messenger bench store", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per batch size (default 5)")
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable)")
    parser.add_argument("--body-bytes", type=int, default=100, help="message size (default 100)")
    parser.add_argument(
        "--no-sync-on-commit",
        action="store_true",
        help="run SecantusDB without --sync-on-commit (not crash-durable; comparison only)",
    )
    args = parser.parse_args(argv)
    sizes = args.batch or list(BATCH_SIZES)
    with tempfile.TemporaryDirectory(prefix="messenger-bench-") as data_dir:
        print(f"starting embedded SecantusDB in {data_dir} ...", flush=True)
        with EmbeddedServer(data_dir, sync_on_commit=not args.no_sync_on_commit) as server:
            mode = "off" if args.no_sync_on_commit else "on"
            print(f"sync-on-commit {mode}; {args.seconds:g} s per batch size", flush=True)
            trio.run(_run, server.uri, args.seconds, sizes, args.body_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
