"""The virtual network: in-memory byte streams between simulated devices and the node.

A :class:`Link` is one TCP-like connection: two :class:`SimStream` ends (``client`` and
``server``) joined by two one-way pipes. The real WebSocket layer runs on top of it
(trio-websocket on both ends), so every frame crosses the wire as bytes and every fault
below hits the WebSocket and session code exactly where a real network would:

* :meth:`Link.cut` -- an abrupt reset: bytes in flight are lost, both readers see EOF without
  a close frame (trio-websocket reports 1006), later writes raise ``BrokenResourceError``;
* :meth:`Link.arm` -- cut at a precise moment: before the next ``ack`` reaches the client
  (the send is stored, its ack is lost), in the middle of the post-``welcome`` sync, or in
  the middle of a WebSocket frame (a prefix of the bytes is delivered, then the reset);
* :meth:`Link.stall` -- the client stops reading for a while (the node's writes pile up);
* ``latency`` -- every write takes that long (virtual seconds) to be accepted.

Nothing here reads a clock or a global RNG; the fault injector decides with its own RNG.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable

import attrs
import trio


class Arm(enum.Enum):
    """A cut that waits for a moment on the wire (see :meth:`Link.arm`)."""

    BEFORE_ACK = "lost_ack"
    DURING_SYNC = "cut_during_sync"
    MID_FRAME = "mid_frame"


@attrs.define(eq=False)
class _Pipe:
    """One direction of a link: bytes written at one end, read at the other."""

    buffer: bytearray = attrs.Factory(bytearray)
    eof: bool = False
    stalled: bool = False
    lot: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.buffer += data
        self.lot.unpark_all()

    def close(self) -> None:
        self.eof = True
        self.lot.unpark_all()

    async def read(self, max_bytes: int | None) -> bytes:
        while self.stalled or (not self.buffer and not self.eof):
            await self.lot.park()
        await trio.lowlevel.checkpoint()
        if not self.buffer:
            return b""
        size = len(self.buffer) if max_bytes is None else max_bytes
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


class SimStream(trio.abc.Stream):
    """One end of a :class:`Link` (``role`` is ``client`` or ``server``)."""

    def __init__(self, link: Link, role: str, inbound: _Pipe, outbound: _Pipe) -> None:
        self._link = link
        self._role = role
        self._inbound = inbound
        self._outbound = outbound
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this end of the link is closed")
        # The writer wrote now; the latency is the network's, not the writer's.
        written_at = trio.current_time()
        if self._link.latency > 0:
            await trio.sleep(self._link.latency)
        else:
            await trio.lowlevel.checkpoint()
        if self._link.is_cut or self._outbound.eof:
            raise trio.BrokenResourceError("connection reset")
        self._link._on_write(self._role, bytes(data), self._outbound, written_at)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("this end of the link is closed")
        return await self._inbound.read(max_bytes)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbound.close()
            self._link._on_close(self._role)
        await trio.lowlevel.checkpoint()


FaultCallback = Callable[[str, str], None]

#: First byte of a final WebSocket close frame (FIN bit + opcode 8); masking leaves it alone.
_CLOSE_FRAME = b"\x88"
#: First byte of a final, unfragmented text frame (the node never fragments).
_TEXT_FRAME = 0x81


def _text_frames(data: bytes) -> int:
    """How many text frames start in ``data``, a run of whole unmasked server frames."""
    count, at = 0, 0
    while at + 2 <= len(data):
        length, header = data[at + 1] & 0x7F, 2
        if length == 126:
            length, header = int.from_bytes(data[at + 2 : at + 4], "big"), 4
        elif length == 127:
            length, header = int.from_bytes(data[at + 2 : at + 10], "big"), 10
        if data[at + 1] & 0x80:
            header += 4  # a masking key (never from the node, but parse it right)
        count += data[at] == _TEXT_FRAME
        at += header + length
    return count


@attrs.define(eq=False)
class Link:
    """One connection between a device and the node; see the module docstring.

    ``on_fault(kind, detail)`` is told whenever an armed cut actually happens, so the history
    records only faults that fired. ``closed_by`` says which end closed first (``client``,
    ``server``) or ``cut`` for a reset; ``None`` while the link is up.
    """

    name: str
    on_fault: FaultCallback
    #: The node this connection was dialed to.
    node: str = ""
    #: Told once, with ``client``, ``server`` or ``cut``, when the connection starts going
    #: down: a close frame or a stream close from either end, or a reset.
    on_down: Callable[[str], None] | None = None
    latency: float = 0.0
    is_cut: bool = False
    closed_by: str | None = None
    armed: Arm | None = None
    #: For MID_FRAME: how many bytes of the frame get through (at least 1, less than all).
    arm_prefix: int = 1
    #: For DURING_SYNC: how many server writes after ``welcome`` pass before the cut.
    arm_after: int = 0
    _in_sync: bool = False
    #: When the node wrote each text frame still to be read by the client, oldest first:
    #: the client learns when a frame was *sent*, which a stalled reader cannot tell.
    server_texts: collections.deque[float] = attrs.Factory(collections.deque)
    _c2s: _Pipe = attrs.Factory(_Pipe)
    _s2c: _Pipe = attrs.Factory(_Pipe)
    client: SimStream = attrs.field(init=False)
    server: SimStream = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.client = SimStream(self, "client", inbound=self._s2c, outbound=self._c2s)
        self.server = SimStream(self, "server", inbound=self._c2s, outbound=self._s2c)

    # ------------------------------------------------------------------ faults

    def cut(self) -> None:
        """Reset the connection now: in-flight bytes are lost, both readers see EOF."""
        if self.is_cut:
            return
        self.is_cut = True
        self._going_down("cut")
        for pipe in (self._c2s, self._s2c):
            pipe.buffer.clear()
            pipe.stalled = False
            pipe.close()

    def arm(self, kind: Arm, *, prefix: int = 1, after: int = 0) -> None:
        """Cut at the next moment of ``kind`` on the wire (replaces any armed cut)."""
        self.armed, self.arm_prefix, self.arm_after = kind, max(1, prefix), after

    def stall(self, stalled: bool) -> None:
        """Make the client stop (``True``) or resume (``False``) reading from the node."""
        self._s2c.stalled = stalled and not self.is_cut
        self._s2c.lot.unpark_all()

    @property
    def up(self) -> bool:
        """Neither end closed and not cut."""
        return self.closed_by is None

    # ------------------------------------------------------------------ internals

    def _going_down(self, how: str) -> None:
        if self.closed_by is None:
            self.closed_by = how
            if self.on_down is not None:
                self.on_down(how)

    def _on_close(self, role: str) -> None:
        self._going_down(role)

    def _on_write(self, role: str, data: bytes, pipe: _Pipe, written_at: float) -> None:
        if data[:1] == _CLOSE_FRAME:
            # The session ends for the writer now, even if the close handshake takes a while.
            self._going_down(role)
        armed = self.armed
        if armed is Arm.MID_FRAME and len(data) >= 2:
            cut_at = min(self.arm_prefix, len(data) - 1)
            if role == "server":
                self.server_texts.extend([written_at] * _text_frames(data[:cut_at]))
            pipe.write(data[:cut_at])
            self._fire(armed, f"{self.name} {role} frame cut after {cut_at}/{len(data)} bytes")
            return
        if role == "server":
            if armed is Arm.BEFORE_ACK and b'"type":"ack"' in data:
                self._fire(armed, f"{self.name} ack dropped, connection reset")
                return
            if b'"type":"welcome"' in data:
                self._in_sync = True
            elif armed is Arm.DURING_SYNC and self._in_sync:
                # Reset after ``arm_after`` pushes of the sync, or at the latest instead of
                # ``synced`` (a sync with nothing to push is still cut before it completes).
                if self.arm_after <= 0 or b'"type":"synced"' in data:
                    self._fire(armed, f"{self.name} reset during sync")
                    return
                self.arm_after -= 1
            elif b'"type":"synced"' in data:
                self._in_sync = False
        if role == "server":
            # One timestamp per text frame: the node writes a batch of frames with one write.
            self.server_texts.extend([written_at] * _text_frames(data))
        pipe.write(data)

    def sent_at(self) -> float:
        """When the node wrote the text frame the client is reading now (the start of its
        write: a slow link delays the frame's arrival, not the node's decision to send it)."""
        return self.server_texts.popleft() if self.server_texts else trio.current_time()

    def _fire(self, armed: Arm, detail: str) -> None:
        self.armed = None
        self.on_fault(armed.value, detail)
        # Deliver what was written before the reset, then reset: the reader sees the prefix
        # and then EOF (no close frame), like a TCP connection torn down mid-stream.
        self.is_cut = True
        self._going_down("cut")
        for pipe in (self._c2s, self._s2c):
            pipe.stalled = False
            pipe.close()
