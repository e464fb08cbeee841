"""A client session paired with a model of the server over a link that fails.

The model server is small and literal: it assigns seqs, dedupes sends by cmid (G2), keeps
this device's ``recv`` watermark (G4: the ack moves it only from seq - 1), pushes live
messages in order and everything above the watermark at ``hello``, and answers
``history``. The link drops the connection at any point (before or after the server stored
a send, before the ack arrives), loses single pushes (so gaps happen), duplicates pushes
and makes the server refuse sends with ``nack unavailable, retry: true`` for a while.

Checked after every step: each send is acked at most once and with the seq the server
stored it at, the server stores each cmid once, nothing is displayed twice or differently
from what was stored, every ``recv`` reports only what the client holds, and a client
that is synced has a ``history`` request out for every gap it has. At the end, after the
link heals: every send was acked exactly once and every message displayed exactly once.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable

import attrs
from hypothesis import event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from protocol import (
    Ack,
    Acked,
    ClientSession,
    ClientState,
    ErrorCode,
    Event,
    Hello,
    History,
    Msg,
    Nack,
    NewMessage,
    Read,
    Recv,
    Send,
    SendFailed,
    Synced,
    Welcome,
    decode_client_frame,
    encode,
    history_result,
)

ME, PEER, DEVICE = "alice", "bob", "d1"
CONVS = ("c1", "c2")
DIRECT = {PEER: "c1"}  # ``to: bob`` resolves to c1


@attrs.define
class ModelServer:
    """The node as the contract describes it, for one device of ``alice``."""

    messages: dict[str, list[Msg]] = attrs.Factory(lambda: {c: [] for c in CONVS})
    by_cmid: dict[str, tuple[str, int]] = attrs.Factory(dict)
    recv: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(CONVS, 0))
    to_client: collections.deque[str] = attrs.Factory(collections.deque)
    welcomed: bool = False
    unavailable: bool = False
    sessions: int = 0
    history_requests: int = 0

    def store(self, conv: str, sender: str, cmid: str | None, body: str) -> Msg:
        seq = len(self.messages[conv]) + 1
        msg = Msg(
            conv=conv, seq=seq, id=f"{conv}-{seq}", sender=sender, cmid=cmid, body=body, ts=seq
        )
        self.messages[conv].append(msg)
        return msg

    def push(self, frame: object) -> None:
        if self.welcomed:
            self.to_client.append(encode(frame))  # type: ignore[arg-type]

    def handle(self, text: str, received: Callable[[str, int], bool]) -> None:
        """Process one client frame; ``received`` says what the client really got."""
        frame = decode_client_frame(text)
        match frame:
            case Hello():
                self.sessions += 1
                self.welcomed = True
                self.push(
                    Welcome(user=ME, device=DEVICE, session=f"s{self.sessions}", heartbeat_s=30)
                )
                for conv in CONVS:
                    for msg in self.messages[conv][self.recv[conv] :]:
                        self.push(msg)
                self.push(Synced())
            case Send():
                self.on_send(frame)
            case Recv():
                for seq in range(1, frame.seq + 1):
                    assert received(frame.conv, seq), f"{frame} but seq {seq} never arrived"
                last = len(self.messages[frame.conv])
                self.recv[frame.conv] = max(self.recv[frame.conv], min(frame.seq, last))
            case History():
                self.history_requests += 1
                before = frame.before if frame.before is not None else 2**53
                older = [m for m in self.messages[frame.conv] if m.seq < before]
                page = older[-frame.limit :]
                more = len(older) > len(page)
                self.push(history_result(frame.rid, tuple(page), more))
            case Read():
                pass
            case _:
                raise AssertionError(f"the model does not expect {frame!r}")

    def on_send(self, frame: Send) -> None:
        conv = frame.conv if frame.conv is not None else DIRECT[frame.to or ""]
        if frame.cmid in self.by_cmid:
            conv, seq = self.by_cmid[frame.cmid]
            msg = self.messages[conv][seq - 1]
            assert (msg.body, msg.conv) == (frame.body, conv), "a cmid was reused"
            self.push(Ack(cmid=frame.cmid, conv=conv, seq=seq, id=msg.id, ts=msg.ts))
            return
        if self.unavailable:
            self.push(Nack(cmid=frame.cmid, code=ErrorCode.UNAVAILABLE, message="x", retry=True))
            return
        msg = self.store(conv, ME, frame.cmid, frame.body)
        self.by_cmid[frame.cmid] = (conv, msg.seq)
        if self.recv[conv] == msg.seq - 1:
            self.recv[conv] = msg.seq
        self.push(Ack(cmid=frame.cmid, conv=conv, seq=msg.seq, id=msg.id, ts=msg.ts))


class ClientAgainstModelServer(RuleBasedStateMachine):
    """Rules are the things that can happen; invariants are what must stay true."""

    stored = Bundle("stored")

    @initialize(seed=st.integers(0, 2**32 - 1), recv_delay=st.sampled_from([0.0, 0.05]))
    def start(self, seed: int, recv_delay: float) -> None:
        self.client = ClientSession(
            token="tok",
            device=DEVICE,
            rng=random.Random(seed),
            recv_delay_s=recv_delay,
            retry_base_s=0.1,
            retry_max_s=0.4,
        )
        self.server = ModelServer()
        self.to_server: collections.deque[str] = collections.deque()
        self.link_up = False
        self.now = 0.0
        self.events: list[Event] = []
        self.sends: list[str] = []
        self.got: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------ plumbing

    def pump(self) -> None:
        """Move what the client wrote onto the link and what it emitted into the log."""
        out = self.client.data_to_send()
        if self.link_up:
            self.to_server.extend(out)
        for e in self.client.next_events():
            self.events.append(e)
            if isinstance(e, NewMessage):
                self.got.add((e.message.conv, e.message.seq))
            elif isinstance(e, Acked):
                self.got.add((e.ack.conv, e.ack.seq))

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: not self.link_up)
    @rule()
    def connect(self) -> None:
        self.link_up = True
        self.client.connect()
        self.pump()

    @precondition(lambda self: self.link_up)
    @rule(code=st.sampled_from([None, 1001, 4408]))
    def drop_connection(self, code: int | None) -> None:
        note(f"drop: {len(self.to_server)} frames to server, {len(self.server.to_client)} back")
        self.link_up = False
        self.to_server.clear()
        self.server.to_client.clear()
        self.server.welcomed = False
        self.client.connection_lost(code)
        self.pump()

    @precondition(lambda self: bool(self.to_server))
    @rule()
    def deliver_to_server(self) -> None:
        self.server.handle(self.to_server.popleft(), self.received)

    def received(self, conv: str, seq: int) -> bool:
        """Whether the client holds (conv, seq): it displayed it, got its ack, or sent it
        (a device has its own messages even before their ack arrives)."""
        stored = self.server.messages[conv]
        if seq <= len(stored) and stored[seq - 1].cmid in self.sends:
            return True
        return (conv, seq) in self.got

    @precondition(lambda self: bool(self.server.to_client))
    @rule()
    def deliver_to_client(self) -> None:
        self.client.receive_text(self.server.to_client.popleft(), self.now)
        self.pump()

    @precondition(lambda self: self.link_up)
    @rule()
    def settle(self) -> None:
        """Deliver everything in flight both ways (a quiet moment on a healthy link)."""
        for _ in range(2_000):
            if not (self.to_server or self.server.to_client):
                return
            if self.to_server:
                self.deliver_to_server()
            else:
                self.deliver_to_client()
        raise AssertionError("the client and the server never fall quiet")

    @rule(body=st.text("abc", min_size=1, max_size=3), target_=st.sampled_from([*CONVS, PEER]))
    def client_sends(self, body: str, target_: str) -> None:
        if target_ in CONVS:
            cmid = self.client.send(body, conv=target_)
        else:
            cmid = self.client.send(body, to=target_)
        self.sends.append(cmid)
        self.pump()

    @rule(target=stored, conv=st.sampled_from(CONVS), lose_push=st.booleans())
    def peer_sends(self, conv: str, lose_push: bool) -> tuple[str, int]:
        msg = self.server.store(conv, PEER, f"b{len(self.server.messages[conv])}", "hey")
        if lose_push:
            event("a live push was lost")
        else:
            self.server.push(msg)
        return conv, msg.seq

    @rule(which=stored)
    def duplicate_push(self, which: tuple[str, int]) -> None:
        conv, seq = which
        self.server.push(self.server.messages[conv][seq - 1])

    @rule()
    def toggle_unavailable(self) -> None:
        self.server.unavailable = not self.server.unavailable

    @rule(dt=st.sampled_from([0.01, 0.05, 0.5]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.client.tick(self.now)
        self.pump()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def acked_at_most_once_with_the_stored_seq(self) -> None:
        check_acks(self.events, self.server, complete=False, sends=self.sends)

    @invariant()
    def displayed_at_most_once_as_stored(self) -> None:
        check_display(self.events, self.server, complete=False)

    @invariant()
    def every_gap_of_a_synced_client_is_requested(self) -> None:
        if self.client.state is not ClientState.SYNCED:
            return
        for conv in self.client.conversations():
            status = self.client.conversation(conv)
            if status.held_above:
                assert status.gap_request is not None, f"gap in {status} not requested"

    # ------------------------------------------------------------------ healing

    def teardown(self) -> None:
        """Heal the link and run until quiet; then everything must have arrived once."""
        self.server.unavailable = False
        if self.link_up:
            self.drop_connection(None)
        self.connect()
        for _ in range(100):
            self.settle()
            if self.client.next_deadline() is None:
                break
            self.time_passes(0.5)
        assert self.client.state is ClientState.SYNCED
        check_acks(self.events, self.server, complete=True, sends=self.sends)
        check_display(self.events, self.server, complete=True)
        for conv, msgs in self.server.messages.items():
            assert self.server.recv[conv] == len(msgs), f"the server never learned {conv} arrived"
        if self.server.history_requests:
            event("a gap was filled with history")


def check_acks(
    events: list[Event], server: ModelServer, *, complete: bool, sends: list[str]
) -> None:
    """Every send is acked at most once (exactly once when ``complete``), at its stored seq."""
    acks = [e for e in events if isinstance(e, Acked)]
    assert not [e for e in events if isinstance(e, SendFailed)]
    counts = collections.Counter(a.cmid for a in acks)
    assert all(n == 1 for n in counts.values()), f"acked twice: {counts}"
    for acked in acks:
        assert server.by_cmid[acked.cmid] == (acked.ack.conv, acked.ack.seq)
    stored_cmids = collections.Counter(
        m.cmid for msgs in server.messages.values() for m in msgs if m.sender == ME
    )
    assert all(n == 1 for n in stored_cmids.values()), "the server stored a send twice"
    if complete:
        assert sorted(counts) == sorted(sends), "a send was never acked"


def check_display(events: list[Event], server: ModelServer, *, complete: bool) -> None:
    """Nothing is displayed twice or unlike what was stored; at the end, everything of
    the peer's is displayed and nothing of ours (our acks stand for our messages)."""
    shown = [e.message for e in events if isinstance(e, NewMessage)]
    keys = collections.Counter((m.conv, m.seq) for m in shown)
    assert all(n == 1 for n in keys.values()), f"displayed twice: {keys}"
    for msg in shown:
        assert server.messages[msg.conv][msg.seq - 1] == msg
        assert msg.sender == PEER, "our own message was displayed as new"
    if complete:
        peer = {(m.conv, m.seq) for msgs in server.messages.values() for m in msgs}
        peer = {k for k in peer if server.messages[k[0]][k[1] - 1].sender == PEER}
        assert set(keys) == peer, f"never displayed: {sorted(peer - set(keys))}"


ClientAgainstModelServer.TestCase.settings = settings(
    ClientAgainstModelServer.TestCase.settings,
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
)
TestClientAgainstModelServer = ClientAgainstModelServer.TestCase
