"""The conversation actor: the single writer of one conversation on this node.

One task per active conversation owns its membership snapshot, its last seq, the seq up to
which it has fanned out and its watermarks. It drains its mailbox into a batch; consecutive
sends become one ``store.append`` (group commit), which also records the offline-notification
jobs of members with no connected device in the same durable write (G8); only after that write
does it ``ack`` each sender (G1), then it pushes ``msg`` to every member device connected to
this node except the sending connection, in seq order (G4). Membership changes,
``recv``/``read`` marks and ``typing`` go through the same mailbox, so everything about one
conversation happens in one order on this node.

Several nodes (see :mod:`actors._cluster`): what other nodes stored, and the receipts and
typing they announce, arrive in the same mailbox from the change feed (``Remote*``). They are
pushed to this node's devices only, in seq order with this node's own writes (gaps filled from
the Store). A membership event newer than the actor's snapshot makes it re-read the
membership before it pushes anything after that event (G7), and receipts and typing it
relays are announced to the other nodes when some member is connected there.

The actor is built by concern: its state (:mod:`actors._conversation_state`), its fan-out
(:mod:`actors._conversation_fanout`), its marks, receipts and typing
(:mod:`actors._conversation_marks`); this module has its lifecycle, the sends (group commit),
the membership changes and the resyncs.

Lifecycle (owned by :class:`~actors._conversations.ConversationManager`): started on demand, it
loads its state from the Store before reporting ``started``; after ``conversation_idle_s``
without work (found by the manager's sweep, a quarter of that apart) it retires (leaves the
manager's table, closes its mailbox) and stops. When its mailbox is closed (graceful shutdown)
it handles what is queued, writes its pending watermarks and stops. When cancelled (the node
crashed) it just stops: whatever it held in memory is lost, the Store has what was acknowledged.
An unexpected exception is logged, the requests still queued are answered ``unavailable`` and
the actor retires; the next request for the conversation starts a fresh one from the Store.

Ambiguous membership writes: when a membership change (or the re-read after it) fails with a
retryable Store error, the change may have been applied all the same. The actor then
*resyncs*: it re-reads the conversation and its last seq (a few tries) and fans out, from
the Store, every message above what it has pushed, under the membership the Store holds — so
live delivery and visibility follow the Store's truth, not the actor's last snapshot. While a
resync keeps failing the actor is *stale*: it does not retire, it retries on a timer, and it
answers sends, membership changes and typing ``unavailable`` (retry) rather than fanning them
out to a membership that may be wrong.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import trio

from persistence import Conversation, Draft, StoredMessage, StoreError
from protocol import Ack, ErrorCode, empty_result

from ._config import ACK_BEFORE_WRITE, NO_OFFLINE_NOTIFICATION, SEQ_REUSE_AFTER_RESTART
from ._context import member_event_of
from ._conversation_fanout import ConversationFanOut
from ._conversation_marks import ConversationMarks
from ._messages import (
    Announce,
    ConversationRequest,
    MarkRequest,
    MemberRequest,
    RemoteMarks,
    RemoteMessages,
    RemoteTyping,
    Resync,
    SendRequest,
    TypingRequest,
)
from ._retry import retry_store
from ._router import ConnectionHandle

log = logging.getLogger("actors.conversation")

#: Pauses between the tries of one resync (so at most ``len + 1`` tries per attempt).
RESYNC_BACKOFF_S = (0.05, 0.2)
#: A stale actor (every try of a resync failed) tries again after this long.
RESYNC_RETRY_S = 1.0


class ConversationActor(ConversationFanOut, ConversationMarks):
    """The actor of conversation ``conv`` (see the module docstring)."""

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load from the Store (a ``StoreError`` here fails the start), then serve.

        A new group's first actor is given its creation event: it fans it out before it
        reports ``started``, hence before anything it serves (G4: seq 1 first).
        """
        await self._load()
        if self._creation is not None:
            await self._announce(self._creation)
        task_status.started()
        try:
            await self._serve()
        except Exception:
            log.exception("conversation actor %s crashed", self.conv)
            self._ctx.metrics.actor_restarts.labels("conversation").inc()
            self._retire()
            self._fail_queued()
            return
        self._flush_marks()

    async def _load(self) -> None:
        store = self._ctx.store
        with self._ctx.timed("load_conversation"):
            # The last seq first: the membership read after it covers every event up to it.
            self.last_seq = await store.last_seq(self.conv)
            read_at = self._ctx.wall_ms()
            self._conversation = await store.get_conversation(self.conv)
            self._membership_ms = read_at
            self._marks.load_users(await store.marks(self.conv))
        self._membership_seq = self.last_seq
        self._published = self._loaded_seq = self.last_seq
        if self._published_from is not None:
            self._published = min(self._published, self._published_from)
        stale = self._stale_seq if self._ctx.mutant(SEQ_REUSE_AFTER_RESTART) else None
        self._memory_seq = self.last_seq if stale is None else stale

    def _retire(self) -> None:
        self._retire_from_manager()
        self._mailbox.close()

    async def _serve(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            await self._handle_batch(batch)
            if trio.current_time() >= self._flush_at:
                self._flush_marks()

    async def _next_batch(self) -> list[ConversationRequest] | None:
        """The queued requests (at most ``max_batch``); [] when a flush is due; None to stop.

        Work already queued (the actor was busy) is taken without a timeout, hence without a
        cancel scope: one with a deadline costs more than everything else here. The
        checkpoints around it are those of ``receive()``.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            first = self._mailbox.receive_nowait()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None
        except trio.WouldBlock:
            return await self._receive_until_due()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return self._fill(first)

    def _fill(self, first: ConversationRequest) -> list[ConversationRequest]:
        """``first`` and what is queued behind it, at most ``max_batch`` in all."""
        batch = [first]
        while len(batch) < self._ctx.config.max_batch:
            try:
                batch.append(self._mailbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        return batch

    async def _receive_until_due(self) -> list[ConversationRequest] | None:
        """Wait for requests until a flush or a resync is due or the manager's idle sweep
        ends the wait (:meth:`expire_idle`): [] when a flush, a resync or receipts are due;
        None to stop (closed, or idle: retired)."""
        with trio.move_on_at(min(self._flush_at, self._resync_at)) as scope:
            self._waiting, self._waiting_since = scope, trio.current_time()
            try:
                first = await self._mailbox.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return None
            finally:
                self._waiting = None
            return self._fill(first)
        if (
            self._marks.dirty
            or self._resync_at < math.inf
            or self._receipts_owed
            or self._held_receipts
        ):
            return []  # a flush, a resync or receipts are due (a stale actor never retires)
        # Idle with an empty mailbox: nothing can slip in between this check and the close,
        # because retiring is synchronous.
        self._retire()
        return None

    def expire_idle(self, now: float, idle_s: float) -> None:
        """For the manager's idle sweep: end the wait of an actor that has waited for its
        mailbox for ``idle_s`` (it then retires unless something is still due)."""
        if self._waiting is not None and now >= self._waiting_since + idle_s:
            self._waiting.cancel()

    def _fail_queued(self) -> None:
        while True:
            try:
                request = self._mailbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            self._refuse(request, ErrorCode.UNAVAILABLE, "conversation restarting; retry")

    def _refuse(self, request: ConversationRequest, code: ErrorCode, message: str) -> None:
        match request:
            case SendRequest(origin=origin, cmid=cmid, rid=rid):
                self._nack(origin, cmid, code, message, True, rid)
            case MemberRequest(origin=origin, rid=rid) | TypingRequest(origin=origin, rid=rid):
                self._error(origin, code, message, rid)
            case (
                MarkRequest()
                | Announce()
                | RemoteMessages()
                | RemoteMarks()
                | RemoteTyping()
                | Resync()
            ):
                # Nothing to answer; what the feed brought is read again by the resync.
                pass

    # ------------------------------------------------------------------ dispatch

    async def _handle_batch(self, batch: Sequence[ConversationRequest]) -> None:
        if self._resync_at < math.inf and await self._resync() is None:
            for request in batch:
                if isinstance(request, MarkRequest):
                    await self._mark(request)  # clamped by the Store as well
                elif isinstance(request, Announce):
                    await self._announce(request.message)  # a creation: founders see seq 1
                else:
                    self._refuse(request, ErrorCode.UNAVAILABLE, "storage unavailable; retry")
            return
        sends: list[SendRequest] = []
        for request in batch:
            match request:
                case SendRequest():
                    sends.append(request)
                case MemberRequest():
                    await self._commit(sends)
                    sends = []
                    await self._member_change(request)
                case MarkRequest():
                    await self._mark(request)
                case TypingRequest():
                    self._typing(request)
                case Announce(message=message):
                    await self._announce(message)
                case RemoteMessages(messages=messages):
                    self._push_late(messages)
                    await self._publish(messages, self._senders_here(messages))
                case RemoteMarks(event=event):
                    self._remote_marks(event)
                case RemoteTyping(user=user):
                    self._relay_typing(user)
                case Resync():
                    await self._resync()
        await self._commit(sends)

    # ------------------------------------------------------------------ sends (group commit)

    async def _commit(self, sends: list[SendRequest]) -> None:
        if not sends:
            return
        ctx = self._ctx
        if self.last_seq == 0 and self.conversation.kind == "direct":
            sends = self._budget_first_messages(sends)
            if not sends:
                return
        ctx.metrics.batch_size.observe(len(sends))
        ts = ctx.wall_ms()
        drafts = [
            Draft(sender=r.origin.user, device=r.origin.device, cmid=r.cmid, body=r.body, ts=ts)
            for r in sends
        ]
        acked_early = ctx.mutant(ACK_BEFORE_WRITE) and self._ack_early(sends, ts)
        # G8: members with no connected device are owed a notification job; the Store writes
        # it with the messages (one durable write), so a crash between the two cannot lose it.
        notify = [u for u in sorted(self.conversation.members) if not ctx.connected_anywhere(u)]
        if ctx.mutant(NO_OFFLINE_NOTIFICATION):
            notify = []
        try:
            with ctx.timed("append"):
                results = await ctx.store.append(self.conv, drafts, notify=notify)
        except StoreError as exc:
            if notify:
                ctx.wake_notifier()  # an ambiguous failure may have written the jobs
            for r in sends:
                self._nack(r.origin, r.cmid, exc.code, exc.message, exc.retryable, r.rid)
            if exc.retryable:
                # Ambiguous: the batch may be stored all the same. Fan out what the Store
                # holds now, in seq order, while this actor still knows it never pushed it
                # (a resend finds it as a replay and is only acked; see _push_replay).
                await self._resync(senders=sends)
            return
        if notify:
            ctx.wake_notifier()
        stored: list[StoredMessage] = []
        origins: dict[int, ConnectionHandle] = {}
        for request, result in zip(sends, results, strict=True):
            if isinstance(result, StoreError):
                self._nack(
                    request.origin,
                    request.cmid,
                    result.code,
                    result.message,
                    result.retryable,
                    request.rid,
                )
                continue
            if not acked_early:
                self._ack(request, result)
            stored.append(result)
            origins[result.seq] = request.origin
        ctx.metrics.messages_in.inc(len(stored))
        self._push_replay(stored, origins)
        await self._publish(stored, origins)
        # After the fan-out: the sender's mark may need a Store read the pushes must not wait on.
        for message in stored:
            await self._sender_holds(origins[message.seq], message.seq)

    def _ack_early(self, sends: list[SendRequest], ts: int) -> bool:
        """The ``ack_before_write`` mutant: acknowledge with seqs guessed from memory."""
        for i, request in enumerate(sends, start=1):
            seq = self.last_seq + i
            request.origin.push(
                Ack(
                    cmid=request.cmid,
                    conv=self.conv,
                    seq=seq,
                    id=f"early-{seq}",
                    ts=ts,
                    rid=request.rid,
                )
            )
        return True

    def _ack(self, request: SendRequest, message: StoredMessage) -> None:
        seq = self._next_memory_seq() if self._ctx.mutant(SEQ_REUSE_AFTER_RESTART) else message.seq
        ack = Ack(
            cmid=request.cmid,
            conv=self.conv,
            seq=int(seq),
            id=message.id,
            ts=int(message.ts),
            rid=request.rid,
        )
        if request.origin.push(ack):
            self._ctx.metrics.acks.inc()

    def _next_memory_seq(self) -> int:
        self._memory_seq += 1
        return self._memory_seq

    def _budget_first_messages(self, sends: list[SendRequest]) -> list[SendRequest]:
        """A direct conversation is stored with its first message: starting one takes from
        the sender's creation budget (once per sender and batch); over it → ``rate_limited``."""
        now, allowed, refused = trio.current_time(), [], set()
        checked: set[str] = set()
        for request in sends:
            user = request.origin.user
            if user not in checked:
                checked.add(user)
                if not self._ctx.creations.take(user, now):
                    refused.add(user)
            if user in refused:
                limit = self._ctx.config.creations_per_minute
                message = f"more than {limit} new conversations a minute; wait a little"
                self._nack(
                    request.origin, request.cmid, ErrorCode.RATE_LIMITED, message, True, request.rid
                )
            else:
                allowed.append(request)
        return allowed

    # ------------------------------------------------------------------ membership

    async def _member_change(self, request: MemberRequest) -> None:
        self._changing = True
        try:
            await self._change_members(request)
        finally:
            self._changing = False
        self._send_receipts()

    async def _change_members(self, request: MemberRequest) -> None:
        store, ts = self._ctx.store, self._ctx.wall_ms()
        actor = request.origin.user
        target = actor if request.op == "leave" else request.user
        # G8: the event's jobs are written with it; the Store keeps the members among these.
        candidates = {*self.conversation.members, target}
        notify = [u for u in sorted(candidates) if not self._ctx.connected_anywhere(u)]
        try:
            with self._ctx.timed("member_change"):
                match request.op:
                    case "add":
                        event = await store.add_member(
                            self.conv, actor, request.user, ts, notify=notify
                        )
                    case "remove":
                        event = await store.remove_member(
                            self.conv, actor, request.user, ts, notify=notify
                        )
                    case "leave":
                        event = await store.leave(self.conv, actor, ts, notify=notify)
        except StoreError as exc:
            if notify:
                self._ctx.wake_notifier()  # an ambiguous failure may have written the jobs
            if not exc.retryable:
                self._error(request.origin, exc.code, exc.message, request.rid)
                return
            # Ambiguous: the change may be in the Store. Publish whatever is there, and answer
            # success if this very change is among it (a retry would be refused or a no-op).
            found = await self._resync()
            if found is not None and any(
                _is_change(m, request.op, actor, target, ts) for m in found
            ):
                request.origin.push(empty_result(request.rid))
            else:
                self._error(request.origin, exc.code, exc.message, request.rid)
            return
        request.origin.push(empty_result(request.rid))
        if notify and event is not None:
            self._ctx.wake_notifier()
        if event is not None:
            # The membership changed: re-read it (and publish the event) before anything else.
            await self._resync()

    async def _resync(self, senders: Sequence[SendRequest] = ()) -> list[StoredMessage] | None:
        """Reload the membership and fan out every stored message above what was pushed.

        ``senders``: sends whose write failed ambiguously; a message found stored for one of
        them is not pushed to the connection that sent it (its resend gets the ack, G4).
        Returns the messages it fanned out, or ``None`` when every try failed (the actor is
        then stale and tries again after ``RESYNC_RETRY_S``).
        """
        store = self._ctx.store

        async def load() -> tuple[int, Conversation, list[StoredMessage]]:
            with self._ctx.timed("load_conversation"):
                # The last seq first: the membership read after it covers it (G7).
                last_seq = await store.last_seq(self.conv)
                read_at.append(self._ctx.wall_ms())
                conversation = await store.get_conversation(self.conv)
                if last_seq <= self._published:
                    return last_seq, conversation, []
                missing = await store.range(self.conv, self._published + 1, last_seq)
                return last_seq, conversation, missing

        read_at: list[int] = []
        try:
            last_seq, self._conversation, missing = await retry_store(load, RESYNC_BACKOFF_S)
        except StoreError as exc:
            log.warning("conversation %s is stale: %s", self.conv, exc)
            self._resync_at = trio.current_time() + RESYNC_RETRY_S
            return None
        self._membership_seq = max(self._membership_seq, last_seq)
        self._membership_ms = read_at[-1]
        self._resync_at = math.inf
        by_key = {(r.origin.user, r.origin.device, r.cmid): r.origin for r in senders}
        origins = {
            m.seq: by_key[(m.sender, m.device, m.cmid)]
            for m in missing
            if m.cmid is not None and (m.sender, m.device, m.cmid) in by_key
        }
        await self._publish(missing, origins)
        self._send_receipts()
        return missing


def _is_change(message: StoredMessage, op: str, by: str, user: str, ts: int) -> bool:
    """True if ``message`` is the member event ``op`` of ``user`` by ``by`` stored at ``ts``."""
    event = member_event_of(message, by=by, ts=ts)
    return event is not None and event.op == op and user in event.users
