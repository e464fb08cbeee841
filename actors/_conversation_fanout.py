"""The fan-out of a conversation actor: pushing stored messages to the devices here.

Messages are pushed in seq order (G4), gaps read back from the Store, and a membership event
newer than the actor's snapshot re-reads the membership first (G7). Part of
:class:`~actors._conversation.ConversationActor` (see :mod:`actors._conversation_state`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from persistence import StoredMessage, StoreError
from protocol import MAX_HISTORY_LIMIT, MemberEvent, RemoteProtocolError

from ._config import DELIVER_TO_REMOVED, PUSH_BEFORE_MEMBERSHIP, PUSH_OUT_OF_ORDER
from ._context import msg_frame
from ._conversation_state import ConversationState
from ._messages import Parted
from ._router import ConnectionHandle

log = logging.getLogger("actors.conversation")


class ConversationFanOut(ConversationState):
    """Pushes a conversation's messages to its viewers' devices on this node."""

    async def _publish(
        self, stored: Sequence[StoredMessage], origins: dict[int, ConnectionHandle]
    ) -> None:
        """Push every message above what this actor already fanned out, in seq order.

        Seqs this actor did not see stored (written by an ambiguous write nobody resent, or by
        another node) are read back so the pushes stay gap-free.
        """
        by_seq = {m.seq: m for m in stored if m.seq > self._published}
        if not by_seq:
            return
        top = max(by_seq)
        missing = [s for s in range(self._published + 1, top) if s not in by_seq]
        if missing:
            try:
                with self._ctx.timed("range"):
                    found = await self._ctx.store.range(self.conv, missing[0], missing[-1])
            except StoreError as exc:
                # Pushing around the gap would break seq order: resync at the next chance.
                log.warning("conversation %s could not read seqs back: %s", self.conv, exc)
                self._resync_at = trio.current_time()
                return
            for m in found:
                by_seq.setdefault(m.seq, m)
        events = [m for m in by_seq.values() if m.kind == "member"]
        changed = any(m.seq > self._membership_seq for m in events)
        if changed and not self._ctx.mutant(PUSH_BEFORE_MEMBERSHIP) and not await self._reload(top):
            return
        if self._published == self._loaded_seq > self._late_seq:
            await self._push_loaded()
        self.last_seq = max(self.last_seq, top)
        for seq in sorted(by_seq, reverse=self._ctx.mutant(PUSH_OUT_OF_ORDER)):
            self._fan_out(by_seq[seq], origins.get(seq))
        self._published = top
        await self._parted(events)

    async def _reload(self, top: int) -> bool:
        """Re-read the membership, which changed at or below ``top`` (another node changed it:
        G7 wants it applied before anything after the change is pushed). False on failure
        (the actor then resyncs before pushing anything more)."""
        try:
            with self._ctx.timed("load_conversation"):
                read_at = self._ctx.wall_ms()
                self._conversation = await self._ctx.store.get_conversation(self.conv)
                self._membership_ms = read_at
        except StoreError as exc:
            log.warning("conversation %s could not reload its membership: %s", self.conv, exc)
            self._resync_at = trio.current_time()
            return False
        self._membership_seq = max(self._membership_seq, top)
        return True

    async def _parted(self, events: Sequence[StoredMessage]) -> None:
        """G6: a removal or leave may end presence subscriptions between the parted users and
        the others; the presence registry checks them."""
        presence = self._ctx.presence
        if presence is None:
            return
        parted: set[str] = set()
        for message in events:
            try:
                event = MemberEvent.parse(message.body)
            except RemoteProtocolError:
                continue
            if event.op in ("remove", "leave"):
                parted.update(event.users)
        if parted:
            await presence.send(Parted(users=tuple(sorted(parted))))

    def _senders_here(self, messages: Sequence[StoredMessage]) -> dict[int, ConnectionHandle]:
        """The sending devices' connections here, of messages the feed brings: their ack
        stands for the message (G4), and an actor started from the feed after the one that
        pushed later seqs to them must not push them their own message below those."""
        router = self._ctx.router
        found = {m.seq: router.get(m.sender, m.device) for m in messages if m.kind == "text"}
        return {seq: handle for seq, handle in found.items() if handle is not None}

    def _push_late(self, messages: Sequence[StoredMessage]) -> None:
        """Fan out what another node stored before this actor loaded but the change feed
        brings only now (it lagged): nobody here pushed it (the feed brings each message
        once), and a device connected before it was stored has no other way to get it live.
        Not once something later was pushed (G4 order: the gap shows, the client fills it),
        nor to a connection pushed it or a later seq already (an actor started from the feed
        pushes the loaded seqs above where it started), and not to the sending device (its ack
        stands for it, G4)."""
        if self._published != self._loaded_seq:
            return
        for message in sorted(messages, key=lambda m: m.seq):
            if self._late_seq < message.seq <= self._loaded_seq:
                self._late_seq = message.seq
                self._push_unseen(message)

    async def _push_loaded(self) -> None:
        """Before the first push above what this actor found stored at its start, push those
        stored messages to the connections here that were pushed nothing up to them.

        Whether an earlier actor here fanned them out is unknown: one started by a request
        while this node's feed lagged behind them takes them as pushed, and ``_push_late``
        stops once something later is pushed. A device connected here before they were stored
        would see the gap, and one whose user departed meanwhile cannot fill it with
        ``history`` (G4; PROTOCOL.md "Visibility"). Each connection gets only seqs above what
        it was pushed (so none breaks seq order), and not its own messages (their ack stands);
        at most ``MAX_HISTORY_LIMIT`` of them (an older gap is filled with ``history``).
        """
        top, low = self._loaded_seq, self._late_seq
        self._late_seq = top
        conv, router = self.conversation, self._ctx.router
        here = [h for u in sorted({*conv.members, *conv.departed}) for h in router.devices(u)]
        reached = min((h.pushed_up_to(self.conv) for h in here), default=top)
        floor = max(low, top - MAX_HISTORY_LIMIT, reached)
        if floor >= top:
            return
        try:
            with self._ctx.timed("range"):
                found = await self._ctx.store.range(self.conv, floor + 1, top)
        except StoreError as exc:
            log.warning("conversation %s could not read its loaded seqs: %s", self.conv, exc)
            return
        for message in found:
            self._push_unseen(message)

    def _push_unseen(self, message: StoredMessage) -> None:
        """Push ``message`` to its viewers' connections here that were pushed nothing up to
        it (so it breaks no connection's seq order), except its sender's (its ack stands)."""
        router = self._ctx.router
        sender = router.get(message.sender, message.device) if message.kind == "text" else None
        frame = msg_frame(message)
        for user in self._viewers(message.seq):
            for handle in router.devices(user):
                if handle is sender or handle.pushed_up_to(self.conv) >= message.seq:
                    continue
                if handle.push(frame):
                    self._ctx.metrics.messages_out.inc()

    def _push_replay(
        self, stored: Sequence[StoredMessage], origins: dict[int, ConnectionHandle]
    ) -> None:
        """Fan out again a replayed send that an earlier actor may never have pushed.

        A resend of a cmid whose first write was ambiguous finds its message stored (a
        replay). When that message is this conversation's newest and this actor found it
        already stored at its start, nobody may have pushed it: push it now. Being the
        newest, it cannot come after a later seq on any connection (G4 order); a device that
        had it already drops the duplicate by (conv, seq). Older replays need nothing: a
        device that lacks one sees the gap below a later push and fills it with ``history``.
        """
        top = self._published
        if top == 0 or top != self._loaded_seq or top not in origins:
            return
        replayed = next((m for m in stored if m.seq == top), None)
        if replayed is not None:
            self._late_seq = top  # nothing older may follow it (_push_late)
            self._fan_out(replayed, origins[top])

    async def _announce(self, message: StoredMessage) -> None:
        """Fan out a message the actor found already stored when it loaded (a creation).

        Not if a later seq was pushed already (an actor a founder started while an ambiguous
        creation was being searched for): that would break seq order (G4); devices that got
        the later seqs fill the gap with ``history``, the others get it at their ``hello``.
        """
        if self._published > message.seq:
            return
        self._late_seq = max(self._late_seq, message.seq)
        self._fan_out(message, None)

    def _viewers(self, seq: int) -> list[str]:
        conv = self.conversation
        everyone = sorted({*conv.members, *conv.departed})
        deliver_to_removed = self._ctx.mutant(DELIVER_TO_REMOVED)
        return [u for u in everyone if conv.can_see(u, seq) or deliver_to_removed]

    def _fan_out(self, message: StoredMessage, origin: ConnectionHandle | None) -> None:
        """Push ``message`` to its viewers' devices here. Offline members are not this
        method's business: every write of a message carries their jobs (G8: ``notify`` of
        ``append``, ``create_group`` and the membership changes)."""
        frame = msg_frame(message)
        router = self._ctx.router
        for user in self._viewers(message.seq):
            for handle in router.devices(user):
                if handle is not origin and handle.push(frame):
                    self._ctx.metrics.messages_out.inc()
