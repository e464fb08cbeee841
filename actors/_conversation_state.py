"""The state of a conversation actor and its answers to one connection.

:class:`ConversationState` is the base of :class:`~actors._conversation.ConversationActor`:
what the actor holds in memory (see that module's docstring for who owns it and for its
lifecycle). The actor's concerns build on it: the fan-out (:mod:`actors._conversation_fanout`),
the marks, receipts and typing (:mod:`actors._conversation_marks`), and the sends, membership
changes and resyncs (:mod:`actors._conversation`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from persistence import Conversation, StoredMessage
from protocol import Error, ErrorCode, Nack

from ._config import WATERMARK_BACKWARDS
from ._context import NodeContext
from ._messages import ConversationRequest
from ._router import ConnectionHandle
from ._watermarks import MarkWriter, ReceiptOut, Watermarks

log = logging.getLogger("actors.conversation")


class ConversationState:
    """What one conversation actor holds (see :mod:`actors._conversation`)."""

    def __init__(
        self,
        ctx: NodeContext,
        conv: str,
        mailbox: trio.MemoryReceiveChannel[ConversationRequest],
        *,
        retire: Callable[[], None],
        mark_writer: MarkWriter,
        stale_seq: int | None = None,
        announce: StoredMessage | None = None,
        published_from: int | None = None,
    ) -> None:
        self._ctx = ctx
        self.conv = conv
        self._mailbox = mailbox
        self._retire_from_manager = retire
        self._stale_seq = stale_seq
        self._creation = announce
        # Started by the change feed for messages from ``published_from + 1`` on: those are
        # still to be pushed here (see _load).
        self._published_from = published_from
        # The membership snapshot covers every member event up to this seq (G7: a message
        # above a member event newer than it is pushed only after a reload, see _publish).
        self._membership_seq = 0
        self._conversation: Conversation | None = None
        self.last_seq = 0
        self._published = 0
        # The last seq when this actor loaded: whether those messages were ever fanned out
        # (by an earlier actor, before an ambiguous write or a crash) is unknown here.
        self._loaded_seq = 0
        #: The last message _push_late fanned out (each at most once).
        self._late_seq = 0
        self._memory_seq = 0
        self._marks = Watermarks(conv, backwards=ctx.mutant(WATERMARK_BACKWARDS))
        self._flush_at = math.inf
        self._mark_writer = mark_writer
        # The scope of the actor's wait for its mailbox, while it waits, and since when (the
        # manager's idle sweep cancels it; see ConversationActor.expire_idle).
        self._waiting: trio.CancelScope | None = None
        self._waiting_since = 0.0
        # When a stale actor next tries to resync (inf: not stale); see the module docstring.
        self._resync_at = math.inf
        # Devices whose recv mark here is only a lower bound: the Store read of their mark
        # failed (see _device_recv); it is read again at the next need.
        self._recv_unloaded: set[tuple[str, str]] = set()
        # Receipt batches handed to the mark writer and not sent yet: the actor does not
        # retire before they are, so they go out under its (current) membership.
        self._receipts_owed = 0
        # Receipts of written marks waiting for a membership change in flight (see
        # _send_receipts), and whether one is.
        self._held_receipts: list[ReceiptOut] = []
        self._changing = False
        # user → when their last typing notice was relayed (the v1.1 throttle); members only.
        self._typing_at: dict[str, float] = {}
        # When the membership snapshot was read (epoch ms; see _unsure_of).
        self._membership_ms = 0

    @property
    def conversation(self) -> Conversation:
        assert self._conversation is not None, "used before _load()"
        return self._conversation

    def _unsure_of(self, handle: ConnectionHandle) -> bool:
        """True if ``handle`` opened after the membership was read: its device may have been
        told on another node that its user left, by a write this node's feed has not brought
        yet; no receipt or typing of the group goes to it before a re-read (G7), which this
        schedules."""
        if handle.since <= self._membership_ms:
            return False
        if self._resync_at == math.inf:
            self._resync_at = trio.current_time()
            if self._waiting is not None:
                self._waiting.deadline = self._resync_at
        return True

    def _nack(
        self,
        origin: ConnectionHandle,
        cmid: str,
        code: ErrorCode,
        message: str,
        retry: bool,
        rid: str | None,
    ) -> None:
        self._ctx.metrics.nacks.labels(code.value).inc()
        origin.push(Nack(cmid=cmid, code=code, message=message, retry=retry, rid=rid))

    def _error(
        self, origin: ConnectionHandle, code: ErrorCode, message: str, rid: str | None
    ) -> None:
        self._ctx.metrics.errors.labels(code.value).inc()
        origin.push(Error(code=code, message=message, rid=rid))
