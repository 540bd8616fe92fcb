"""Read an ``events.jsonl`` and check that it is one whole, untouched run before anything folds it.

``read_log`` returns the events, or raises ``LogError`` naming the first bad
line as ``FILE:LINE: message``. It checks, in file order:

- the header line (``LogHeader``) is present and its schema version is one this
  program reads (a newer one is refused, not guessed at);
- each line is UTF-8, at most ``MAX_LINE_BYTES``, and decodes to a known event;
- ``seq`` starts at 0 and increments by one; ``t_ns`` never decreases;
- the first event is ``run-started`` and matches the header (scenario hash,
  seed, versions), there is no second one, and the last is ``run-finished``
  with nothing after it (a truncated log has none, concatenated logs have two);
- RAM bookkeeping adds up, as ``ram.c`` keeps it: ``migration_dirty_pages``
  starts at ``ram_bytes_total`` pages (``ram_state_init``), grows by the pages of
  a block added while migrating (``ram_list_init_bitmaps``), falls by every page
  sent, and each ``bitmap-sync`` reports the previous value plus its
  ``new_dirty_pages`` (``migration_bitmap_sync``); it is never negative and is 0
  when the migration completes;
- the oracle is consistent with the outcome: a completed run checked it at
  switchover, where every stale page is lost; a timeout checked it at timeout;
  lost pages never exceed stale pages, and the losses reported after wrong steps
  only grow.

What it cannot see: an edit that keeps every invariant (say, a rate-window's
``mbps``). The header carries no digest of the events, so a log can be written
as it is produced; compare ``fingerprint`` with the run's summary for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from . import schema as ev
from .log import LogHeader, scenario_hash

MAX_LINE_BYTES = 1 << 20
READABLE_SCHEMA_VERSIONS = (1, 2, 3, 4, 5, ev.SCHEMA_VERSION)  # older versions lack only fields with defaults
_decoder = msgspec.json.Decoder(ev.AnyEvent)
_header_tag = LogHeader.__struct_config__.tag


class LogError(ValueError):
    """A log that is not one whole run. ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line, self.message = str(path), line, message
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")


def read_log(path: str | Path) -> tuple[LogHeader, list[ev.Event]]:
    """The header and events of a log written by ``dirtysim run``, checked (see the module docstring)."""
    try:
        with open(path, "rb") as f:
            return _Checker(path).read(f)
    except OSError as exc:
        raise LogError(path, None, f"cannot read the log: {exc.strerror}") from None


def _lines(f: BinaryIO, path: str | Path):
    """(line number, bytes without the newline), refusing a line longer than MAX_LINE_BYTES before reading it whole."""
    number = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 2)
        if not raw:
            return
        number += 1
        line = raw.removesuffix(b"\n")
        if len(line) > MAX_LINE_BYTES:
            raise LogError(path, number, f"line longer than {MAX_LINE_BYTES} bytes: not an event log")
        yield number, line


@dataclass
class _Checker:
    path: str | Path
    header: LogHeader | None = None
    expected_seq: int = 0
    last_t_ns: int = 0
    finished_line: int = 0  # line of run-finished, once seen
    page_size: int = 4096
    ram_pages: int = 0  # ram_bytes_total in pages
    migrating: bool = False  # between the setup status and the end of the migration
    dirty: int | None = None  # migration_dirty_pages; None = not known (a block removed while migrating)
    last_oracle: ev.OracleCheck | None = None
    lost_seen: int = 0
    in_postcopy: bool = False  # the status reached postcopy-active

    def fail(self, line: int, message: str):
        raise LogError(self.path, line, message)

    def read(self, f: BinaryIO) -> tuple[LogHeader, list[ev.Event]]:
        events: list[ev.Event] = []
        number = 0
        for number, raw in _lines(f, self.path):
            text = self._text(number, raw)
            if number == 1:
                self.header = self._header(text)
                continue
            event = self._decode(number, raw, text)
            self._check(number, event)
            events.append(event)
        if number == 0:
            self.fail(1, "empty file: no dirtysim-log header")
        if not events:
            self.fail(number + 1, "no events after the header (truncated?)")
        if not self.finished_line:
            self.fail(number + 1, f"log ends without run-finished (truncated after seq {events[-1].seq}?)")
        return self.header, events

    def _text(self, number: int, raw: bytes) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.fail(number, f"not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})")
        if not text.strip():
            self.fail(number, "empty line")
        return text

    def _header(self, text: str) -> LogHeader:
        try:
            obj = msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            self.fail(1, f"not JSON: {exc}")
        if not isinstance(obj, dict) or obj.get("type") != _header_tag:
            got = obj.get("type") if isinstance(obj, dict) else type(obj).__name__
            why = "written before logs had a header: rerun the scenario" if got == "run-started" else \
                "not a log written by `dirtysim run`"
            self.fail(1, f"no dirtysim-log header line (got type {got!r}): {why}")
        version = obj.get("schema_version")
        if isinstance(version, int) and version not in READABLE_SCHEMA_VERSIONS:
            by = obj.get("dirtysim_version", "?")
            self.fail(1, f"log schema version {version} (written by dirtysim {by}) is not one this dirtysim reads "
                         f"(allowed: {', '.join(map(str, READABLE_SCHEMA_VERSIONS))})")
        try:
            return msgspec.convert(obj, LogHeader)
        except msgspec.ValidationError as exc:
            self.fail(1, f"bad dirtysim-log header: {exc}")

    def _decode(self, number: int, raw: bytes, text: str) -> ev.Event:
        try:
            return _decoder.decode(raw)
        except msgspec.ValidationError as exc:  # a subclass of DecodeError: valid JSON, not an event
            obj = msgspec.json.decode(raw)
            kind = obj.get("type") if isinstance(obj, dict) else None
            if kind == _header_tag:
                self.fail(number, "a second dirtysim-log header: two logs concatenated")
            if isinstance(kind, str) and kind not in _EVENT_TYPES:
                self.fail(number, f"unknown event type {kind!r}")
            self.fail(number, f"not a valid {kind or 'event'}: {exc}")
        except msgspec.DecodeError as exc:
            self.fail(number, f"not JSON: {exc}")

    def _check(self, number: int, e: ev.Event) -> None:
        if self.finished_line:
            self.fail(number, f"{e.__struct_config__.tag} after run-finished (line {self.finished_line}): "
                              "two logs concatenated?")
        if e.seq != self.expected_seq:
            self.fail(number, f"seq {e.seq} where {self.expected_seq} was expected: events missing, "
                              "duplicated or out of order")
        self.expected_seq += 1
        if e.t_ns < self.last_t_ns:
            self.fail(number, f"t_ns {e.t_ns} is before the previous event's {self.last_t_ns}: time goes back")
        self.last_t_ns = e.t_ns
        if e.seq == 0:
            if not isinstance(e, ev.RunStarted):
                self.fail(number, f"the first event is {e.__struct_config__.tag}, not run-started")
            self._run_started(number, e)
        elif isinstance(e, ev.RunStarted):
            self.fail(number, "a second run-started: two logs concatenated")
        elif isinstance(e, ev.RunFinished):
            self.finished_line = number
        self._ram(number, e)
        if isinstance(e, ev.OracleCheck):
            self._oracle(number, e)
        elif isinstance(e, ev.MigrationStatus):
            self._status(number, e)
        elif isinstance(e, ev.GuestSample):
            self._sample(number, e)

    def _run_started(self, number: int, e: ev.RunStarted) -> None:
        h, self.page_size = self.header, e.page_size
        if scenario_hash(e.scenario) != h.scenario_hash:
            self.fail(number, f"the scenario does not match the header's scenario_hash {h.scenario_hash}: "
                              "log edited?")
        for field, ours, theirs in (("seed", e.seed, h.seed), ("schema_version", e.schema_version, h.schema_version),
                                    ("version", e.version, h.dirtysim_version)):
            if ours != theirs:
                self.fail(number, f"{field} {ours!r} does not match the header's {theirs!r}: log edited?")

    def _ram(self, number: int, e: ev.Event) -> None:
        """``migration_dirty_pages`` as ``ram.c`` keeps it (see the module docstring)."""
        if isinstance(e, ev.RamBlockAdded):
            self.ram_pages += e.size // self.page_size
            if self.migrating and self.dirty is not None:
                self.dirty += e.size // self.page_size
        elif isinstance(e, ev.RamBlockRemoved):
            if self.migrating:
                self.dirty = None  # its dirty pages are dropped; how many is not in the log
        elif isinstance(e, ev.Transfer) and e.kind == "pages" and self.dirty is not None:
            self.dirty -= e.pages
            if self.dirty < 0:
                self.fail(number, f"remaining goes negative ({self.dirty} pages) after this transfer: "
                                  "more pages sent than were dirty")
        elif isinstance(e, ev.BitmapSync):
            if self.dirty is not None and self.dirty + e.new_dirty_pages != e.migration_dirty_pages:
                self.fail(number, f"migration_dirty_pages {e.migration_dirty_pages} != {self.dirty} before the sync "
                                  f"+ new_dirty_pages {e.new_dirty_pages}")
            if e.migration_dirty_pages < 0:
                self.fail(number, f"migration_dirty_pages is negative ({e.migration_dirty_pages})")
            self.dirty = e.migration_dirty_pages

    def _status(self, number: int, e: ev.MigrationStatus) -> None:
        self.in_postcopy = e.status == "postcopy-active" or (self.in_postcopy and e.status != "setup")
        if e.status == "setup":
            self.migrating, self.dirty = True, self.ram_pages  # ram_state_init
        elif e.status in ("completed", "cancelled", "failed"):
            self.migrating = False
        if e.status == "completed":
            if self.dirty:
                self.fail(number, f"completed with migration_dirty_pages {self.dirty}, not 0")
            if self.last_oracle is None or self.last_oracle.at not in ("switchover", "postcopy-complete"):
                self.fail(number, "completed without an oracle-check at switchover (or postcopy-complete)")
        elif e.status == "cancelled" and (self.last_oracle is None or self.last_oracle.at not in ev.CANCEL_REASONS):
            self.fail(number, "cancelled without an oracle-check at the cancel (timeout, max-syncs or cancelled)")

    def _sample(self, number: int, e: ev.GuestSample) -> None:
        """One entry per vCPU in every list; no vCPU runs and sleeps longer than the sample lasts."""
        if len({len(e.ran_ns), len(e.writes), len(e.throttle_ns), len(e.dirtylimit_ns)}) != 1:
            self.fail(number, "guest-sample lists of different lengths (one entry per vCPU)")
        if any(r + t + d > e.interval_ns for r, t, d in zip(e.ran_ns, e.throttle_ns, e.dirtylimit_ns)):
            self.fail(number, f"a vCPU ran and slept longer than the {e.interval_ns} ns the guest-sample covers")

    def _oracle(self, number: int, e: ev.OracleCheck) -> None:
        """Postcopy's checks (``migration/postcopy.py``) compare the destination itself: a page it lost may not be
        stale at the source (a placement overwrote the destination's write), and they are no audits."""
        if e.at in POSTCOPY_CHECKS or (self.in_postcopy and e.at in ev.CANCEL_REASONS):
            self.last_oracle = e
            return
        if e.lost_pages > e.stale_pages:
            self.fail(number, f"lost_pages {e.lost_pages} > stale_pages {e.stale_pages}")
        if e.at == "switchover" and e.lost_pages != e.stale_pages:
            self.fail(number, f"at switchover every stale page is lost: lost_pages {e.lost_pages} != "
                              f"stale_pages {e.stale_pages}")
        if e.at != "switchover" and e.at not in ev.CANCEL_REASONS:  # an audit after a wrong step, when losses grew
            if e.lost_pages <= self.lost_seen:
                self.fail(number, f"audit at {e.at} reports {e.lost_pages} lost pages, not more than the "
                                  f"{self.lost_seen} before")
            self.lost_seen = e.lost_pages
        self.last_oracle = e


POSTCOPY_CHECKS = ("postcopy-switch", "postcopy-complete")
_EVENT_TYPES = {cls.__struct_config__.tag for cls in ev.AnyEvent.__args__}
