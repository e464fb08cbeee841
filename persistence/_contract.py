"""The Store contract: everything the chat node asks of persistent storage, as one async ABC.

Two implementations pass the same contract suite (``tests/persistence``): :class:`MongoStore`
(production, pymongo through worker threads) and :class:`MemoryStore` (the simulator: plain
Python, deterministic, fault hooks).

Conventions shared by every method:

* Timestamps are integers, milliseconds since the epoch, chosen by the caller (the node's
  clock), so the simulator's virtual clock governs them.
* User ids, device ids and cmids are checked with :func:`protocol.is_valid_id`; an invalid one
  raises :class:`BadInput`. Conversation ids are opaque; an unknown one raises
  :class:`NotFound`.
* Every error is a :class:`StoreError` subclass carrying its wire code. :class:`Unavailable`
  means "storage down or overloaded, retry"; after it, a write may or may not have happened,
  and retrying with the same cmid is always safe.
* A write returns only after it is durable (MongoDB: write concern majority, journaled),
  watermarks included (a ``receipt`` announces them). Presence facts and the device registry
  are the exception: nothing is acknowledged on them, so they may be written with a lighter
  write concern.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence

from ._errors import StoreError
from ._feed import ChangeFeed, DeviceSession, Ephemeral
from ._types import (
    BacklogRange,
    Conversation,
    ConvPage,
    Draft,
    MemberMarks,
    NotificationJob,
    ReadMark,
    RecvMark,
    StoredMessage,
)


class Store(abc.ABC):
    """Persistent state of the messenger: conversations, messages, watermarks, presence, outbox.

    Safe to share between many tasks; several Store instances (several nodes) may use one
    database at once and every guarantee below still holds across them.
    """

    # -- conversations -------------------------------------------------------------------

    @abc.abstractmethod
    async def direct_conversation(self, a: str, b: str) -> Conversation:
        """The 1:1 conversation of ``a`` and ``b``; writes nothing.

        Its id is ``"d:" + min(a, b) + ":" + max(a, b)``, so concurrent first messages from
        both sides (on any node) meet in one conversation. It is stored only by the
        :meth:`append` that stores its first message: until then every read treats it as an
        empty conversation of its two members, and no listing (:meth:`conversations`,
        :meth:`contacts`, :meth:`unsynced`) shows it, so a refused first send leaves no trace.
        ``a == b`` → :class:`Forbidden`; invalid ids → :class:`BadInput`.
        """

    @abc.abstractmethod
    async def create_group(
        self,
        creator: str,
        title: str,
        members: Iterable[str],
        ts: int,
        *,
        notify: Iterable[str] = (),
    ) -> tuple[Conversation, StoredMessage]:
        """Create a group with ``creator`` and ``members`` (duplicates ignored).

        Returns the conversation (id ``"g:" + random hex``) and its creation event at seq 1
        (``kind="member"``, body ``{"op":"create","by":creator,"users":[creator, ...]}``).
        Title of 1..100 characters and valid ids, else :class:`BadInput`; more than 256
        members in all → :class:`Forbidden` ("group is full").
        ``notify``: users with no connected device (as the caller sees it), as for
        :meth:`append`: each of them who is a member once the event is written gets the
        event's offline-notification job in the same durable write, however many they are.
        """

    @abc.abstractmethod
    async def get_conversation(self, conv: str) -> Conversation:
        """The conversation ``conv`` with its current membership; :class:`NotFound` if none."""

    @abc.abstractmethod
    async def add_member(
        self, conv: str, actor: str, user: str, ts: int, *, notify: Iterable[str] = ()
    ) -> StoredMessage | None:
        """``actor`` adds ``user`` to group ``conv``; returns the ``add`` event.

        Any current member may add. Already a member → ``None``, no event. Direct conversation
        or non-member actor → :class:`Forbidden`; group of 256 → :class:`Forbidden`.
        ``notify``: users with no connected device (as the caller sees it), as for
        :meth:`append`: each of them who is a member once the event is written gets the
        event's offline-notification job in the same durable write, however many they are.
        """

    @abc.abstractmethod
    async def remove_member(
        self, conv: str, actor: str, user: str, ts: int, *, notify: Iterable[str] = ()
    ) -> StoredMessage | None:
        """``actor`` removes ``user`` from group ``conv``; returns the ``remove`` event.

        Only the creator (while a member) may remove others — checked before whether ``user``
        is a member, so a non-creator gets :class:`Forbidden` either way. Removing a
        non-member → :class:`NotFound`. ``actor == user`` is a leave. Direct conversation →
        :class:`Forbidden`. The ``None`` return is reserved for an idempotent replay and is
        not produced today. ``notify`` as for :meth:`add_member`.
        """

    @abc.abstractmethod
    async def leave(
        self, conv: str, user: str, ts: int, *, notify: Iterable[str] = ()
    ) -> StoredMessage:
        """``user`` leaves group ``conv``; returns the ``leave`` event (the last one they see).

        Not a member → :class:`Forbidden`; direct conversation → :class:`Forbidden`.
        ``notify`` as for :meth:`add_member`.
        """

    @abc.abstractmethod
    async def conversations(
        self, user: str, device: str, *, limit: int = 100, cursor: str | None = None
    ) -> ConvPage:
        """A page of the ``convs`` listing: up to ``limit`` (1..500, else :class:`BadInput`)
        rows, one per conversation ``user`` is a member of, latest activity (the time of its
        last message) first; ``cursor`` (from the previous page) continues after that page.

        The work of a page is bounded by its rows, apart from one cheap read of where each of
        the user's conversations ends. A malformed cursor → :class:`BadInput`.
        """

    @abc.abstractmethod
    async def contacts(self, user: str) -> set[str]:
        """Users who share at least one conversation with ``user`` (both current members)."""

    # -- messages ------------------------------------------------------------------------

    @abc.abstractmethod
    async def append(
        self, conv: str, drafts: Sequence[Draft], *, notify: Sequence[str] = ()
    ) -> list[StoredMessage | StoreError]:
        """Store a batch of text messages in one durable write (group commit).

        Returns one result per draft, in input order: the stored message, or the error of
        that slot. Seqs are assigned gap-free and increasing in input order, also when other
        Store instances append to ``conv`` at the same time.

        Per slot, in this order: invalid sender/device/cmid → :class:`BadInput`; body over
        16 KiB of UTF-8 → :class:`TooLarge`; ``(sender, device, cmid)`` seen before (forever,
        even in another conversation or earlier in this batch) → the original message if the
        conversation and body match (even if the sender has left since), else
        :class:`Conflict`; sender not a current member → :class:`Forbidden`.

        Raises :class:`NotFound` for an unknown ``conv`` and :class:`Unavailable` when storage
        fails (then nothing or a prefix of the batch is stored; resending the same drafts is
        safe and returns the original results).

        ``notify``: users with no connected device (as the caller sees it) who are owed an
        offline notification (G8). For each of them that is a current member of ``conv``, if
        the batch stores at least one new message, the offline-notification job is recorded
        in the *same* durable write as the messages, as :meth:`notify_offline` would: a new
        job for a new offline period, else the open one is coalesced; it carries ``conv`` and
        the seq of the first newly stored message of the batch, ``count`` grows by the number
        of newly stored messages. A replayed draft stores nothing new and records no job, so a
        resend after an ambiguous failure never notifies twice: the job was written with the
        messages or not at all.
        """

    @abc.abstractmethod
    async def history(
        self, conv: str, user: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        """A page of the messages ``user`` may see, oldest first, with seq < ``before``.

        Returns ``(messages, more)`` where ``more`` says that older visible messages exist.
        ``limit`` outside 1..200 → :class:`BadInput`; a user who cannot see ``conv`` at all →
        :class:`Forbidden`.
        """

    @abc.abstractmethod
    async def range(self, conv: str, lo: int, hi: int) -> list[StoredMessage]:
        """Messages with ``lo <= seq <= hi`` in seq order (gap fill, fan-out).

        No authorization: the caller filters with :meth:`Conversation.can_see`.
        """

    @abc.abstractmethod
    async def read_ranges(self, spans: Sequence[BacklogRange]) -> list[StoredMessage]:
        """The messages of several ranges (of :meth:`unsynced`), range after range, in one
        call: what :meth:`range` of each would return. Unknown conversations give none."""

    @abc.abstractmethod
    async def last_seq(self, conv: str) -> int:
        """The highest seq stored in ``conv`` (0 if empty); :class:`NotFound` if unknown."""

    # -- watermarks ----------------------------------------------------------------------

    @abc.abstractmethod
    async def merge_recv(self, marks: Sequence[RecvMark]) -> None:
        """Max-merge device ``recv`` watermarks, in one write.

        Each mark is clamped to the conversation's last seq and to the end of what the user
        may see; it never moves a watermark backwards. Marks for unknown conversations or
        for users who never belonged to them are ignored (the node validates requests).
        """

    @abc.abstractmethod
    async def merge_read(self, marks: Sequence[ReadMark]) -> None:
        """Max-merge user ``read`` watermarks, in one write; clamped like :meth:`merge_recv`."""

    async def merge_marks(self, recv: Sequence[RecvMark], read: Sequence[ReadMark]) -> None:
        """:meth:`merge_recv` and :meth:`merge_read` at once (a store may make it one write).

        Durable before it returns, like every write an acknowledgement depends on: the node
        sends the ``receipt`` frames these marks earn only afterwards (G5).
        """
        if recv:
            await self.merge_recv(recv)
        if read:
            await self.merge_read(read)

    #: How often the node should call :meth:`fold_marks` (``None``: never needed).
    FOLD_MARKS_EVERY_S: float | None = None

    async def fold_marks(self) -> None:
        """Housekeeping of watermarks: a store that logs marks batches (MongoStore) folds
        them into their compact form. Changes nothing any read returns. Default: nothing."""
        return

    @abc.abstractmethod
    async def marks(self, conv: str) -> dict[str, MemberMarks]:
        """Watermarks of every current and former member of ``conv``, by user.

        ``delivered`` is the max ``recv`` over the user's devices; 0 when nothing is known.
        """

    @abc.abstractmethod
    async def device_recv(self, user: str, device: str, conv: str) -> int:
        """The ``recv`` watermark of one device in ``conv`` (0 if none)."""

    @abc.abstractmethod
    async def unsynced(self, user: str, device: str) -> list[BacklogRange]:
        """Where the messages ``user`` may see above ``device``'s recv mark are: one seq range
        per conversation, in conversation id order (conversations with nothing to push left
        out). Reads no message: the node reads them with :meth:`range` a page at a time as
        the connection drains, so a backlog of any length costs bounded memory.
        """

    # -- presence --------------------------------------------------------------------------

    @abc.abstractmethod
    async def set_last_seen(self, user: str, ts: int) -> None:
        """Record that ``user``'s last device disconnected at ``ts`` (never moves back)."""

    @abc.abstractmethod
    async def last_seen(self, users: Iterable[str]) -> dict[str, int | None]:
        """``last_seen`` of each user, ``None`` for users never seen offline."""

    # -- several nodes: leases, device sessions, the change feed (see persistence._feed) ---

    @abc.abstractmethod
    async def renew_lease(self, node: str, now_ms: int, ttl_ms: int) -> bool:
        """Hold ``node``'s lease until ``now_ms + ttl_ms`` (creating it on first use).

        False if the lease was swept meanwhile (the node was declared dead: its sessions are
        gone, it must drop its connections); the lease then starts afresh.
        """

    @abc.abstractmethod
    async def drop_lease(self, node: str) -> None:
        """Forget ``node``'s lease (graceful shutdown, after its sessions ended)."""

    @abc.abstractmethod
    async def sweep_expired(self, now_ms: int, dead: Sequence[str] = ()) -> list[str]:
        """Declare dead every node whose lease expired before ``now_ms``, and the nodes in
        ``dead`` (known dead: a restarted node's predecessors) whatever their lease; their
        ids, sorted.

        For each: every session it held ends at its lease expiry, or ``now_ms`` if that is
        earlier (``last_seen`` of their users is raised to that time), one
        :class:`FeedNodeDown` is published, and the lease is marked swept. Safe to run on
        several nodes at once: each dead node is swept once.
        """

    @abc.abstractmethod
    async def open_session(self, session: DeviceSession) -> None:
        """Record that ``session`` now serves its (user, device), replacing any earlier one
        on any node (the node holding that one sees a :class:`FeedSession` and closes it with
        4409). A session older (``since``) than the recorded one changes nothing: it was
        written late, and the newer one stands."""

    @abc.abstractmethod
    async def close_session(self, user: str, device: str, session: str, ts: int) -> bool:
        """End ``session`` of (user, device) at ``ts`` if it is still the current one.

        False (and nothing written) if a newer session replaced it or it was swept.
        """

    @abc.abstractmethod
    async def sessions(self) -> list[DeviceSession]:
        """Every current session of the deployment, by (user, device)."""

    @abc.abstractmethod
    async def publish(self, events: Sequence[Ephemeral]) -> None:
        """Announce receipts and typing notices to every other node's feed, in one write.

        Nothing is acknowledged on them: they are written lightly and forgotten after a
        short while (they are never part of any answer but the feed's).
        """

    @abc.abstractmethod
    async def watch(self, node: str, after: object | None = None) -> ChangeFeed:
        """Open ``node``'s change feed from ``after`` (a :attr:`ChangeFeed.token`) or from now.

        Raises :class:`FeedLost` when ``after`` is no longer in the Store's history.
        """

    # -- notification outbox ---------------------------------------------------------------

    @abc.abstractmethod
    async def notify_offline(self, user: str, conv: str, seq: int, ts: int) -> None:
        """Record that a message ``(conv, seq)`` arrived while ``user`` had no connection.

        Creates one job per offline period; later calls in the same period only update the
        job's count and latest (conv, seq), whether or not it was delivered already.

        The outbox holds no more than the work left: a completed job is gone once its
        offline period is over (while it lasts it is kept, done, so that the period's later
        messages coalesce into it and cause no second notification).
        """

    @abc.abstractmethod
    async def user_online(self, user: str) -> None:
        """End ``user``'s offline period: the next :meth:`notify_offline` opens a new job."""

    @abc.abstractmethod
    async def claim_notifications(
        self, owner: str, now_ms: int, lease_ms: int, limit: int
    ) -> list[NotificationJob]:
        """Lease up to ``limit`` pending jobs to ``owner`` until ``now_ms + lease_ms``.

        Jobs never claimed or whose lease expired are eligible, oldest first. The cost of a
        claim does not grow with ``limit`` or with the number of jobs (one batch, indexed).
        """

    @abc.abstractmethod
    async def complete_notification(self, job_id: str) -> None:
        """Mark a job delivered. Idempotent: an id that is gone (completed, its period over)
        or unknown is no error."""

    @abc.abstractmethod
    async def pending_notifications(self) -> int:
        """The number of jobs not yet completed."""

    # -- lifecycle -----------------------------------------------------------------------

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections; further calls are an error. Idempotent."""

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
