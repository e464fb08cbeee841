"""protocol: the wire contract as a sans-IO library (frames, codec, session state machines)."""

from ._errors import CloseCode as CloseCode
from ._errors import ErrorCode as ErrorCode
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._limits import body_size as body_size
from ._limits import is_valid_conv_id as is_valid_conv_id
from ._limits import is_valid_id as is_valid_id
