"""actors: the chat node as supervised Trio actors and its WebSocket gateway."""
