"""The checks on what the Store holds and what devices were shown of it (G1-G4, G7 content)."""

from __future__ import annotations

from persistence import StoredMessage

from ._checker_state import CheckerState
from ._history import (
    Displayed,
    HistorySeen,
    PushSeen,
    SendIssued,
)
from ._report import ranges
from ._truth import ConvTruth, Truth


class StoreChecks(CheckerState):
    """G1-G3 on the Store, acks, send order; content and visibility of pushes and history."""

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
                    f"seqs {ranges(early)}, before the event #{joined} that last added it",
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
