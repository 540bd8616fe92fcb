"""The event log as a Chrome trace (JSON trace-event format) for the Perfetto UI (ui.perfetto.dev).

Time base: ``ts`` and ``dur`` are microseconds of simulated time since the
guest started (``t_ns`` = 0), with nanosecond precision as decimals. One
process (``pid`` 1) per run; tracks (``tid``):

- ``migration status`` (1): one slice per ``MigrationStatus`` (setup, active,
  then ``device (vCPUs stopped)`` from ``migration_stop_vm`` until completed; a
  log without the DEVICE status shows ``completion (vCPUs stopped)`` there);
  instants for timeline actions, oracle checks and the run's end.
- ``migration thread`` (2): ``migration_bitmap_sync #N`` slices (``[t - cost_ns,
  t]``; args: reason, new and remaining dirty pages, GET/CLEAR/reap/vhost time of
  that sync), send slices (the ``transfer`` events of one slice, ending at their
  time and lasting their wire time; args: bytes, normal and zero pages, re-sent
  pages), lazy clears (``migration_clear_memory_region_dirty_bitmap`` followed by
  its ``KVM_CLEAR_DIRTY_LOG`` calls, starting at their time and lasting their
  cost), the stream header, EOS markers and the device state; instants for scan
  wraps.
- ``memory map`` (3): ``kvm_region_commit`` memslot updates (slice = the time
  vCPUs were held out, when they were) and rings reaped before a slot deletion.
- ``kvm-reaper`` (4, dirty ring only): the 1 s reaper's ``kvm_dirty_ring_reap``.
- ``vCPU i`` (10 + i): ``running``, ``KVM_EXIT_DIRTY_RING_FULL`` (exit + reap of
  the full ring), ``memslot update (inhibited)`` and ``stopped`` slices, which
  tile the vCPU's time; after a postcopy switch, ``running (destination)`` from
  the guest's resume and ``userfault`` slices (fault to placement); an instant
  ``vcpu-stats`` at every sync with that interval's writes, write-protect
  faults and their time.
- ``vhost DEVICE`` (100 + j): instants for each harvest of the device's log by
  QEMU's ``vhost_log_sync`` (pages moved) and, with read-then-zero, the delayed
  zero store (pages erased).

Counters (``"C"``, process-wide): ``remaining`` (bytes: ``migration_dirty_pages``
x page size, after each sync and send slice), ``transferred`` (bytes),
``dirty rate`` (MiB/s: ``dirty-pages-rate`` x page size, as of each sync),
``bandwidth`` (MiB/s: the rate window's ``bandwidth``, which QEMU keeps in bytes
per ms, x 1000 / 2^20), ``threshold_size`` (bytes) and ``expected downtime`` (ms).

What the log does not hold, and a later engine could record: where in each
vCPU quantum the write-protect faults fell (today only their count and total
time per sync interval), the backends' DMA bursts, and throttling slices
(auto-converge and dirty-limit are not built). Where two derived slices of one
track would overlap (costs accounted in one wait), the later starts where the
earlier ends; the exact costs stay in the args.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from ..events import schema as ev

MIB = 1 << 20
PID = 1
STATUS, THREAD, MEMORY_MAP, REAPER, VCPU0, VHOST0 = 1, 2, 3, 4, 10, 100
ENDED = ("completed", "cancelled", "failed")
STATUS_NAMES = {"device": "device (vCPUs stopped)"}
TRANSFER_NAMES = {"setup": "stream header", "eos": "RAM_SAVE_FLAG_EOS", "device-state": "device state + QEMU_VM_EOF",
                  "vmdesc": "vmdesc (JSON)", "section-part": "section header + footer (PART)",
                  "section-end": "section header + footer (END)",
                  "postcopy-discard": "CMD_POSTCOPY_RAM_DISCARD", "postcopy-package": "CMD_PACKAGED (device state)",
                  "postcopy-ping": "ping", "postcopy-end": "section end + QEMU_VM_EOF"}  # migration_switchover_start, right after migration_stop_vm


def _us(t_ns: int) -> float:
    return t_ns / 1000


@dataclass
class _Tracks:
    """Slices per track, laid without overlap; instants and counters as they come."""

    names: dict[int, str] = field(default_factory=dict)
    slices: dict[int, list[list]] = field(default_factory=lambda: defaultdict(list))  # [start, end, name, args]
    other: list[dict] = field(default_factory=list)

    def slice(self, tid: int, start: int, end: int, name: str, args: dict | None = None) -> None:
        """A slice of nominal extent [start, end); zero-length ones are dropped, clipped ones kept (maybe at 0 length)."""
        if end <= start:
            return
        track = self.slices[tid]
        start = max(start, track[-1][1]) if track else start
        track.append([start, max(start, end), name, args or {}])

    def instant(self, tid: int, t: int, name: str, args: dict | None = None) -> None:
        self.other.append({"ph": "i", "s": "t", "name": name, "pid": PID, "tid": tid, "ts": _us(t),
                           "args": args or {}})

    def counter(self, t: int, name: str, unit: str, value: float) -> None:
        self.other.append({"ph": "C", "name": name, "pid": PID, "tid": 0, "ts": _us(t), "args": {unit: value}})


def chrome_trace(events: list[ev.Event]) -> dict:
    """The Chrome trace-event JSON object of a checked log (see the module docstring)."""
    started: ev.RunStarted = events[0]
    page, end_ns = started.page_size, events[-1].t_ns
    tr = _Tracks(names={STATUS: "migration status", THREAD: "migration thread", MEMORY_MAP: "memory map"})
    vcpus: dict[int, list] = defaultdict(list)  # vCPU -> stall slices [start, end, name, args]
    vhost: dict[str, int] = {}
    status: tuple[int, str] | None = None
    stopped_ns = None
    resumed_ns = None  # postcopy: the guest runs on the destination from here
    userfaults: dict[int, list] = defaultdict(list)  # vCPU -> postcopy fault slices
    dirty, transferred = 0, 0
    sync_costs: dict[str, int] = defaultdict(int)  # ioctl and harvest time since the last sync
    send: list[ev.Transfer] = []
    clear: list = []  # [t, chunk args, cost] of the lazy clear being issued

    def flush_send() -> None:
        if send:
            t = send[-1].t_ns
            wire = sum(e.wire_ns for e in send)
            tr.slice(THREAD, t - wire, t, "send pages", {
                "bytes": sum(e.bytes for e in send), "normal": sum(e.normal for e in send),
                "zero": sum(e.zero for e in send), "resent": sum(e.resent for e in send),
                "blocks": [e.block for e in send]})
            send.clear()

    def flush_clear() -> None:
        if clear:
            t, args, cost = clear
            tr.slice(THREAD, t, t + cost, "lazy clear", {**args, "clear_ns": cost})
            clear.clear()

    def set_status(t: int, name: str | None) -> None:
        nonlocal status
        if status is not None and status[0] < t:  # a status replaced at once (vCPUs stopped, then DEVICE) leaves none
            tr.slice(STATUS, status[0], t, status[1])
        status = (t, name) if name else None

    for e in events:
        if not isinstance(e, ev.KvmClearDirtyLog):
            flush_clear()
        if not (isinstance(e, ev.Transfer) and e.kind == "pages" and send and send[-1].t_ns == e.t_ns):
            flush_send()
        if isinstance(e, ev.MigrationStatus):
            set_status(e.t_ns, None if e.status in ENDED else STATUS_NAMES.get(e.status, e.status))
            if e.status == "setup":
                dirty = sum(b for b in _blocks(events, e.seq)) // page
            if e.status in ENDED:
                tr.instant(STATUS, e.t_ns, e.status)
        elif isinstance(e, ev.VcpusStopped):
            stopped_ns = e.t_ns
            set_status(e.t_ns, "completion (vCPUs stopped)")
        elif isinstance(e, ev.BitmapSync):
            dirty = e.migration_dirty_pages
            if e.bql_wait_ns:
                tr.slice(THREAD, e.t_ns - e.cost_ns - e.bql_wait_ns, e.t_ns - e.cost_ns, "bql_lock (held)")
            tr.slice(THREAD, e.t_ns - e.cost_ns, e.t_ns, f"migration_bitmap_sync #{e.dirty_sync_count} (BQL held)", {
                "reason": e.reason, "new_dirty_pages": e.new_dirty_pages,
                "migration_dirty_pages": e.migration_dirty_pages, "pending_before": e.pending_before,
                "threshold_size": e.threshold_size, "cost_ns": e.cost_ns, **sync_costs})
            sync_costs.clear()
            tr.counter(e.t_ns, "remaining", "bytes", dirty * page)
            tr.counter(e.t_ns, "dirty rate", "MiB/s", round(e.dirty_pages_rate * page / MIB, 3))
        elif isinstance(e, ev.Transfer):
            transferred += e.bytes
            tr.counter(e.t_ns, "transferred", "bytes", transferred)
            if e.kind == "pages":
                send.append(e)
                dirty -= e.pages
                tr.counter(e.t_ns, "remaining", "bytes", dirty * page)
            else:
                name = TRANSFER_NAMES[e.kind]
                tr.slice(THREAD, e.t_ns - e.wire_ns, e.t_ns, name, {"bytes": e.bytes})
        elif isinstance(e, ev.LazyClear):
            clear.extend([e.t_ns, {"block": e.block, "chunk": e.chunk, "start": e.start, "size": e.size}, 0])
        elif isinstance(e, ev.KvmClearDirtyLog):
            if clear:
                clear[2] += e.cost_ns
            else:
                tr.slice(THREAD, e.t_ns, e.t_ns + e.cost_ns, "KVM_CLEAR_DIRTY_LOG", {"slot": e.slot,
                                                                                   "reprotected": e.reprotected})
            sync_costs["clear_ns"] += e.cost_ns
        elif isinstance(e, ev.KvmGetDirtyLog):
            sync_costs["get_ns"] += e.cost_ns
        elif isinstance(e, ev.VhostLogSync):
            sync_costs["vhost_log_sync_ns"] += e.cost_ns
            tid = vhost.setdefault(e.device, VHOST0 + len(vhost))
            tr.instant(tid, e.t_ns, f"vhost_log_sync ({e.harvest})", {"pages": e.pages})
        elif isinstance(e, ev.VhostLogZero):
            tid = vhost.setdefault(e.device, VHOST0 + len(vhost))
            tr.instant(tid, e.t_ns, "delayed zero store (read-then-zero)", {"erased_pages": e.erased_pages})
        elif isinstance(e, ev.DirtyRingReap):
            args = {"entries": e.entries, "cost_ns": e.cost_ns}
            if e.reason == "ring-full":  # the exit at t_ns: wait for the BQL, then reap
                if e.bql_wait_ns:
                    vcpus[e.vcpu].append([e.t_ns, e.t_ns + e.bql_wait_ns, "bql_lock (held)", {}])
                start = e.t_ns + e.bql_wait_ns
                vcpus[e.vcpu].append([start, start + e.cost_ns, "KVM_EXIT_DIRTY_RING_FULL", args])
            elif e.reason == "reaper":  # the reap at t_ns, after its wait
                tr.names[REAPER] = "kvm-reaper"
                if e.bql_wait_ns:
                    tr.slice(REAPER, e.t_ns - e.bql_wait_ns, e.t_ns, "bql_lock (held)")
                tr.slice(REAPER, e.t_ns, e.t_ns + e.cost_ns, "kvm_dirty_ring_reap", args)
            elif e.reason == "slot-delete":
                tr.slice(MEMORY_MAP, e.t_ns, e.t_ns + e.cost_ns, "kvm_dirty_ring_reap (slot delete)", args)
            else:
                sync_costs["reap_ns"] += e.cost_ns
        elif isinstance(e, ev.KvmMemslotUpdate):
            tr.slice(MEMORY_MAP, e.t_ns, e.t_ns + e.stall_ns, "kvm_region_commit",
                     {"deleted": e.deleted, "added": e.added, "inhibited": e.inhibited})
            if e.inhibited and e.stall_ns and stopped_ns is None:
                for stalls in _all_vcpus(events, vcpus):
                    stalls.append([e.t_ns, e.t_ns + e.stall_ns, "memslot update (inhibited)", {"stall_ns": e.stall_ns}])
        elif isinstance(e, ev.VcpuStats):
            vcpus.setdefault(e.vcpu, [])  # the vCPU has a track even without stalls
            tr.instant(VCPU0 + e.vcpu, e.t_ns, "vcpu-stats", {
                "writes": e.writes, "faults": e.faults, "fault_ns": e.fault_ns, "ring_full_exits": e.ring_full_exits,
                "ring_full_ns": e.ring_full_ns, "inhibit_ns": e.inhibit_ns, "mmio_exits": e.mmio_exits,
                "bql_wait_ns": e.bql_wait_ns})
        elif isinstance(e, ev.RateWindow):
            tr.counter(e.t_ns, "bandwidth", "MiB/s", round(e.bandwidth * 1000 / MIB, 3))
            tr.counter(e.t_ns, "threshold_size", "bytes", e.threshold_size)
            tr.counter(e.t_ns, "expected downtime", "ms", e.expected_downtime)
        elif isinstance(e, ev.ScanWrap):
            tr.instant(THREAD, e.t_ns, "scan wrap (complete_round)")
        elif isinstance(e, ev.TimelineAction):
            tr.instant(STATUS, e.t_ns, f"{e.action} {e.target}", {"result": e.result})
        elif isinstance(e, ev.OracleCheck):
            tr.instant(STATUS, e.t_ns, f"oracle check ({e.at})", {"stale_pages": e.stale_pages,
                                                                  "lost_pages": e.lost_pages})
        elif isinstance(e, ev.PostcopyStart):
            tr.instant(STATUS, e.t_ns, f"postcopy_start ({e.trigger})", {"can_postcopy": e.can_postcopy})
        elif isinstance(e, ev.PostcopyRunning):
            resumed_ns = e.t_ns
            tr.instant(STATUS, e.t_ns, "guest resumed on the destination", {"package_bytes": e.package_bytes})
        elif isinstance(e, ev.PostcopyFault):
            userfaults[e.vcpu].append([e.fault_ns, e.t_ns, "userfault", {"page": e.page, "served": e.served,
                                                                         "request_ns": e.request_ns}])
        elif isinstance(e, ev.RunFinished):
            tr.instant(STATUS, e.t_ns, f"run finished ({e.stop_reason})", {"error": e.error} if e.error else {})
    flush_clear()
    flush_send()
    set_status(end_ns, None)
    for vcpu, stalls in sorted(vcpus.items()):
        _vcpu_track(tr, VCPU0 + vcpu, sorted(stalls, key=lambda s: s[0]), stopped_ns, end_ns, resumed_ns,
                    userfaults[vcpu])
        tr.names[VCPU0 + vcpu] = f"vCPU {vcpu}"
    for device, tid in vhost.items():
        tr.names[tid] = f"vhost {device}"
    return {"traceEvents": _metadata(tr, started) + _sorted(tr), "displayTimeUnit": "ms",
            "otherData": {"scenario": started.name, "seed": started.seed, "dirtysim": started.version,
                          "time base": "simulated microseconds since the guest started"}}


def _blocks(events: list[ev.Event], upto: int) -> list[int]:
    """RAMBlock sizes at seq ``upto`` (``ram_bytes_total``, what ``ram_state_init`` counts)."""
    sizes: dict[str, int] = {}
    for e in events[:upto]:
        if isinstance(e, ev.RamBlockAdded):
            sizes[e.idstr] = e.size
        elif isinstance(e, ev.RamBlockRemoved):
            sizes.pop(e.idstr, None)
    return list(sizes.values())


def _all_vcpus(events: list[ev.Event], vcpus: dict) -> list[list]:
    """The stall lists of every vCPU of the run (from the scenario's vCPU groups)."""
    count = sum(group["count"] for group in events[0].scenario["machine"]["vcpus"])
    return [vcpus[i] for i in range(count)]


def _vcpu_track(tr: _Tracks, tid: int, stalls: list, stopped_ns: int | None, end_ns: int,
                resumed_ns: int | None = None, userfaults: tuple = ()) -> None:
    """Stall slices, ``running`` in the gaps until the vCPUs stop, then ``stopped``; after a postcopy switch,
    ``running (destination)`` from the resume with the vCPU's userfaults."""
    stop = stopped_ns if stopped_ns is not None else end_ns
    _tile(tr, tid, 0, stop, stalls, "running")
    resume = resumed_ns if resumed_ns is not None else end_ns
    tr.slice(tid, stop, resume, "stopped")
    _tile(tr, tid, resume, end_ns, userfaults, "running (destination)")


def _tile(tr: _Tracks, tid: int, begin: int, stop: int, stalls: list, running: str) -> None:
    """[begin, stop) as the stall slices (sorted) with ``running`` in the gaps."""
    cursor = begin
    for start, end, name, args in stalls:
        if start >= stop:
            break
        tr.slice(tid, cursor, start, running)
        tr.slice(tid, start, min(end, stop), name, args)
        cursor = max(cursor, min(end, stop))
    tr.slice(tid, cursor, stop, running)


def _metadata(tr: _Tracks, started: ev.RunStarted) -> list[dict]:
    """Process and thread names, tracks in tid order; tracks without events get none."""
    meta = [{"ph": "M", "name": "process_name", "pid": PID, "tid": 0, "ts": 0,
             "args": {"name": f"dirtysim {started.name} (seed {started.seed})"}}]
    used = {tid for tid, track in tr.slices.items() if track} | {x["tid"] for x in tr.other}
    for tid, name in sorted(tr.names.items()):
        if tid not in used:
            continue
        meta.append({"ph": "M", "name": "thread_name", "pid": PID, "tid": tid, "ts": 0, "args": {"name": name}})
        meta.append({"ph": "M", "name": "thread_sort_index", "pid": PID, "tid": tid, "ts": 0,
                     "args": {"sort_index": tid}})
    return meta


def _sorted(tr: _Tracks) -> list[dict]:
    out = list(tr.other)
    for tid, track in tr.slices.items():
        out += [{"ph": "X", "name": name, "pid": PID, "tid": tid, "ts": _us(start), "dur": _us(end - start),
                 "args": args} for start, end, name, args in track]
    return sorted(out, key=lambda x: x["ts"])


def trace_bytes(events: list[ev.Event]) -> bytes:
    return json.dumps(chrome_trace(events), separators=(",", ":")).encode() + b"\n"
