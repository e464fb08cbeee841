"""The invariants G1-G9 of PROTOCOL.md as checks over a run's history and the Store's truth.

The one invariants module (its checks live in :mod:`sim._checks_store` and
:mod:`sim._checks_notices`, its memory in :mod:`sim._checker_state`), used after every step
of the chaos phase (:meth:`Checker.check_safety`, the safety properties: nothing
acknowledged is lost, nothing is duplicated, nobody sees what they may not, receipts and
presence never lie) and once after the healed phase
(:meth:`Checker.check_liveness`: every stored message reached every device that may see it,
every send the workload issued was stored). Findings are counted per category the way
Jepsen's total-queue checker reports (lost, duplicated, unexpected, out of order, ...), each
with a one-line explanation that names the device, conversation, seq and virtual time.

The checker is incremental: each call looks at the events recorded since the previous call
and at a fresh :class:`~sim._truth.Truth`, so checking after every step stays cheap.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from ._checker_state import _Session
from ._checks_notices import NoticeChecks
from ._history import (
    AckSeen,
    Displayed,
    ErrorSeen,
    Event,
    FrameOut,
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
from ._report import CATEGORIES, Report, ranges
from ._truth import Truth, parse_member_body

__all__ = ["CATEGORIES", "Checker", "Report"]


class Checker(NoticeChecks):
    """Checks G1-G9 incrementally (see the module docstring)."""

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
                        f"{user}/{device} never got {conv_id} seqs {ranges(missing)} "
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
