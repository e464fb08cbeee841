"""Issue 14 items 1 and 2, measured (not a test: ``python tests/actors/bench_hardening.py``).

1. Backlog memory: the node's RSS growth per connection while new devices of a member of a
   group holding 600 x 16 KiB messages have said hello and read nothing.
2. Fair hellos: another user's hello latency (hello → synced) while a user in 1,000 groups
   (a message in each) logs in with a new device and lists ``convs``.

A node and SecantusDB on this machine; the node runs in this process (its RSS is this
process's, so the clients here are small raw WebSockets). Prints one line per number.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import trio
from wsclient import SECRET, Chat, serve_node

from actors import NodeConfig, TokenIssuer
from persistence import Draft, EmbeddedServer, MongoStore

LIMIT = int(os.environ.get("CONVS_LIMIT", "500"))


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def backlog_memory(chat: Chat, connections: int) -> None:
    conv, _ = await chat.store.create_group("ann", "big", ["ben"], 1)
    body = "x" * 16384
    for start in range(0, 600, 10):
        drafts = [
            Draft(sender="ann", device="d1", cmid=f"c{i}", body=body, ts=2)
            for i in range(start, start + 10)
        ]
        await chat.store.append(conv.id, drafts)
    before = rss_bytes()
    clients = []
    for i in range(connections):
        client = await chat.raw()
        await client.send({"type": "hello", "token": chat.token("ben"), "device": f"new{i}"})
        clients.append(client)
    await trio.sleep(3)  # let every connection fill what it may (they read nothing)
    grown = rss_bytes() - before
    print(
        f"item 1: RSS +{grown / 2**20:.1f} MiB for {connections} connections mid-backlog "
        f"(600 x 16 KiB, reading nothing): {grown / connections / 2**20:.2f} MiB per connection"
    )
    for client in clients:
        await client.aclose()


async def timed_hello(chat: Chat, user: str) -> float:
    client = await chat.raw()
    started = time.perf_counter()
    await client.hello(chat.token(user), "d1")
    elapsed = time.perf_counter() - started
    await client.aclose()
    return elapsed


async def fair_hellos(chat: Chat, groups: int) -> None:
    for g in range(groups):
        conv, _ = await chat.store.create_group("owner", f"g{g}", ["big"], 1)
        await chat.store.append(
            conv.id, [Draft(sender="owner", device="d", cmid=f"m{g}", body="hi", ts=3 + g)]
        )
    baseline = [await timed_hello(chat, f"other{i}") for i in range(20)]
    during: list[float] = []
    phases: list[str] = []
    phase = ["hello"]
    big_done = trio.Event()

    async def big_login() -> None:
        big = await chat.raw()
        started = time.perf_counter()
        await big.hello(chat.token("big"), "new")
        synced = time.perf_counter() - started
        phase.append("convs")
        started = time.perf_counter()
        page = await big.request({"type": "convs", "limit": LIMIT, "rid": "c"})
        listed = time.perf_counter() - started
        print(
            f"item 2: the 1,000-group user: hello → synced {synced * 1000:.0f} ms "
            f"({len(big.synced_frames)} frames); convs page of {len(page['convs'])} rows "
            f"{listed * 1000:.0f} ms"
        )
        big_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(big_login)
        i = 0
        while not big_done.is_set():
            current = phase[-1]
            during.append(await timed_hello(chat, f"during{i}"))
            phases.append(current)
            i += 1
    print(
        f"item 2: another user's hello: baseline p50 {statistics.median(baseline) * 1000:.1f} ms "
        f"max {max(baseline) * 1000:.1f} ms; while the 1,000-group user logs in "
        f"p50 {statistics.median(during) * 1000:.1f} ms max {max(during) * 1000:.1f} ms "
        f"({len(during)} hellos)"
    )
    for name in ("hello", "convs"):
        times = [t for t, p in zip(during, phases, strict=True) if p == name]
        if times:
            print(
                f"item 2:   during its {name}: p50 {statistics.median(times) * 1000:.1f} ms "
                f"max {max(times) * 1000:.1f} ms ({len(times)} hellos)"
            )


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp))
        await trio.to_thread.run_sync(server.start)
        try:
            for scenario in SCENARIOS:
                store = await MongoStore.connect(server.uri, f"bench_{scenario.__name__}")
                issuer = TokenIssuer(SECRET)
                async with trio.open_nursery() as nursery:
                    node, port = await serve_node(nursery, store, NodeConfig(), issuer.verify)
                    chat = Chat(node=node, store=store, port=port, nursery=nursery, issuer=issuer)
                    if scenario is backlog_memory:
                        await backlog_memory(chat, 5)
                    else:
                        await fair_hellos(chat, 1000)
                    await node.shutdown()
                    nursery.cancel_scope.cancel()
                await store.aclose()
        finally:
            await trio.to_thread.run_sync(server.stop)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")


SCENARIOS = [
    s
    for s in (backlog_memory, fair_hellos)
    if s.__name__ in os.environ.get("ONLY", "backlog_memory fair_hellos")
]

if __name__ == "__main__":
    trio.run(main)
