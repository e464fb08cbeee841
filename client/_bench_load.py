"""One load-generator worker process: its share of the clients, an open-loop send schedule,
and the bookkeeping that measures latency and proves nothing was lost or duplicated.

The coordinator (:mod:`client.bench`) gives each worker whole conversations, so every member
of a conversation lives in the same worker: latencies are measured against one process's
``CLOCK_MONOTONIC`` (``time.monotonic_ns``; it is system-wide on Linux, so comparing across
processes would be sound too) and the loss/duplicate check needs no cross-process joins.

A message body is ``"<intended send time ns>:<worker>:<msg no>:"`` padded with ``x`` to
``body_bytes``. The intended time is the schedule's, not the moment the frame was written, so
a generator that falls behind cannot hide latency (no coordinated omission); how far it fell
behind is reported as ``schedule_lag``.

Messages with the coordinator (over multiprocessing queues): ``("ready", worker, info)``
after connecting and setting up conversations, then ``("start", t0_ns)`` in, then
``("tick", worker, second, totals)`` every second and ``("done", worker, result)``, or
``("failed", worker, message)`` at any point.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import attrs
import trio

from protocol import Ack, Error, Msg, Nack, Result, ServerFrame

from ._bench_client import BenchClient, Endpoint, PingStats, keep_alive
from ._bench_node import run_worker_process, ws_host_port
from ._bench_stats import LatencyHistogram

#: Seconds between two ``recv`` flushes of a device (the SDK's default batching delay).
RECV_DELAY_S = 0.05
#: Handshakes in flight at once, per worker.
CONNECT_CONCURRENCY = 64
#: ``group_create`` requests in flight at once, per worker.
GROUP_CONCURRENCY = 32
SETUP_TIMEOUT_S = 300.0
#: Bodies of the messages that set up direct conversations (not measured).
_SETUP = "setup:"


@attrs.frozen(kw_only=True)
class LoadPlan:
    """One worker's share of a load run (plain data: it crosses a process boundary)."""

    worker: int
    url: str
    users: tuple[str, ...]
    tokens: tuple[str, ...]
    #: Conversations as tuples of local client indices (2 members: a direct conversation).
    groups: tuple[tuple[int, ...], ...]
    rate_per_s: float
    duration_s: float
    body_bytes: int
    schedule: str
    drain_s: float
    local_address: str | None
    seed: int


@attrs.define
class _Record:
    """One scheduled message: when, who, and what became of it."""

    t_ns: int
    sender: int
    expected: int  # bitmask of recipient positions in the group
    delivered: int = 0
    acked: bool = False
    failed: bool = False
    conv: str | None = None
    seq: int | None = None


@attrs.define
class _Counts:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    delivered: int = 0
    errors: int = 0


def load_worker(plan: LoadPlan, control: Any, results: Any) -> None:
    """Process entry point: run the worker, report any crash as ``failed``."""
    run_worker_process(plan.worker, _LoadWorker(plan, control, results).run, results)


@attrs.define(eq=False)
class _LoadWorker:
    plan: LoadPlan
    control: Any
    results: Any
    clients: list[BenchClient] = attrs.Factory(list)
    group_of: list[int] = attrs.Factory(list)
    position: list[int] = attrs.Factory(list)
    convs: list[str | None] = attrs.Factory(list)
    records: dict[int, _Record] = attrs.Factory(dict)
    seq_owner: dict[tuple[str, int], int] = attrs.Factory(dict)
    last_seq: dict[tuple[int, str], int] = attrs.Factory(dict)
    counts: _Counts = attrs.Factory(_Counts)
    window: _Counts = attrs.Factory(_Counts)
    errors: Counter[str] = attrs.Factory(Counter)
    ack_latency: LatencyHistogram = attrs.Factory(LatencyHistogram)
    delivery_latency: LatencyHistogram = attrs.Factory(LatencyHistogram)
    schedule_lag: LatencyHistogram = attrs.Factory(LatencyHistogram)
    handshake: LatencyHistogram = attrs.Factory(LatencyHistogram)
    dirty: set[BenchClient] = attrs.Factory(set)
    #: Deliveries still owed for messages not failed (deliveries may precede their ack).
    outstanding: int = 0
    redundant_pushes: int = 0
    duplicates: int = 0
    seq_conflicts: int = 0
    unexpected: int = 0
    out_of_order: int = 0
    recv_frames: int = 0
    ping_stats: PingStats = attrs.Factory(PingStats)
    window_start_ns: int = 0
    window_end_ns: int = 0
    next_msg: int = 0
    setup_acks: dict[str, trio.Event] = attrs.Factory(dict)

    # ------------------------------------------------------------------ ClientHooks

    def on_ack(self, client: BenchClient, ack: Ack, body: str) -> None:
        if body.startswith(_SETUP):
            self.convs[self.group_of[client.index]] = ack.conv
            self.setup_acks.pop(ack.cmid).set()
            return
        now = time.monotonic_ns()
        msg_no = _msg_no(body)
        record = self.records.get(msg_no) if msg_no is not None else None
        if record is None or msg_no is None:
            self.unexpected += 1
            return
        if record.acked:
            self.duplicates += 1
            return
        record.acked, record.conv, record.seq = True, ack.conv, ack.seq
        self.convs[self.group_of[client.index]] = ack.conv
        owner = self.seq_owner.setdefault((ack.conv, ack.seq), msg_no)
        if owner != msg_no:
            self.seq_conflicts += 1
        self.ack_latency.record(now - record.t_ns)
        self.counts.acked += 1
        if self.window_start_ns <= now <= self.window_end_ns:
            self.window.acked += 1

    def on_msg(self, client: BenchClient, msg: Msg, redundant: bool) -> None:
        if msg.kind != "text" or msg.body.startswith(_SETUP):
            return
        if redundant:
            self.redundant_pushes += 1
            return
        now = time.monotonic_ns()
        self.dirty.add(client)
        gid = self.group_of[client.index]
        if self.convs[gid] is None:
            self.convs[gid] = msg.conv
        key = (client.index, msg.conv)
        if msg.seq < self.last_seq.get(key, 0):
            self.out_of_order += 1
        else:
            self.last_seq[key] = msg.seq
        msg_no = _msg_no(msg.body, self.plan.worker)
        record = self.records.get(msg_no) if msg_no is not None else None
        if record is None:
            self.unexpected += 1
            return
        bit = 1 << self.position[client.index]
        if record.delivered & bit or not record.expected & bit:
            self.duplicates += 1  # the same logical message shown twice, or to a non-member
            return
        if record.seq is not None and record.seq != msg.seq:
            self.seq_conflicts += 1
        record.delivered |= bit
        self.outstanding -= 1
        self.delivery_latency.record(now - record.t_ns)
        self.counts.delivered += 1
        if self.window_start_ns <= now <= self.window_end_ns:
            self.window.delivered += 1

    def on_failed(self, client: BenchClient, nack: Nack, body: str) -> None:
        msg_no = _msg_no(body)
        record = self.records.get(msg_no) if msg_no is not None else None
        if record is None or record.failed:
            return
        record.failed = True
        self.outstanding -= (record.expected & ~record.delivered).bit_count()
        self.counts.failed += 1

    def on_problem(self, client: BenchClient, code: str) -> None:
        self.errors[code] += 1
        self.counts.errors += 1
        if code.startswith("nack:"):
            self.dirty.add(client)  # a retry is scheduled: tick it

    # ------------------------------------------------------------------ phases

    async def run(self) -> None:
        host, port, resource = ws_host_port(self.plan.url)
        endpoint = Endpoint(host, port, resource, self.plan.local_address)
        ordered = sorted(
            (index, gid, pos)
            for gid, group in enumerate(self.plan.groups)
            for pos, index in enumerate(group)
        )
        self.group_of = [gid for _i, gid, _p in ordered]
        self.position = [pos for _i, _g, pos in ordered]
        self.convs = [None] * len(self.plan.groups)
        self.clients = [
            BenchClient(index=i, user=user, token=token, endpoint=endpoint, hooks=self)
            for i, (user, token) in enumerate(zip(self.plan.users, self.plan.tokens, strict=True))
        ]
        async with trio.open_nursery() as nursery:
            # Keep-alive from the start: the first connections must not time out.
            nursery.start_soon(keep_alive, self.clients, self.ping_stats)
            began = time.monotonic()
            await self._connect_all(nursery)
            connect_s = time.monotonic() - began
            await self._create_groups()
            self.results.put(
                (
                    "ready",
                    self.plan.worker,
                    {"clients": len(self.clients), "connect_s": connect_s},
                )
            )
            t0_ns = await self._wait_start()
            nursery.start_soon(self._ticker)
            await self._load(t0_ns)
            drain_s = await self._drain()
            self.results.put(("done", self.plan.worker, self._result(drain_s)))
            nursery.cancel_scope.cancel()

    async def _connect_all(self, nursery: trio.Nursery) -> None:
        limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)

        async def connect(client: BenchClient) -> None:
            async with limiter:
                await nursery.start(client.run)
            self.handshake.record(int(client.handshake_s * 1e9))

        async def report_progress() -> None:
            while True:
                await trio.sleep(1.0)
                self.results.put(("progress", worker, self.handshake.count))

        worker = self.plan.worker
        with trio.fail_after(SETUP_TIMEOUT_S):
            async with trio.open_nursery() as progress:
                progress.start_soon(report_progress)
                async with trio.open_nursery() as connecting:
                    for client in self.clients:
                        connecting.start_soon(connect, client)
                progress.cancel_scope.cancel()

    async def _create_groups(self) -> None:
        """Create every conversation before the load: a group by ``group_create``, a direct
        one by a first message addressed ``to`` the partner, whose ack names the conversation
        (as a real client does once, then sends by ``conv``)."""
        limiter = trio.CapacityLimiter(GROUP_CONCURRENCY)

        async def first_message(gid: int, group: tuple[int, ...]) -> None:
            cmid = f"setup{gid}"
            acked = self.setup_acks[cmid] = trio.Event()
            async with limiter:
                sender, partner = self.clients[group[0]], self.clients[group[1]]
                sender.send(cmid, f"{_SETUP}{gid}", to=partner.user)
                await acked.wait()

        async def create(gid: int, group: tuple[int, ...]) -> None:
            done = trio.Event()
            reply: list[ServerFrame] = []

            def on_reply(frame: ServerFrame) -> None:
                reply.append(frame)
                done.set()

            async with limiter:
                members = tuple(self.clients[i].user for i in group[1:])
                title = f"bench {self.plan.worker}.{gid}"
                self.clients[group[0]].create_group(title, members, on_reply)
                await done.wait()
            frame = reply[0]
            if isinstance(frame, Error) or not isinstance(frame, Result):
                raise RuntimeError(f"group_create failed: {frame!r}")
            conv = dict(frame.fields).get("conv")
            if not isinstance(conv, str):
                raise RuntimeError(f"group_create result without conv: {frame!r}")
            self.convs[gid] = conv

        with trio.fail_after(SETUP_TIMEOUT_S):
            async with trio.open_nursery() as creating:
                for gid, group in enumerate(self.plan.groups):
                    creating.start_soon(create if len(group) > 2 else first_message, gid, group)

    async def _wait_start(self) -> int:
        message = await trio.to_thread.run_sync(self.control.get, abandon_on_cancel=True)
        if message[0] != "start":
            raise RuntimeError(f"expected start, got {message!r}")
        t0_ns = int(message[1])
        await trio.sleep((t0_ns - time.monotonic_ns()) / 1e9)
        return t0_ns

    async def _load(self, t0_ns: int) -> None:
        """Send on schedule for ``duration_s`` seconds, whatever the node answers."""
        plan = self.plan
        rng = random.Random(plan.seed)
        self.window_start_ns = t0_ns
        self.window_end_ns = t0_ns + int(plan.duration_s * 1e9)
        if plan.rate_per_s <= 0 or not self.clients:
            await trio.sleep_until(trio.current_time() + plan.duration_s)
            return
        trio_offset = trio.current_time() - time.monotonic_ns() / 1e9

        def gap_s() -> float:
            if plan.schedule == "poisson":
                return rng.expovariate(plan.rate_per_s)
            return 1.0 / plan.rate_per_s

        due_s = t0_ns / 1e9 + gap_s()
        end_s = self.window_end_ns / 1e9
        while due_s < end_s:
            await trio.sleep_until(due_s + trio_offset)
            now_ns = time.monotonic_ns()
            while due_s < end_s and due_s * 1e9 <= now_ns:
                intended_ns = int(due_s * 1e9)
                self.schedule_lag.record(now_ns - intended_ns)
                self._send_one(rng.randrange(len(self.clients)), intended_ns)
                due_s += gap_s()

    def _send_one(self, sender: int, intended_ns: int) -> None:
        msg_no = self.next_msg
        self.next_msg += 1
        gid = self.group_of[sender]
        group = self.plan.groups[gid]
        expected = ((1 << len(group)) - 1) & ~(1 << self.position[sender])
        self.records[msg_no] = _Record(t_ns=intended_ns, sender=sender, expected=expected)
        self.outstanding += len(group) - 1
        head = f"{intended_ns}:{self.plan.worker}:{msg_no}:"
        body = head + "x" * max(0, self.plan.body_bytes - len(head))
        client = self.clients[sender]
        cmid = f"m{msg_no}"
        conv = self.convs[gid]
        if conv is None:  # a direct conversation before its first ack: address the user
            partner = group[1 - self.position[sender]]
            client.send(cmid, body, to=self.clients[partner].user)
        else:
            client.send(cmid, body, conv=conv)
        self.counts.sent += 1
        self.window.sent += 1

    async def _drain(self) -> float:
        """Wait (at most ``drain_s``) until every send is resolved and every acked message
        reached every recipient; the seconds it took."""
        began = time.monotonic()
        deadline = trio.current_time() + self.plan.drain_s
        while trio.current_time() < deadline:
            if self.outstanding <= 0 and not any(c.outbox for c in self.clients):
                break
            await trio.sleep(0.05)
        return time.monotonic() - began

    async def _ticker(self) -> None:
        """Flush ``recv`` watermarks every :data:`RECV_DELAY_S`; report totals every second."""
        next_report = trio.current_time() + 1.0
        second = 1
        while True:
            await trio.sleep(RECV_DELAY_S)
            now = trio.current_time()
            dirty, self.dirty = self.dirty, set()
            for client in dirty:
                self.recv_frames += client.tick(now)
                if client.needs_tick:
                    self.dirty.add(client)
            if now >= next_report:
                c = self.counts
                totals = {
                    "sent": c.sent,
                    "acked": c.acked,
                    "delivered": c.delivered,
                    "errors": c.errors,
                }
                self.results.put(("tick", self.plan.worker, second, totals))
                second += 1
                next_report += 1.0

    # ------------------------------------------------------------------ verdict

    def _result(self, drain_s: float) -> dict[str, Any]:
        lost_messages = lost_deliveries = unacked = delivered_unacked = 0
        for record in self.records.values():
            missing = (record.expected & ~record.delivered).bit_count()
            if record.acked and missing:
                lost_messages += 1
                lost_deliveries += missing
            if not record.acked and not record.failed:
                unacked += 1
                if record.delivered:
                    delivered_unacked += 1
        return {
            "worker": self.plan.worker,
            "clients": len(self.clients),
            "sent": self.counts.sent,
            "acked": self.counts.acked,
            "failed": self.counts.failed,
            "delivered": self.counts.delivered,
            "window": attrs.asdict(self.window),
            "expected_deliveries": sum(r.expected.bit_count() for r in self.records.values()),
            "lost_messages": lost_messages,
            "lost_deliveries": lost_deliveries,
            "unacked": unacked,
            "delivered_unacked": delivered_unacked,
            "duplicates": self.duplicates,
            "seq_conflicts": self.seq_conflicts,
            "unexpected": self.unexpected,
            "out_of_order": self.out_of_order,
            "redundant_pushes": self.redundant_pushes,
            "reconnects": sum(max(0, c.syncs - 1) for c in self.clients),
            "recv_frames": self.recv_frames,
            "pings": self.ping_stats.pings,
            "pongs": self.ping_stats.pongs,
            "errors": dict(self.errors),
            "drain_s": drain_s,
            "ack_latency": self.ack_latency.to_wire(),
            "delivery_latency": self.delivery_latency.to_wire(),
            "schedule_lag": self.schedule_lag.to_wire(),
            "handshake": self.handshake.to_wire(),
        }


def _msg_no(body: str, worker: int | None = None) -> int | None:
    """The message number a bench body carries (None if it is not ours / not this worker's)."""
    parts = body.split(":", 3)
    if len(parts) < 4:
        return None
    try:
        if worker is not None and int(parts[1]) != worker:
            return None
        return int(parts[2])
    except ValueError:
        return None
