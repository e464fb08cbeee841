"""Workloads: how many users and devices, how long, and the mix of traffic -- plain data.

A :class:`Workload` says what the simulated people do; the world turns it into actions with
its seeded ``workload`` RNG. Weights are relative (an action's chance per step is its weight
over the sum).
"""

from __future__ import annotations

import random

import attrs


def _positive(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value}")


@attrs.frozen(kw_only=True)
class Workload:
    """Users ``u0..``, each with devices ``d0..``, doing ``steps`` actions in the chaos phase."""

    users: int = attrs.field(default=4, validator=_positive)
    devices: int = attrs.field(default=2, validator=_positive)
    steps: int = attrs.field(default=120, validator=_positive)
    #: Mean virtual seconds between two steps (exponentially distributed).
    step_gap_s: float = 0.25
    send: float = 8.0
    read: float = 1.5
    history: float = 1.0
    presence: float = 1.0
    group: float = 1.0
    typing: float = 0.5
    #: Malformed or forbidden frames written past the client session (G9).
    garbage: float = 0.3
    #: A departed member keeps acting on the group (typing, recv/read past the removal,
    #: history, sends, group operations): well-formed, forbidden (G7, Visibility).
    departed: float = 0.5
    #: Devices that stay offline at first and join during the chaos phase (long backlogs).
    late_devices: int = attrs.field(default=0)
    #: Access tokens last this long (virtual s) and are refreshed by the SDK's provider
    #: after the node ends a session at its token's expiry (4401); None: never expire.
    token_ttl_s: float | None = None

    @classmethod
    def swarm(cls, rng: random.Random, *, users: int, devices: int, steps: int) -> Workload:
        """A traffic mix drawn from ``rng`` (sizes given): some runs chatty, some group-heavy."""
        return cls(
            users=users,
            devices=devices,
            steps=steps,
            step_gap_s=round(rng.choice((0.05, 0.25, 0.6)), 2),
            send=round(rng.uniform(3, 10), 2),
            read=round(rng.uniform(0, 3), 2),
            history=round(rng.uniform(0, 2), 2),
            presence=round(rng.uniform(0, 2), 2),
            group=round(rng.uniform(0, 2.5), 2),
            typing=round(rng.uniform(0, 1), 2),
            garbage=round(rng.uniform(0, 1), 2),
            departed=round(rng.uniform(0, 2), 2),
            late_devices=rng.choice((0, 0, 1, 2)),
            token_ttl_s=rng.choice((None, None, 8.0, 30.0)),
        )

    def weights(self) -> dict[str, float]:
        return {
            "send": self.send,
            "read": self.read,
            "history": self.history,
            "presence": self.presence,
            "group": self.group,
            "typing": self.typing,
            "garbage": self.garbage,
            "departed": self.departed,
        }

    def describe(self) -> str:
        mix = " ".join(f"{k}={v:g}" for k, v in self.weights().items())
        return (
            f"{self.users} users x {self.devices} devices, {self.steps} steps, "
            f"gap {self.step_gap_s:g} s, mix {mix}, late devices {self.late_devices}, "
            f"token ttl {self.token_ttl_s if self.token_ttl_s is not None else 'none'}"
        )
