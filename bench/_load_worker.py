"""One process of the load generator: its clients, its share of the open-loop schedule, and
the bookkeeping that proves nothing was lost or duplicated.

Phases, driven by the coordinator over queues: connect every client and create every
conversation, report :class:`Ready`; on :class:`Start` send on schedule from ``t0`` for
``warmup_s + duration_s`` seconds (open loop: whatever the node answers), report
:class:`Tick` every second, drain (wait, at most ``drain_s``, until every send is resolved,
every acked message reached every other member and its receipt came back), report
:class:`Done`.

The members of a conversation always live in one process, so each latency is one
``time.monotonic_ns()`` difference within a process. A message's body carries its intended
send time, its worker and its number; latencies run from the intended time (so a lagging
generator shows up as latency, not as a gentler load). Only messages whose intended time
falls in the measured window (after the warm-up) are in the latency histograms; throughput
counts the acks and deliveries that happen in the window.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import Counter
from typing import Any

import attrs
import trio

from client import ClientEvent, Reconnecting
from protocol import Acked, NewMessage, ReceiptUpdated, SendFailed, ServerError

from ._device import Device
from ._load_plan import Done, LoadPlan, Ready, Start, Tick, Totals, WorkerResult, arrange
from ._procs import run_worker
from ._stats import LatencyHistogram

#: Handshakes (and conversation creations) in flight at once, per process.
CONNECT_CONCURRENCY = 64
SETUP_TIMEOUT_S = 300.0
#: Body prefix of the messages that create direct conversations (not measured).
SETUP = "setup:"


def load_worker(plan: LoadPlan, control: Any, results: Any) -> None:
    """Process entry point."""
    run_worker(plan.worker, _LoadWorker(plan, control, results).run, results)


@attrs.define
class _Record:
    """One message: when it was due, who sent it, which members still owe a delivery."""

    t_ns: int
    sender: int
    expected: int  # bit per member position, the sender's excluded
    measured: bool
    delivered: int = 0
    acked: bool = False
    failed: bool = False
    receipted: bool = False
    conv: str | None = None
    seq: int | None = None


@attrs.define
class _Receipts:
    """A sender's view of one conversation: the others' ``delivered`` and what awaits it."""

    others: frozenset[str]
    marks: dict[str, int] = attrs.Factory(dict)
    waiting: list[tuple[int, int]] = attrs.Factory(list)  # heap of (seq, msg_no)

    def all_delivered(self) -> int:
        return min((self.marks.get(user, 0) for user in self.others), default=0)


@attrs.define(eq=False)
class _LoadWorker:
    plan: LoadPlan
    control: Any
    results: Any
    devices: list[Device] = attrs.Factory(list)
    groups: tuple[tuple[int, ...], ...] = ()
    group_of: list[int] = attrs.Factory(list)
    position: list[int] = attrs.Factory(list)
    convs: list[str] = attrs.Factory(list)
    records: dict[int, _Record] = attrs.Factory(dict)
    seq_owner: dict[tuple[str, int], int] = attrs.Factory(dict)
    last_seq: dict[tuple[int, str], int] = attrs.Factory(dict)
    receipts: dict[tuple[int, str], _Receipts] = attrs.Factory(dict)
    errors: Counter[str] = attrs.Factory(Counter)
    ack: LatencyHistogram = attrs.Factory(LatencyHistogram)
    delivery: LatencyHistogram = attrs.Factory(LatencyHistogram)
    delivery_same: LatencyHistogram = attrs.Factory(LatencyHistogram)
    delivery_cross: LatencyHistogram = attrs.Factory(LatencyHistogram)
    receipt: LatencyHistogram = attrs.Factory(LatencyHistogram)
    schedule_lag: LatencyHistogram = attrs.Factory(LatencyHistogram)
    handshake: LatencyHistogram = attrs.Factory(LatencyHistogram)
    sent: int = 0
    acked: int = 0
    failed: int = 0
    delivered: int = 0
    window_acked: int = 0
    window_delivered: int = 0
    duplicates: int = 0
    seq_conflicts: int = 0
    unexpected: int = 0
    out_of_order: int = 0
    #: Deliveries and receipts still owed for messages not failed.
    outstanding: int = 0
    receipts_owed: int = 0
    window_ns: tuple[int, int] = (0, 0)
    draining: bool = False
    #: Set after every event while draining (the drain re-checks whether all is settled).
    progressed: trio.Event = attrs.Factory(trio.Event)

    # ------------------------------------------------------------------ DeviceHooks

    def on_event(self, device: Device, event: ClientEvent, now_ns: int) -> None:
        match event:
            case Acked(ack=ack, send=send) if not send.body.startswith(SETUP):
                self._on_ack(device, ack.conv, ack.seq, send.body, now_ns)
            case NewMessage(message=msg) if msg.kind == "text" and not msg.body.startswith(SETUP):
                self._on_delivery(device, msg.conv, msg.seq, msg.body, now_ns)
            case ReceiptUpdated(receipt=receipt) if receipt.delivered is not None:
                self._on_receipt(device, receipt.conv, receipt.user, receipt.delivered, now_ns)
            case SendFailed(send=send):
                self._on_failed(send.body)
            case ServerError(error=error):
                self.errors[f"error:{error.code.value}"] += 1
            case Reconnecting(close_code=code):
                self.errors[f"reconnect:{code}"] += 1
        if self.draining:
            self.progressed.set()

    def _in_window(self, now_ns: int) -> bool:
        return self.window_ns[0] <= now_ns < self.window_ns[1]

    def _record(self, body: str) -> tuple[int, _Record] | None:
        parts = body.split(":", 3)
        if len(parts) < 4 or parts[1] != str(self.plan.worker) or not parts[2].isdigit():
            self.unexpected += 1
            return None
        msg_no = int(parts[2])
        record = self.records.get(msg_no)
        if record is None:
            self.unexpected += 1
            return None
        return msg_no, record

    def _on_ack(self, device: Device, conv: str, seq: int, body: str, now_ns: int) -> None:
        found = self._record(body)
        if found is None:
            return
        msg_no, record = found
        record.acked, record.conv, record.seq = True, conv, seq
        if self.seq_owner.setdefault((conv, seq), msg_no) != msg_no:
            self.seq_conflicts += 1
        self.acked += 1
        if record.measured:
            self.ack.record(now_ns - record.t_ns)
        if self._in_window(now_ns):
            self.window_acked += 1
        state = self._receipts_of(device.index, conv)
        if seq <= state.all_delivered():
            self._receipted(record, now_ns)
        else:
            heapq.heappush(state.waiting, (seq, msg_no))

    def _receipts_of(self, index: int, conv: str) -> _Receipts:
        state = self.receipts.get((index, conv))
        if state is None:
            group = self.groups[self.group_of[index]]
            others = frozenset(self.plan.users[i] for i in group if i != index)
            state = self.receipts[(index, conv)] = _Receipts(others=others)
        return state

    def _on_receipt(self, device: Device, conv: str, user: str, seq: int, now_ns: int) -> None:
        state = self._receipts_of(device.index, conv)
        if user not in state.others or seq <= state.marks.get(user, 0):
            return
        state.marks[user] = seq
        covered = state.all_delivered()
        while state.waiting and state.waiting[0][0] <= covered:
            _seq, msg_no = heapq.heappop(state.waiting)
            self._receipted(self.records[msg_no], now_ns)

    def _receipted(self, record: _Record, now_ns: int) -> None:
        if record.receipted:
            return
        record.receipted = True
        self.receipts_owed -= 1
        if record.measured:
            self.receipt.record(now_ns - record.t_ns)

    def _on_delivery(self, device: Device, conv: str, seq: int, body: str, now_ns: int) -> None:
        found = self._record(body)
        if found is None:
            return
        record = found[1]
        key = (device.index, conv)
        if seq < self.last_seq.get(key, 0):
            self.out_of_order += 1
        else:
            self.last_seq[key] = seq
        bit = 1 << self.position[device.index]
        if record.delivered & bit or not record.expected & bit:
            self.duplicates += 1  # the same message shown twice, or to a non-member
            return
        if record.seq is not None and record.seq != seq:
            self.seq_conflicts += 1
        record.delivered |= bit
        self.outstanding -= 1
        self.delivered += 1
        if self._in_window(now_ns):
            self.window_delivered += 1
        if record.measured:
            latency = now_ns - record.t_ns
            self.delivery.record(latency)
            same = self.devices[record.sender].node == device.node
            (self.delivery_same if same else self.delivery_cross).record(latency)

    def _on_failed(self, body: str) -> None:
        found = self._record(body)
        if found is None or found[1].failed:
            return
        record = found[1]
        record.failed = True
        self.outstanding -= (record.expected & ~record.delivered).bit_count()
        self.receipts_owed -= 1
        self.failed += 1

    # ------------------------------------------------------------------ phases

    async def run(self) -> None:
        plan = self.plan
        self.devices = [
            Device(
                index=i,
                user=user,
                token=token,
                url=url,
                local_address=plan.local_address,
                recv_delay_s=plan.recv_delay_s,
            )
            for i, (user, token, url) in enumerate(
                zip(plan.users, plan.tokens, plan.urls, strict=True)
            )
        ]
        async with trio.open_nursery() as nursery:
            began = time.monotonic()
            with trio.fail_after(SETUP_TIMEOUT_S):
                await self._connect_all(nursery)
                connect_s = time.monotonic() - began
                self._group()
                await self._create_conversations()
            self.results.put(
                Ready(worker=plan.worker, connect_s=connect_s, handshake=self.handshake)
            )
            start = await trio.to_thread.run_sync(self.control.get, abandon_on_cancel=True)
            if not isinstance(start, Start):
                raise RuntimeError(f"expected Start, got {start!r}")
            nursery.start_soon(self._report_every_second)
            await self._load(start.t0_ns)
            drain_s = await self._drain()
            self.results.put(Done(worker=plan.worker, result=self._result(drain_s)))
            nursery.cancel_scope.cancel()

    def _group(self) -> None:
        """The conversations: as planned, or regrouped by the nodes the clients landed on."""
        plan = self.plan
        self.groups = plan.groups
        if plan.arrange:
            sizes = [len(group) for group in plan.groups]
            nodes = [device.node for device in self.devices]
            self.groups = tuple(arrange(sizes, nodes, plan.placement))
        self.group_of = [0] * len(self.devices)
        self.position = [0] * len(self.devices)
        for gid, group in enumerate(self.groups):
            for pos, index in enumerate(group):
                self.group_of[index], self.position[index] = gid, pos

    async def _connect_all(self, nursery: trio.Nursery) -> None:
        limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)

        async def connect(device: Device) -> None:
            async with limiter:
                await nursery.start(device.run, self)
            assert device.handshake_s is not None
            self.handshake.record(int(device.handshake_s * 1e9))

        async with trio.open_nursery() as connecting:
            for device in self.devices:
                connecting.start_soon(connect, device)

    async def _create_conversations(self) -> None:
        """A group by ``group_create``; a direct conversation by a first message addressed
        ``to`` the partner, whose ack names it (as a real client does once, then sends by
        ``conv``)."""
        limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
        self.convs = [""] * len(self.groups)

        async def create(gid: int, group: tuple[int, ...]) -> None:
            creator = self.devices[group[0]].client
            assert creator is not None
            async with limiter:
                if len(group) == 2:
                    partner = self.devices[group[1]].user
                    ack = await creator.send(f"{SETUP}{gid}", to=partner)
                    self.convs[gid] = ack.conv
                else:
                    others = [self.devices[i].user for i in group[1:]]
                    title = f"bench {self.plan.worker}.{gid}"
                    self.convs[gid] = await creator.group_create(title, others)

        async with trio.open_nursery() as creating:
            for gid, group in enumerate(self.groups):
                creating.start_soon(create, gid, group)

    async def _load(self, t0_ns: int) -> None:
        """Send on schedule for ``warmup_s + duration_s`` seconds."""
        plan = self.plan
        rng = random.Random(plan.seed)
        measured_from_ns = t0_ns + int(plan.warmup_s * 1e9)
        end_ns = measured_from_ns + int(plan.duration_s * 1e9)
        self.window_ns = (measured_from_ns, end_ns)
        trio_offset = trio.current_time() - time.monotonic_ns() / 1e9
        if plan.rate_per_s <= 0 or not self.devices:
            await trio.sleep_until(end_ns / 1e9 + trio_offset)
            return

        def gap_s() -> float:
            return rng.expovariate(plan.rate_per_s) if plan.poisson else 1.0 / plan.rate_per_s

        due_s = t0_ns / 1e9 + gap_s()
        end_s = end_ns / 1e9
        while due_s < end_s:
            await trio.sleep_until(due_s + trio_offset)
            now_ns = time.monotonic_ns()
            while due_s < end_s and due_s * 1e9 <= now_ns:
                intended_ns = int(due_s * 1e9)
                self.schedule_lag.record(now_ns - intended_ns)
                measured = intended_ns >= measured_from_ns
                self._send_one(rng.randrange(len(self.devices)), intended_ns, measured)
                due_s += gap_s()

    def _send_one(self, sender: int, intended_ns: int, measured: bool) -> None:
        msg_no = len(self.records)
        gid = self.group_of[sender]
        size = len(self.groups[gid])
        expected = ((1 << size) - 1) & ~(1 << self.position[sender])
        self.records[msg_no] = _Record(
            t_ns=intended_ns, sender=sender, expected=expected, measured=measured
        )
        self.outstanding += size - 1
        self.receipts_owed += 1
        head = f"{intended_ns}:{self.plan.worker}:{msg_no}:"
        body = head + "x" * max(0, self.plan.body_bytes - len(head))
        client = self.devices[sender].client
        assert client is not None
        client.send_nowait(body, conv=self.convs[gid])
        self.sent += 1

    def _settled(self) -> bool:
        if self.outstanding > 0 or self.receipts_owed > 0:
            return False
        return all(d.client is None or not d.client.session.outbox for d in self.devices)

    async def _drain(self) -> float:
        """Wait (at most ``drain_s``) until every send is resolved, delivered and receipted;
        the seconds it took."""
        began = time.monotonic()
        self.draining = True
        with trio.move_on_after(self.plan.drain_s):
            while not self._settled():
                self.progressed = trio.Event()
                await self.progressed.wait()
        return time.monotonic() - began

    async def _report_every_second(self) -> None:
        while True:
            await trio.sleep(1.0)
            totals = Totals(
                sent=self.sent,
                acked=self.acked,
                delivered=self.delivered,
                errors=sum(self.errors.values()),
            )
            self.results.put(Tick(worker=self.plan.worker, totals=totals))

    # ------------------------------------------------------------------ verdict

    def _result(self, drain_s: float) -> WorkerResult:
        lost_messages = lost_deliveries = unacked = receipts_missing = 0
        for record in self.records.values():
            missing = (record.expected & ~record.delivered).bit_count()
            if record.acked and missing:
                lost_messages += 1
                lost_deliveries += missing
            if not record.acked and not record.failed:
                unacked += 1
            if record.acked and not record.receipted:
                receipts_missing += 1
        return WorkerResult(
            sent=self.sent,
            acked=self.acked,
            failed=self.failed,
            delivered=self.delivered,
            expected_deliveries=sum(r.expected.bit_count() for r in self.records.values()),
            window_acked=self.window_acked,
            window_delivered=self.window_delivered,
            lost_messages=lost_messages,
            lost_deliveries=lost_deliveries,
            unacked=unacked,
            duplicates=self.duplicates,
            seq_conflicts=self.seq_conflicts,
            unexpected=self.unexpected,
            out_of_order=self.out_of_order,
            redundant_pushes=sum(d.duplicates for d in self.devices),
            reconnects=sum(max(0, d.opens - 1) for d in self.devices),
            receipts_missing=receipts_missing,
            errors=tuple(sorted(self.errors.items())),
            drain_s=drain_s,
            ack=self.ack,
            delivery=self.delivery,
            delivery_same=self.delivery_same,
            delivery_cross=self.delivery_cross,
            receipt=self.receipt,
            schedule_lag=self.schedule_lag,
        )
