"""Every frame of the wire contract as a frozen, keyword-only, self-validating value.

A frame class knows its wire ``type`` (``TYPE``) and its fields. Field names follow the wire
names except ``from``, a Python keyword, which is ``sender`` here. Constructing a frame
with a value the contract forbids raises :class:`LocalProtocolError` -- a bug on our side;
the codec turns the same problems in *incoming* frames into :class:`RemoteProtocolError`.

The frames live by direction (``_client_frames``, ``_server_frames``) over one set of field
validators (``_fields``); this module is where the rest of the package imports them from.
"""

from __future__ import annotations

from ._client_frames import CLIENT_FRAMES as CLIENT_FRAMES
from ._client_frames import REQUEST_FRAMES as REQUEST_FRAMES
from ._client_frames import ClientFrame as ClientFrame
from ._client_frames import Convs as Convs
from ._client_frames import GroupAdd as GroupAdd
from ._client_frames import GroupCreate as GroupCreate
from ._client_frames import GroupLeave as GroupLeave
from ._client_frames import GroupRemove as GroupRemove
from ._client_frames import Hello as Hello
from ._client_frames import History as History
from ._client_frames import Ping as Ping
from ._client_frames import PresenceSub as PresenceSub
from ._client_frames import PresenceUnsub as PresenceUnsub
from ._client_frames import Read as Read
from ._client_frames import Recv as Recv
from ._client_frames import RequestFrame as RequestFrame
from ._client_frames import Send as Send
from ._client_frames import Typing as Typing
from ._fields import CODE as CODE
from ._fields import OMIT_NONE as OMIT_NONE
from ._fields import ConvKind as ConvKind
from ._fields import MessageKind as MessageKind
from ._fields import PresenceStatus as PresenceStatus
from ._server_frames import SERVER_FRAMES as SERVER_FRAMES
from ._server_frames import Ack as Ack
from ._server_frames import ConvRow as ConvRow
from ._server_frames import Error as Error
from ._server_frames import MemberMarks as MemberMarks
from ._server_frames import Msg as Msg
from ._server_frames import Nack as Nack
from ._server_frames import Pong as Pong
from ._server_frames import Presence as Presence
from ._server_frames import Receipt as Receipt
from ._server_frames import Result as Result
from ._server_frames import ServerFrame as ServerFrame
from ._server_frames import Synced as Synced
from ._server_frames import TypingNotice as TypingNotice
from ._server_frames import Welcome as Welcome
from ._server_frames import convs_result as convs_result
from ._server_frames import empty_result as empty_result
from ._server_frames import group_created_result as group_created_result
from ._server_frames import history_messages as history_messages
from ._server_frames import history_result as history_result

Frame = ClientFrame | ServerFrame
