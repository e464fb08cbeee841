"""The simulated world: the real chat node, the MemoryStore, devices, faults and the checker.

One :func:`simulate` call is one run: it builds the world from a :class:`RunConfig`, runs
it inside one deterministic ``trio.run`` (see :mod:`sim._determinism`) and returns a
:class:`RunResult` with the checker's report and the trace.

Wiring. The node is ``actors.Node`` built on a ``persistence._memory.MemoryStore`` with
``StoreFaults``, a seeded ``random.Random``, a ``wall_ms`` derived from virtual time and a
``NodeConfig`` carrying the mutants, started with ``nursery.start(node.run)`` inside its own
task. A device dials a :class:`~sim._network.Link`; the node gets the server end through
``Node.attach_stream`` (its real HTTP/WebSocket gateway), the device runs trio-websocket's
client on the other end. A crash is ``Node.crash()`` plus a reset of every link (as the OS
would do to a killed process's sockets); a restart is a new ``Node`` on the same Store.

Phases. Setup (everyone connects, a first message per user), chaos (``steps`` workload
actions with faults; safety is checked after every step), heal (faults off, node up, every
device back; liveness is checked when the world has converged or after ``HEAL_S``).
"""

from __future__ import annotations

import logging
import math
import random
import time

import attrs
import trio

from actors import Node as ActorNode
from actors import NodeConfig
from actors._auth import Grant, InvalidToken
from persistence import Store
from persistence._memory import MemoryStore

from . import _history as h
from ._checker import Checker, Report
from ._determinism import derive_rng, run_deterministic
from ._device import SimDevice
from ._faults import FAULT_KINDS, FaultPlan
from ._mutants import node_mutants
from ._network import Arm, Link
from ._store import EarlyHistoryStore, FaultyStore, ForgetfulStore, StoreFaults
from ._trace import Trace
from ._truth import Truth, TruthCache
from ._workload import Workload

#: Frames a broken or hostile client might write; each must get an error or nack (G9).
GARBAGE: tuple[str, ...] = (
    "this is not json",
    "[1, 2, 3]",
    '{"type": "nope"}',
    '{"no_type": true}',
    '{"type": "send", "cmid": "bad id!", "body": "x", "to": "u0"}',
    '{"type": "send", "cmid": "garbage.1", "body": 42, "to": "u0"}',
    '{"type": "send", "cmid": "garbage.2", "body": "x"}',
    '{"type": "history", "conv": "g:000000000000000000000000"}',
    '{"type": "history", "conv": "d:u0:u1", "limit": 0}',
    '{"type": "recv", "conv": "d:u0:u1", "seq": -1}',
    '{"type": "hello", "token": "sim.u0", "device": "d9"}',
    '{"type": "group_create", "title": "", "members": []}',
    '{"type": "send", "cmid": "garbage.3", "to": "u0", "body": "' + "x" * 17_000 + '"}',
    '{"type": "ping", "pad": "' + "y" * 70_000 + '"}',
)

#: Wall clock of virtual time 0, in ms since the epoch (2026-01-01T00:00:00Z).
EPOCH_MS = 1_767_225_600_000
#: Virtual seconds the healed phase may take before missing messages count as lost.
HEAL_S = 60.0
#: The node's presence grace and heartbeat in the simulator (the protocol's defaults/minimum).
GRACE_S = 5.0
HEARTBEAT_S = 10


@attrs.frozen(kw_only=True)
class RunConfig:
    """Everything that determines a run: the seed, the workload, the faults, the mutants."""

    seed: int
    workload: Workload
    plan: FaultPlan
    mutants: frozenset[str] = frozenset()
    #: Stop the chaos phase at the first violated step (replays stay short); tests that count
    #: fired faults run to the end instead.
    stop_on_failure: bool = True

    def describe(self) -> str:
        mutants = ",".join(sorted(self.mutants)) or "none"
        return (
            f"seed {self.seed}: {self.workload.describe()}\n"
            f"  faults: {self.plan.describe()}\n  mutants: {mutants}"
        )


@attrs.frozen(kw_only=True)
class RunResult:
    """The outcome of one run."""

    config: RunConfig
    report: Report
    trace: Trace
    sessions: int
    virtual_s: float
    wall_s: float
    steps_done: int
    failed_at_step: int | None

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def trace_hash(self) -> str:
        return self.trace.digest()


def _verify_token(token: str, now_s: float) -> Grant:
    """Simulator tokens: ``sim.<user>`` (never expires) or ``sim.<user>.<expiry>`` (epoch s)."""
    if not token.startswith("sim."):
        raise InvalidToken("not a simulator token")
    user, _, expiry = token[4:].partition(".")
    expires_s = float(expiry) if expiry else math.inf
    if expires_s <= now_s:
        raise InvalidToken("token expired")
    return Grant(user=user, expires_s=expires_s)


class World:
    """See the module docstring; one instance per run, used from inside ``trio.run``."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        seed = config.seed
        self.trace = Trace()
        self.history = h.History(self.trace)
        self.checker = Checker(history=self.history, grace_s=GRACE_S, epoch_ms=EPOCH_MS)
        self.faults = StoreFaults()
        self.store = MemoryStore(rng=derive_rng(seed, "store"))
        #: What the node talks to: the MemoryStore behind the fault dial (and the store-side
        #: mutant); the checker reads ``self.store`` directly.
        self.node_store: Store = FaultyStore(self._mutated(self.store), self.faults).as_store()
        self._workload_rng = derive_rng(seed, "workload")
        self._fault_rng = derive_rng(seed, "faults")
        self.node: ActorNode | None = None
        self.incarnation = 0
        self.links: list[Link] = []
        self._store_fired: dict[str, int] = {}
        self._arm_next: dict[str, Arm] = {}
        self.users = [f"u{i}" for i in range(config.workload.users)]
        self.devices: list[SimDevice] = []
        self._nursery: trio.Nursery | None = None
        self.failed_at_step: int | None = None
        self.steps_done = 0
        self._truths = TruthCache()
        #: chaos step -> devices that come online for the first time then
        self._late: dict[int, list[SimDevice]] = {}

    # ------------------------------------------------------------------ node

    def _mutated(self, store: Store) -> Store:
        if "no_cmid_dedupe" in self.config.mutants:
            store = ForgetfulStore(store, derive_rng(self.config.seed, "cmids")).as_store()
        if "history_before_join" in self.config.mutants:
            store = EarlyHistoryStore(store).as_store()
        return store

    def _node_config(self) -> NodeConfig:
        grace = 0.0 if "no_presence_grace" in self.config.mutants else GRACE_S
        return NodeConfig(
            heartbeat_s=HEARTBEAT_S,
            presence_grace_s=grace,
            conversation_idle_s=5.0,
            mutants=node_mutants(self.config.mutants),
        )

    def _wall_ms(self) -> int:
        return EPOCH_MS + int(trio.current_time() * 1000)

    async def _start_node(self) -> None:
        assert self._nursery is not None
        self.incarnation += 1
        node = ActorNode(
            store=self.node_store,
            verify_token=_verify_token,
            rng=derive_rng(self.config.seed, f"node/{self.incarnation}"),
            wall_ms=self._wall_ms,
            config=self._node_config(),
            name=f"node{self.incarnation}",
            # The crashed incarnations' device sessions end now, not at their lease expiry.
            predecessors=tuple(f"node{i}" for i in range(1, self.incarnation)),
        )
        scope = trio.CancelScope()
        await self._nursery.start(self._run_node, node, scope, self.incarnation)
        self.node = node
        self.history.record(
            h.NodeEvent(at=trio.current_time(), what="started", incarnation=self.incarnation)
        )

    async def _run_node(
        self,
        node: ActorNode,
        scope: trio.CancelScope,
        incarnation: int,
        *,
        task_status: trio.TaskStatus[ActorNode] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope:
            try:
                await node.run(task_status=task_status)
            except Exception as exc:
                self.history.record(
                    h.NodeEvent(
                        at=trio.current_time(),
                        what="died",
                        incarnation=incarnation,
                        detail=repr(exc)[:200],
                    )
                )
                if self.node is node:
                    self._crash_links()
                    self.node = None

    def _crash_links(self) -> None:
        for link in self.links:
            link.cut()
        self.links = []

    def _crash_node(self) -> bool:
        node = self.node
        if node is None:
            return False
        node.crash()
        self.node = None
        self._crash_links()
        self.history.record(
            h.NodeEvent(at=trio.current_time(), what="crashed", incarnation=self.incarnation)
        )
        return True

    # ------------------------------------------------------------------ network

    def _dial(self, name: str) -> Link:
        node = self.node
        if node is None:
            raise ConnectionRefusedError(f"{name}: no node listening")
        link = Link(name=name, on_fault=self._link_fault)
        armed = self._arm_next.pop(name, None)
        if armed is not None:
            link.arm(armed, after=self._fault_rng.randrange(0, 2))
        self.links = [lk for lk in self.links if lk.up]
        self.links.append(link)
        node.attach_stream(link.server)
        return link

    def _link_fault(self, kind: str, detail: str) -> None:
        self.history.record(h.FaultFired(at=trio.current_time(), kind=kind, detail=detail))

    # ------------------------------------------------------------------ running

    async def main(self) -> RunResult:
        started = time.process_time()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._start_node()
            self._make_devices(nursery)
            await self._setup()
            await self._chaos()
            if self.failed_at_step is None or not self.config.stop_on_failure:
                await self._heal()
            self.history.sealed = True
            nursery.cancel_scope.cancel()
        report = self.checker.report
        return RunResult(
            config=self.config,
            report=report,
            trace=self.trace,
            sessions=sum(d.sessions_opened for d in self.devices),
            virtual_s=trio.current_time(),
            wall_s=time.process_time() - started,
            steps_done=self.steps_done,
            failed_at_step=self.failed_at_step,
        )

    def _make_devices(self, nursery: trio.Nursery) -> None:
        """Every device; ``late_devices`` of them stay offline until a step of the chaos
        phase (then they connect to a long backlog)."""
        late = self.config.workload.late_devices
        total = len(self.users) * self.config.workload.devices
        rng = derive_rng(self.config.seed, "late-devices")
        late_at = {
            i: rng.randrange(self.config.workload.steps)
            for i in sorted(rng.sample(range(total), k=min(late, total - 1)))
        }
        for user in self.users:
            for d in range(self.config.workload.devices):
                device = SimDevice(
                    user=user,
                    device=f"d{d}",
                    rng=derive_rng(self.config.seed, f"client/{user}/d{d}"),
                    history=self.history,
                    dial=self._dial_for,
                    token_ttl_s=self.config.workload.token_ttl_s,
                    epoch_ms=EPOCH_MS,
                )
                step = late_at.get(len(self.devices))
                if step is not None:
                    device.set_wanted(False)
                    self._late[step] = [*self._late.get(step, []), device]
                self.devices.append(device)
                nursery.start_soon(device.run)

    def _dial_for(self, name: str) -> Link:
        link = self._dial(name)
        device = next(d for d in self.devices if d.name == name)
        number = device.session_no + 1
        user, dev = device.user, device.device

        def down(how: str) -> None:
            self.history.record(
                h.SessionClosed(
                    at=trio.current_time(), user=user, device=dev, session=number, how=how
                )
            )

        link.on_down = down
        return link

    def _truth(self) -> Truth:
        return self._truths.snapshot(self.store)

    def _check(self) -> bool:
        self._note_store_faults()
        report = self.checker.check_safety(self._truth())
        return report.ok

    def _note_store_faults(self) -> None:
        for kind, count in sorted(self.faults.fired.items()):
            before = self._store_fired.get(kind, 0)
            for _ in range(count - before):
                self.history.record(
                    h.FaultFired(
                        at=trio.current_time(), kind=f"store_{kind}", detail="fired in the Store"
                    )
                )
            self._store_fired[kind] = count

    async def _setup(self) -> None:
        rng = self._workload_rng
        await trio.sleep(0.5)
        for i, user in enumerate(self.users):
            peer = self.users[(i + 1) % len(self.users)]
            if peer != user:
                self._device_of(user).send(f"hello.{user}.{peer}", to=peer)
        if len(self.users) >= 3:
            founder = self._device_of(self.users[0])
            members = tuple(self.users[1:3])
            founder.group(
                f"group_create setup {list(members)}",
                lambda: founder.client.group_create("setup", members),
            )
        await trio.sleep(0.5 + rng.random())
        self._check()

    def _device_of(self, user: str) -> SimDevice:
        choices = [d for d in self.devices if d.user == user]
        return self._workload_rng.choice(choices)

    async def _chaos(self) -> None:
        workload = self.config.workload
        rng = self._workload_rng
        for step in range(workload.steps):
            for device in self._late.pop(step, ()):
                self.trace.add("world", f"{device.name} comes online for the first time")
                device.set_wanted(True)
            self._inject_faults()
            self._act(step)
            await trio.sleep(rng.expovariate(1 / workload.step_gap_s))
            self.steps_done = step + 1
            if not self._check() and self.failed_at_step is None:
                self.failed_at_step = step
                if self.config.stop_on_failure:
                    return

    async def _heal(self) -> None:
        self.trace.add("world", "heal: faults off, node up, every device back")
        self.faults.heal()
        if self.node is None:
            await self._start_node()
        for link in self.links:
            link.stall(False)
            link.latency = 0.0
            link.armed = None
        self._arm_next.clear()
        for device in self.devices:
            device.set_wanted(True)
        deadline = trio.current_time() + HEAL_S
        while trio.current_time() < deadline:
            await trio.sleep(0.5)
            if self._converged():
                break
        await trio.sleep(1.0)
        self._note_store_faults()
        self.checker.check_liveness(self._truth(), [(d.user, d.device) for d in self.devices])
        self.trace.add("world", f"healed after {trio.current_time():.3f} s")
        await self._presence_probe()
        self._check()

    async def _presence_probe(self) -> None:
        """G6 liveness: one user leaves; every contact's device must hear so after the grace."""
        truth = self._truth()
        user = self._workload_rng.choice(self.users)
        contacts = sorted(
            {
                other
                for conv in truth.convs.values()
                if conv.conv.is_member(user)
                for other in conv.conv.members
                if other != user
            }
        )
        observers = [d for d in self.devices if d.user in contacts]
        if not observers:
            return
        self.trace.add("world", f"presence probe: {user} leaves, {len(observers)} devices watch")
        for device in observers:
            device.presence_sub((user,))
        await trio.sleep(1.0)
        leaving = [d for d in self.devices if d.user == user]
        left_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            for device in leaving:
                nursery.start_soon(device.disconnect_clean)
        await trio.sleep(2.0)
        # G8: a message for the absent user must leave a notification job behind.
        sender = observers[0]
        sender.send(f"away.{user}.{sender.user}", to=user)
        await trio.sleep(GRACE_S)
        self.checker.check_offline_reported(user, left_at, [(d.user, d.device) for d in observers])
        self.checker.check_notifications(self._truth())
        for device in leaving:
            device.set_wanted(True)
        await trio.sleep(1.0)

    def _converged(self) -> bool:
        truth = self._truth()
        for device in self.devices:
            session = device.client.session
            if not device.synced or session.outbox:
                return False
            for conv_id, conv in truth.convs.items():
                for message in conv.messages:
                    if conv.visible_now(device.user, message.seq) and not session.holds(
                        conv_id, message.seq
                    ):
                        return False
        return True

    # ------------------------------------------------------------------ workload

    def _act(self, step: int) -> None:
        rng = self._workload_rng
        weights = self.config.workload.weights()
        kinds = list(weights)
        action = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        device = rng.choice(self.devices)
        truth = self._truth()
        mine = sorted(c for c, t in truth.convs.items() if t.conv.is_member(device.user))
        if action == "send":
            body = f"m{step}.{device.user}.{device.device}"
            others = [u for u in self.users if u != device.user]
            if mine and (not others or rng.random() < 0.7):
                device.send(body, conv=rng.choice(mine))
            elif others:
                device.send(body, to=rng.choice(others))
        elif action == "read" and mine:
            device.mark_read(rng.choice(mine))
        elif action == "history":
            every = sorted(truth.convs)
            if every:
                conv = rng.choice(mine) if mine and rng.random() < 0.8 else rng.choice(every)
                device.history(conv, rng.randint(1, 30))
        elif action == "presence":
            users = [u for u in self.users if u != device.user]
            if users:
                picked = rng.sample(users, k=rng.randint(1, len(users)))
                device.presence_sub(tuple(sorted(picked)))
        elif action == "group":
            self._group_action(device, truth, step)
        elif action == "typing" and mine:
            device.typing(rng.choice(mine))
        elif action == "garbage":
            device.send_raw(rng.choice(GARBAGE))
        elif action == "departed":
            self._departed_action(truth, step)

    def _departed_action(self, truth: Truth, step: int) -> None:
        """A member a group removed (or who left) keeps acting on it, as a buggy or hostile
        client would: every such request must be refused or clamped, and tell nobody."""
        rng = self._workload_rng
        ghosts = [
            (device, conv_id)
            for conv_id, conv in truth.convs.items()
            for device in self.devices
            if conv.departed_at(device.user) is not None
        ]
        if not ghosts:
            return
        device, conv_id = rng.choice(ghosts)
        conv = truth.convs[conv_id]
        last = conv.last_seq
        # A recv/read past the removal, but never one claiming messages the device lacks:
        # the node rightly pushes nothing below a device's recv (G4), so such a lie would
        # only hide messages from the liveness check.
        holds = device.client.session.conversation(conv_id).watermark
        truthful = (holds or 0) >= (conv.departed_at(device.user) or 0)
        roll = rng.random()
        if roll < 0.25 or (roll < 0.5 and not truthful):
            device.typing(conv_id)
        elif roll < 0.5:
            kind = rng.choice(("recv", "read"))
            device.send_frame({"type": kind, "conv": conv_id, "seq": last + rng.randint(0, 2)})
        elif roll < 0.65:
            device.history(conv_id, rng.randint(1, 30))
        elif roll < 0.8:
            device.send(f"m{step}.{device.user}.{device.device}", conv=conv_id)
        else:
            client = device.client
            other = rng.choice(self.users)
            if rng.random() < 0.5:
                device.group(
                    f"group_add {conv_id} {other} (departed)",
                    lambda: client.group_add(conv_id, other),
                )
            else:
                device.group(
                    f"group_leave {conv_id} (departed)", lambda: client.group_leave(conv_id)
                )

    def _group_action(self, device: SimDevice, truth: Truth, step: int) -> None:
        rng = self._workload_rng
        groups = sorted(
            c
            for c, t in truth.convs.items()
            if t.conv.kind == "group" and t.conv.is_member(device.user)
        )
        others = [u for u in self.users if u != device.user]
        roll = rng.random()
        if not groups or roll < 0.2:
            members = tuple(sorted(rng.sample(others, k=min(len(others), rng.randint(1, 3)))))
            client = device.client
            device.group(
                f"group_create g{step} {list(members)}",
                lambda: client.group_create(f"g{step}", members),
            )
            return
        conv_id = rng.choice(groups)
        conv = truth.convs[conv_id].conv
        outsiders = [u for u in others if not conv.is_member(u)]
        rejoining = [u for u in outsiders if truth.convs[conv_id].departed_at(u) is not None]
        if rejoining and rng.random() < 0.5:
            outsiders = rejoining  # users come back to groups they left or were removed from
        insiders = [u for u in others if conv.is_member(u)]
        client = device.client
        if roll < 0.55 and outsiders:
            user = rng.choice(outsiders)
            device.group(f"group_add {conv_id} {user}", lambda: client.group_add(conv_id, user))
        elif roll < 0.85 and insiders:
            user = rng.choice(insiders)
            device.group(
                f"group_remove {conv_id} {user}", lambda: client.group_remove(conv_id, user)
            )
        else:
            device.group(f"group_leave {conv_id}", lambda: client.group_leave(conv_id))

    # ------------------------------------------------------------------ faults

    def _inject_faults(self) -> None:
        """Before a step: each kind of the plan fires with its rate (one RNG draw per kind)."""
        plan = self.config.plan
        rng = self._fault_rng
        for kind in FAULT_KINDS:
            rate = plan.rate(kind)
            if rate <= 0 or rng.random() >= rate:
                continue
            self._inject(kind, rng)

    def _fired(self, kind: str, detail: str) -> None:
        self.history.record(h.FaultFired(at=trio.current_time(), kind=kind, detail=detail))

    def _connected(self) -> list[SimDevice]:
        return [d for d in self.devices if d.connected]

    def _inject(self, kind: str, rng: random.Random) -> None:
        assert self._nursery is not None
        connected = self._connected()
        device = rng.choice(connected) if connected else None
        if kind == "abrupt_disconnect" and device is not None and device.link is not None:
            device.link.cut()
            self._fired(kind, device.name)
        elif kind == "clean_disconnect" and device is not None:
            away = rng.choice((rng.uniform(0.1, 2.0), rng.uniform(GRACE_S + 0.5, 8.0)))
            self._nursery.start_soon(self._away, device, away)
        elif kind == "lost_ack" and device is not None and device.link is not None:
            device.link.arm(Arm.BEFORE_ACK)
            device.send(
                f"la{self.steps_done}.{device.user}.{device.device}", to=self._other(device)
            )
        elif kind == "cut_during_sync" and device is not None and device.link is not None:
            self._arm_next[device.name] = Arm.DURING_SYNC
            device.link.cut()
            self._fired("abrupt_disconnect", f"{device.name} (to reconnect into a cut sync)")
        elif kind == "mid_frame" and device is not None and device.link is not None:
            device.link.arm(Arm.MID_FRAME, prefix=rng.randint(1, 40))
        elif kind == "node_crash" and self._crash_node():
            self._fired(kind, f"node #{self.incarnation}")
            self._nursery.start_soon(self._restart_after, rng.uniform(0.2, 3.0))
        elif kind == "store_fail":
            self.faults.fail_next(rng.randint(1, 3))
        elif kind == "store_ambiguous":
            self.faults.ambiguous_next(1)
        elif kind == "slow_store" and self.faults.latency == 0:
            latency = rng.uniform(0.01, 0.3)
            self.faults.latency = latency
            self._fired(kind, f"{latency * 1000:.0f} ms per operation")
            self._nursery.start_soon(self._store_recovers, rng.uniform(1.0, 6.0))
        elif kind == "stalled_client" and device is not None and device.link is not None:
            duration = rng.uniform(0.5, 25.0)
            device.link.stall(True)
            self._fired(kind, f"{device.name} for {duration:.1f} s")
            self._nursery.start_soon(self._unstall, device.link, duration)
        elif kind == "slow_link" and device is not None and device.link is not None:
            device.link.latency = rng.uniform(0.02, 0.5)
            self._fired(kind, f"{device.name} {device.link.latency * 1000:.0f} ms per write")

    def _other(self, device: SimDevice) -> str:
        others = [u for u in self.users if u != device.user]
        return self._workload_rng.choice(others) if others else device.user

    async def _away(self, device: SimDevice, seconds: float) -> None:
        if device.link is not None and device.link.up:
            self._fired("clean_disconnect", f"{device.name} away {seconds:.1f} s")
        absence = await device.disconnect_clean()
        await trio.sleep(seconds)
        device.come_back(absence)

    async def _restart_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        if self.node is None:
            await self._start_node()

    async def _store_recovers(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.faults.latency = 0.0

    async def _unstall(self, link: Link, seconds: float) -> None:
        await trio.sleep(seconds)
        link.stall(False)


def simulate(config: RunConfig) -> RunResult:
    """Run one simulation, deterministically in ``config.seed``.

    The node's own log lines (store errors it retries, connections it drops) are expected
    under faults and would drown the report, so the ``actors`` logger is muted meanwhile.
    """
    world = World(config)
    node_log = logging.getLogger("actors")
    level = node_log.level
    node_log.setLevel(logging.CRITICAL)
    try:
        return run_deterministic(world.main, config.seed)
    finally:
        node_log.setLevel(level)
