"""client: the Python client SDK (trio) and the terminal chat.

The SDK is :class:`Client`; it drives :class:`protocol.ClientSession` over a
:data:`Transport` (a real WebSocket by default, any trio stream for the simulator).
"""

from ._chat_cli import chat_main as chat_main
from ._errors import ClientClosed as ClientClosed
from ._errors import ClientError as ClientError
from ._errors import RequestError as RequestError
from ._errors import RequestInterrupted as RequestInterrupted
from ._errors import RequestTimeout as RequestTimeout
from ._errors import SendRefused as SendRefused
from ._link import FATAL_CLOSE_CODES as FATAL_CLOSE_CODES
from ._link import ClientEvent as ClientEvent
from ._link import Reconnecting as Reconnecting
from ._link import TokenProvider as TokenProvider
from ._sdk import Client as Client
from ._sdk import HistoryPage as HistoryPage
from ._transport import Transport as Transport
from ._transport import TransportError as TransportError
from ._transport import WebSocketLike as WebSocketLike
from ._transport import stream_transport as stream_transport
from ._transport import websocket_transport as websocket_transport
