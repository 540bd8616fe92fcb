"""The event log: typed events (msgspec), the recorder, JSONL I/O and the fingerprint."""
