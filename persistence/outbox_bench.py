"""Outbox benchmark: how fast notification jobs are claimed and drained at a given backlog.

Not a test. ``python -m persistence.outbox_bench [--jobs 10000] [--batch 16]`` starts an
embedded server in a temporary directory, records ``--jobs`` pending jobs (one per user, in
one bulk write), then claims them all as the notifier does, ``--batch`` at a time (the
notifier's ``max_in_flight``), and completes a sample of them. It prints jobs claimed per
second, the latency of one claim at the full backlog, completions per second, and the store's
CPU time per job; report the load average (``uptime``) with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pymongo
import trio

from ._embedded import EmbeddedServer
from ._mongo import MongoStore
from ._mongo._outbox import JobNote, write_jobs
from ._mongo._schema import DURABLE
from ._types import NotificationJob

#: How many of the claimed jobs are completed (each is one durable write) to time that too.
COMPLETE_SAMPLE = 1_000


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drain(store: MongoStore, jobs: int, batch: int, store_pid: int) -> None:
    """Claim every job (a batch at a time, as the notifier does), then complete a sample."""
    claim_s: list[float] = []
    claimed: list[NotificationJob] = []
    cpu0, start = _cpu_s(store_pid), time.perf_counter()
    now_ms = 10**12
    while True:
        t0 = time.perf_counter()
        got = await store.claim_notifications("bench", now_ms, 600_000, batch)
        claim_s.append(time.perf_counter() - t0)
        if not got:
            break
        claimed += got
    wall = time.perf_counter() - start
    cpu = _cpu_s(store_pid) - cpu0
    print(f"first claim of {batch} at {jobs} jobs: {claim_s[0] * 1000:.1f} ms (finds the oldest)")
    print(f"median claim of {batch}: {statistics.median(claim_s) * 1000:.1f} ms")
    print(f"claims: {len(claimed)} jobs in {wall:.1f} s = {len(claimed) / wall:.0f} jobs claimed/s")
    print(f"store CPU: {cpu * 1e6 / max(len(claimed), 1):.0f} µs per job claimed")
    sample = claimed[:COMPLETE_SAMPLE]
    cpu0, start = _cpu_s(store_pid), time.perf_counter()
    for first in range(0, len(sample), batch):
        async with trio.open_nursery() as nursery:
            for job in sample[first : first + batch]:
                nursery.start_soon(store.complete_notification, job.id)
    wall = time.perf_counter() - start
    cpu = _cpu_s(store_pid) - cpu0
    print(
        f"completions: {len(sample)} in {wall:.1f} s = {len(sample) / wall:.0f} jobs/s, "
        f"store CPU {cpu * 1e6 / max(len(sample), 1):.0f} µs per job"
    )
    print(f"left pending: {await store.pending_notifications()} jobs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m persistence.outbox_bench")
    parser.add_argument("--jobs", type=int, default=10_000, help="pending jobs (default 10000)")
    parser.add_argument("--batch", type=int, default=16, help="jobs per claim (default 16)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as data_dir, EmbeddedServer(data_dir) as server:
        assert server.pid is not None
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(server.uri)
        db = client.get_database("outbox_bench", write_concern=DURABLE)
        store = trio.run(MongoStore.connect, server.uri, "outbox_bench")
        notes = {f"user{i:06}": JobNote("g:bench", 1, 1_000 + i, 1) for i in range(args.jobs)}
        write_jobs(db, notes)
        client.close()
        print(f"{args.jobs} pending jobs recorded; draining in claims of {args.batch}")

        async def run() -> None:
            try:
                await _drain(store, args.jobs, args.batch, server.pid or 0)
            finally:
                await store.aclose()

        trio.run(run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
