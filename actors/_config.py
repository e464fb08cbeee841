"""The chat node's configuration: protocol timings, batching, limits and simulator mutants.

A :class:`NodeConfig` is a frozen value handed to :class:`~actors.Node`; the simulator builds
its own with virtual-time-friendly numbers and, only there, a set of :data:`MUTANTS`.
"""

from __future__ import annotations

from typing import Final

import attrs

from protocol import DEFAULT_HEARTBEAT_S, DEFAULT_PRESENCE_GRACE_S, HELLO_TIMEOUT_S

#: Deliberately broken variants of the node, each inert unless named in ``NodeConfig.mutants``.
#: The simulator switches them on one at a time to prove that its checker has teeth.
ACK_BEFORE_WRITE: Final = "ack_before_write"
WATERMARK_BACKWARDS: Final = "watermark_backwards"
SEQ_REUSE_AFTER_RESTART: Final = "seq_reuse_after_restart"
DELIVER_TO_REMOVED: Final = "deliver_to_removed"
RECEIPTS_TO_REMOVED: Final = "receipts_to_removed"
RECEIPTS_FROM_DEPARTED: Final = "receipts_from_departed"
TYPING_TO_REMOVED: Final = "typing_to_removed"
TYPING_FROM_DEPARTED: Final = "typing_from_departed"
HISTORY_FOR_DEPARTED: Final = "history_for_departed"
NO_OFFLINE_NOTIFICATION: Final = "no_offline_notification"
PUSH_OUT_OF_ORDER: Final = "push_out_of_order"
# The cluster paths (they matter with several nodes):
PRESENCE_LOCAL_ONLY: Final = "presence_local_only"
PUSH_BEFORE_MEMBERSHIP: Final = "push_before_membership"
RESUME_TOKEN_NOT_ADVANCED: Final = "resume_token_not_advanced"
NOTIFY_PER_NODE: Final = "notify_per_node"
CLAIMS_AFTER_LEASE_LOST: Final = "claims_after_lease_lost"
MUTANTS: Final = frozenset(
    {
        PRESENCE_LOCAL_ONLY,
        PUSH_BEFORE_MEMBERSHIP,
        RESUME_TOKEN_NOT_ADVANCED,
        NOTIFY_PER_NODE,
        CLAIMS_AFTER_LEASE_LOST,
        ACK_BEFORE_WRITE,
        WATERMARK_BACKWARDS,
        SEQ_REUSE_AFTER_RESTART,
        DELIVER_TO_REMOVED,
        RECEIPTS_TO_REMOVED,
        RECEIPTS_FROM_DEPARTED,
        TYPING_TO_REMOVED,
        TYPING_FROM_DEPARTED,
        HISTORY_FOR_DEPARTED,
        NO_OFFLINE_NOTIFICATION,
        PUSH_OUT_OF_ORDER,
    }
)


def _known_mutants(_inst: object, _attr: attrs.Attribute[frozenset[str]], value: object) -> None:
    if not isinstance(value, frozenset) or not value <= MUTANTS:
        raise ValueError(f"mutants must be a frozenset of {sorted(MUTANTS)}, got {value!r}")


@attrs.frozen(kw_only=True)
class NodeConfig:
    """Everything tunable about one chat node. Times are seconds of trio's clock."""

    #: Announced in ``welcome``; a silent connection is closed after twice this (4408).
    heartbeat_s: int = attrs.field(default=DEFAULT_HEARTBEAT_S)
    #: The first frame must be a ``hello`` within this time (else close 4408).
    hello_timeout_s: float = HELLO_TIMEOUT_S
    #: A user's going offline is reported only after this grace period.
    presence_grace_s: float = DEFAULT_PRESENCE_GRACE_S
    #: A conversation actor hands its recv/read watermarks to the node's writer this long
    #: after the first unwritten one; 0: at the end of the batch that raised them (the
    #: writer merges everything handed over while its previous write is in flight, so the
    #: writes never outnumber the writer's round trips either way).
    watermark_window_s: float = 0.0
    #: A failed watermark write is retried (with what arrived meanwhile) after this long.
    watermark_retry_s: float = 0.05
    #: A conversation actor with nothing to do for this long stops (recreated on demand).
    conversation_idle_s: float = 60.0
    #: At most this many queued requests go into one group commit.
    max_batch: int = 256
    #: Per-connection token bucket: sustained frames per second and burst size.
    rate_per_s: float = 200.0
    rate_burst: int = 1000
    #: A connection's writer task waits this long for the next push before it ends (a busy
    #: connection keeps one writer instead of starting one per write).
    writer_linger_s: float = 1.0
    #: Frames queued for one connection before it counts as a slow consumer and is dropped.
    outbox_size: int = 4096
    #: Bytes (estimated, see ``actors._router.frame_bytes``) queued for one connection
    #: before it counts as a slow consumer (close 1013).
    outbox_bytes: int = 4 * 1024 * 1024
    #: The hello backlog is read a page at a time, the next page only once the outbox holds
    #: less than this (so a backlog of any length costs about this much memory).
    backlog_window_bytes: int = 256 * 1024
    #: Messages per page of the hello backlog (one Store read each).
    backlog_page: int = 32
    #: Admission (close 4429): open connections of this node, handshakes included;
    #: connections that have not said hello yet; connected devices of one user here.
    max_connections: int = 20_000
    max_pending_hellos: int = 1_000
    max_devices_per_user: int = 32
    #: Per-user token bucket shared by all the user's connections on this node.
    user_rate_per_s: float = 400.0
    user_rate_burst: int = 2000
    #: Conversations a user may start per minute on this node (group creations, and first
    #: messages of direct conversations): each costs offline-notification jobs (G8).
    creations_per_minute: int = 30
    #: At most one ``typing`` relay per (user, conversation) per this many seconds.
    typing_interval_s: float = 1.0
    #: Requests queued for one conversation actor or the presence registry.
    mailbox_size: int = 1024
    #: Bound on closing one WebSocket and on the cleanup a finishing actor does.
    close_timeout_s: float = 2.0
    #: Bound on writing what a closing connection is owed (its outbox) before a close that
    #: drains (shutdown 1001, token expiry 4401).
    drain_timeout_s: float = 3.0
    #: Bound on a graceful node shutdown before the rest is cancelled.
    shutdown_timeout_s: float = 10.0
    #: This node's lease in the Store lasts this long (PROTOCOL.md: at most 30 s): a node
    #: that stops renewing it is declared dead that long after its last renewal.
    lease_s: float = attrs.field(default=15.0, validator=attrs.validators.le(30.0))
    #: The lease is renewed (and expired leases of other nodes swept) this often.
    lease_refresh_s: float = 3.0
    #: Serve ``GET /metrics`` (Prometheus) on the node's port; off so that it is not public.
    metrics: bool = False
    #: Origins (``scheme://host[:port]``, normalized) besides the node's own from which a
    #: browser may open a WebSocket (PROTOCOL.md, Transport).
    allowed_origins: frozenset[str] = frozenset()
    #: Simulator-only broken variants (see :data:`MUTANTS`); empty in production.
    mutants: frozenset[str] = attrs.field(default=frozenset(), validator=_known_mutants)
