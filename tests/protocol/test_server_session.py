"""The server session machine, driven with no event loop: hello gating, deadlines, closing."""

from __future__ import annotations

import attrs
import orjson
import pytest

from protocol import (
    HELLO_TIMEOUT_S,
    Ack,
    ClientFrame,
    CloseCode,
    Convs,
    Error,
    ErrorCode,
    Frame,
    Hello,
    LocalProtocolError,
    Msg,
    Nack,
    Ping,
    Pong,
    RemoteProtocolError,
    Send,
    ServerFrame,
    ServerSession,
    ServerState,
    Synced,
    Welcome,
    decode_server_frame,
    empty_result,
    encode,
)

HELLO = Hello(token="tok", device="phone", rid="h1")
MSG = Msg(conv="d:ann:bob", seq=1, id="m1", sender="bob", cmid="c", body="hi", ts=1)


@attrs.define
class Link:
    """A client and a server session over a fake link, in the manner of h11's ConnectionPair.

    The client side is just the codec: ``client_sends`` encodes frames (or passes raw text)
    to the server session, and whatever the server answers is decoded as the client would
    see it, so tests compare lists of frames on both ends.
    """

    session: ServerSession = attrs.field(factory=lambda: ServerSession(now=0.0))
    #: What the client has received, decoded.
    received: list[ServerFrame] = attrs.field(factory=list)
    #: The close code the server closed the link with, if it did.
    closed_with: CloseCode | None = None

    def client_sends(self, item: ClientFrame | str | bytes, now: float) -> list[ClientFrame]:
        """Deliver one message to the server; answer rejected frames the way a node would.
        Returns the frames the server accepted."""
        data = item if isinstance(item, str | bytes) else encode(item)
        try:
            return [self.session.receive(data, now)]
        except RemoteProtocolError as exc:
            self.server_sends(self.session.reply_for(exc))
            if exc.close_code is not None:
                self.closed_with = exc.close_code
            return []

    def server_sends(self, frame: ServerFrame) -> None:
        self.received.append(decode_server_frame(self.session.send(frame)))

    def open(self, now: float = 1.0, heartbeat_s: int = 30) -> Welcome:
        assert self.client_sends(HELLO, now) == [HELLO]
        welcome = self.session.accept(
            user="ann", device="phone", session="s1", heartbeat_s=heartbeat_s, now=now
        )
        self.server_sends(welcome)
        return welcome


def error_of(frame: Frame) -> tuple[str, str]:
    assert isinstance(frame, Error | Nack)
    return frame.code.value, frame.message


# ------------------------------------------------------------------------- hello gating


def test_a_good_hello_opens_the_session() -> None:
    link = Link()
    assert link.session.state is ServerState.AWAITING_HELLO
    welcome = link.open(now=2.0)
    assert welcome == Welcome(user="ann", device="phone", session="s1", heartbeat_s=30, rid="h1")
    assert link.received == [welcome]
    assert link.session.state is ServerState.OPEN
    assert (link.session.user, link.session.device, link.session.heartbeat_s) == (
        "ann",
        "phone",
        30,
    )
    link.server_sends(MSG)
    link.server_sends(Synced())
    assert link.client_sends(Ping(rid="p"), 3.0) == [Ping(rid="p")]
    link.server_sends(Pong(rid="p"))
    assert link.received == [welcome, MSG, Synced(), Pong(rid="p")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (encode(Ping()), "the first frame must be 'hello', not 'ping'"),
        (encode(Send(cmid="c", body="b", to="bob")), "the first frame must be 'hello', not 'send'"),
        ('{"type":"send","cmid":"c","body":5}', "the first frame must be 'hello', not 'send'"),
        ('{"type":"hello","token":"t","device":"a b"}',
         "field 'device' must be 1-64 characters of [A-Za-z0-9_.-]"),
        ('{"type":"welcome"}', "unknown frame type 'welcome'"),
        ("[1,", "frame is not valid JSON: "),
        (b"\x00", "binary frames are not accepted; send JSON as a text frame"),
    ],
)  # fmt: skip
def test_anything_but_a_good_hello_first_closes_4400(data: str | bytes, message: str) -> None:
    link = Link()
    assert link.client_sends(data, 1.0) == []
    [(code, said)] = [error_of(f) for f in link.received]
    assert code == "bad_frame"
    assert said.startswith(message) if message.endswith(": ") else said == message
    assert link.closed_with is CloseCode.BAD_FRAME
    assert link.session.state is ServerState.CLOSED
    assert link.session.close_code is CloseCode.BAD_FRAME


def test_a_hello_without_a_token_is_unauthenticated_4401() -> None:
    link = Link()
    assert link.client_sends('{"type":"hello","device":"phone","rid":"r"}', 1.0) == []
    assert link.received == [
        Error(code=ErrorCode.UNAUTHENTICATED, message="missing field 'token'", rid="r")
    ]
    assert link.closed_with is CloseCode.UNAUTHENTICATED


def test_a_bad_token_is_rejected_4401() -> None:
    link = Link()
    link.client_sends(HELLO, 1.0)
    error, code = link.session.reject("token expired")
    assert (error, code) == (
        Error(code=ErrorCode.UNAUTHENTICATED, message="token expired", rid="h1"),
        CloseCode.UNAUTHENTICATED,
    )
    assert link.session.state is ServerState.CLOSED
    link.server_sends(error)  # the farewell error may still go out, once
    with pytest.raises(LocalProtocolError):
        link.session.send(error)


def test_a_second_hello_is_bad_frame_and_the_session_stays_open() -> None:
    link = Link()
    link.open()
    for hello in (encode(HELLO), '{"type":"hello","rid":"r2"}'):
        assert link.client_sends(hello, 2.0) == []
    assert [error_of(f) for f in link.received[1:]] == [
        ("bad_frame", "hello already received: this session is open"),
    ] * 2
    assert [f.rid for f in link.received[1:] if isinstance(f, Error)] == ["h1", "r2"]
    assert link.closed_with is None
    assert link.session.state is ServerState.OPEN


def test_malformed_frames_when_open_are_answered_and_the_session_stays_open() -> None:
    link = Link()
    link.open()
    sent = [
        '{"type":"dance","rid":"r1"}',
        '{"type":"send","body":"x","to":"bob"}',
        '{"type":"send","cmid":"c9","body":"x","to":"bob","conv":"g:1","rid":"r3"}',
        '{"type":"convs","rid":"r4","junk":[1]}',
    ]
    accepted = [frame for data in sent for frame in link.client_sends(data, 2.0)]
    assert accepted == [Convs(rid="r4")]
    assert link.received[1:] == [
        Error(code=ErrorCode.BAD_FRAME, message="unknown frame type 'dance'", rid="r1"),
        Error(code=ErrorCode.BAD_FRAME, message="missing field 'cmid'"),
        Nack(
            cmid="c9",
            code=ErrorCode.BAD_FRAME,
            message="a send names exactly one of 'conv' and 'to'",
            retry=False,
            rid="r3",
        ),
    ]
    assert link.closed_with is None


def test_receiving_before_the_hello_is_decided_is_a_local_error() -> None:
    link = Link()
    link.client_sends(HELLO, 1.0)
    with pytest.raises(
        LocalProtocolError,
        match="can't handle event FRAME caused by the client in state VERIFYING",
    ):
        link.session.receive(encode(Ping()), 1.5)


def test_accept_needs_a_hello_with_that_device() -> None:
    session = ServerSession(now=0.0)
    with pytest.raises(LocalProtocolError, match="event ACCEPT caused by the server"):
        session.accept(user="ann", device="phone", session="s", heartbeat_s=30, now=0.0)
    session.receive(encode(HELLO), 0.0)
    with pytest.raises(LocalProtocolError, match="the hello named 'phone'"):
        session.accept(user="ann", device="tablet", session="s", heartbeat_s=30, now=0.0)
    with pytest.raises(LocalProtocolError, match="heartbeat_s"):
        session.accept(user="ann", device="phone", session="s", heartbeat_s=61, now=0.0)
    assert session.state is ServerState.AWAITING_HELLO  # a refused accept changes nothing


# ------------------------------------------------------------------------- deadlines


def test_the_hello_deadline_is_not_moved_by_pings() -> None:
    session = ServerSession(now=100.0)
    assert session.deadline() == 100.0 + HELLO_TIMEOUT_S
    session.note_ping(105.0)
    assert session.deadline() == 110.0
    assert session.expired(110.0) is None
    assert session.expired(110.5) is CloseCode.TIMEOUT
    assert session.state is ServerState.CLOSED
    assert session.deadline() == float("inf")
    assert session.expired(1e9) is None


def test_the_whole_handshake_must_fit_in_the_hello_deadline() -> None:
    session = ServerSession(now=0.0, hello_timeout=5.0)
    session.receive(encode(HELLO), 4.0)
    assert session.deadline() == 5.0
    assert session.expired(6.0) is CloseCode.TIMEOUT


def test_keep_alive_moves_on_frames_and_pings_only() -> None:
    link = Link()
    link.open(now=10.0, heartbeat_s=20)
    assert link.session.deadline() == 50.0
    link.server_sends(MSG)  # what the server sends is not keep-alive
    assert link.session.deadline() == 50.0
    link.client_sends(Ping(), 15.0)
    assert link.session.deadline() == 55.0
    link.client_sends("garbage", 20.0)  # even a bad frame shows the client is there
    assert link.session.deadline() == 60.0
    link.session.note_ping(30.0)
    assert link.session.deadline() == 70.0
    assert link.session.expired(70.0) is None
    assert link.session.state is ServerState.OPEN
    assert link.session.expired(70.01) is CloseCode.TIMEOUT
    assert link.session.close_code is CloseCode.TIMEOUT


def test_hello_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="hello_timeout"):
        ServerSession(now=0.0, hello_timeout=0.0)


# ------------------------------------------------------------------------- closing


def test_replaced_closes_4409_and_shutdown_1001() -> None:
    replaced, shut = Link(), Link()
    replaced.open()
    shut.open()
    assert replaced.session.replaced() is CloseCode.REPLACED
    assert shut.session.shutdown() is CloseCode.GOING_AWAY
    for link in (replaced, shut):
        assert link.session.state is ServerState.CLOSED
        with pytest.raises(LocalProtocolError, match="in state CLOSED"):
            link.session.send(MSG)
        with pytest.raises(LocalProtocolError, match="in state CLOSED"):
            link.session.receive(encode(Ping()), 5.0)
        with pytest.raises(LocalProtocolError, match="PING caused by the client in state CLOSED"):
            link.session.note_ping(5.0)


def test_the_first_close_code_sticks() -> None:
    link = Link()
    link.open()
    assert link.session.replaced() is CloseCode.REPLACED
    assert link.session.shutdown() is CloseCode.REPLACED
    assert link.session.close_code is CloseCode.REPLACED


def test_shutdown_works_before_the_hello_but_replacement_does_not() -> None:
    session = ServerSession(now=0.0)
    with pytest.raises(LocalProtocolError, match="REPLACED caused by the server"):
        session.replaced()
    assert session.shutdown() is CloseCode.GOING_AWAY


# ------------------------------------------------------------------------- send legality


def test_only_errors_go_out_before_the_welcome() -> None:
    session = ServerSession(now=0.0)
    error = Error(code=ErrorCode.RATE_LIMITED, message="slow down")
    assert orjson.loads(session.send(error))["code"] == "rate_limited"
    for frame in (MSG, Pong(), empty_result(None)):
        with pytest.raises(
            LocalProtocolError, match="SEND_FRAME caused by the server in state AWAITING_HELLO"
        ):
            session.send(frame)
    with pytest.raises(LocalProtocolError, match="SEND_WELCOME"):
        session.send(Welcome(user="ann", device="phone", session="s", heartbeat_s=30))


def test_the_welcome_goes_out_first_and_once() -> None:
    session = ServerSession(now=0.0)
    session.receive(encode(HELLO), 0.0)
    welcome = session.accept(user="ann", device="phone", session="s", heartbeat_s=30, now=0.0)
    assert session.state is ServerState.OPEN
    with pytest.raises(
        LocalProtocolError, match="SEND_FRAME caused by the server in state WELCOMING"
    ):
        session.send(MSG)
    session.send(welcome)
    with pytest.raises(LocalProtocolError, match="SEND_WELCOME caused by the server in state OPEN"):
        session.send(welcome)
    session.send(Ack(cmid="c", conv="d:ann:bob", seq=1, id="m", ts=0))


def test_reply_for_a_bad_send_is_a_nack_that_must_not_be_retried() -> None:
    session = ServerSession(now=0.0)
    link = Link(session=session)
    link.open()
    with pytest.raises(RemoteProtocolError) as info:
        session.receive('{"type":"send","cmid":"c1","body":"x","to":"not valid"}', 2.0)
    nack = session.reply_for(info.value)
    assert nack == Nack(
        cmid="c1",
        code=ErrorCode.BAD_FRAME,
        message="field 'to' must be 1-64 characters of [A-Za-z0-9_.-]",
        retry=False,
    )
