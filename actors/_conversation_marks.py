"""The marks, receipts and typing of a conversation actor.

``recv``/``read`` marks are coalesced for ``watermark_window_s`` (by default: until the end
of the batch that raised them) and handed to the node's
:class:`~actors._watermarks.MarkWriter`; the receipts they earn go out only once they are
written (G5), under the actor's current membership (G7). Typing notices are relayed at most
once per ``typing_interval_s`` per member. Part of
:class:`~actors._conversation.ConversationActor` (see :mod:`actors._conversation_state`).
"""

from __future__ import annotations

import logging
import math

import trio

from persistence import FeedMarks, FeedTyping, StoreError
from protocol import ErrorCode, Receipt, TypingNotice

from ._config import (
    RECEIPTS_FROM_DEPARTED,
    RECEIPTS_TO_REMOVED,
    TYPING_FROM_DEPARTED,
    TYPING_TO_REMOVED,
)
from ._conversation_state import ConversationState
from ._messages import MarkRequest, TypingRequest
from ._router import ConnectionHandle

log = logging.getLogger("actors.conversation")


class ConversationMarks(ConversationState):
    """Marks, receipts and typing of one conversation."""

    async def _sender_holds(self, origin: ConnectionHandle, seq: int) -> None:
        """G4: the ack moves the sending device's recv mark to ``seq`` only from ``seq - 1``."""
        if await self._device_recv(origin.user, origin.device) == seq - 1:
            self._marks.raise_recv(origin.user, origin.device, seq)
            self._schedule_flush()

    async def _device_recv(self, user: str, device: str) -> int | None:
        """The device's recv mark, read from the Store the first time; ``None`` if that read
        failed (a Store error must not crash the actor and lose the batch it is handling)."""
        key = (user, device)
        if not self._marks.knows_device(user, device) or key in self._recv_unloaded:
            try:
                with self._ctx.timed("device_recv"):
                    stored = await self._ctx.store.device_recv(user, device, self.conv)
            except StoreError as exc:
                log.warning("could not read the recv mark of %s/%s: %s", user, device, exc)
                return None
            self._marks.load_device(user, device, stored)
            self._recv_unloaded.discard(key)
        return self._marks.device_recv(user, device)

    async def _mark(self, request: MarkRequest) -> None:
        origin = request.origin
        span = self.conversation.visible_range(origin.user)
        if span is None:
            self._error(origin, ErrorCode.FORBIDDEN, f"not a member of {self.conv}", request.rid)
            return
        last_visible = span[1] if span[1] is not None else self.last_seq
        seq = min(request.seq, last_visible)
        if request.kind == "recv":
            if await self._device_recv(origin.user, origin.device) is None:
                # Raise from what is known here (the Store max-merges); the mark held here is
                # then only a lower bound, read again before an ack relies on it (G4).
                self._recv_unloaded.add((origin.user, origin.device))
            self._marks.raise_recv(origin.user, origin.device, seq)
        else:
            self._marks.raise_read(origin.user, origin.device, seq)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._marks.dirty and self._flush_at == math.inf:
            self._flush_at = trio.current_time() + self._ctx.config.watermark_window_s

    def _flush_marks(self) -> None:
        """Hand the coalesced marks to the node's writer; it sends the receipts they earn
        once they are written (one write for every conversation's marks of a window)."""
        self._flush_at = math.inf
        if not self._marks.dirty:
            return
        recv, read = self._marks.pending()
        outs = self._marks.written()
        self._receipts_owed += 1

        def written() -> None:
            self._receipts_owed -= 1
            self._held_receipts.extend(outs)
            self._send_receipts()

        self._mark_writer.submit(recv, read, written)

    def _send_receipts(self) -> None:
        """Send the receipts of written marks, unless a membership change is in flight or
        unsure (the Store may hold a removal this actor has not applied yet): they wait for
        it. G7: under the current membership (the actor stays up while receipts are owed),
        so receipts stop with the event that removed a member, both to them and about them
        (a departed member's later marks are clamped and stored, but tell nobody anything).
        """
        if self._changing or self._resync_at < math.inf or not self._held_receipts:
            return
        router = self._ctx.router
        ctx = self._ctx
        members = sorted(self.conversation.members)
        if any(self._unsure_of(h) for m in members for h in router.devices(m)):
            return  # after the re-read of the membership (see _unsure_of)
        outs, self._held_receipts = self._held_receipts, []
        recipients = members
        if ctx.mutant(RECEIPTS_TO_REMOVED):
            recipients = sorted({*members, *self.conversation.departed})
        for out in outs:
            if out.receipt.user not in members and not ctx.mutant(RECEIPTS_FROM_DEPARTED):
                continue
            receipt = self._marks.at_least_known(out.receipt)
            for member in recipients:
                for handle in router.devices(member):
                    if member == receipt.user and handle.device in out.sources:
                        continue
                    handle.push(receipt)
            if ctx.elsewhere(members):
                ctx.publish(
                    FeedMarks(
                        conv=receipt.conv,
                        user=receipt.user,
                        delivered=receipt.delivered,
                        read=receipt.read,
                        sources=tuple(sorted(out.sources)),
                        node=ctx.name,
                    )
                )

    def _typing(self, request: TypingRequest) -> None:
        user = request.origin.user
        if not self.conversation.is_member(user) and not self._ctx.mutant(TYPING_FROM_DEPARTED):
            self._error(
                request.origin, ErrorCode.FORBIDDEN, f"not a member of {self.conv}", request.rid
            )
            return
        # At most one relay per (user, conversation) per typing_interval_s; extras are
        # dropped silently (PROTOCOL.md v1.1).
        now = trio.current_time()
        if now < self._typing_at.get(user, -math.inf) + self._ctx.config.typing_interval_s:
            return
        self._typing_at[user] = now
        self._relay_typing(user)
        others = [m for m in self.conversation.members if m != user]
        if self._ctx.elsewhere(others):
            self._ctx.publish(FeedTyping(conv=self.conv, user=user, node=self._ctx.name))

    def _relay_typing(self, user: str) -> None:
        """Tell the other members' devices on this node that ``user`` is typing."""
        if not self.conversation.is_member(user) and not self._ctx.mutant(TYPING_FROM_DEPARTED):
            return  # G7: nothing of a group reaches past the event that removed its user
        notice = TypingNotice(conv=self.conv, user=user)
        recipients = set(self.conversation.members)
        if self._ctx.mutant(TYPING_TO_REMOVED):
            recipients.update(self.conversation.departed)
        for member in sorted(recipients):
            if member != user:
                for handle in self._ctx.router.devices(member):
                    handle.push(notice)

    def _remote_marks(self, event: FeedMarks) -> None:
        """A receipt earned on another node: merged here (so a receipt sent from this node
        never shows a lower mark), then pushed to the members' devices on this node -- never
        about a departed member (the rule of _send_receipts: this node's membership may be
        newer than the publisher's)."""
        delivered, read = self._marks.merge_remote(event.user, event.delivered, event.read)
        if not self.conversation.is_member(event.user) and not self._ctx.mutant(
            RECEIPTS_FROM_DEPARTED
        ):
            return
        receipt = Receipt(conv=self.conv, user=event.user, delivered=delivered, read=read)
        for member in sorted(self.conversation.members):
            for handle in self._ctx.router.devices(member):
                if member == event.user and handle.device in event.sources:
                    continue
                if not self._unsure_of(handle):
                    handle.push(receipt)
