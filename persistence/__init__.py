"""persistence: the Store contract, MongoStore, the embedded SecantusDB launcher, MemoryStore."""

from ._contract import Store as Store
from ._embedded import EmbeddedServer as EmbeddedServer
from ._embedded import EmbeddedServerError as EmbeddedServerError
from ._errors import BadInput as BadInput
from ._errors import Conflict as Conflict
from ._errors import Forbidden as Forbidden
from ._errors import NotFound as NotFound
from ._errors import StoreError as StoreError
from ._errors import TooLarge as TooLarge
from ._errors import Unavailable as Unavailable
from ._errors import UnknownConversation as UnknownConversation
from ._memory import MemoryStore as MemoryStore
from ._memory import StoreFaults as StoreFaults
from ._mongo import MongoStore as MongoStore
from ._types import BacklogRange as BacklogRange
from ._types import Conversation as Conversation
from ._types import ConvKind as ConvKind
from ._types import ConvPage as ConvPage
from ._types import ConvRow as ConvRow
from ._types import Draft as Draft
from ._types import MemberMarks as MemberMarks
from ._types import MessageKind as MessageKind
from ._types import NotificationJob as NotificationJob
from ._types import ReadMark as ReadMark
from ._types import RecvMark as RecvMark
from ._types import StoredMessage as StoredMessage
