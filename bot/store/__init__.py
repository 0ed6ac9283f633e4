"""Sessions: the persisted state machine and the store that keeps it."""
