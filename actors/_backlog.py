"""The hello's backlog: what a connecting device is sent between ``welcome`` and ``synced``,
and what is recorded about the connection after it.

Used by :class:`~actors._connection.ConnectionActor` during its sync; these functions own no
state: the backlog's frames go through the connection's
:class:`~actors._writer.OutboxWriter`, so the memory a long backlog holds is bounded by the
outbox.
"""

from __future__ import annotations

import logging

from persistence import BacklogRange, StoredMessage, StoreError
from protocol import MemberEvent, RemoteProtocolError

from ._context import NodeContext, msg_frame
from ._router import ConnectionHandle, SyncedBacklog
from ._writer import OutboxWriter

log = logging.getLogger("actors.connection")


async def push_backlog(
    ctx: NodeContext, handle: ConnectionHandle, writer: OutboxWriter
) -> SyncedBacklog:
    """Stream the backlog: where it is (one Store call), then its messages a page of
    ``backlog_page`` at a time, each page read only once the outbox holds less than
    ``backlog_window_bytes`` — so its memory is bounded however long it is, and one
    user's long backlog is many short Store calls that other requests interleave with.
    Returns what it pushed (see :class:`~actors._router.SyncedBacklog`)."""
    store, config = ctx.store, ctx.config
    with ctx.timed("sync"):
        ranges = await store.unsynced(handle.user, handle.device)
    synced = SyncedBacklog()
    # Pages of about backlog_page messages: a long range is split, short ones (a user in
    # many conversations with a little each) go several to a Store call.
    page: list[BacklogRange] = []
    size = 0
    for span in ranges:
        for lo in range(span.lo, span.hi + 1, config.backlog_page):
            hi = min(span.hi, lo + config.backlog_page - 1)
            page.append(BacklogRange(conv=span.conv, lo=lo, hi=hi))
            size += hi - lo + 1
            if size >= config.backlog_page:
                await _push_page(ctx, handle, writer, page, synced)
                page, size = [], 0
    if page:
        await _push_page(ctx, handle, writer, page, synced)
    return synced


async def _push_page(
    ctx: NodeContext,
    handle: ConnectionHandle,
    writer: OutboxWriter,
    page: list[BacklogRange],
    synced: SyncedBacklog,
) -> None:
    """Read one page of the backlog once the outbox has room for it, and queue it."""
    await writer.wait_for_room(handle, ctx.config.backlog_window_bytes)
    with ctx.timed("sync_page"):
        messages = await ctx.store.read_ranges(page)
    for message in messages:
        await writer.enqueue(handle, msg_frame(message))
        if message.kind == "member":
            _note_departure(synced, message, handle.user)
    ctx.metrics.messages_out.inc(len(messages))
    for span in page:
        synced.up_to[span.conv] = span.hi


def _note_departure(synced: SyncedBacklog, message: StoredMessage, user: str) -> None:
    """Track whether the backlog's last member event about ``user`` in a conversation is
    their departure (a later add in the same backlog is a rejoin)."""
    try:
        event = MemberEvent.parse(message.body)
    except RemoteProtocolError:
        return
    if user not in event.users:
        return
    if event.op in ("remove", "leave"):
        synced.departed.add(message.conv)
    else:
        synced.departed.discard(message.conv)


async def after_sync(ctx: NodeContext, user: str, device: str) -> None:
    """End the user's offline period (G8: the next message stored while they are offline
    opens a new notification job).

    Off the hello's path: a message stored before this ran finds the user in the router,
    so it opens no job either. A failure (the Store retried already) is logged; the next
    hello of the device writes it again.
    """
    store = ctx.store
    try:
        with ctx.timed("user_online"):
            await store.user_online(user)
    except StoreError as exc:
        log.warning("could not record the connection of %s/%s: %s", user, device, exc)
