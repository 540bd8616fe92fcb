"""The recorder (in-memory log with seq numbering), JSONL I/O and the fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import msgspec

from .schema import AnyEvent, Event

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


class Recorder:
    """Appends events with monotonic ``seq`` and the current simulated time.

    ``time_override``: the time of an event a lazy actor emits while it catches up
    (a ring-full exit happens in its quantum, not when someone later looks).
    """

    def __init__(self, clock: Callable[[], int]):
        self._clock = clock
        self.events: list[Event] = []
        self.time_override: int | None = None

    def emit(self, cls: type[Event], **payload) -> Event:
        t = self._clock() if self.time_override is None else self.time_override
        event = cls(seq=len(self.events), t_ns=int(t), **payload)
        self.events.append(event)
        return event


def encode_lines(events: list[Event]) -> bytes:
    """Canonical bytes of a log: one compact JSON object per line."""
    return b"".join(_encoder.encode(e) + b"\n" for e in events)


def fingerprint(events: list[Event]) -> str:
    """blake2b (128 bit) over the canonical event bytes."""
    return hashlib.blake2b(encode_lines(events), digest_size=16).hexdigest()


def read_events(path: str | Path) -> list[Event]:
    with open(path, "rb") as f:
        return [_decoder.decode(line) for line in f if line.strip()]
