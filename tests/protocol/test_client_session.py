"""Unit tests of the client session machine: one behaviour per test, no event loop."""

from __future__ import annotations

import random

import attrs
import pytest

from protocol import (
    MAX_BODY_BYTES,
    MAX_FRAME_BYTES,
    MAX_SERVER_FRAME_BYTES,
    Ack,
    Acked,
    ClientFrame,
    ClientSession,
    ClientState,
    ConvRow,
    Convs,
    Error,
    ErrorCode,
    GapDetected,
    GroupCreate,
    Hello,
    History,
    LocalProtocolError,
    Msg,
    Nack,
    NewMessage,
    PresenceSub,
    Read,
    Recv,
    RemoteProtocolError,
    RequestCompleted,
    RequestFailed,
    Send,
    SendFailed,
    ServerError,
    StateChanged,
    Synced,
    Welcome,
    convs_result,
    decode_client_frame,
    encode,
    group_created_result,
    history_result,
)

ME = "alice"
DEVICE = "phone"


def make_session(**kwargs: float) -> ClientSession:
    return ClientSession(token="t0k", device=DEVICE, rng=random.Random(7), **kwargs)


def sent(session: ClientSession) -> list[ClientFrame]:
    return [decode_client_frame(text) for text in session.data_to_send()]


def msg(conv: str, seq: int, *, sender: str = "bob", cmid: str | None = "x1") -> Msg:
    return Msg(
        conv=conv, seq=seq, id=f"{conv}:{seq}", sender=sender, cmid=cmid, body=f"m{seq}", ts=seq
    )


def feed(session: ClientSession, *frames: object, now: float = 0.0) -> None:
    for frame in frames:
        session.receive_text(encode(frame), now)  # type: ignore[arg-type]


def opened(*, synced: bool = True, **kwargs: float) -> ClientSession:
    """A session past ``welcome`` (and ``synced``) with empty output and events."""
    session = make_session(**kwargs)
    session.connect()
    feed(session, Welcome(user=ME, device=DEVICE, session="s1", heartbeat_s=30))
    if synced:
        feed(session, Synced())
    session.data_to_send()
    session.next_events()
    return session


def new_messages(session: ClientSession) -> list[int]:
    return [e.message.seq for e in session.next_events() if isinstance(e, NewMessage)]


def reconnect(session: ClientSession) -> None:
    session.connection_lost(1006)
    session.connect()
    session.data_to_send()
    feed(session, Welcome(user=ME, device=DEVICE, session="s2", heartbeat_s=30))


# ------------------------------------------------------------------------- lifecycle


def test_lifecycle_states_and_hello() -> None:
    session = make_session()
    assert session.state is ClientState.IDLE
    session.connect()
    assert sent(session) == [Hello(token="t0k", device=DEVICE)]
    feed(session, Welcome(user=ME, device=DEVICE, session="s1", heartbeat_s=20))
    feed(session, Synced())
    session.connection_lost(1001, "going away")
    states = [e.state for e in session.next_events() if isinstance(e, StateChanged)]
    assert states == [
        ClientState.CONNECTING,
        ClientState.OPEN,
        ClientState.SYNCED,
        ClientState.DISCONNECTED,
    ]
    assert session.user == ME
    assert session.welcome is not None and session.welcome.heartbeat_s == 20


def test_local_misuse_is_local_error() -> None:
    session = make_session()
    with pytest.raises(LocalProtocolError):
        session.connection_lost()
    with pytest.raises(LocalProtocolError):
        feed(session, Synced())
    session.connect()
    with pytest.raises(LocalProtocolError, match="connect while connecting"):
        session.connect()


def test_peer_misbehaviour_is_remote_error() -> None:
    session = make_session()
    session.connect()
    with pytest.raises(RemoteProtocolError, match="'msg' while connecting"):
        feed(session, msg("c", 1))
    with pytest.raises(RemoteProtocolError, match="device"):
        feed(session, Welcome(user=ME, device="other", session="s", heartbeat_s=30))
    assert session.state is ClientState.CONNECTING
    feed(session, Welcome(user=ME, device=DEVICE, session="s", heartbeat_s=30))
    with pytest.raises(RemoteProtocolError, match="welcome while open"):
        feed(session, Welcome(user=ME, device=DEVICE, session="s", heartbeat_s=30))
    with pytest.raises(RemoteProtocolError, match="not pending"):
        feed(session, group_created_result("r99", "c"))
    zero = '{"type":"msg","conv":"c","seq":0,"id":"i","from":"bob","cmid":null,"body":"","ts":0}'
    with pytest.raises(RemoteProtocolError, match="seq"):
        session.receive_text(zero, 0.0)
    with pytest.raises(RemoteProtocolError):
        session.receive_text("{not json", 0.0)


def test_unauthenticated_error_is_reported() -> None:
    session = make_session()
    session.connect()
    feed(session, Error(code=ErrorCode.UNAUTHENTICATED, message="bad token"))
    errors = [e for e in session.next_events() if isinstance(e, ServerError)]
    assert errors[0].error.code is ErrorCode.UNAUTHENTICATED


# ------------------------------------------------------------------------- outbox


def test_send_before_connect_goes_out_after_welcome_and_resolves_once() -> None:
    session = make_session()
    cmid = session.send("hi", to="bob")
    assert session.outbox == (Send(cmid=cmid, body="hi", to="bob"),)
    session.connect()
    assert sent(session) == [Hello(token="t0k", device=DEVICE)]
    feed(session, Welcome(user=ME, device=DEVICE, session="s", heartbeat_s=30))
    assert sent(session) == [Send(cmid=cmid, body="hi", to="bob")]
    ack = Ack(cmid=cmid, conv="c", seq=1, id="m1", ts=5)
    feed(session, ack, ack)
    acked = [e for e in session.next_events() if isinstance(e, Acked)]
    assert acked == [Acked(cmid=cmid, ack=ack, send=Send(cmid=cmid, body="hi", to="bob"))]
    assert session.outbox == ()
    assert session.holds("c", 1)


def test_unacked_sends_are_resent_in_order_with_same_cmid_after_reconnect() -> None:
    session = opened()
    first = session.send("one", conv="c")
    second = session.send("two", to="bob")
    assert [f.cmid for f in sent(session) if isinstance(f, Send)] == [first, second]
    reconnect(session)
    assert sent(session) == [
        Send(cmid=first, body="one", conv="c"),
        Send(cmid=second, body="two", to="bob"),
    ]


def test_cmids_come_from_the_injected_rng() -> None:
    one, two = make_session(), make_session()
    assert [one.send("a", conv="c") for _ in range(3)] == [
        two.send("a", conv="c") for _ in range(3)
    ]
    assert len(set(one.outbox)) == 3


def test_retryable_nack_resends_after_backoff() -> None:
    session = opened(retry_base_s=1.0)
    cmid = session.send("x", conv="c")
    sent(session)
    feed(session, Nack(cmid=cmid, code=ErrorCode.UNAVAILABLE, message="busy", retry=True), now=10)
    deadline = session.next_deadline()
    assert deadline is not None and 10.5 <= deadline <= 11.0
    session.tick(deadline - 0.01)
    assert sent(session) == []
    session.tick(deadline)
    assert sent(session) == [Send(cmid=cmid, body="x", conv="c")]
    assert session.next_events() == []


def test_final_nack_fails_the_send_once() -> None:
    session = opened()
    cmid = session.send("x", conv="c")
    nack = Nack(cmid=cmid, code=ErrorCode.FORBIDDEN, message="not a member", retry=False)
    feed(session, nack, nack)
    failed = [e for e in session.next_events() if isinstance(e, SendFailed)]
    assert [f.nack for f in failed] == [nack]
    assert session.outbox == ()


def test_too_large_body_is_refused_locally() -> None:
    session = opened()
    with pytest.raises(LocalProtocolError):
        session.send("x" * 20_000, conv="c")
    assert session.outbox == ()


def test_own_message_seen_before_its_ack_resolves_the_send() -> None:
    session = opened()
    cmid = session.send("mine", conv="c")
    feed(session, msg("c", 1, sender=ME, cmid=cmid))
    events = session.next_events()
    assert [type(e) for e in events] == [Acked]
    assert isinstance(events[0], Acked) and events[0].ack.seq == 1
    feed(session, Ack(cmid=cmid, conv="c", seq=1, id="c:1", ts=1))
    assert session.next_events() == []


# ------------------------------------------------------------------------- holding, recv


def test_duplicates_are_displayed_once() -> None:
    session = opened(recv_delay_s=0)
    feed(session, msg("c", 1), msg("c", 2), msg("c", 1), msg("c", 2))
    assert new_messages(session) == [1, 2]


def test_duplicate_pushes_are_counted_but_history_and_own_acks_are_not() -> None:
    session = opened(recv_delay_s=0)
    feed(session, msg("c", 1), msg("c", 1))
    assert session.duplicates == 1
    cmid = session.send("mine", conv="c")
    feed(session, Ack(cmid=cmid, conv="c", seq=2, id="c:2", ts=2))
    feed(session, msg("c", 2, sender=ME, cmid=cmid))  # our own message pushed back: redundant
    assert session.duplicates == 2
    rid = session.request(History(conv="c"))
    feed(session, history_result(rid, (msg("c", 1), msg("c", 2)), more=False))
    assert session.duplicates == 2  # scrollback is asked for, not pushed
    assert new_messages(session) == [1]


def test_recv_is_batched_and_cumulative() -> None:
    session = opened(recv_delay_s=0.05)
    feed(session, msg("c", 1), msg("c", 2), msg("d", 1), now=1.0)
    feed(session, msg("c", 3), now=1.02)
    assert sent(session) == []
    assert session.next_deadline() == pytest.approx(1.05)
    session.tick(1.05)
    assert sent(session) == [Recv(conv="c", seq=3), Recv(conv="d", seq=1)]
    assert session.next_deadline() is None


def test_first_push_during_sync_sets_the_base() -> None:
    session = opened(synced=False, recv_delay_s=0)
    feed(session, msg("g", 7), msg("g", 8), Synced())
    assert new_messages(session) == [7, 8]
    assert sent(session) == [Recv(conv="g", seq=7), Recv(conv="g", seq=8)]
    assert session.conversation("g").watermark == 8


def test_member_event_adding_us_sets_the_base() -> None:
    session = opened(recv_delay_s=0)
    body = '{"op":"add","by":"bob","users":["alice"]}'
    added = Msg(conv="g", seq=5, id="i", sender="bob", cmid=None, body=body, ts=0, kind="member")
    feed(session, added)
    assert sent(session) == [Recv(conv="g", seq=5)]


def test_unknown_conversation_after_sync_is_filled_from_the_start() -> None:
    session = opened(recv_delay_s=0)
    feed(session, msg("g", 4))
    assert sent(session) == [History(conv="g", before=4, limit=3, rid="r1")]
    feed(session, history_result("r1", (msg("g", 3),), more=False))
    assert new_messages(session) == [4, 3]
    assert sent(session) == [Recv(conv="g", seq=4)]


def test_ack_before_any_push_waits_for_sync_to_fix_the_base() -> None:
    session = opened(synced=False, recv_delay_s=0)
    cmid = session.send("x", conv="g")
    sent(session)
    feed(session, Ack(cmid=cmid, conv="g", seq=6, id="i", ts=0), msg("g", 4), msg("g", 5))
    assert new_messages(session) == [4, 5]
    assert session.conversation("g").watermark == 6
    cmid = session.send("y", conv="h")
    feed(session, Ack(cmid=cmid, conv="h", seq=3, id="i", ts=0), Synced())
    assert sent(session)[-1] == History(conv="h", before=3, limit=2, rid="r1")


def test_ack_counts_as_held_and_is_reported() -> None:
    session = opened(recv_delay_s=0)
    feed(session, msg("c", 1))
    assert sent(session) == [Recv(conv="c", seq=1)]
    session.next_events()
    cmid = session.send("x", conv="c")
    sent(session)
    feed(session, Ack(cmid=cmid, conv="c", seq=2, id="i", ts=0))
    assert sent(session) == [Recv(conv="c", seq=2)]
    status = session.conversation("c")
    assert (status.watermark, status.reported) == (2, 2)
    feed(session, msg("c", 2, sender=ME, cmid=cmid))
    assert new_messages(session) == []


def test_duplicate_push_re_reports_the_watermark() -> None:
    session = opened(recv_delay_s=0)
    feed(session, msg("c", 1), msg("c", 2))
    sent(session)
    reconnect(session)
    session.next_events()
    feed(session, msg("c", 2))
    assert sent(session) == [Recv(conv="c", seq=2)]
    assert new_messages(session) == []


def test_convs_row_fixes_the_base_of_a_fresh_device() -> None:
    session = opened(recv_delay_s=0)
    rid = session.request(Convs())
    row = ConvRow(
        conv="c",
        kind="direct",
        title=None,
        members=(ME, "bob"),
        last_seq=9,
        delivered=5,
        read=4,
        unread=5,
    )
    feed(session, convs_result(rid, (row,), more=False, cursor=None))
    status = session.conversation("c")
    assert (status.watermark, status.reported, status.read) == (5, 5, 4)
    feed(session, msg("c", 5), msg("c", 6))
    assert new_messages(session) == [6]


# ------------------------------------------------------------------------- gaps


def test_gap_is_requested_and_filled() -> None:
    session = opened(recv_delay_s=0)
    feed(session, msg("c", 1), msg("c", 4))
    assert sent(session) == [Recv(conv="c", seq=1), History(conv="c", before=4, limit=2, rid="r1")]
    assert GapDetected(conv="c", first=2, last=3) in session.next_events()
    feed(session, msg("c", 5))
    assert sent(session) == []  # one gap request per conversation at a time
    assert new_messages(session) == [5]
    feed(session, history_result("r1", (msg("c", 2), msg("c", 3)), more=True))
    assert new_messages(session) == [2, 3]
    assert sent(session) == [Recv(conv="c", seq=5)]


def test_large_gap_is_paged_from_the_top() -> None:
    session = opened(recv_delay_s=0, history_page=2)
    feed(session, msg("c", 1), msg("c", 7))
    sent(session)
    feed(session, history_result("r1", (msg("c", 5), msg("c", 6)), more=True))
    assert sent(session) == [History(conv="c", before=5, limit=2, rid="r2")]
    feed(session, history_result("r2", (msg("c", 3), msg("c", 4)), more=True))
    assert sent(session) == [History(conv="c", before=3, limit=1, rid="r3")]
    feed(session, history_result("r3", (msg("c", 2),), more=True))
    assert sent(session) == [Recv(conv="c", seq=7)]
    assert new_messages(session) == [1, 7, 5, 6, 3, 4, 2]


def test_invisible_seqs_are_skipped_not_displayed() -> None:
    session = opened(synced=False, recv_delay_s=0)
    feed(session, msg("g", 3), Synced(), msg("g", 9))
    sent(session)
    # Removed after 3, re-added at 9: 4..8 are not ours to see; 6 is a stray visible one.
    feed(session, history_result("r1", (msg("g", 6),), more=False))
    assert new_messages(session) == [3, 9, 6]
    assert session.conversation("g").watermark == 9
    assert sent(session) == [Recv(conv="g", seq=9)]


def test_failed_gap_request_gives_up_until_the_next_jump() -> None:
    session = opened(recv_delay_s=0)
    feed(session, msg("g", 1), msg("g", 3))
    sent(session)
    feed(session, Error(code=ErrorCode.FORBIDDEN, message="no", rid="r1"))
    assert any(isinstance(e, ServerError) for e in session.next_events())
    assert session.conversation("g").gap_request is None
    feed(session, msg("g", 5))
    assert sent(session) == [History(conv="g", before=3, limit=1, rid="r2")]


def test_gap_left_by_a_drop_is_rechecked_at_synced() -> None:
    session = opened(recv_delay_s=0)
    feed(session, msg("c", 1), msg("c", 3))
    sent(session)
    session.connection_lost()
    session.connect()
    feed(session, Welcome(user=ME, device=DEVICE, session="s", heartbeat_s=30))
    assert sent(session) == [Hello(token="t0k", device=DEVICE)]
    feed(session, Synced())
    assert sent(session) == [History(conv="c", before=3, limit=1, rid="r2")]


# ------------------------------------------------------------------------- requests


def test_requests_are_matched_by_rid() -> None:
    session = opened()
    rid = session.request(GroupCreate(title="t", members=("bob",)))
    assert sent(session) == [GroupCreate(title="t", members=("bob",), rid=rid)]
    result = group_created_result(rid, "g1")
    feed(session, result)
    done = session.next_events()
    assert done == [
        RequestCompleted(
            rid=rid, request=GroupCreate(title="t", members=("bob",), rid=rid), result=result
        )
    ]
    rid2 = session.request(History(conv="g1"))
    feed(session, Error(code=ErrorCode.FORBIDDEN, message="no", rid=rid2))
    failed = session.next_events()[0]
    assert isinstance(failed, RequestFailed) and failed.error is not None


def test_requests_on_the_wire_fail_on_disconnect_and_queued_ones_wait() -> None:
    session = opened()
    on_wire = session.request(Convs())
    session.connection_lost()
    events = session.next_events()
    assert RequestFailed(rid=on_wire, request=Convs(rid=on_wire), error=None) in events
    queued = session.request(Convs())
    assert session.pending_requests == {queued: Convs(rid=queued)}
    session.connect()
    sent(session)
    feed(session, Welcome(user=ME, device=DEVICE, session="s", heartbeat_s=30))
    assert sent(session) == [Convs(rid=queued)]


def test_presence_and_read_are_restored_after_reconnect() -> None:
    session = opened()
    session.request(PresenceSub(users=("bob", "carol")))
    session.mark_read("c", 4)
    session.mark_read("c", 3)
    assert [type(f) for f in sent(session)] == [PresenceSub, Read]
    reconnect(session)
    frames = sent(session)
    assert Read(conv="c", seq=4) in frames
    subs = [f for f in frames if isinstance(f, PresenceSub)]
    assert [s.users for s in subs] == [("bob", "carol")]


# ------------------------------------------------------------ big frames, bad and late replies


def test_server_frames_over_the_client_limit_are_accepted() -> None:
    """A 16 KiB body of control characters escapes to a ~96 KiB ``msg``: valid from a server."""
    session = opened()
    poison = attrs.evolve(msg("c", 1), body="\x01" * MAX_BODY_BYTES)
    text = encode(poison)
    assert MAX_FRAME_BYTES < len(text.encode()) < MAX_SERVER_FRAME_BYTES
    session.receive_text(text, 0.0)
    assert new_messages(session) == [1]
    with pytest.raises(RemoteProtocolError) as too_big:
        session.receive_text('{"type":"pong","pad":"' + "x" * MAX_SERVER_FRAME_BYTES + '"}', 0.0)
    assert too_big.value.code is ErrorCode.TOO_LARGE


def test_a_send_whose_frame_is_over_the_client_limit_is_refused_locally() -> None:
    session = opened()
    with pytest.raises(LocalProtocolError) as refused:
        session.send("\x01" * 12_000, conv="c")
    assert refused.value.code is ErrorCode.TOO_LARGE
    assert session.outbox == () and session.data_to_send() == []
    session.send("\x01" * 10_000, conv="c")
    (frame,) = session.data_to_send()
    assert len(frame.encode()) <= MAX_FRAME_BYTES


def test_a_reply_that_cannot_be_decoded_fails_its_request() -> None:
    session = opened()
    rid = session.request(History(conv="c"))
    sent(session)
    with pytest.raises(RemoteProtocolError):
        session.receive_text(f'{{"type":"result","rid":"{rid}","messages":"oops"}}', 0.0)
    (failed,) = session.next_events()
    assert isinstance(failed, RequestFailed) and failed.rid == rid
    assert failed.error is not None and failed.error.code is ErrorCode.BAD_FRAME
    assert "could not be decoded" in failed.error.message
    assert session.pending_requests == {}


def test_a_request_without_a_reply_times_out_and_its_late_reply_is_dropped() -> None:
    session = opened(request_timeout_s=5.0)
    rid = session.request(Convs())
    sent(session)
    session.tick(1.0)
    assert session.next_deadline() == 6.0
    session.tick(5.9)
    assert session.next_events() == []
    session.tick(6.0)
    assert session.next_events() == [
        RequestFailed(rid=rid, request=Convs(rid=rid), error=None, timed_out=True)
    ]
    assert session.next_deadline() is None
    feed(session, convs_result(rid, (), more=False, cursor=None), now=7.0)
    assert session.next_events() == []


def test_a_gap_fill_that_fails_is_given_up_until_the_next_jump() -> None:
    session = opened(request_timeout_s=5.0)
    feed(session, msg("c", 1), msg("c", 3), now=1.0)
    (gap,) = [f for f in sent(session) if isinstance(f, History)]
    assert gap.rid is not None and session.conversation("c").gap_request == gap.rid
    with pytest.raises(RemoteProtocolError):
        session.receive_text(f'{{"type":"result","rid":"{gap.rid}","messages":[1]}}', 2.0)
    assert session.conversation("c").gap_request is None
    feed(session, msg("c", 5), now=3.0)
    (again,) = [f for f in sent(session) if isinstance(f, History)]
    assert session.conversation("c").gap_request == again.rid
    session.tick(8.0)
    assert session.conversation("c").gap_request is None
    assert session.next_deadline() is None or session.next_deadline() > 8.0
