"""The virtual network's record of when the node wrote each frame (what G6 is judged at)."""

from __future__ import annotations

import trio
import trio.testing

from sim._network import Link, _text_frames


def _text(payload: bytes) -> bytes:
    if len(payload) < 126:
        return bytes([0x81, len(payload)]) + payload
    return bytes([0x81, 126]) + len(payload).to_bytes(2, "big") + payload


def test_text_frames_counts_every_frame_of_a_batch() -> None:
    pong = bytes([0x8A, 0])
    assert _text_frames(_text(b"a") + pong + _text(b"b" * 300) + _text(b"")) == 3
    assert _text_frames(b"") == 0


def test_a_slow_write_is_stamped_when_it_started_once_per_frame() -> None:
    stamps: list[float] = []

    async def main() -> None:
        link = Link(name="u0/d0", on_fault=lambda kind, detail: None, latency=0.4)
        await trio.sleep(1.0)
        await link.server.send_all(_text(b"one") + _text(b"two"))
        assert trio.current_time() >= 1.4
        stamps.extend([link.sent_at(), link.sent_at()])

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert stamps == [1.0, 1.0]
