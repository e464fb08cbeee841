"""The checks on receipts (G5, G7), typing (G7), presence (G6) and notification jobs (G8)."""

from __future__ import annotations

import math
from collections import defaultdict

from ._checks_store import StoreChecks
from ._history import (
    PresenceSeen,
    ReceiptSeen,
)
from ._report import JOB_SLACK_S, TOLERANCE_S, Report
from ._truth import Truth


class NoticeChecks(StoreChecks):
    """Receipts, typing, presence and notification jobs."""

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

    # ------------------------------------------------------------------ G8 notifications

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
