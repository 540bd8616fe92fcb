"""Typed events. Every statistic dirtysim reports is a fold over these.

Each event has ``seq`` (monotonic from 0) and ``t_ns`` (integer simulated
nanoseconds); the payload names follow QEMU (``dirty_sync_count``,
``threshold_size``, ...). No wall-clock time and no random identifiers appear,
so the log is a pure function of (scenario, seed, dirtysim version).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

import msgspec

CANCEL_REASONS = ("timeout", "max-syncs", "cancelled")  # why a migration was cancelled: its stop reason and last check
SCHEMA_VERSION = 6  # 2: convergence controls (throttle, dirty-limit, guest samples, set, cancel); 3: sending costs;
# 4: switchover steps, XBZRLE; 5: postcopy; 6: the BQL (waits, MMIO exits), vcpu-stats omits zero counters


NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class Event(msgspec.Struct, tag_field="type", kw_only=True):
    seq: int
    t_ns: int


class RunStarted(Event, tag="run-started"):
    """First event: the resolved scenario and what the run will simulate."""

    name: str
    seed: int
    version: str
    schema_version: int
    ram_bytes: int
    page_size: int
    scenario: dict


class RamBlockAdded(Event, tag="ram-block-added"):
    """``ram_block_add``: a RAMBlock exists (counted in ``ram_bytes_total``), all dirty."""

    idstr: str
    offset: int  # ram_addr
    size: int


class RamBlockRemoved(Event, tag="ram-block-removed"):
    idstr: str


class ListenerRegistered(Event, tag="listener-registered"):
    listener: str
    address_space: str
    priority: int


class ListenerCall(Event, tag="listener-call"):
    """One MemoryListener hook call (``MEMORY_LISTENER_CALL``)."""

    listener: str
    hook: str
    section: Optional[str] = None  # MemoryRegion name
    offset: int = 0  # guest-physical address of the section
    size: int = 0
    old_mask: int = 0
    new_mask: int = 0


class KvmGetDirtyLog(Event, tag="kvm-get-dirty-log"):
    """KVM_GET_DIRTY_LOG on one memslot; ``pages`` = bits returned."""

    slot: int
    pages: int
    reprotected: int  # legacy mode re-protects what it returns; manual protect: 0
    cost_ns: int
    words: int = 0  # non-zero words ORed into the dirty clients (physical_memory_set_dirty_lebitmap)


class KvmClearDirtyLog(Event, tag="kvm-clear-dirty-log"):
    """KVM_CLEAR_DIRTY_LOG(slot, first_page, num_pages, mask = QEMU's fetched bits)."""

    slot: int
    first_page: int
    num_pages: int
    reprotected: int
    cost_ns: int


class KvmLogStart(Event, tag="kvm-log-start"):
    """KVM_MEM_LOG_DIRTY_PAGES turned on for a memslot (``kvm_log_start`` -> ``kvm_slot_update_flags``)."""

    slot: int
    pages: int
    write_protected: bool  # kvm_mmu_slot_apply_flags protected the whole slot now (else: at each first CLEAR)
    cost_ns: int


class KvmMemslotUpdate(Event, tag="kvm-memslot-update"):
    """``kvm_region_commit``: queued memslot deletions and additions applied together."""

    deleted: int
    added: int
    inhibited: bool  # a deleted range overlapped an added one: every vCPU held out (accel_ioctl_inhibit_begin)
    stall_ns: int


class VfioDma(Event, tag="vfio-dma"):
    """VFIO_IOMMU_MAP_DMA / UNMAP_DMA for a RAM section (``vfio_listener_region_add/del``)."""

    op: str  # map | unmap
    iova: int
    size: int


class TimelineAction(Event, tag="timeline-action"):
    """A memory-map action of the scenario timeline, and what became of it."""

    action: str
    target: str
    result: str  # done, or QEMU's error message


class DirtyRingReap(Event, tag="dirty-ring-reap"):
    """``kvm_dirty_ring_reap`` of every ring + ``KVM_RESET_DIRTY_RINGS`` (entries re-protected)."""

    reason: str  # reaper | ring-full | sync | slot-delete
    vcpu: int  # the vCPU that exited with KVM_EXIT_DIRTY_RING_FULL, else -1
    entries: int
    cost_ns: int
    bql_wait_ns: NonNegative = 0  # the reaping thread (reaper, or the exiting vCPU) waited this long for the BQL


class VhostLogSync(Event, tag="vhost-log-sync"):
    """``vhost_log_sync`` of one section by one vhost device: bits moved from the shared log to L2."""

    device: str
    pages: int
    harvest: str  # exchange | read-then-zero
    cost_ns: int


class VhostLogZero(Event, tag="vhost-log-zero"):
    """read-then-zero only: the delayed store of 0 into the words read at the last harvest."""

    device: str
    erased_pages: int  # bits ORed by the backend between the read and the store, now gone


class MigrationStatus(Event, tag="migration-status"):
    status: str  # setup | active | device | postcopy-active | completed | cancelling | cancelled | failed


class MigrateSetParameters(Event, tag="migrate-set-parameters"):
    """``migrate-set-parameters`` applied: the parameters given (QEMU's names; durations in ns, rates in B/s)."""

    parameters: dict[str, Union[int, bool]]


class CpuThrottle(Event, tag="cpu-throttle", omit_defaults=True):
    """``cpu_throttle_set`` / ``cpu_throttle_stop``: the throttle percentage every vCPU now runs under."""

    percentage: Annotated[int, msgspec.Meta(ge=0, le=99)]  # 0 = not throttling (cpu_throttle_set clamps to 1..99)
    reason: str  # auto-converge | stop
    bytes_dirty_period: int = 0  # migration_trigger_throttle's inputs when auto-converge acted
    bytes_dirty_threshold: int = 0


class DirtyLimit(Event, tag="dirty-limit", omit_defaults=True):
    """``system/dirtylimit.c``: limits set or cancelled, or one round of the dirtyrate-stat thread.

    A round is ``vcpu_dirty_rate_stat_collect`` (per-vCPU MiB/s over the period)
    then ``dirtylimit_process`` (each limited vCPU's ``throttle_us_per_full``).
    """

    reason: str  # set | round (a migration's end does not cancel the limits: see PrecopyMigration._iteration_finish)
    quota: int = 0  # MB/s per vCPU (vcpu-dirty-limit)
    period_ms: int = 0
    rates: list[int] = []  # MiB/s per vCPU, by cpu_index
    throttle_us_per_full: list[int] = []  # per vCPU, after the adjustment
    throttle_time_per_round: int = 0  # us: dirtylimit_throttle_time_per_round (max over vCPUs)
    ring_full_time: int = 0  # us: dirtylimit_ring_full_time (average rate of the running vCPUs)


class GuestSample(Event, tag="guest-sample"):
    """Each vCPU over the last ``outputs.guest_sample`` interval: time in the guest, page writes, time slept.

    ``ran_ns`` is the interval minus the time the vCPU owed and served outside
    the guest (faults, ring-full exits, memslot updates, throttling);
    ``throttle_ns`` is auto-converge's sleep and ``dirtylimit_ns`` dirty-limit's.
    """

    interval_ns: Annotated[int, msgspec.Meta(gt=0)]
    ran_ns: list[NonNegative]
    writes: list[NonNegative]
    throttle_ns: list[NonNegative]
    dirtylimit_ns: list[NonNegative]


class LazyClear(Event, tag="lazy-clear"):
    """``migration_clear_memory_region_dirty_bitmap``: a chunk's clear_bmap bit consumed."""

    block: str
    chunk: int
    start: int  # offset in the block, bytes
    size: int


class BitmapSync(Event, tag="bitmap-sync"):
    """``migration_bitmap_sync``: one increment of dirty-sync-count."""

    dirty_sync_count: int
    reason: str  # setup | exact | final | throttle-timer (cpu_throttle_dirty_sync_timer_tick)
    pending_before: int  # bytes (ram_state_pending_estimate) when the sync was decided
    threshold_size: int
    new_dirty_pages: int  # 0->1 transitions in bmap
    migration_dirty_pages: int  # after the sync
    period_closed: bool  # the sync ended a > 1000 ms period (migration_update_rates ran)
    dirty_pages_rate: int  # pages/s, as query-migrate shows it after this sync
    cost_ns: int
    bytes_xfer_period: int = 0  # migration_trigger_throttle, when the sync closed a period
    bytes_dirty_period: int = 0
    dirty_rate_high_cnt: int = 0  # after this sync
    dirty_words: int = 0  # non-zero words of global dirty memory exchanged into bmap (dirty_word_atomic each)
    bql_wait_ns: NonNegative = 0  # the migration thread waited this long for the BQL before syncing (it holds it cost_ns)


class RateWindow(Event, tag="rate-window"):
    """``migration_update_counters``: the end of a >= 100 ms rate-limit window."""

    time_spent_ms: int
    transferred: int  # bytes in the window
    bandwidth: float  # bytes per ms
    threshold_size: int
    mbps: float
    pages_per_second: float
    expected_downtime: int  # ms


class Transfer(Event, tag="transfer", omit_defaults=True):
    """Bytes written to the migration stream (a send slice, an EOS marker, device state)."""

    kind: str  # setup | pages | eos | device-state
    bytes: int
    wire_ns: int
    running: bool  # vCPUs running (precopy-bytes) or stopped (downtime-bytes)
    ram_bytes: int = 0  # of ``bytes``, those QEMU passes to ram_transferred_add (precopy/downtime/postcopy-bytes)
    block: Optional[str] = None
    normal: int = 0
    zero: int = 0
    resent: int = 0  # pages the destination had received before
    unchanged: int = 0  # re-sent although not written since their last send ("write-not-dirty")
    cpu_ns: NonNegative = 0  # the migration thread's CPU time for these pages (migration/sending.py)
    channel_ns: NonNegative = 0  # the multifd sender threads' CPU time, summed over the channels
    packets: NonNegative = 0  # multifd packets sent (data and SYNC)
    multifd_bytes: NonNegative = 0  # of ``bytes``, those on the multifd channels (query-migrate ram.multifd-bytes)
    xbzrle: NonNegative = 0  # pages sent as XBZRLE records (not in normal)
    skipped: NonNegative = 0  # XBZRLE cache hits not written since their last send: nothing went out

    @property
    def pages(self) -> int:
        """Dirty pages these bytes consumed (``migration_dirty_pages`` went down by as many)."""
        return self.normal + self.zero + self.xbzrle + self.skipped


class ScanWrap(Event, tag="scan-wrap"):
    """``find_dirty_block`` wrapped to the first block (``complete_round``). Never a sync."""


class VcpuStats(Event, tag="vcpu-stats", omit_defaults=True):
    """Per-vCPU totals since the previous sync (emitted with every sync)."""

    vcpu: int
    writes: int
    faults: int
    fault_ns: int
    ring_full_exits: int = 0
    ring_full_ns: int = 0  # time stalled in KVM_EXIT_DIRTY_RING_FULL (exit + reaping)
    inhibit_ns: int = 0  # time held out of the guest by atomic memslot updates
    throttle_ns: int = 0  # auto-converge's sleeps (cpu_throttle_thread)
    dirtylimit_ns: int = 0  # dirty-limit's sleeps at ring-full exits (dirtylimit_vcpu_execute)
    pml_logged: int = 0  # with PML: first writes after protection, logged without a fault
    pml_full_exits: int = 0  # with PML: PML-full VM exits (one per 512 logged pages)
    pml_full_ns: int = 0
    mmio_exits: NonNegative = 0  # exits to QEMU for MMIO / port I/O (machine.vcpus[].mmio_exits)
    mmio_ns: NonNegative = 0  # their cost without waiting (costs.mmio_exit each)
    bql_wait_ns: NonNegative = 0  # time waiting for the BQL: MMIO exits and ring-full reaps behind a sync or a reap


class VcpusStopped(Event, tag="vcpus-stopped"):
    """``migration_stop_vm``: downtime starts."""


class XbzrleCache(Event, tag="xbzrle-cache"):
    """query-migrate's ``xbzrle-cache`` after a sync (``populate_ram_info``; rates from ``migration_update_rates``)."""

    cache_size: NonNegative
    bytes: NonNegative
    pages: NonNegative
    cache_miss: NonNegative
    cache_miss_rate: Annotated[float, msgspec.Meta(ge=0)]
    encoding_rate: Annotated[float, msgspec.Meta(ge=0)]
    overflow: NonNegative


class SwitchoverStep(Event, tag="switchover-step", omit_defaults=True):
    """What stopping the VM costs before the final sync (``vm_stop_force_state``): time of the migration thread."""

    step: Literal["vm-stop", "vhost-stop", "block-drain"]  # pause_all_vcpus | vhost_dev_stop | bdrv_drain_all
    cost_ns: NonNegative
    device: Optional[str] = None  # machine.devices index and kind, for vhost-stop and block-drain


class OracleCheck(Event, tag="oracle-check", omit_defaults=True):
    """Destination against the source page oracle."""

    at: str  # switchover | timeout | after a deliberately wrong step (clear-all, send-before-clear, vhost-zero)
    stale_pages: int
    lost_pages: int
    unassigned_writes: int = 0  # guest writes so far that hit no RAM in the oracle's map (MMIO, ROM, nothing)
    double_placed: int = 0  # postcopy: pages sent onto a page the destination held (UFFDIO_COPY: -EEXIST)
    clobbered: int = 0  # postcopy: of those, pages the destination's guest had written


class PostcopyStart(Event, tag="postcopy-start"):
    """``migration_iteration_run`` -> ``postcopy_start``: the switch begins (the VM stops next)."""

    trigger: str  # migrate-start-postcopy | after-syncs
    must_precopy: int  # bytes (ram_state_pending_estimate's split: 0 with postcopy-ram)
    can_postcopy: int
    threshold_size: int
    dirty_sync_count: int


class PostcopyDiscard(Event, tag="postcopy-discard"):
    """``ram_postcopy_send_discard_bitmap`` for one RAMBlock: runs of dirty pages the destination drops."""

    block: str
    pages: int
    ranges: int
    commands: int  # CMD_POSTCOPY_RAM_DISCARD, at most 12 ranges each
    bytes: int


class PostcopyRunning(Event, tag="postcopy-running"):
    """``loadvm_postcopy_handle_run_bh`` -> ``vm_start``: the guest runs on the destination."""

    package_bytes: int


class PostcopyFault(Event, tag="postcopy-fault"):
    """A destination vCPU's userfault on a missing page, emitted when the page is placed and the vCPU wakes."""

    vcpu: int
    page: int  # RAM page (ram_addr / 4 KiB)
    fault_ns: int
    request_ns: int  # ram_save_queue_pages ran at the source (postcopy-requests counts it)
    served: str  # urgent: this request sent the page | in-flight: already on its way | preempt: own channel
    wait_bytes: int = 0  # bytes queued in the socket ahead of an urgent page


class DirtyRateStarted(Event, tag="dirty-rate-started"):
    """``qmp_calc_dirty_rate`` accepted: the "mig/dirtyrate" thread starts measuring."""

    mode: str  # page-sampling | dirty-bitmap | dirty-ring
    calc_time_ms: int
    sample_pages: int  # per GiB (page-sampling)


class DirtyRateMeasured(Event, tag="dirty-rate-measured", omit_defaults=True):
    """The measurement ended (status measured): QEMU's result and, beside it, the oracle's ground truth.

    ``dirty_rate`` (MiB/s) is what ``query-dirty-rate`` reports (-1: no
    sample). The truth covers the same window: pages written (repeats once),
    pages whose content changed, and guest page writes including repeats.
    """

    mode: str
    start_time: int  # s, simulated (QEMU: host clock)
    calc_time_ms: int  # the measured duration
    sample_pages: int
    dirty_rate: int
    dirty_samples: int = 0
    sample_count: int = 0
    block_mem_mb: int = 0
    dirty_pages: int = 0  # dirty-bitmap: growth of total_dirty_pages; dirty-ring: entries reaped
    vcpu_dirty_rate: list[int] = []  # dirty-ring: MiB/s per vCPU, by cpu_index
    sample_shift: int = 0  # x- modes: one page in 2^shift write-protected
    curve: list[list[int]] = []  # x-wss-curve: [ms into the window, estimated pages, true pages written]
    wss_pages: float = 0.0  # x-wss-curve: fitted working set N (-1: unbounded)
    wss_rate: float = 0.0  # x-wss-curve: fitted pages written per second r (-1: unbounded)
    thread_ns: int = 0  # the measuring thread's busy time (hashing, ioctls)
    written_pages: int = 0
    modified_pages: int = 0
    guest_writes: int = 0
    guest_faults: int = 0  # write-protect faults the measurement caused (dirty-bitmap re-protects memory)
    guest_fault_ns: int = 0


class RunFinished(Event, tag="run-finished"):
    stop_reason: str  # completed | timeout | max-syncs | cancelled | error | interrupted (SIGINT: status cancelled)
    error: Optional[str] = None


AnyEvent = Union[
    RunStarted, RamBlockAdded, RamBlockRemoved, ListenerRegistered, ListenerCall, KvmGetDirtyLog, KvmClearDirtyLog, KvmLogStart, KvmMemslotUpdate, VfioDma,
    TimelineAction, DirtyRingReap, VhostLogSync,
    VhostLogZero, MigrationStatus, MigrateSetParameters, CpuThrottle, DirtyLimit, GuestSample, LazyClear,
    BitmapSync, RateWindow, Transfer, ScanWrap, VcpuStats, VcpusStopped, SwitchoverStep, XbzrleCache, OracleCheck,
    DirtyRateStarted, DirtyRateMeasured, RunFinished, PostcopyStart, PostcopyDiscard, PostcopyRunning,
    PostcopyFault,
]
