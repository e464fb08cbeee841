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

Lifecycle (owned by :class:`~actors._conversations.ConversationManager`): started on demand,
it loads its state from the Store before reporting ``started``; after ``conversation_idle_s``
without work it retires (leaves the manager's table, closes its mailbox) and stops. When its
mailbox is closed (graceful shutdown) it handles what is queued, writes its pending
watermarks and stops. When cancelled (the node crashed) it just stops: whatever it held in
memory is lost, the Store has what was acknowledged. An unexpected exception is logged, the
requests still queued are answered ``unavailable`` and the actor retires; the next request
for the conversation starts a fresh one from the Store.

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
from collections.abc import Callable, Sequence

import trio

from persistence import Conversation, Draft, FeedMarks, FeedTyping, StoredMessage, StoreError
from protocol import (
    Ack,
    Error,
    ErrorCode,
    MemberEvent,
    Nack,
    Receipt,
    RemoteProtocolError,
    TypingNotice,
    empty_result,
)

from ._config import (
    ACK_BEFORE_WRITE,
    DELIVER_TO_REMOVED,
    NO_OFFLINE_NOTIFICATION,
    PUSH_BEFORE_MEMBERSHIP,
    PUSH_OUT_OF_ORDER,
    RECEIPTS_FROM_DEPARTED,
    RECEIPTS_TO_REMOVED,
    SEQ_REUSE_AFTER_RESTART,
    TYPING_FROM_DEPARTED,
    TYPING_TO_REMOVED,
    WATERMARK_BACKWARDS,
)
from ._context import NodeContext, member_event_of, msg_frame
from ._messages import (
    Announce,
    ConversationRequest,
    MarkRequest,
    MemberRequest,
    Parted,
    RemoteMarks,
    RemoteMessages,
    RemoteTyping,
    Resync,
    SendRequest,
    TypingRequest,
)
from ._retry import retry_store
from ._router import ConnectionHandle
from ._watermarks import MarkWriter, ReceiptOut, Watermarks

log = logging.getLogger("actors.conversation")

#: Pauses between the tries of one resync (so at most ``len + 1`` tries per attempt).
RESYNC_BACKOFF_S = (0.05, 0.2)
#: A stale actor (every try of a resync failed) tries again after this long.
RESYNC_RETRY_S = 1.0


class ConversationActor:
    """The actor of conversation ``conv`` (see the module docstring)."""

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

    @property
    def conversation(self) -> Conversation:
        assert self._conversation is not None, "used before _load()"
        return self._conversation

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
            self._conversation = await store.get_conversation(self.conv)
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
        """The queued requests (at most ``max_batch``); [] when a flush is due; None to stop."""
        idle_at = trio.current_time() + self._ctx.config.conversation_idle_s
        with trio.move_on_at(min(self._flush_at, idle_at, self._resync_at)):
            try:
                first = await self._mailbox.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return None
            batch = [first]
            while len(batch) < self._ctx.config.max_batch:
                try:
                    batch.append(self._mailbox.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            return batch
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
                    await self._publish(messages, {})
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

    # ------------------------------------------------------------------ fan-out

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
                self._conversation = await self._ctx.store.get_conversation(self.conv)
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

    def _push_late(self, messages: Sequence[StoredMessage]) -> None:
        """Fan out what another node stored before this actor loaded but the change feed
        brings only now (it lagged): nobody here pushed it (the feed brings each message
        once), and a device connected before it was stored has no other way to get it live.
        Not once something later was pushed (G4 order: the gap shows, the client fills it)."""
        if self._published != self._loaded_seq:
            return
        for message in sorted(messages, key=lambda m: m.seq):
            if self._late_seq < message.seq <= self._loaded_seq:
                self._late_seq = message.seq
                self._fan_out(message, None)

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
                conversation = await store.get_conversation(self.conv)
                if last_seq <= self._published:
                    return last_seq, conversation, []
                missing = await store.range(self.conv, self._published + 1, last_seq)
                return last_seq, conversation, missing

        try:
            last_seq, self._conversation, missing = await retry_store(load, RESYNC_BACKOFF_S)
        except StoreError as exc:
            log.warning("conversation %s is stale: %s", self.conv, exc)
            self._resync_at = trio.current_time() + RESYNC_RETRY_S
            return None
        self._membership_seq = max(self._membership_seq, last_seq)
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

    # ------------------------------------------------------------------ marks and typing

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
        outs, self._held_receipts = self._held_receipts, []
        router = self._ctx.router
        ctx = self._ctx
        members = sorted(self.conversation.members)
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
                handle.push(receipt)


def _is_change(message: StoredMessage, op: str, by: str, user: str, ts: int) -> bool:
    """True if ``message`` is the member event ``op`` of ``user`` by ``by`` stored at ``ts``."""
    event = member_event_of(message, by=by, ts=ts)
    return event is not None and event.op == op and user in event.users
