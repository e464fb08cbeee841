"""The two protocol endpoints against each other, no event loop and no socket: a
ClientSession and a ServerSession joined by a fake link (h11's ``ConnectionPair``).

The test plays the node: it reads what the server session decoded, decides (accept the
hello, store the send), and answers through the server session, whose ``send`` checks that
every frame is legal when it goes out. Both sessions' own checks run on every hop.
"""

from __future__ import annotations

import random

import attrs
import pytest

from protocol import (
    Ack,
    Acked,
    ClientFrame,
    ClientSession,
    ClientState,
    CloseCode,
    ErrorCode,
    Event,
    GapDetected,
    Hello,
    History,
    Msg,
    NewMessage,
    Recv,
    RemoteProtocolError,
    Send,
    ServerError,
    ServerFrame,
    ServerSession,
    ServerState,
    StateChanged,
    Synced,
    Welcome,
    history_result,
)


@attrs.define
class SessionPair:
    """One client session and the server session of its current connection."""

    client: ClientSession
    server: ServerSession
    now: float = 0.0

    @classmethod
    def connected(cls, client: ClientSession | None = None) -> SessionPair:
        client = client or ClientSession(token="t0k", device="phone", rng=random.Random(3))
        client.connect()
        return cls(client=client, server=ServerSession(now=0.0))

    def to_server(self) -> list[ClientFrame]:
        """Deliver everything the client wrote; the frames the server session accepted."""
        return [self.server.receive(text, self.now) for text in self.client.data_to_send()]

    def to_client(self, *frames: ServerFrame) -> list[Event]:
        """Send ``frames`` through the server session to the client; the client's events."""
        for frame in frames:
            self.client.receive_text(self.server.send(frame), self.now)
        return self.client.next_events()

    def open(self, user: str = "alice") -> Welcome:
        """hello → welcome → synced, as the node does for a good token."""
        (hello,) = self.to_server()
        assert isinstance(hello, Hello)
        welcome = self.server.accept(
            user=user, device=hello.device, session="s1", heartbeat_s=30, now=self.now
        )
        events = self.to_client(welcome, Synced())
        assert [e.state for e in events if isinstance(e, StateChanged)] == [
            ClientState.CONNECTING,
            ClientState.OPEN,
            ClientState.SYNCED,
        ]
        return welcome

    def reconnect(self) -> None:
        """The link drops; the client connects again to a fresh server session."""
        self.client.connection_lost(CloseCode.ABNORMAL_CLOSURE)
        self.client.next_events()
        self.client.connect()
        self.server = ServerSession(now=self.now)


def msg(seq: int, cmid: str | None = None, sender: str = "bob") -> Msg:
    return Msg(
        conv="d:alice:bob",
        seq=seq,
        id=f"i{seq}",
        sender=sender,
        cmid=cmid or f"c{seq}",
        body=f"m{seq}",
        ts=seq,
    )


def test_handshake_opens_both_ends() -> None:
    pair = SessionPair.connected()
    welcome = pair.open()
    assert pair.server.state is ServerState.OPEN
    assert pair.client.state is ClientState.SYNCED
    assert pair.client.welcome == welcome


def test_a_rejected_token_closes_with_4401_and_the_client_hears_why() -> None:
    pair = SessionPair.connected()
    pair.to_server()
    error, code = pair.server.reject("bad token")
    events = pair.to_client(error)
    assert code is CloseCode.UNAUTHENTICATED
    assert pair.server.state is ServerState.CLOSED
    assert [e.error.code for e in events if isinstance(e, ServerError)] == [
        ErrorCode.UNAUTHENTICATED
    ]


def test_a_send_acked_by_the_server_resolves_once_on_the_client() -> None:
    pair = SessionPair.connected()
    pair.open()
    cmid = pair.client.send("hi", to="bob")
    (send,) = pair.to_server()
    assert send == Send(cmid=cmid, body="hi", to="bob")
    events = pair.to_client(Ack(cmid=cmid, conv="d:alice:bob", seq=1, id="i1", ts=5))
    assert [type(e) for e in events] == [Acked]
    assert pair.client.outbox == ()


def test_an_unacked_send_is_resent_with_its_cmid_after_a_reconnect() -> None:
    pair = SessionPair.connected()
    pair.open()
    cmid = pair.client.send("hi", to="bob")
    (first,) = pair.to_server()
    pair.reconnect()
    pair.open()
    (again,) = pair.to_server()
    assert isinstance(again, Send)
    assert again == first
    assert again.cmid == cmid


@pytest.mark.parametrize("duplicate_first", [False, True], ids=["in-order", "duplicate"])
def test_pushes_are_shown_once_and_reported_with_recv(duplicate_first: bool) -> None:
    client = ClientSession(token="t", device="phone", rng=random.Random(1), recv_delay_s=0)
    pair = SessionPair.connected(client)
    pair.open()
    pushes = [msg(1), msg(1), msg(2)] if duplicate_first else [msg(1), msg(2)]
    events = pair.to_client(*pushes)
    assert [e.message.seq for e in events if isinstance(e, NewMessage)] == [1, 2]
    recvs = [f for f in pair.to_server() if isinstance(f, Recv)]
    assert recvs[-1] == Recv(conv="d:alice:bob", seq=2)


def test_a_lost_push_is_fetched_with_history_and_filled() -> None:
    pair = SessionPair.connected()
    pair.open()
    events = pair.to_client(msg(1), msg(3))
    assert [e for e in events if isinstance(e, GapDetected)] == [
        GapDetected(conv="d:alice:bob", first=2, last=2)
    ]
    request = next(f for f in pair.to_server() if isinstance(f, History))
    assert (request.conv, request.before, request.limit) == ("d:alice:bob", 3, 1)
    events = pair.to_client(history_result(request.rid, (msg(2),), more=True))
    assert [e.message.seq for e in events if isinstance(e, NewMessage)] == [2]
    assert pair.client.conversation("d:alice:bob").watermark == 3


def test_a_frame_before_hello_is_refused_with_4400_and_the_client_hears_why() -> None:
    pair = SessionPair.connected()
    pair.client.data_to_send()  # the hello is lost; a confused client speaks first
    with pytest.raises(RemoteProtocolError) as info:
        pair.server.receive('{"type":"ping"}', pair.now)
    assert info.value.close_code is CloseCode.BAD_FRAME
    events = pair.to_client(pair.server.reply_for(info.value))
    assert [e.error.code for e in events if isinstance(e, ServerError)] == [ErrorCode.BAD_FRAME]
