"""Fault injection: before each chaos step, every kind of the run's plan fires with its rate.

:class:`Injector` makes each kind of :data:`~sim._faults.FAULT_KINDS` happen -- on a device's
link, on a node, on a node's store dial or on the shared Store -- and records a
:class:`~sim._history.FaultFired` only when it really did (faults that trigger later, like
an armed reset, record from where they trigger). With one node the cluster kinds
(:data:`~sim._faults.CLUSTER_FAULTS`) are skipped without an RNG draw, so a one-node run is
the run it always was.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import trio

from . import _history as h
from ._device import SimDevice
from ._faults import CLUSTER_FAULTS, FAULT_KINDS
from ._network import Arm, Link
from ._nodes import GRACE_S, LEASE_S, NodeSlot

if TYPE_CHECKING:
    from ._world import World


class Injector:
    """The fault side of a :class:`~sim._world.World` (one per run)."""

    def __init__(self, world: World, rng: random.Random) -> None:
        self._world = world
        self._rng = rng
        #: device name -> the cut armed for its next connection (``cut_during_sync``)
        self.arm_next: dict[str, Arm] = {}

    def before_step(self) -> None:
        """Each kind of the plan fires with its rate (one RNG draw per kind)."""
        world = self._world
        plan = world.config.plan
        several = world.cluster.several
        for kind in FAULT_KINDS:
            rate = plan.rate(kind)
            if rate <= 0 or (kind in CLUSTER_FAULTS and not several):
                continue
            if self._rng.random() >= rate:
                continue
            self._inject(kind, self._rng)

    def heal(self) -> None:
        """Every fault off: the nodes' dials, armed cuts."""
        cluster = self._world.cluster
        for slot in cluster.slots:
            if slot.faults.cut or slot.faults.feed_stalled:
                cluster.note_lag(slot, False)
        cluster.heal()
        self.arm_next.clear()

    def armed_for(self, name: str, link: Link) -> None:
        armed = self.arm_next.pop(name, None)
        if armed is not None:
            link.arm(armed, after=self._rng.randrange(0, 2))

    def _fired(self, kind: str, detail: str) -> None:
        self._world.history.record(h.FaultFired(at=trio.current_time(), kind=kind, detail=detail))

    def _start(self, work: object, *args: object) -> None:
        nursery = self._world.nursery
        assert nursery is not None
        nursery.start_soon(work, *args)  # type: ignore[arg-type]

    def _inject(self, kind: str, rng: random.Random) -> None:
        world = self._world
        connected = [d for d in world.devices if d.connected]
        device = rng.choice(connected) if connected else None
        link = device.link if device is not None else None
        if kind in CLUSTER_FAULTS or kind == "node_crash":
            self._node_fault(kind, rng)
        elif kind in ("store_fail", "store_ambiguous", "slow_store"):
            self._store_fault(kind, rng)
        elif device is None or link is None:
            if kind == "clean_disconnect" and device is not None:
                self._away_soon(device, rng)
        else:
            self._link_fault(kind, device, link, rng)

    def _link_fault(self, kind: str, device: SimDevice, link: Link, rng: random.Random) -> None:
        if kind == "abrupt_disconnect":
            link.cut()
            self._fired(kind, device.name)
        elif kind == "clean_disconnect":
            self._away_soon(device, rng)
        elif kind == "lost_ack":
            link.arm(Arm.BEFORE_ACK)
            world = self._world
            device.send(
                f"la{world.steps_done}.{device.user}.{device.device}", to=world.other(device)
            )
        elif kind == "cut_during_sync":
            self.arm_next[device.name] = Arm.DURING_SYNC
            link.cut()
            self._fired("abrupt_disconnect", f"{device.name} (to reconnect into a cut sync)")
        elif kind == "mid_frame":
            link.arm(Arm.MID_FRAME, prefix=rng.randint(1, 40))
        elif kind == "stalled_client":
            duration = rng.uniform(0.5, 25.0)
            link.stall(True)
            self._fired(kind, f"{device.name} for {duration:.1f} s")
            self._start(self._unstall, link, duration)
        elif kind == "slow_link":
            link.latency = rng.uniform(0.02, 0.5)
            self._fired(kind, f"{device.name} {link.latency * 1000:.0f} ms per write")

    def _away_soon(self, device: SimDevice, rng: random.Random) -> None:
        away = rng.choice((rng.uniform(0.1, 2.0), rng.uniform(GRACE_S + 0.5, 8.0)))
        self._start(self._away, device, away)

    def _store_fault(self, kind: str, rng: random.Random) -> None:
        cluster = self._world.cluster
        slot = cluster.pick(rng)
        assert slot is not None
        faults = slot.faults
        if kind == "store_fail":
            faults.fail_next(rng.randint(1, 3))
        elif kind == "store_ambiguous":
            faults.ambiguous_next(1)
        elif kind == "slow_store" and faults.latency == 0:
            latency = rng.uniform(0.01, 0.3)
            faults.latency = latency
            where = f" for {slot.label}" if cluster.several else ""
            self._fired(kind, f"{latency * 1000:.0f} ms per operation{where}")
            self._start(self._store_recovers, slot, rng.uniform(1.0, 6.0))

    def _node_fault(self, kind: str, rng: random.Random) -> None:
        world = self._world
        cluster = world.cluster
        slot = cluster.pick(rng, cluster.live())
        if kind == "feed_history_lost":
            world.store.drop_feed_history()
            self._fired(kind, "the Store forgot its change feed's history")
        elif slot is None:
            return
        elif kind == "node_crash" and cluster.crash(slot):
            self._fired(kind, f"node {slot.name}")
            self._start(self._restart_after, slot, rng.uniform(0.2, 3.0))
        elif kind == "store_cutoff" and not slot.faults.cut:
            hang = rng.random() < 0.5
            seconds = rng.uniform(0.5, 2 * LEASE_S)
            slot.faults.cut_off(hang)
            self._world.cluster.note_lag(slot, True)
            how = "hang" if hang else "fail"
            self._fired(kind, f"{slot.name} cut off from the store for {seconds:.1f} s ({how})")
            self._start(self._reconnect_after, slot, seconds)
        elif kind == "feed_stall" and not slot.faults.feed_stalled:
            seconds = rng.uniform(0.5, 8.0)
            slot.faults.stall_feed(True)
            self._world.cluster.note_lag(slot, True)
            self._fired(kind, f"{slot.name}'s change feed stalls for {seconds:.1f} s")
            self._start(self._resume_feed_after, slot, seconds)
        elif kind == "feed_cursor_lost":
            slot.faults.drop_cursor()
            self._fired(kind, f"{slot.name}'s change feed cursor is lost")
        elif kind == "lease_lost" and not slot.faults.lease_lost:
            seconds = rng.uniform(LEASE_S + 1.0, LEASE_S + 5.0)
            slot.faults.lose_lease(True)
            self._fired(kind, f"{slot.name}'s lease renewals fail for {seconds:.1f} s")
            self._start(self._lease_back_after, slot, seconds)

    # ------------------------------------------------------------------ timers

    async def _away(self, device: SimDevice, seconds: float) -> None:
        if device.link is not None and device.link.up:
            self._fired("clean_disconnect", f"{device.name} away {seconds:.1f} s")
        absence = await device.disconnect_clean()
        await trio.sleep(seconds)
        device.come_back(absence)

    async def _restart_after(self, slot: NodeSlot, seconds: float) -> None:
        await trio.sleep(seconds)
        if slot.node is None:
            await self._world.cluster.start(slot)

    async def _store_recovers(self, slot: NodeSlot, seconds: float) -> None:
        await trio.sleep(seconds)
        slot.faults.latency = 0.0

    async def _reconnect_after(self, slot: NodeSlot, seconds: float) -> None:
        await trio.sleep(seconds)
        if slot.faults.cut:
            slot.faults.reconnect()
            self._world.cluster.note_lag(slot, False)

    async def _resume_feed_after(self, slot: NodeSlot, seconds: float) -> None:
        await trio.sleep(seconds)
        if slot.faults.feed_stalled:
            slot.faults.stall_feed(False)
            self._world.cluster.note_lag(slot, False)

    async def _lease_back_after(self, slot: NodeSlot, seconds: float) -> None:
        await trio.sleep(seconds)
        slot.faults.lose_lease(False)

    async def _unstall(self, link: Link, seconds: float) -> None:
        await trio.sleep(seconds)
        link.stall(False)
