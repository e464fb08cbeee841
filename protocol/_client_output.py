"""What a client session has produced and its driver has not drained yet: wire texts and
events, in order. The session's parts (outbox, requests, inbox) all write to one."""

from __future__ import annotations

import attrs

from ._client_events import Event
from ._codec import encode
from ._frames import ClientFrame


@attrs.define
class Output:
    texts: list[str] = attrs.Factory(list)
    events: list[Event] = attrs.Factory(list)

    def write(self, frame: ClientFrame) -> None:
        self.texts.append(encode(frame))

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def take_texts(self) -> list[str]:
        texts, self.texts = self.texts, []
        return texts

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events
