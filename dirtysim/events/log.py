"""The recorder (in-memory log with seq numbering), JSONL encoding, the header line and the fingerprint.

``events.jsonl`` is one header line (``LogHeader``) followed by one compact
JSON event per line. The fingerprint covers the event lines only, so adding
or changing header fields never changes a run's fingerprint.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Callable, Iterator

import msgspec

from .. import __version__
from .schema import SCHEMA_VERSION, Event, RunStarted

_encoder = msgspec.json.Encoder()


class LogHeader(msgspec.Struct, tag="dirtysim-log", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    """First line of ``events.jsonl``: which schema and program wrote the log, for which scenario and seed."""

    schema_version: int  # the event schema (events/schema.py SCHEMA_VERSION)
    dirtysim_version: str
    scenario_hash: str  # scenario_hash() of run-started's resolved scenario
    seed: int


class Recorder:
    """Appends events with monotonic ``seq`` and the current simulated time.

    ``time_override``: the time of an event a lazy actor emits while it catches up
    (a ring-full exit happens in its quantum, not when someone later looks).
    """

    def __init__(self, clock: Callable[[], int]):
        self._clock = clock
        self.events: list[Event] = []
        self.time_override: int | None = None
        self._muted = False

    def emit(self, cls: type[Event], **payload) -> Event:
        t = self._clock() if self.time_override is None else self.time_override
        event = cls(seq=len(self.events), t_ns=int(t), **payload)
        if not self._muted:
            self.events.append(event)
        return event

    @contextmanager
    def muted(self) -> Iterator[None]:
        """Drop events inside the block: the oracle's look-ahead is not part of the run."""
        self._muted = True
        try:
            yield
        finally:
            self._muted = False


def encode_lines(events: list[Event]) -> bytes:
    """Canonical bytes of the events: one compact JSON object per line (what the fingerprint hashes)."""
    return b"".join(_encoder.encode(e) + b"\n" for e in events)


def fingerprint(events: list[Event]) -> str:
    """blake2b (128 bit) over the canonical event bytes."""
    return hashlib.blake2b(encode_lines(events), digest_size=16).hexdigest()


def scenario_hash(scenario: dict) -> str:
    """blake2b (128 bit) of the resolved scenario as JSON with sorted keys."""
    return hashlib.blake2b(msgspec.json.encode(scenario, order="sorted"), digest_size=16).hexdigest()


def header_for(events: list[Event]) -> LogHeader:
    """The header of a log whose first event is ``run-started``."""
    if not events or not isinstance(events[0], RunStarted):
        raise ValueError("an event log starts with run-started")
    first = events[0]
    return LogHeader(schema_version=SCHEMA_VERSION, dirtysim_version=__version__,
                     scenario_hash=scenario_hash(first.scenario), seed=first.seed)


def encode_log(events: list[Event]) -> bytes:
    """The bytes of ``events.jsonl``: the header line, then the event lines."""
    return _encoder.encode(header_for(events)) + b"\n" + encode_lines(events)
