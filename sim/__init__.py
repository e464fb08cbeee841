"""sim: the deterministic simulator of the chat node under faults."""
