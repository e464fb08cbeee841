"""The invariants G1-G9 of PROTOCOL.md as checks over a run's history and the Store's truth.

One module, used after every step of the chaos phase (:meth:`Checker.check_safety`, the
safety properties: nothing acknowledged is lost, nothing is duplicated, nobody sees what they
may not, receipts and presence never lie) and once after the healed phase
(:meth:`Checker.check_liveness`: every stored message reached every device that may see it,
every send the workload issued was stored). Findings are counted per category the way
Jepsen's total-queue checker reports (lost, duplicated, unexpected, out of order, ...), each
with a one-line explanation that names the device, conversation, seq and virtual time.

The checker is incremental: each call looks at the events recorded since the previous call
and at a fresh :class:`~sim._truth.Truth`, so checking after every step stays cheap.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable

import attrs

from persistence import StoredMessage

from ._history import (
    AckSeen,
    Displayed,
    ErrorSeen,
    Event,
    FrameOut,
    History,
    HistorySeen,
    NackSeen,
    NodeEvent,
    PresenceSeen,
    PushSeen,
    ReceiptSeen,
    SendIssued,
    SendResolved,
    SessionClosed,
    SessionOpened,
    TypingSeen,
)
from ._truth import ConvTruth, Truth, parse_member_body

#: Report categories, in the order they are printed; each maps to the guarantees it checks.
CATEGORIES: dict[str, str] = {
    "lost": "G1/G4: acked or stored messages missing from the Store or from a member device",
    "duplicated": "G2/G4: one cmid stored twice, or one (conv, seq) displayed twice",
    "unexpected": "G3/G7: stored or delivered messages nobody sent, or not as stored",
    "out_of_order": "G3/G4: seq gaps, live pushes or acks out of order",
    "wrong_ack": "G1/G2: an ack whose (conv, seq, id) is not the stored message",
    "untruthful_receipts": "G5: receipts ahead of the recipient's recv/read, or going back",
    "presence_mismatches": "G6: offline reported without grace or while connected",
    "authorization_leaks": "G7: messages, receipts, history or presence outside visibility",
    "notification_misses": "G8: a member with no connection got no notification job, or "
    "one connected all along got one",
    "uncontained": "G9: the node died, answered 'internal', or ignored a bad frame",
}

#: Virtual seconds of slack for comparisons between client-side and node-side moments.
TOLERANCE_S = 0.002
#: How long a session opened on one node may take to reach the others (it is recorded after
#: the hello's backlog, retried after a failed write, and travels through their feeds).
PROPAGATION_S = 2.0
#: A session known to every node: open this long (covers a node cut off from the store, which
#: cannot record its sessions, and a stalled change feed).
JOB_SLACK_S = 15.0


@attrs.define
class Report:
    """Findings per category (deduplicated) plus the faults that fired; see :data:`CATEGORIES`."""

    findings: dict[str, list[str]] = attrs.Factory(lambda: {c: [] for c in CATEGORIES})
    faults: Counter[str] = attrs.Factory(Counter)
    _seen: set[str] = attrs.Factory(set)

    def add(self, category: str, text: str) -> None:
        if text not in self._seen:
            self._seen.add(text)
            self.findings[category].append(text)

    @property
    def ok(self) -> bool:
        return not any(self.findings.values())

    def counts(self) -> dict[str, int]:
        return {c: len(v) for c, v in self.findings.items()}

    def render(self, limit: int = 8) -> str:
        lines = ["invariants: " + ("all hold" if self.ok else "VIOLATED")]
        for category, items in self.findings.items():
            lines.append(f"  {category:<20} {len(items):>4}   ({CATEGORIES[category]})")
            lines.extend(f"      - {text}" for text in items[:limit])
            if len(items) > limit:
                lines.append(f"      ... {len(items) - limit} more")
        fired = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        lines.append(f"  faults fired: {fired}")
        return "\n".join(lines)


@attrs.define
class _Session:
    user: str
    device: str
    session: int
    opened: float
    closed: float | None = None
    node: str = ""


@attrs.define
class Checker:
    """Checks G1-G9 incrementally; ``grace_s`` is the node's presence grace period."""

    history: History
    grace_s: float
    epoch_ms: int
    report: Report = attrs.Factory(Report)
    _cursor: int = 0
    # send bookkeeping
    _sends: dict[str, SendIssued] = attrs.Factory(dict)  # body -> send
    _resolved: dict[str, SendResolved] = attrs.Factory(dict)  # body -> resolution
    _cmid_body: dict[tuple[str, str, str], str] = attrs.Factory(dict)
    _acks: list[AckSeen] = attrs.Factory(list)
    # per device state
    _held: dict[tuple[str, str], set[tuple[str, int]]] = attrs.Factory(lambda: defaultdict(set))
    _displayed: dict[tuple[str, str], set[tuple[str, int]]] = attrs.Factory(
        lambda: defaultdict(set)
    )
    _acked_at: dict[tuple[str, str], set[tuple[str, int]]] = attrs.Factory(lambda: defaultdict(set))
    _pushed: dict[tuple[str, str, int, str], list[int]] = attrs.Factory(lambda: defaultdict(list))
    _session_writes: dict[tuple[str, str, int, str], list[str]] = attrs.Factory(
        lambda: defaultdict(list)
    )
    _writes: Counter[tuple[str, str, int, str]] = attrs.Factory(Counter)
    _first_write: dict[tuple[str, str, str], int] = attrs.Factory(dict)
    _session_acks: dict[tuple[str, str, int], dict[str, int]] = attrs.Factory(
        lambda: defaultdict(dict)
    )
    # receipts and watermarks
    _recv_sent: dict[tuple[str, str], int] = attrs.Factory(dict)  # (user, conv) -> max recv
    _read_sent: dict[tuple[str, str], int] = attrs.Factory(dict)
    _receipt_seen: dict[tuple[str, str, str, str, str, str], int] = attrs.Factory(dict)
    _pending_receipts: list[ReceiptSeen] = attrs.Factory(list)
    _store_recv: dict[tuple[str, str, str], int] = attrs.Factory(dict)
    _store_read: dict[tuple[str, str], int] = attrs.Factory(dict)
    # presence
    _sessions: dict[tuple[str, str, int], _Session] = attrs.Factory(dict)
    _pending_presence: list[PresenceSeen] = attrs.Factory(list)
    _node_starts: list[float] = attrs.Factory(list)
    _closed_at: dict[tuple[str, str, int], float] = attrs.Factory(dict)
    # G9: bad frames awaiting their error/nack, per (user, device, session)
    _garbage: dict[tuple[str, str, int], list[FrameOut]] = attrs.Factory(lambda: defaultdict(list))
    # content checks against the store wait until the Store holds the seq (G1 checks it)
    _pending_content: list[PushSeen | Displayed | HistorySeen] = attrs.Factory(list)
    # G7 after a departure: (user, device, conv) -> [(seq, when read)] of the events removing
    # ``user`` that were pushed to ``device`` (so the node knew of them). Frames read or
    # written later carry the latest seq as ``told`` (None: no departure told yet).
    _departures: dict[tuple[str, str, str], list[tuple[int, float]]] = attrs.Factory(
        lambda: defaultdict(list)
    )
    _pending_receipt_told: list[int | None] = attrs.Factory(list)
    _pending_typing: list[tuple[TypingSeen, int | None]] = attrs.Factory(list)
    # (user, conv) -> [(when written, told)] of typing frames; (user, conv, kind) ->
    # [(seq, when written, told)] of recv/read frames: what may cause notices and receipts
    _typing_frames: dict[tuple[str, str], list[tuple[float, int | None]]] = attrs.Factory(
        lambda: defaultdict(list)
    )
    _mark_frames: dict[tuple[str, str, str], list[tuple[int, float, int | None]]] = attrs.Factory(
        lambda: defaultdict(list)
    )
    # (viewer user, viewer device, of_user, conv) -> when the previous notice was read
    _typing_seen_at: dict[tuple[str, str, str, str], float] = attrs.Factory(dict)
    # Store checks: conv -> messages checked; (sender, device, body) -> where it is stored
    _store_checked: dict[str, int] = attrs.Factory(dict)
    _copies: dict[tuple[str, str, str], list[str]] = attrs.Factory(lambda: defaultdict(list))
    # (user, last_seen) -> the earliest write of an ``offline`` frame saying so
    _offline_sent: dict[tuple[str, int | None], float] = attrs.Factory(dict)
    # user -> when a device of theirs first wrote ``hello`` (nobody is online before)
    _first_hello: dict[str, float] = attrs.Factory(dict)
    # node -> when the world crashed it; when a survivor swept its expired lease (from then
    # on the deployment counts its devices as disconnected, PROTOCOL "Several nodes")
    _crashed_at: dict[str, float] = attrs.Factory(dict)
    _swept_at: dict[str, list[float]] = attrs.Factory(lambda: defaultdict(list))
    # node -> [(from, to)] while it could not learn from its feed or write to the store
    _lags: dict[str, list[tuple[float, float]]] = attrs.Factory(lambda: defaultdict(list))

    # ------------------------------------------------------------------ public

    def check_safety(self, truth: Truth) -> Report:
        """Consume the events since the last call and check every safety property."""
        self._consume_new()
        self._check_store(truth)
        self._check_content(truth)
        self._check_receipts(truth)
        self._check_typing(truth)
        self._check_presence(truth)
        self.report.faults = Counter(self.history.faults)
        return self.report

    def check_liveness(self, truth: Truth, devices: Iterable[tuple[str, str]]) -> Report:
        """After the healed phase: every send stored, every visible message on every device."""
        self.check_safety(truth)
        for body, send in sorted(self._sends.items()):
            resolved = self._resolved.get(body)
            if resolved is not None and resolved.error is not None:
                continue  # definitively refused (nack retry=false): nothing to deliver
            stored = self._stored_by_body(truth, send)
            if stored is None:
                self.report.add(
                    "lost", f"send {body!r} of {send.user}/{send.device} was never stored"
                )
        for user, device in devices:
            held = self._held[(user, device)]
            for conv_id, conv in truth.convs.items():
                missing = [
                    m.seq
                    for m in conv.messages
                    if conv.visible_now(user, m.seq) and (conv_id, m.seq) not in held
                ]
                if missing:
                    self.report.add(
                        "lost",
                        f"{user}/{device} never got {conv_id} seqs {_ranges(missing)} "
                        f"(last_seq {conv.last_seq})",
                    )
        self.check_notifications(truth)
        self._check_garbage_answered()
        self._check_claims_released()
        return self.report

    def _check_claims_released(self) -> None:
        """Several nodes: a node declared dead while alive must close the connections it had
        (its devices count as disconnected everywhere; they must reconnect and be recorded
        anew), at the latest once it reaches the store again -- so none is left by now."""
        for s in self._sessions.values():
            if s.closed is not None:
                continue
            swept = [t for t in self._swept_at.get(s.node, ()) if t >= s.opened]
            if swept:
                self.report.add(
                    "presence_mismatches",
                    f"{s.user}/{s.device} session {s.session} is still connected to {s.node}, "
                    f"which was declared dead at {swept[0]:.3f} (it must close its "
                    "connections once it learns so)",
                )

    def _check_garbage_answered(self) -> None:
        """G9: a bad frame on a connection that is still up (so nothing stalled or cut it
        since) must have had its error or nack by the end of the healed phase."""
        for (user, device, session), pending in self._garbage.items():
            state = self._sessions.get((user, device, session))
            if state is None or state.closed is not None:
                continue
            for frame in pending:
                text = str(frame.get("text"))[:60]
                self.report.add(
                    "uncontained",
                    f"{user}/{device} session {session} wrote bad frame {text!r} at "
                    f"{frame.at:.3f} and never got an error or nack",
                )

    def check_offline_reported(
        self, of_user: str, since: float, observers: Iterable[tuple[str, str]]
    ) -> Report:
        """G6 liveness: ``of_user``'s last device left at ``since``; each observer subscribed
        to them must have been told ``offline`` after the grace, with a true ``last_seen``."""
        self._consume_new()
        for user, device in observers:
            told = [
                e
                for e in self.history.events[: self._cursor]
                if isinstance(e, PresenceSeen)
                and (e.user, e.device, e.of_user, e.status) == (user, device, of_user, "offline")
                and e.at >= since
            ]
            if not told:
                self.report.add(
                    "presence_mismatches",
                    f"{user}/{device} was never told {of_user} went offline (left at "
                    f"{since:.3f}, grace {self.grace_s} s)",
                )
                continue
            seen_ms = told[0].last_seen
            left_ms = self.epoch_ms + int(since * 1000)
            if seen_ms is None or not left_ms - 1 <= seen_ms <= self.epoch_ms + told[0].at * 1000:
                self.report.add(
                    "presence_mismatches",
                    f"{user}/{device} was told {of_user} last_seen={seen_ms}, but they left at "
                    f"{left_ms} ms",
                )
        return self.report

    def _consume_new(self) -> None:
        new = self.history.events[self._cursor :]
        self._cursor = len(self.history.events)
        for event in new:
            self._consume(event, None)

    # ------------------------------------------------------------------ events

    def _consume(self, event: Event, _truth: Truth | None) -> None:
        match event:
            case SendIssued(body=body):
                self._sends[body] = event
            case FrameOut():
                self._on_frame_out(event)
            case AckSeen():
                self._acks.append(event)
                dev = (event.user, event.device)
                self._held[dev].add((event.conv, event.seq))
                self._acked_at[dev].add((event.conv, event.seq))
                acks = self._session_acks[(event.user, event.device, event.session)]
                acks.setdefault(event.cmid, event.seq)
            case ErrorSeen(rid=None) | NackSeen(code="bad_frame" | "too_large") if (
                event.code != "unauthenticated"  # a token's expiry, not a bad frame's answer
                and self._garbage[(event.user, event.device, event.session)]
            ):
                self._garbage[(event.user, event.device, event.session)].pop(0)
                if isinstance(event, NackSeen):
                    self._writes[(event.user, event.device, event.session, event.cmid)] += 1
            case NackSeen():
                # A nacked send may be stored by a later resend on the same connection, after
                # sends written behind it: it no longer tells anything about arrival order.
                self._writes[(event.user, event.device, event.session, event.cmid)] += 1
            case PushSeen():
                self._on_push(event)
            case Displayed():
                self._on_display(event)
            case HistorySeen():
                self._pending_content.append(event)
            case ReceiptSeen() | TypingSeen():
                self._on_notice(event)
            case PresenceSeen():
                self._on_presence(event)
            case SessionOpened(user=user, device=device, session=session, at=at, node=node):
                # The link may already be down: the SDK reads a welcome the node wrote just
                # before a reset, so "opened" can follow "closed" for the same session.
                closed = self._closed_at.get((user, device, session))
                self._sessions[(user, device, session)] = _Session(
                    user, device, session, at if closed is None else min(at, closed), closed, node
                )
            case SessionClosed(user=user, device=device, session=session, at=at):
                self._closed_at.setdefault((user, device, session), at)
                found = self._sessions.get((user, device, session))
                if found is not None and found.closed is None:
                    found.closed = at
            case NodeEvent():
                self._on_node(event)
            case SendResolved():
                self._on_resolved(event)
            case _:
                pass
        if isinstance(event, ErrorSeen) and event.code == "internal":
            self.report.add(
                "uncontained", f"{event.user}/{event.device} got error internal: {event.message}"
            )

    def _on_node(self, event: NodeEvent) -> None:
        match event.what:
            case "started":
                self._node_starts.append(event.at)
            case "crashed":
                self._crashed_at[event.node] = event.at
            case "swept":
                self._swept_at[event.node].append(event.at)
            case "lagging":
                self._lags[event.node].append((event.at, math.inf))
            case "caught up":
                lags = self._lags[event.node]
                if lags and lags[-1][1] == math.inf:
                    lags[-1] = (lags[-1][0], event.at)
            case "died":
                self.report.add("uncontained", f"node {event.node} died by itself: {event.detail}")

    def _on_presence(self, event: PresenceSeen) -> None:
        self._pending_presence.append(event)
        if event.status == "offline":
            key = (event.of_user, event.last_seen)
            first = self._offline_sent.get(key, event.sent_at)
            self._offline_sent[key] = min(first, event.sent_at)

    def _on_notice(self, event: ReceiptSeen | TypingSeen) -> None:
        """Queue a receipt or typing notice, with the departure its device knew of then."""
        told = self._told(event.user, event.device, event.conv)
        if isinstance(event, ReceiptSeen):
            self._pending_receipts.append(event)
            self._pending_receipt_told.append(told)
        else:
            self._pending_typing.append((event, told))

    def _on_display(self, event: Displayed) -> None:
        dev = (event.user, event.device)
        if (event.conv, event.seq) in self._displayed[dev]:
            self.report.add(
                "duplicated",
                f"{event.user}/{event.device} displayed {event.conv}#{event.seq} twice "
                f"(at {event.at:.3f})",
            )
        elif (event.conv, event.seq) in self._acked_at[dev]:
            self.report.add(
                "duplicated",
                f"{event.user}/{event.device} displayed its own acked "
                f"{event.conv}#{event.seq} again (at {event.at:.3f})",
            )
        self._displayed[dev].add((event.conv, event.seq))
        self._held[dev].add((event.conv, event.seq))
        self._pending_content.append(event)

    def _on_resolved(self, event: SendResolved) -> None:
        body = self._cmid_body.get((event.user, event.device, event.cmid))
        if body is not None:
            self._resolved[body] = event
        if event.conv is not None and event.seq is not None:
            self._held[(event.user, event.device)].add((event.conv, event.seq))
            self._acked_at[(event.user, event.device)].add((event.conv, event.seq))

    def _on_frame_out(self, frame: FrameOut) -> None:
        user, device = frame.user, frame.device
        if frame.type == "send":
            cmid, body = str(frame.get("cmid")), str(frame.get("body"))
            self._cmid_body.setdefault((user, device, cmid), body)
            target = str(frame.get("conv") or "to:" + str(frame.get("to")))
            self._writes[(user, device, frame.session, cmid)] += 1
            first = self._first_write.setdefault((user, device, cmid), frame.session)
            if first == frame.session:
                # Only first writes tell arrival order: a resend may find its cmid stored
                # (or queued) from an earlier connection, after sends written behind it here.
                self._session_writes[(user, device, frame.session, target)].append(cmid)
        elif frame.type == "garbage":
            self._garbage[(user, device, frame.session)].append(frame)
        elif frame.type in ("recv", "read"):
            conv, seq = str(frame.get("conv")), frame.get("seq")
            if isinstance(seq, int):
                marks = self._recv_sent if frame.type == "recv" else self._read_sent
                marks[(user, conv)] = max(marks.get((user, conv), 0), seq)
                told = self._told(user, device, conv)
                self._mark_frames[(user, conv, frame.type)].append((seq, frame.at, told))
        elif frame.type == "hello":
            self._first_hello.setdefault(user, frame.at)
        elif frame.type == "typing":
            conv = str(frame.get("conv"))
            self._typing_frames[(user, conv)].append((frame.at, self._told(user, device, conv)))

    def _told(self, user: str, device: str, conv: str, before: float | None = None) -> int | None:
        """The latest departure of ``user`` from ``conv`` pushed to ``device`` (read before
        ``before``, if given)."""
        told = self._departures.get((user, device, conv))
        seqs = [seq for seq, at in told or () if before is None or at < before - TOLERANCE_S]
        return max(seqs) if seqs else None

    def _departed(self, conv: ConvTruth, user: str, told: int | None, at: float) -> bool:
        """True if ``user`` had been told of departure ``told`` and no (re)add the node could
        know of by ``at`` followed it: the node then knew ``user`` was out (G7)."""
        if told is None:
            return False
        at_ms = self.epoch_ms + int(at * 1000)
        return conv.joined_by(user, at_ms, after_seq=told) is None

    def _on_push(self, push: PushSeen) -> None:
        if push.kind == "member":
            joined, users = parse_member_body(push.body)
            if not joined and push.user in users:
                self._departures[(push.user, push.device, push.conv)].append((push.seq, push.at))
        key = (push.user, push.device, push.session, push.conv)
        seen = self._pushed[key]
        if seen and push.seq < max(seen) and push.seq not in seen:
            self.report.add(
                "out_of_order",
                f"{push.user}/{push.device} session {push.session} got {push.conv}#{push.seq} "
                f"after #{max(seen)} (at {push.at:.3f})",
            )
        seen.append(push.seq)
        self._pending_content.append(push)

    # ------------------------------------------------------------------ store checks

    def _stored_by_body(self, truth: Truth, send: SendIssued) -> StoredMessage | None:
        for key, messages in truth.by_key.items():
            if key[0] == send.user and key[1] == send.device:
                for message in messages:
                    if message.body == send.body:
                        return message
        return None

    def _check_store(self, truth: Truth) -> None:
        """G2/G3 on what the Store holds; each stored message is looked at once (the Store
        only appends), so checking after every step stays cheap."""
        for conv_id, conv in truth.convs.items():
            known = self._store_checked.get(conv_id, 0)
            if known == conv.last_seq:
                continue
            self._store_checked[conv_id] = conv.last_seq
            for index, message in enumerate(conv.messages[known:], start=known + 1):
                if message.seq != index:
                    self.report.add(
                        "out_of_order", f"{conv_id} holds seq {message.seq} at position {index}"
                    )
                    break
                self._check_identity(message, conv, truth)
        self._check_acks(truth)
        self._check_send_order()

    def _check_identity(self, message: StoredMessage, conv: ConvTruth, truth: Truth) -> None:
        """G2 and "nobody sends as another": one stored message per cmid and per send."""
        if message.kind != "text" or message.cmid is None:
            return
        sender, device, cmid = message.sender, message.device, message.cmid
        copies = truth.by_key.get((sender, device, cmid), ())
        if len(copies) > 1:
            where = ", ".join(f"{m.conv}#{m.seq}" for m in copies)
            self.report.add(
                "duplicated", f"cmid {cmid} of {sender}/{device} stored {len(copies)}x: {where}"
            )
        if not conv.can_see(sender, message.seq):
            self.report.add(
                "authorization_leaks",
                f"{message.conv}#{message.seq} was stored from {sender}, not a member "
                "then (a refused send must leave no trace)",
            )
        body = self._cmid_body.get((sender, device, cmid))
        send = self._sends.get(message.body)
        if body != message.body or send is None or send.user != sender:
            self.report.add(
                "unexpected",
                f"{message.conv}#{message.seq} from {sender}/{device} cmid {cmid} "
                f"body {message.body!r} matches no send that device wrote",
            )
        # The workload gives every logical send a unique body: storing one twice is a
        # duplicate even when the two copies carry different cmids (a client resending badly).
        places = self._copies[(sender, device, message.body)]
        places.append(f"{message.conv}#{message.seq} cmid {cmid}")
        if len(places) > 1:
            self.report.add(
                "duplicated",
                f"send {message.body!r} of {sender}/{device} stored {len(places)}x: "
                + ", ".join(places),
            )

    def _check_acks(self, truth: Truth) -> None:
        """G1: an ack names the stored message of its cmid (checked once, when it arrives)."""
        for ack in self._acks:
            stored = truth.by_key.get((ack.user, ack.device, ack.cmid))
            where = f"{ack.user}/{ack.device} ack {ack.cmid} -> {ack.conv}#{ack.seq} id={ack.id}"
            if not stored:
                self.report.add("lost", f"{where} (at {ack.at:.3f}) is not in the Store")
                continue
            first = stored[0]
            if (first.conv, first.seq, first.id) != (ack.conv, ack.seq, ack.id):
                self.report.add(
                    "wrong_ack",
                    f"{where}, but the Store has {first.conv}#{first.seq} id={first.id}",
                )
        self._acks = []

    def _check_send_order(self) -> None:
        """G3: sends first written on one connection to one target are stored in that order."""
        for write_key, writes in self._session_writes.items():
            user, device, session, _target = write_key
            acked = self._session_acks.get((user, device, session), {})
            once = [c for c in writes if self._writes[(user, device, session, c)] == 1]
            order = [(cmid, acked[cmid]) for cmid in once if cmid in acked]
            seqs = [seq for _cmid, seq in order]
            if seqs != sorted(seqs):
                self.report.add(
                    "out_of_order",
                    f"{user}/{device} session {session} sent {[c for c, _ in order]} in that "
                    f"order but they were acked at seqs {seqs}",
                )

    def _check_content(self, truth: Truth) -> None:
        """G3/G7: what devices were shown is what the Store holds, and theirs to see."""
        waiting: list[PushSeen | Displayed | HistorySeen] = []
        for event in self._pending_content:
            if isinstance(event, HistorySeen):
                self._check_history(event, truth)
                continue
            conv = truth.convs.get(event.conv)
            stored = truth.message(event.conv, event.seq)
            if conv is None or stored is None:
                waiting.append(event)  # not stored yet: look again after the next step
                continue
            what = "pushed" if isinstance(event, PushSeen) else "displayed"
            if stored.id != event.id or stored.body != event.body:
                self.report.add(
                    "unexpected",
                    f"{event.user}/{event.device} {what} {event.conv}#{event.seq} "
                    f"id={event.id} body={event.body!r}, Store has id={stored.id} "
                    f"body={stored.body!r}",
                )
            if not conv.can_see(event.user, event.seq):
                self.report.add(
                    "authorization_leaks",
                    f"{event.user}/{event.device} {what} {event.conv}#{event.seq}, outside "
                    f"{event.user}'s visibility {list(conv.periods.get(event.user, ()))} "
                    f"(at {event.at:.3f})",
                )
        self._pending_content = waiting

    def _check_history(self, event: HistorySeen, truth: Truth) -> None:
        conv = truth.convs.get(event.conv)
        who = f"{event.user}/{event.device}"
        if conv is not None:
            # Told of the departure before asking, and not re-added by the answer (the node
            # may read the request long after it was asked, behind a slow link).
            told = self._told(event.user, event.device, event.conv, before=event.asked_at)
            if self._departed(conv, event.user, told, event.at):
                self.report.add(
                    "authorization_leaks",
                    f"{who} got history of {event.conv} (asked at {event.asked_at:.3f}) after "
                    f"it was pushed its departure #{told}: must be forbidden",
                )
            # PROTOCOL Visibility: from the event that (last) added them on.
            joined = conv.joined_by(event.user, self.epoch_ms + int(event.asked_at * 1000))
            early = [seq for seq, _mid in event.messages if joined is not None and seq < joined]
            if early:
                self.report.add(
                    "authorization_leaks",
                    f"{who} history of {event.conv} (asked at {event.asked_at:.3f}) listed "
                    f"seqs {_ranges(early)}, before the event #{joined} that last added it",
                )
        for seq, mid in event.messages:
            stored = truth.message(event.conv, seq)
            if conv is None or stored is None or stored.id != mid:
                self.report.add(
                    "unexpected",
                    f"{event.user}/{event.device} history listed {event.conv}#{seq} "
                    f"id={mid}, not as stored",
                )
            elif not conv.can_see(event.user, seq):
                self.report.add(
                    "authorization_leaks",
                    f"{event.user}/{event.device} history listed {event.conv}#{seq} "
                    f"outside its visibility (at {event.at:.3f})",
                )

    # ------------------------------------------------------------------ G5 receipts

    def _check_receipts(self, truth: Truth) -> None:
        for receipt, told in zip(self._pending_receipts, self._pending_receipt_told, strict=True):
            self._check_receipt(receipt, truth)
            self._check_receipt_visibility(receipt, told, truth)
        self._pending_receipts = []
        self._pending_receipt_told = []
        self._check_marks_clamped(truth)
        for recv_key, seq in truth.recv.items():
            before = self._store_recv.get(recv_key, 0)
            if seq < before:
                self.report.add(
                    "untruthful_receipts", f"stored recv of {recv_key} went back {before} -> {seq}"
                )
            self._store_recv[recv_key] = max(seq, before)
        for read_key, seq in truth.read.items():
            before = self._store_read.get(read_key, 0)
            if seq < before:
                self.report.add(
                    "untruthful_receipts", f"stored read of {read_key} went back {before} -> {seq}"
                )
            self._store_read[read_key] = max(seq, before)

    def _check_receipt_visibility(
        self, receipt: ReceiptSeen, told: int | None, truth: Truth
    ) -> None:
        """G7 both ways and G5's clamp: a device told of its user's departure gets no more
        receipts of that conversation; a receipt about a departed user is never caused by a
        mark written after they were told, and never goes above their departure."""
        conv = truth.convs.get(receipt.conv)
        if conv is None:
            return
        who = f"{receipt.user}/{receipt.device}"
        if self._departed(conv, receipt.user, told, receipt.at):
            self.report.add(
                "authorization_leaks",
                f"{who} got a receipt of {receipt.of_user} in {receipt.conv} at "
                f"{receipt.at:.3f}, after it was pushed its departure #{told}",
            )
        subject = receipt.of_user
        own = max(
            (m.seq for m in conv.messages if m.sender == subject and m.kind == "text"),
            default=0,
        )
        at_ms = self.epoch_ms + int(receipt.at * 1000)
        for field, value, kind in (
            ("delivered", receipt.delivered, "recv"),
            ("read", receipt.read, "read"),
        ):
            if value is None:
                continue
            frames = self._mark_frames.get((subject, receipt.conv, kind), ())
            member_max = max(
                (s for s, _at, t in frames if not self._departed(conv, subject, t, receipt.at)),
                default=0,
            )
            any_max = max((s for s, _at, _t in frames), default=0)
            if kind == "recv":
                member_max, any_max = max(member_max, own), max(any_max, own)
            if member_max < value <= any_max:
                self.report.add(
                    "authorization_leaks",
                    f"{who} got {subject}'s {field}={value} in {receipt.conv} at "
                    f"{receipt.at:.3f}: only a mark {subject} wrote after being told of "
                    f"their departure reaches it (as a member: {member_max})",
                )
            out = conv.out_at(subject, at_ms)
            if out is not None and value > out:
                self.report.add(
                    "untruthful_receipts",
                    f"{who} got {subject}'s {field}={value} in {receipt.conv} at "
                    f"{receipt.at:.3f}, above their departure at #{out} (G5: clamped there)",
                )

    def _check_marks_clamped(self, truth: Truth) -> None:
        """G5: a departed member's stored watermarks stay at or below their departure."""
        marks: list[tuple[str, str, int]] = [
            (user, conv, seq) for (user, _device, conv), seq in truth.recv.items()
        ]
        marks.extend((user, conv, seq) for (user, conv), seq in truth.read.items())
        for user, conv_id, seq in marks:
            conv = truth.convs.get(conv_id)
            out = conv.departed_at(user) if conv is not None else None
            if out is not None and seq > out:
                self.report.add(
                    "untruthful_receipts",
                    f"the Store holds a watermark {seq} of {user} in {conv_id}, above their "
                    f"departure at #{out}",
                )

    # ------------------------------------------------------------------ G7 typing

    def _check_typing(self, truth: Truth) -> None:
        """G7 for ``typing``: relayed only between members, in both directions."""
        for notice, told in self._pending_typing:
            conv = truth.convs.get(notice.conv)
            if conv is None:
                continue
            who = f"{notice.user}/{notice.device}"
            key = (notice.user, notice.device, notice.of_user, notice.conv)
            since = self._typing_seen_at.get(key, -1.0)
            self._typing_seen_at[key] = notice.at
            if not conv.ever_member(notice.user) or not conv.ever_member(notice.of_user):
                self.report.add(
                    "authorization_leaks",
                    f"{who} got typing of {notice.of_user} in {notice.conv}, not both members",
                )
                continue
            if self._departed(conv, notice.user, told, notice.at):
                self.report.add(
                    "authorization_leaks",
                    f"{who} got typing of {notice.of_user} in {notice.conv} at "
                    f"{notice.at:.3f}, after it was pushed its departure #{told}",
                )
            # The frames that may have caused it: written since the previous notice (with
            # slack for slow links); it leaks if every one was written by a departed member.
            frames = [
                (at, t)
                for at, t in self._typing_frames.get((notice.of_user, notice.conv), ())
                if since - 2.0 < at <= notice.at
            ]
            # (a re-add stored before the notice arrived may have been applied before the frame)
            if frames and all(
                self._departed(conv, notice.of_user, t, notice.at) for _, t in frames
            ):
                self.report.add(
                    "authorization_leaks",
                    f"{who} got typing of {notice.of_user} in {notice.conv} at "
                    f"{notice.at:.3f}, relayed from after {notice.of_user} was told of their "
                    "departure",
                )
        self._pending_typing = []

    def _check_receipt(self, receipt: ReceiptSeen, truth: Truth) -> None:
        conv = truth.convs.get(receipt.conv)
        who = f"{receipt.user}/{receipt.device}"
        if conv is None or not conv.ever_member(receipt.user):
            self.report.add(
                "authorization_leaks",
                f"{who} got a receipt for {receipt.conv}, never its conversation",
            )
            return
        # An ack moves the sender's own watermark (G4), so its own seqs count as received.
        own = max(
            (m.seq for m in conv.messages if m.sender == receipt.of_user and m.kind == "text"),
            default=0,
        )
        recv_sent = max(self._recv_sent.get((receipt.of_user, receipt.conv), 0), own)
        read_sent = self._read_sent.get((receipt.of_user, receipt.conv), 0)
        for field, value, sent in (
            ("delivered", receipt.delivered, recv_sent),
            ("read", receipt.read, read_sent),
        ):
            if value is None:
                continue
            if value > sent:
                self.report.add(
                    "untruthful_receipts",
                    f"{who} told {receipt.of_user} {field}={value} in {receipt.conv} at "
                    f"{receipt.at:.3f}, but {receipt.of_user}'s devices reported only {sent}",
                )
            # Per sending node: a node whose change feed lags may repeat an older mark to a
            # device that reconnected to it from a node that was ahead.
            key = (receipt.user, receipt.device, receipt.conv, receipt.of_user, field, receipt.node)
            before = self._receipt_seen.get(key, 0)
            if value < before:
                self.report.add(
                    "untruthful_receipts",
                    f"{who} saw {receipt.of_user}'s {field} in {receipt.conv} go back from "
                    f"{before} to {value} (at {receipt.at:.3f})",
                )
            self._receipt_seen[key] = max(before, value)

    # ------------------------------------------------------------------ G6 presence

    def _check_presence(self, truth: Truth) -> None:
        for seen in self._pending_presence:
            self._check_presence_frame(seen, truth)
        self._pending_presence = []

    def _check_presence_frame(self, seen: PresenceSeen, truth: Truth) -> None:
        who = f"{seen.user}/{seen.device}"
        shared = any(
            c.ever_member(seen.user) and c.ever_member(seen.of_user) for c in truth.convs.values()
        )
        if not shared:
            self.report.add(
                "authorization_leaks",
                f"{who} got presence of {seen.of_user}, who shares no conversation with it",
            )
        sessions = [s for s in self._sessions.values() if s.user == seen.of_user]
        # Judge the node at the moment it wrote the frame: a stalled or slow reader may read
        # an old "offline" long after the user came back. One decision (same user, same
        # last_seen) is written to every subscriber; a slow connection writer may write it
        # later than the others, so the earliest write stands for the decision.
        sent = seen.sent_at
        if seen.status == "offline":
            sent = min(sent, self._offline_sent.get((seen.of_user, seen.last_seen), sent))
        if seen.status == "offline":
            open_then = [
                s
                for s in sessions
                if s.opened <= sent
                and (
                    (end := self._claimed_until(s)) is None
                    or end > sent - self.grace_s + TOLERANCE_S
                )
                and not self._unknown_to(seen.node, s, sent)
            ]
            if open_then:
                s = open_then[0]
                closed = "still open" if s.closed is None else f"closed at {s.closed:.3f}"
                restarts = [
                    t for t in self._node_starts if s.closed is not None and s.closed <= t <= sent
                ]
                context = f"; the node restarted at {restarts[0]:.3f}" if restarts else ""
                self.report.add(
                    "presence_mismatches",
                    f"{who} was told {seen.of_user} offline (sent at {sent:.3f}), but "
                    f"{s.device} session {s.session} {closed} (grace {self.grace_s} s{context})",
                )
        elif seen.status == "online" and self._first_hello.get(seen.of_user, math.inf) > seen.at:
            self.report.add(
                "presence_mismatches",
                f"{who} told {seen.of_user} online at {seen.at:.3f} before any hello",
            )

    def _claimed_until(self, s: _Session) -> float | None:
        """When the deployment stopped counting session ``s`` as connected (None: it still
        does): its close, or the sweep of its node's lease if that came first (a node
        declared dead while alive keeps its connections until it learns so)."""
        for swept in self._swept_at.get(s.node, ()):
            if s.opened <= swept and (s.closed is None or swept < s.closed):
                return swept
        return s.closed

    def _unknown_to(self, node: str, s: _Session, at: float) -> bool:
        """True if ``node`` could not know by ``at`` that session ``s`` (on another node) was
        open: it opened less than ``PROPAGATION_S`` before, or one of the two nodes lagged
        (stalled feed, store cut off) since it opened."""
        if not node or s.node == node:
            return False
        if s.opened > at - PROPAGATION_S:
            return True
        return any(
            lo <= at and hi >= s.opened for n in (node, s.node) for lo, hi in self._lags.get(n, ())
        )

    # ------------------------------------------------------------------ G8 notifications

    def _counted_until(self, s: _Session) -> float | None:
        """When the deployment stopped counting ``s`` as connected, for G8: a session its
        node's crash ended counts until that node's lease was swept (None: not yet)."""
        crashed = self._crashed_at.get(s.node)
        if s.closed is not None and crashed is not None and s.closed >= crashed - TOLERANCE_S:
            return next((t for t in self._swept_at.get(s.node, ()) if t >= crashed), None)
        return s.closed

    def _check_job_needed(self, user: str, conv: str, first_ts: int) -> None:
        """G8 the other way: a job is opened only for a member with no connected device, so
        not for one whose session was open (and known everywhere: ``JOB_SLACK_S``) around it."""
        at = (first_ts - self.epoch_ms) / 1000
        for s in self._sessions.values():
            if s.user != user or s.opened > at - JOB_SLACK_S:
                continue
            until = self._claimed_until(s)
            if until is None or until > at + 1.0:
                self.report.add(
                    "notification_misses",
                    f"a notification job for {user} was opened at {at:.3f} ({conv}), but "
                    f"{s.device} session {s.session} was connected to {s.node} since "
                    f"{s.opened:.3f}",
                )
                return

    def _offline_throughout(self, user: str, lo: float, hi: float) -> bool:
        for s in self._sessions.values():
            if s.user != user or s.opened > hi:
                continue
            until = self._counted_until(s)
            if until is None or until >= lo:
                return False
        return True

    def check_notifications(self, truth: Truth) -> Report:
        """G8: every message stored while a member was surely offline has a job for them."""
        jobs_by_user: dict[str, list[int]] = defaultdict(list)
        for job in truth.jobs:
            jobs_by_user[job.user].append(job.last_ts)
            self._check_job_needed(job.user, job.conv, job.first_ts)
        for conv_id, conv in truth.convs.items():
            for message in conv.messages:
                if message.kind != "text":
                    continue
                at = (message.ts - self.epoch_ms) / 1000
                for user in conv.conv.members:
                    if user == message.sender or not conv.can_see(user, message.seq):
                        continue
                    if not self._offline_throughout(user, at - 1.0, at + 1.0):
                        continue
                    if not any(ts >= message.ts for ts in jobs_by_user.get(user, [])):
                        self.report.add(
                            "notification_misses",
                            f"{user} was offline when {conv_id}#{message.seq} was stored at "
                            f"{at:.3f}, and no notification job covers it",
                        )
        return self.report


def _ranges(seqs: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"``."""
    out: list[str] = []
    start = prev = seqs[0]
    for seq in seqs[1:]:
        if seq != prev + 1:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = seq
        prev = seq
    out.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(out)
