"""One benchmark device: the SDK's :class:`client.Client` on a TCP connection of our choosing.

The benchmark speaks the protocol through the project's one client state machine
(:class:`protocol.ClientSession`, driven by the SDK: outbox, resend with the same ``cmid``
after a reconnect, retry of ``nack``s marked ``retry``, cumulative ``recv`` batched every
``recv_delay_s``, keep-alive by WebSocket ping). What it adds is only measurement: each
session event is handed, with the time it was seen, to the owner's :class:`DeviceHooks`;
pushes of a (conv, seq) the session already held are read from
:attr:`protocol.ClientSession.duplicates`.

Connections are opened from ``local_address`` when given (each load-generator process binds
its own 127.0.0.x, so 50,000 connections do not exhaust one address's ephemeral ports).

Ownership: a :class:`Device` belongs to the worker that created it; :meth:`Device.run` owns
the client and its event consumer, and the hooks run inside that consumer, synchronously, so
they must not block. Cancelling :meth:`Device.run` closes the connection.
"""

from __future__ import annotations

import time
from typing import Protocol

import attrs
import trio

from client import Client, ClientEvent, stream_transport
from protocol import ClientState, StateChanged

from ._node import ws_host_port


class DeviceHooks(Protocol):
    """What a worker learns from its devices (called in the device's task; never block)."""

    def on_event(self, device: Device, event: ClientEvent, now_ns: int) -> None: ...


@attrs.define(eq=False)
class Device:
    """One user's one device (see the module docstring)."""

    index: int
    user: str
    token: str
    url: str
    local_address: str | None = None
    recv_delay_s: float = 0.05
    #: Seconds from the first TCP connect to the first ``synced`` (None until then).
    handshake_s: float | None = None
    #: ``welcome.node`` when the node names itself, else the URL dialled.
    node: str = ""
    #: Sessions opened (``welcome``s); reconnects are ``opens - 1``.
    opens: int = 0
    client: Client | None = None

    @property
    def duplicates(self) -> int:
        """Pushes dropped by the session as already held."""
        return 0 if self.client is None else self.client.session.duplicates

    async def run(
        self, hooks: DeviceHooks, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect (and reconnect, as the SDK does) until cancelled; ``started()`` after the
        first ``synced``."""
        host, port, resource = ws_host_port(self.url)
        began = time.monotonic()

        async def open_stream() -> trio.SocketStream:
            return await trio.open_tcp_stream(host, port, local_address=self.local_address)

        client = Client(
            token=self.token,
            device="bench",
            transport=stream_transport(open_stream, host=host, resource=resource),
            recv_delay_s=self.recv_delay_s,
        )
        self.node = self.url
        async with client, trio.open_nursery() as nursery:
            self.client = client
            nursery.start_soon(self._consume, client, hooks)
            await client.wait_synced()
            self.handshake_s = time.monotonic() - began
            task_status.started()

    async def _consume(self, client: Client, hooks: DeviceHooks) -> None:
        async for event in client.events():
            if isinstance(event, StateChanged) and event.state is ClientState.OPEN:
                self.opens += 1
                node = getattr(event.welcome, "node", None)
                if isinstance(node, str) and node:
                    self.node = node
            hooks.on_event(self, event, time.monotonic_ns())
