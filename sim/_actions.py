"""The workload's actions: what the simulated people do in each step of the chaos phase.

:class:`Actions` turns a step into one action on one device, drawn from the workload's
weights with the run's ``workload`` RNG: sends (to a conversation or ``to`` a user), reads,
history, presence subscriptions, group operations (half the adds bring back a user the group
removed or who left), typing, :data:`GARBAGE` frames written past the SDK (G9), and a
departed member acting on the group it left (well-formed, forbidden: G7, Visibility).
"""

from __future__ import annotations

import random

from ._device import SimDevice
from ._truth import Truth
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


class Actions:
    """Draws and performs workload actions on ``devices`` (see the module docstring)."""

    def __init__(
        self,
        workload: Workload,
        rng: random.Random,
        users: list[str],
        devices: list[SimDevice],
    ) -> None:
        self._workload = workload
        self._rng = rng
        self.users = users
        self.devices = devices

    def act(self, step: int, truth: Truth) -> None:
        """One chaos step's action, chosen by the workload's weights."""
        rng = self._rng
        weights = self._workload.weights()
        kinds = list(weights)
        action = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        device = rng.choice(self.devices)
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
        rng = self._rng
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
        rng = self._rng
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
