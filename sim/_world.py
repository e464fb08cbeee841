"""The simulated world: real chat nodes, the MemoryStore, devices, faults and the checker.

One :func:`simulate` call is one run: it builds the world from a :class:`RunConfig`, runs
it inside one deterministic ``trio.run`` (see :mod:`sim._determinism`) and returns a
:class:`RunResult` with the checker's report and the trace.

Wiring. ``config.nodes`` real ``actors.Node`` instances (:mod:`sim._nodes`) share one
``persistence.MemoryStore`` and its change feed, each behind its own fault dial
(:class:`~sim._store.FaultyStore`), with a seeded ``random.Random``, a ``wall_ms`` derived
from virtual time and a ``NodeConfig`` carrying the mutants. A device dials a
:class:`~sim._network.Link` to a live node; the node gets the server end through
``Node.attach_stream`` (its real HTTP/WebSocket gateway), the device runs trio-websocket's
client on the other end. Workload actions are :mod:`sim._actions`, faults :mod:`sim._inject`.

Phases. Setup (everyone connects, a first message per user), chaos (``steps`` workload
actions with faults; safety is checked after every step), heal (faults off, every node up,
every device back; liveness is checked when the world has converged or after ``HEAL_S``),
presence probe.
"""

from __future__ import annotations

import logging
import time

import attrs
import trio

from persistence import Store
from persistence._memory import MemoryStore

from . import _history as h
from ._actions import Actions
from ._checker import Checker, Report
from ._determinism import derive_rng, run_deterministic
from ._device import SimDevice
from ._faults import FaultPlan
from ._inject import Injector
from ._network import Link
from ._nodes import GRACE_S, LEASE_REFRESH_S, Cluster
from ._store import EarlyHistoryStore, ForgetfulStore
from ._trace import Trace
from ._truth import Truth, TruthCache
from ._workload import Workload

#: Wall clock of virtual time 0, in ms since the epoch (2026-01-01T00:00:00Z).
EPOCH_MS = 1_767_225_600_000
#: Virtual seconds the healed phase may take before missing messages count as lost.
HEAL_S = 60.0


@attrs.frozen(kw_only=True)
class RunConfig:
    """Everything that determines a run: the seed, the workload, the faults, the mutants."""

    seed: int
    workload: Workload
    plan: FaultPlan
    mutants: frozenset[str] = frozenset()
    #: Chat nodes sharing the Store (1-3).
    nodes: int = attrs.field(default=1, validator=[attrs.validators.ge(1), attrs.validators.le(3)])
    #: Stop the chaos phase at the first violated step (replays stay short); tests that count
    #: fired faults run to the end instead.
    stop_on_failure: bool = True

    def describe(self) -> str:
        mutants = ",".join(sorted(self.mutants)) or "none"
        return (
            f"seed {self.seed}: {self.workload.describe()}, {self.nodes} node(s)\n"
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


class World:
    """See the module docstring; one instance per run, used from inside ``trio.run``."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        seed = config.seed
        self.trace = Trace()
        self.history = h.History(self.trace)
        self.checker = Checker(history=self.history, grace_s=GRACE_S, epoch_ms=EPOCH_MS)
        #: The shared Store; the checker reads it directly, the nodes through their dials.
        self.store = MemoryStore(rng=derive_rng(seed, "store"))
        self.cluster = Cluster(
            seed=seed,
            nodes=config.nodes,
            mutants=config.mutants,
            store=self._mutated(self.store),
            history=self.history,
            wall_ms=self._wall_ms,
        )
        self._workload_rng = derive_rng(seed, "workload")
        self.injector = Injector(self, derive_rng(seed, "faults"))
        self._store_fired: dict[str, int] = {}
        self.users = [f"u{i}" for i in range(config.workload.users)]
        self.devices: list[SimDevice] = []
        self.actions = Actions(config.workload, self._workload_rng, self.users, self.devices)
        self.nursery: trio.Nursery | None = None
        self.failed_at_step: int | None = None
        self.steps_done = 0
        self._truths = TruthCache()
        #: chaos step -> devices that come online for the first time then
        self._late: dict[int, list[SimDevice]] = {}

    def _mutated(self, store: MemoryStore) -> Store:
        mutated: Store = store
        if "no_cmid_dedupe" in self.config.mutants:
            mutated = ForgetfulStore(mutated, derive_rng(self.config.seed, "cmids")).as_store()
        if "history_before_join" in self.config.mutants:
            mutated = EarlyHistoryStore(mutated).as_store()
        return mutated

    def _wall_ms(self) -> int:
        return EPOCH_MS + int(trio.current_time() * 1000)

    # ------------------------------------------------------------------ network

    def _dial(self, name: str) -> Link:
        link = Link(name=name, on_fault=self._link_fault)
        self.cluster.dial(link)
        self.injector.armed_for(name, link)
        return link

    def _link_fault(self, kind: str, detail: str) -> None:
        self.history.record(h.FaultFired(at=trio.current_time(), kind=kind, detail=detail))

    # ------------------------------------------------------------------ running

    async def main(self) -> RunResult:
        started = time.process_time()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.cluster.bind(nursery)
            for slot in self.cluster.slots:
                await self.cluster.start(slot)
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
        for kind, count in sorted(self.cluster.fired().items()):
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
            self.injector.before_step()
            self.actions.act(step, self._truth())
            await trio.sleep(rng.expovariate(1 / workload.step_gap_s))
            self.steps_done = step + 1
            if not self._check() and self.failed_at_step is None:
                self.failed_at_step = step
                if self.config.stop_on_failure:
                    return

    async def _heal(self) -> None:
        self.trace.add("world", "heal: faults off, every node up, every device back")
        self.injector.heal()
        for slot in self.cluster.slots:
            if slot.node is None:
                await self.cluster.start(slot)
            for link in slot.links:
                link.stall(False)
                link.latency = 0.0
                link.armed = None
        for device in self.devices:
            device.set_wanted(True)
        if self.cluster.several:
            # A node declared dead while alive learns so at its next lease renewal.
            await trio.sleep(2 * LEASE_REFRESH_S)
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

    def other(self, device: SimDevice) -> str:
        """Another user than ``device``'s, drawn from the workload RNG."""
        others = [u for u in self.users if u != device.user]
        return self._workload_rng.choice(others) if others else device.user


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
