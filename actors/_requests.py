"""The request handlers of a connection: what each client frame after ``hello`` does.

Used by :class:`~actors._connection.ConnectionActor`, which reads the frames one at a time,
applies the rate limits and turns the errors raised here into ``error``/``nack`` frames. A
handler answers through the connection's ``reply`` (which waits for room in its outbox) or
hands the request to the conversation's actor, which answers it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from persistence import ConvRow as StoredConvRow
from protocol import (
    ClientFrame,
    ConvRow,
    Convs,
    Error,
    ErrorCode,
    GroupAdd,
    GroupCreate,
    GroupLeave,
    GroupRemove,
    Hello,
    History,
    MemberMarks,
    Nack,
    Ping,
    Pong,
    PresenceSub,
    PresenceUnsub,
    Read,
    Recv,
    Send,
    ServerFrame,
    Typing,
    convs_result,
    count_within,
    group_created_result,
    history_result,
)

from ._config import HISTORY_FOR_DEPARTED
from ._context import NodeContext, msg_frame
from ._conversations import ConversationManager
from ._messages import (
    MarkRequest,
    MemberRequest,
    PresenceRequest,
    SendRequest,
    Subscribe,
    TypingRequest,
    Unsubscribe,
)
from ._router import ConnectionHandle

#: Queues a frame of the connection's own (an answer), waiting for room in its outbox.
Reply = Callable[[ServerFrame], Awaitable[None]]


def refusal(frame: ClientFrame, code: ErrorCode, message: str, retry: bool) -> ServerFrame:
    """The answer refusing ``frame``: a ``nack`` for a ``send``, else an ``error``."""
    if isinstance(frame, Send):
        return Nack(cmid=frame.cmid, code=code, message=message, retry=retry, rid=frame.rid)
    return Error(code=code, message=message, rid=frame.rid)


class RequestHandler:
    """Handles the frames of connections to the node's conversations and presence."""

    __slots__ = ("_conversations", "_ctx", "_presence")

    def __init__(
        self,
        ctx: NodeContext,
        conversations: ConversationManager,
        presence: trio.MemorySendChannel[PresenceRequest],
    ) -> None:
        self._ctx = ctx
        self._conversations = conversations
        self._presence = presence

    async def handle(self, handle: ConnectionHandle, frame: ClientFrame, reply: Reply) -> None:
        """Handle ``frame`` of the connection ``handle``; Store errors propagate."""
        submit = self._conversations.submit
        match frame:
            case Send():
                await self._send(handle, frame)
            case Recv(conv=conv, seq=seq, rid=rid):
                await submit(conv, MarkRequest(origin=handle, kind="recv", seq=seq, rid=rid))
            case Read(conv=conv, seq=seq, rid=rid):
                await submit(conv, MarkRequest(origin=handle, kind="read", seq=seq, rid=rid))
            case History():
                await self._history(handle, frame, reply)
            case Convs():
                await self._convs(handle, frame, reply)
            case GroupCreate():
                await self._group_create(handle, frame, reply)
            case GroupAdd(conv=conv, user=user, rid=rid):
                await submit(conv, MemberRequest(origin=handle, op="add", user=user, rid=rid))
            case GroupRemove(conv=conv, user=user, rid=rid):
                await submit(conv, MemberRequest(origin=handle, op="remove", user=user, rid=rid))
            case GroupLeave(conv=conv, rid=rid):
                await submit(
                    conv, MemberRequest(origin=handle, op="leave", user=handle.user, rid=rid)
                )
            case PresenceSub():
                await self._presence_sub(handle, frame)
            case PresenceUnsub(users=users):
                await self._presence.send(Unsubscribe(origin=handle, users=users))
            case Typing(conv=conv, rid=rid):
                await submit(conv, TypingRequest(origin=handle, rid=rid))
            case Ping(rid=rid):
                await reply(Pong(rid=rid))
            case Hello():
                raise AssertionError("the session rejects a second hello")

    async def _send(self, handle: ConnectionHandle, frame: Send) -> None:
        if frame.to is not None:
            conv = await self._conversations.direct_conversation(handle.user, frame.to)
        else:
            assert frame.conv is not None
            conv = frame.conv
        request = SendRequest(origin=handle, cmid=frame.cmid, body=frame.body, rid=frame.rid)
        await self._conversations.submit(conv, request)

    async def _convs(self, handle: ConnectionHandle, frame: Convs, reply: Reply) -> None:
        store = self._ctx.store
        with self._ctx.timed("convs"):
            page = await store.conversations(
                handle.user, handle.device, limit=frame.limit, cursor=frame.cursor
            )
            rows = tuple(_conv_row(r) for r in page.rows)
            kept = count_within(rows)
            if kept < len(rows):
                # Over the result limit: the newest rows that fit, with the cursor that
                # continues right after them (the store knows their activity).
                page = await store.conversations(
                    handle.user, handle.device, limit=kept, cursor=frame.cursor
                )
                rows = tuple(_conv_row(r) for r in page.rows)
        await reply(convs_result(frame.rid, rows, page.cursor is not None, page.cursor))

    async def _history(self, handle: ConnectionHandle, frame: History, reply: Reply) -> None:
        store = self._ctx.store
        with self._ctx.timed("history"):
            conversation = await store.get_conversation(frame.conv)
            departed_ok = (
                self._ctx.mutant(HISTORY_FOR_DEPARTED) and handle.user in conversation.departed
            )
            if not conversation.is_member(handle.user) and not departed_ok:
                message = f"not a member of {frame.conv}"
                await reply(refusal(frame, ErrorCode.FORBIDDEN, message, False))
                return
            messages, more = await store.history(frame.conv, handle.user, frame.before, frame.limit)
        page = tuple(msg_frame(m) for m in messages)
        # Under the result limit: the newest messages that fit; ``more`` says older ones exist.
        kept = count_within(page[::-1])
        if kept < len(page):
            page, more = page[len(page) - kept :], True
        await reply(history_result(frame.rid, page, more))

    async def _group_create(
        self, handle: ConnectionHandle, frame: GroupCreate, reply: Reply
    ) -> None:
        if not self._ctx.creations.take(handle.user, trio.current_time()):
            message = (
                f"more than {self._ctx.config.creations_per_minute} new conversations "
                "a minute; wait a little"
            )
            await reply(refusal(frame, ErrorCode.RATE_LIMITED, message, True))
            return
        # The manager also finds a group an ambiguous Store failure created after all, and
        # announces the creation itself (even if this connection drops meanwhile).
        conversation, _event = await self._conversations.create_group(
            handle.user, handle.device, frame.title, frame.members
        )
        await reply(group_created_result(frame.rid, conversation.id))

    async def _presence_sub(self, handle: ConnectionHandle, frame: PresenceSub) -> None:
        users = list(dict.fromkeys(frame.users))
        with self._ctx.timed("contacts"):
            contacts = await self._ctx.store.contacts(handle.user)
        allowed = tuple(u for u in users if u == handle.user or u in contacts)
        denied = tuple(u for u in users if u not in allowed)
        await self._presence.send(
            Subscribe(origin=handle, allowed=allowed, denied=denied, rid=frame.rid)
        )


def _conv_row(row: StoredConvRow) -> ConvRow:
    return ConvRow(
        conv=row.conv,
        kind=row.kind,
        title=row.title,
        members=row.members,
        last_seq=int(row.last_seq),
        delivered=int(row.delivered),
        read=int(row.read),
        unread=int(row.unread),
        others=tuple(
            MemberMarks(user=m.user, delivered=int(m.delivered), read=int(m.read))
            for m in row.others
        ),
    )
