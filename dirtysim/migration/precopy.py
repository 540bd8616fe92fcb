"""The migration thread for precopy (``migration_thread`` and the RAM handlers of ``migration/ram.c``).

The thread is a SimPy process. Every decision is a QEMU rule, cited where it
is taken; page work runs in ``kernels.send_pages`` one send slice at a time. The
thread reaches KVM only through the memory API (``memory_global_dirty_log_*``,
``memory_region_clear_dirty_bitmap``), so any listener plugs in unchanged.
"""

from __future__ import annotations

import numpy as np

from ..dirty import kernels, sendcost
from ..dirty.ramlist import RAMBlock, RAMList
from ..events import schema as ev
from ..memory.address_space import GLOBAL_DIRTY_MIGRATION
from ..scenario.schema import PAGE_SIZE, VHOST_KINDS, Scenario
from .cpu_throttle import (CPU_THROTTLE_DIRTY_SYNC_TIMESLICE_MS, DIRTY_RATE_HIGH_PERIODS, CpuThrottle, next_throttle,
                           period_is_high)
from .dirtylimit import DIRTYLIMIT_CALC_TIME_MS
from .invariant import BrokenInvariant, dirty_count_mismatch
from .postcopy import Postcopy
from .rate import BUFFER_DELAY, RateCounters, rate_limit_max
from .sending import send_costs
from .xbzrle import OUT_CPU, OUT_LEN, OUT_SKIPPED, OUT_XBZRLE, XbzrleCache, send_pages_xbzrle, xbzrle_costs
from .slices import FusedSlices

MAX_WAIT = 50  # ms, ram_save_iterate
RAM_SAVE_FLAG_EOS_BYTES = 8
# savevm.c: the stream's framing, in ``transferred`` (qemu_file_transferred) but never in ram_transferred_add
QEMU_VM_FILE_HEADER_BYTES = 8  # qemu_savevm_state_header: QEMU_VM_FILE_MAGIC + QEMU_VM_FILE_VERSION (be32 each)
SECTION_FOOTER_BYTES = 5  # save_section_footer: QEMU_VM_SECTION_FOOTER + section_id (be32)
SECTION_PART_BYTES = 5  # save_section_header, QEMU_VM_SECTION_PART or _END: the type byte + section_id (be32)
QEMU_VM_EOF_BYTES = 1  # qemu_savevm_state_complete_precopy_non_iterable: QEMU_VM_EOF
VMDESC_HEADER_BYTES = 5  # QEMU_VM_VMDESCRIPTION + the JSON's length (be32)


def section_start_bytes(idstr: str) -> int:
    """``save_section_header`` for QEMU_VM_SECTION_START/_FULL: type, section_id, len(idstr), idstr, instance_id
    and version_id (be32 each)."""
    return SECTION_PART_BYTES + 1 + len(idstr) + 4 + 4
NS_PER_MS = 10**6
UNLIMITED = 1 << 62
MAX_STALLED_TURNS = 2  # a turn may only close a window; the next one sends (or sleeps)


class MigrationTimeout(Exception):
    """``migration.timeout`` fell inside a wait: the thread is cancelled at the deadline itself."""


class MigrationCancelled(Exception):
    """``migrate_cancel`` (a timeline action, or guestperf's max_iters): the thread stops at its next wait."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RAMState:
    """``RAMState``: scan position and dirty-page bookkeeping of the RAM migration."""

    def __init__(self, ram_list: RAMList):
        self.migration_dirty_pages = ram_list.ram_bytes_total() // PAGE_SIZE  # ram_state_init
        self.num_dirty_pages_period = 0
        self.bytes_xfer_prev = 0  # migration_transferred_bytes() when the last period closed
        self.dirty_rate_high_cnt = 0
        self.time_last_bitmap_sync: int | None = None  # QEMU's REALTIME clock is never 0: None = no sync yet
        self.last_stage = False
        self.reset(ram_list)

    def reset(self, ram_list: RAMList) -> None:
        """``ram_state_reset``: the scan starts at the first page of the first block, no block sent yet."""
        self.block_index = 0  # last_seen_block
        self.page = 0  # last_page
        self.last_sent_block: RAMBlock | None = None
        self.ram_list_version = ram_list.version


class PrecopyMigration:
    def __init__(self, env, scenario: Scenario, machine, recorder):
        self.env, self.sc, self.m, self.rec = env, scenario, machine, recorder
        mig = scenario.migration
        self.link_bytes_per_s = scenario.network.bandwidth
        self.params = mig  # migrate-set-parameters replaces it (set_parameters)
        self.counters = self._new_counters()
        self.zero_detect = mig.zero_page_detection != "none"
        self.send = send_costs(scenario)  # what a page costs on the wire and in CPU (multifd or not)
        self.shift = scenario.dirty_tracking.clear_bitmap_shift
        self.send_before_clear = scenario.dirty_tracking.send_order == "send-before-clear"
        self.transferred = 0  # migration_transferred_bytes
        self._sync_words = 0  # non-zero words the last sync exchanged from L2 into bmap
        self.pages_sent = 0  # ram_get_total_transferred_pages
        self.dirty_sync_count = 0
        self.dirty_pages_rate = 0
        self.dirty_bytes_last_sync = 0
        self.stop_reason: str | None = None
        self.deadline_ns: int | None = None  # start + migration.timeout, once the thread starts
        self.rs: RAMState | None = None
        self.cancel_reason: str | None = None  # migrate-cancel requested; the thread acts at its next wait
        self.throttle = CpuThrottle(env, machine, recorder) if mig.capabilities.auto_converge else None
        self.dirtylimit = machine.dirtylimit if mig.capabilities.dirty_limit else None
        if self.dirtylimit is not None:
            self.dirtylimit.period_ms = self._dirty_limit_period_ms
        self._timer_sync_due = False  # cpu_throttle_dirty_sync_timer_tick asked for a sync
        self._sync_timer_prev = 0  # its static prev_sync_cnt
        machine.block_listeners.append(self.ram_block_changed)
        self._out = np.zeros(6, dtype=np.int64)
        self._deferred: tuple[RAMBlock, int] | None = None  # send-before-clear: chunk awaiting its clear
        # per block in flight: normal, zero, bytes, resent, unchanged, packets, xbzrle, skipped, cpu ns, senders' ns
        self._pending: dict[str, list[int]] = {}
        self.xbzrle = XbzrleCache(mig.xbzrle_cache_size, machine.ram_list.dirty_memory.shape[0] * 64) \
            if mig.capabilities.xbzrle else None
        self.xbzrle_started = False  # RAMState.xbzrle_started: set at the scan's first wrap (find_dirty_block)
        self._xc = xbzrle_costs(scenario)
        # what a write changes in its page: with several vCPU groups the largest (an XBZRLE delta never shrinks)
        self._changed_bytes = max(g.workload.bytes_per_write for g in scenario.machine.vcpus)
        self._xout = np.zeros(OUT_LEN, dtype=np.int64)
        self._xbzrle_pages_prev = 0  # target pages when the last period closed (migration_update_rates)
        self.slices = FusedSlices(self)
        self.pc = Postcopy(self) if mig.capabilities.postcopy_ram else None

    # -- clock ---------------------------------------------------------------------------------------
    def now_ms(self) -> int:
        return self.env.now // NS_PER_MS

    def _wait(self, ns: int):
        """Sleep ``ns``, or until the deadline and raise ``MigrationTimeout`` if it falls inside.

        guestperf cancels at ``max_time`` whatever the thread is doing (a slow link
        must not carry the run past its timeout). A fused send call is not cut: it
        ends within one ``ram_save_iterate`` window, so it overshoots by at most that.
        A negative wait is a bug (SimPy refuses it); a zero wait does not yield.
        A requested cancel takes effect here, before the thread waits again.
        """
        if self.cancel_reason is not None and not self.rs.last_stage:
            raise MigrationCancelled(self.cancel_reason)
        if self.deadline_ns is not None and self.env.now + ns > self.deadline_ns:
            if self.deadline_ns > self.env.now:
                yield from self.m.sleep(self.deadline_ns - self.env.now)
            raise MigrationTimeout
        if ns:
            yield from self.m.sleep(ns)

    def _bql_lock(self):
        """``bql_lock`` by the migration thread (its waits end at the deadline like any other); the ns waited."""
        return (yield from self.m.bql.lock(lambda: self.env.now, self._wait))

    def _new_counters(self) -> RateCounters:
        """``migrate_init`` + ``migration_rate_set``: the window counters under the parameters in force."""
        p = self.params
        return RateCounters(p.downtime_limit // NS_PER_MS, p.avail_switchover_bandwidth, rate_limit_max(p.max_bandwidth))

    def _status(self, status: str) -> None:
        self.rec.emit(ev.MigrationStatus, status=status)

    # -- the thread ----------------------------------------------------------------------------------
    def run(self):
        """``migration_thread``: setup, then iterate / rate-limit until completion or timeout."""
        yield from self._wait(self.sc.migration.start_at)  # the thread's process starts with the simulation
        self.deadline_ns = self.env.now + self.sc.migration.timeout
        self.counters = self._new_counters()  # parameters set before 'migrate' apply from its start
        if self.throttle is not None:
            self.env.process(self._dirty_sync_timer())  # migration_thread: cpu_throttle_dirty_sync_timer(true)
        try:
            yield from self._migrate()
        except MigrationTimeout:
            self.cancel("timeout")
        except MigrationCancelled as stop:
            self.cancel(stop.reason)
        finally:
            self._iteration_finish()

    def _migrate(self):
        self._status("setup")
        self.counters.update_iteration_initial_status(self.now_ms(), self.transferred, self.pages_sent)
        yield from self.ram_save_setup()
        self._status("active")
        stalled = 0
        while True:
            if self.env.now >= self.deadline_ns:
                raise MigrationTimeout
            if self._timer_sync_due:  # the timer's sync got bitmap_mutex between two iterations
                self._timer_sync_due = False
                yield from self.bitmap_sync("throttle-timer", self.rs.migration_dirty_pages * PAGE_SIZE)
                self._sync_timer_prev = self.dirty_sync_count
            mark = (self.env.now, self.transferred)
            if not self.counters.rate_exceeded(self.transferred):
                if (yield from self.iteration_run()):
                    return
            yield from self.rate_limit()
            stalled = stalled + 1 if (self.env.now, self.transferred) == mark else 0
            if stalled >= MAX_STALLED_TURNS:
                raise BrokenInvariant(f"the migration thread neither sent nor waited in {stalled} turns at "
                                      f"{self.env.now} ns: the rate limit and the window disagree")

    def is_running(self) -> bool:
        """``migration_is_running``: between setup and completion or cancellation."""
        return self.rs is not None and self.stop_reason is None

    # -- migrate-set-parameters, migrate-cancel ------------------------------------------------------------
    def set_parameters(self, changes: dict) -> None:
        """``migrate_config_apply`` + ``migrate_post_update_config``: new values for what the thread re-reads.

        max-bandwidth takes effect at once (``migration_rate_set``); downtime-limit
        and avail-switchover-bandwidth at the next window (``migration_update_counters``
        re-reads them every >= 100 ms); the throttle and dirty-limit parameters at
        their next use (the next trigger, the next stat period).
        """
        self.params = self.params.model_copy(update=changes)
        c = self.counters
        c.downtime_limit_ms = self.params.downtime_limit // NS_PER_MS
        c.avail_switchover_bandwidth = self.params.avail_switchover_bandwidth
        if "max_bandwidth" in changes and self.rs is not None and not self.rs.last_stage:
            c.rate_limit_max = rate_limit_max(self.params.max_bandwidth)

    def request_cancel(self, reason: str = "cancelled") -> bool:
        """``qmp_migrate_cancel`` -> ``migration_cancel``: status cancelling; the thread stops at its next wait.

        Refused (False) when no migration is active, or once the VM is stopped for
        the switchover or postcopy (dirtysim does not model a cancel that restarts the VM).
        """
        if not self.is_running() or self.rs.last_stage or self.cancel_reason is not None or (
                self.pc is not None and self.pc.stopped_ns is not None):
            return False
        self.cancel_reason = reason
        self._status("cancelling")
        return True

    def _dirty_limit_period_ms(self) -> int:
        """``vcpu_dirty_rate_stat_collect``: x-vcpu-dirty-limit-period while such a migration runs, else 1 s."""
        if self.is_running():
            return self.params.x_vcpu_dirty_limit_period // NS_PER_MS
        return DIRTYLIMIT_CALC_TIME_MS

    def _dirty_sync_timer(self):
        """``cpu_throttle_dirty_sync_timer_tick`` every 5 s: a sync if none happened since the previous tick.

        Not while dirty-sync-count <= 1 (the first pass sends everything anyway).
        QEMU's sync waits for ``bitmap_mutex``, which ``ram_save_iterate`` holds:
        here it runs at the migration thread's next turn (within 50 ms, or at once
        after a rate-limit sleep), and the tick's ``prev_sync_cnt`` is the count
        after that sync, as QEMU reads it after its own.
        """
        while self.stop_reason is None:
            yield from self.m.sleep(CPU_THROTTLE_DIRTY_SYNC_TIMESLICE_MS * NS_PER_MS)
            if self.stop_reason is not None or not self.m.guest.running:
                return
            if self.dirty_sync_count > 1 and self.dirty_sync_count == self._sync_timer_prev:
                self._timer_sync_due = True
            self._sync_timer_prev = self.dirty_sync_count

    def _iteration_finish(self) -> None:
        """``migration_iteration_finish``: auto-converge's throttling stops, however the migration ended.

        Dirty limits stay: ``migration_cancel`` asks ``qmp_cancel_vcpu_dirty_limit``
        while the status is still active, from the main thread, which
        ``dirtylimit_is_allowed`` refuses (the error is dropped); completion does
        not cancel them either.
        """
        if self.throttle is not None:
            self.throttle.stop()

    def _init_bitmaps(self, block: RAMBlock) -> None:
        """``ram_list_init_bitmaps`` for one block: bmap all ones, clear_bmap all clear.

        RAM, DIMMs and ROM are multiples of 256 KiB (the scenario schema), so the bmap is whole words.
        """
        block.bmap = np.full(block.pages // 64, ~np.uint64(0))
        block.clear_bmap = np.zeros(-(-block.pages // (1 << self.shift)), dtype=np.uint8)

    def ram_block_changed(self, change: str, block: RAMBlock) -> None:
        """A RAMBlock came or went while migrating (only under ``what_if``; QEMU refuses device_add/del).

        A new block gets its bitmaps with every page dirty; a removed block's
        pending pages are dropped. The block list version changed, so the next
        ``ram_save_iterate`` restarts the scan (``ram_state_reset``).
        """
        if self.rs is None or self.stop_reason is not None:
            return
        if change == "add":
            self._init_bitmaps(block)
            self.rs.migration_dirty_pages += block.pages
        else:
            self.rs.migration_dirty_pages -= int(kernels.count_set(block.bmap, 0, block.bmap.shape[0]))

    def ram_save_setup(self):
        """``ram_save_setup`` -> ``ram_init_all``: all-ones bmap, start dirty logging, sync #1."""
        self.rs = RAMState(self.m.ram_list)
        for block in self.m.ram_list.blocks:
            self._init_bitmaps(block)
        yield from self._bql_lock()  # qemu_savevm_state_do_setup runs under the BQL
        self.m.memory.memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION)
        cost = self.m.meter.drain()  # the listeners' log_start: KVM protecting its slots
        self.m.bql.hold(self.env.now, cost)
        yield from self._wait(cost)
        yield from self.bitmap_sync("setup", self.rs.migration_dirty_pages * PAGE_SIZE)
        # Stream header: RAM_SAVE_FLAG_MEM_SIZE (8) + per block idstr length, idstr, used_length (1+n+8) + EOS;
        # ram_save_setup writes it with qemu_put_*, no ram_transferred_add: it is in transferred only. Around
        # it, qemu_savevm_state_header and the "ram" section's START header and footer (qemu_savevm_state_setup;
        # the configuration section after the file header is not counted).
        header = 8 + sum(1 + len(b.idstr) + 8 for b in self.m.ram_list.blocks) + RAM_SAVE_FLAG_EOS_BYTES
        framing = QEMU_VM_FILE_HEADER_BYTES + section_start_bytes("ram") + SECTION_FOOTER_BYTES
        yield from self._transfer("setup", header + framing)

    def iteration_run(self):
        """``migration_iteration_run``: exact sync only when the estimate drops below the threshold.

        Completion is tested before the postcopy switch, as in QEMU: a migration
        that converges completes in precopy even when postcopy was asked for.
        """
        if self.pc is not None and self.pc.active:
            return (yield from self.pc.iteration_run())
        pending = self.rs.migration_dirty_pages * PAGE_SIZE  # ram_state_pending_estimate
        if pending < self.counters.threshold_size:
            yield from self.bitmap_sync("exact", pending)  # ram_state_pending_exact
            pending = self.rs.migration_dirty_pages * PAGE_SIZE
        if pending <= self.counters.threshold_size:
            yield from self.completion()
            return True
        if self.pc is not None and self.pc.switch_due():  # must_precopy (0) <= threshold_size && start_postcopy
            yield from self.pc.start(pending)
            return False  # MIG_ITERATE_SKIP
        yield from self.ram_save_iterate()
        return False

    def rate_limit(self):
        """``migration_rate_limit``: close the window if >= 100 ms, else sleep out an exhausted budget."""
        self.update_counters()
        if self.counters.rate_exceeded(self.transferred):
            wake_ms = self.counters.iteration_start_time + BUFFER_DELAY
            yield from self._wait(wake_ms * NS_PER_MS - self.env.now)

    def update_counters(self) -> None:
        window = self.counters.update_counters(self.now_ms(), self.transferred, self.pages_sent,
                                               self.dirty_pages_rate, self.dirty_bytes_last_sync)
        if window is not None:
            self.rec.emit(ev.RateWindow, **window.__dict__)

    # -- sync ----------------------------------------------------------------------------------------
    def bitmap_sync(self, reason: str, pending_before: int):
        """``migration_bitmap_sync``: harvest every listener into L2, then L2 -> bmap counting 0->1.

        Under the BQL, as every caller takes it (``ram_state_pending_exact``,
        ``ram_init_bitmaps``, ``cpu_throttle_dirty_sync_timer_tick``,
        ``migration_completion_precopy``): the thread first waits for a reap
        that holds it, then holds it for the whole sync (``cost_ns``), and a
        vCPU's ring-full reap or MMIO exit meanwhile waits.
        """
        waited = yield from self._bql_lock()
        rs, mem = self.rs, self.m.memory
        self.flush_deferred_clear()  # send-before-clear: the pass ends, its last chunk is cleared now
        self.dirty_sync_count += 1
        if rs.time_last_bitmap_sync is None:
            rs.time_last_bitmap_sync = self.now_ms()
        new = self._sync_into_bmap(rs.last_stage)
        rs.migration_dirty_pages += new
        rs.num_dirty_pages_period += new
        self.dirty_bytes_last_sync = rs.migration_dirty_pages * PAGE_SIZE
        mem.memory_global_after_dirty_log_sync()
        gib = self.m.ram_list.ram_bytes_total() / (1 << 30)
        cost = (self.m.meter.drain() + int(self.sc.costs.bitmap_sync_per_gib * gib)
                + self._sync_words * self.sc.costs.dirty_word_atomic)
        self.m.bql.hold(self.env.now, cost)
        yield from self._wait(cost)
        end = self.now_ms()
        period_closed = end > rs.time_last_bitmap_sync + 1000
        bytes_xfer_period = bytes_dirty_period = 0
        if period_closed:  # migration_trigger_throttle, migration_update_rates, period reset
            bytes_xfer_period = self.transferred - rs.bytes_xfer_prev
            bytes_dirty_period = rs.num_dirty_pages_period * PAGE_SIZE
            self.trigger_throttle(bytes_xfer_period, bytes_dirty_period)
            self.dirty_pages_rate = rs.num_dirty_pages_period * 1000 // (end - rs.time_last_bitmap_sync)
            if self.xbzrle is not None:  # migration_update_rates: the period's cache-miss and encoding rates
                self.xbzrle.update_rates(self.pages_sent - self._xbzrle_pages_prev)
                self._xbzrle_pages_prev = self.pages_sent
            rs.time_last_bitmap_sync = end
            rs.num_dirty_pages_period = 0
            rs.bytes_xfer_prev = self.transferred
        for v, stats in enumerate(self.m.guest.take_stats()):
            self.rec.emit(ev.VcpuStats, vcpu=v, **stats)
        self._emit_xbzrle()
        self.rec.emit(ev.BitmapSync, dirty_sync_count=self.dirty_sync_count, reason=reason,
                      pending_before=pending_before, threshold_size=self.counters.threshold_size,
                      new_dirty_pages=new, migration_dirty_pages=rs.migration_dirty_pages,
                      period_closed=period_closed, dirty_pages_rate=self.dirty_pages_rate, cost_ns=cost,
                      bytes_xfer_period=bytes_xfer_period, bytes_dirty_period=bytes_dirty_period,
                      dirty_rate_high_cnt=rs.dirty_rate_high_cnt, dirty_words=self._sync_words, bql_wait_ns=waited)
        max_syncs = self.sc.migration.max_syncs
        if max_syncs is not None and not rs.last_stage and self.dirty_sync_count > max_syncs:
            self.request_cancel("max-syncs")  # guestperf: "No completion after N iterations", migrate_cancel

    def _emit_xbzrle(self) -> None:
        """query-migrate's ``xbzrle-cache`` now (after each sync and at the end), with XBZRLE on."""
        if self.xbzrle is not None:
            self.rec.emit(ev.XbzrleCache, **{k.replace("-", "_"): v for k, v in self.xbzrle.query().items()})

    def trigger_throttle(self, bytes_xfer_period: int, bytes_dirty_period: int) -> None:
        """``migration_trigger_throttle``: on the 2nd high period since the last action, throttle or limit.

        A period is high when its dirty bytes exceed throttle-trigger-threshold %
        of the bytes sent in it. The count is not reset by a low period, and it
        counts with neither capability on (to no effect).
        """
        high, threshold = period_is_high(bytes_xfer_period, bytes_dirty_period, self.params.throttle_trigger_threshold)
        if not high:
            return
        self.rs.dirty_rate_high_cnt += 1
        if self.rs.dirty_rate_high_cnt < DIRTY_RATE_HIGH_PERIODS:
            return
        self.rs.dirty_rate_high_cnt = 0
        if self.throttle is not None:  # mig_throttle_guest_down
            pct = next_throttle(self.throttle.percentage, self.params, bytes_dirty_period, threshold)
            self.throttle.set(pct, bytes_dirty_period=bytes_dirty_period, bytes_dirty_threshold=threshold)
        elif self.dirtylimit is not None:  # migration_dirty_limit_guest
            quota = self.params.vcpu_dirty_limit
            if not (self.dirtylimit.in_service and self.dirtylimit.quota == quota):
                self.dirtylimit.set_all(quota)

    def _sync_into_bmap(self, last_stage: bool) -> int:
        """The data path of ``migration_bitmap_sync``: every listener into L2, L2 into bmap; new dirty pages."""
        self.m.memory.memory_global_dirty_log_sync(last_stage)
        new = words = 0
        l2 = self.m.ram_list.dirty_memory
        for block in self.m.ram_list.blocks:  # ramblock_sync_dirty_bitmap (fast path)
            words += int(kernels.count_nonzero_words(l2[block.words], 0, block.bmap.shape[0]))
            new += int(kernels.sync_xchg(l2[block.words], block.bmap, 0, block.bmap.shape[0]))
            block.clear_bmap[:] = True  # lazy clear: every chunk must be cleared before its next send
        self._sync_words = words  # physical_memory_sync_dirty_bitmap: one qatomic_xchg per non-zero word
        return new

    # -- sending -------------------------------------------------------------------------------------
    def ram_save_iterate(self):
        """``ram_save_iterate``: send slices until the budget is spent, 50 ms passed, or nothing is dirty."""
        self._reset_if_blocks_changed()
        t0 = self.now_ms()
        while not self.counters.rate_exceeded(self.transferred):
            if self.slices.eligible():
                mark = (self.env.now, self.transferred)
                if (yield from self.slices.run(t0)):
                    break
                if (self.env.now, self.transferred) == mark:  # it hands back only after sending something
                    raise BrokenInvariant("the fused send loop returned without sending or waiting")
                continue
            sent = yield from self.send_slice(self.counters.budget_left(self.transferred))
            if sent == 0 or self.now_ms() - t0 > MAX_WAIT:
                break
        yield from self.end_section("part", ram_eos=True)

    def end_section(self, part: str, ram_eos: bool):
        """The RAM section's EOS, then its framing (``qemu_savevm_state_iterate`` / ``_complete_precopy_iterable``).

        ``ram_save_iterate`` counts its EOS with ``ram_transferred_add(8)``;
        ``ram_save_complete`` writes its EOS without it. The section header (QEMU_VM_SECTION_PART or _END, written
        before the handler runs) and footer are savevm.c's, in ``transferred`` only; they are counted here,
        after the handler, in one write with the EOS.
        """
        eos, frame = RAM_SAVE_FLAG_EOS_BYTES, SECTION_PART_BYTES + SECTION_FOOTER_BYTES
        yield from self._transfer_parts(("eos", eos, eos if ram_eos else 0), (f"section-{part}", frame, 0))

    def _reset_if_blocks_changed(self) -> None:
        """``ram_state_reset`` when the RAMBlock list changed: restart the scan at the first block."""
        if self.rs.ram_list_version != self.m.ram_list.version:
            self.rs.reset(self.m.ram_list)

    def slice_cap(self) -> int:
        """Bytes one send slice may put on the wire: ``engine.send_quantum`` of link time."""
        return max(1, self.link_bytes_per_s * self.sc.engine.send_quantum // 10**9)

    def slice_ns(self, nbytes: int, normal: int, zero: int, packets: int) -> int:
        """How long a slice of pages takes: wire, migration thread or multifd senders, the slowest (``sendcost``)."""
        return int(sendcost.slice_ns(self.send.cv, self.link_bytes_per_s, nbytes, normal, zero, packets))

    def send_slice(self, budget: int, carried: tuple[int, int, int, int] = (0, 0, 0, 0)):
        """Send dirty pages in address order for at most one send quantum of link or CPU time.

        ``ram_find_and_save_block`` from (last_seen_block, last_page), wrapping at
        the end of the block list; a chunk whose ``clear_bmap`` bit is set is
        cleared first (``migration_clear_memory_region_dirty_bitmap``) unless in
        the last stage. Multifd packets fill and, at a wrap, are flushed and
        synced. Returns the number of pages sent. ``carried`` (bytes, normal,
        zero pages, packets) continues a slice that ``FusedSlices`` began and
        stopped at a chunk to clear.
        """
        self._reset_if_blocks_changed()  # a block list change lands between slices (QEMU: between iterations)
        rs, blocks, sc = self.rs, self.m.ram_list.blocks, self.send
        cap, t_cap, channels = self.slice_cap(), self.sc.engine.send_quantum, int(sc.cv[sendcost.CV_CHANNELS])
        nbytes, normal, zero, packets = carried
        cpu, chan = int(sendcost.main_ns(sc.cv, normal, zero)), int(sendcost.channel_ns(sc.cv, normal, zero, packets))
        sent = 0
        sent_since_wrap = 1  # the pass in progress may have sent before this slice
        t_left = t_cap - max(cpu, chan // channels)
        while rs.migration_dirty_pages and nbytes < cap and nbytes <= budget and t_left > 0:
            block = blocks[rs.block_index]
            # the block's idstr rides on the first page header of a new block; multifd packets name their block
            extra = 0 if block is rs.last_sent_block or sc.multifd else 1 + len(block.idstr)
            status, page, counts = self._send_block(block, extra, budget - nbytes, cap - nbytes, t_left)
            n, z, b, _, _, pk, xb, skipped, c_ns, ch_ns = counts
            if n + z + xb + skipped:
                rs.last_sent_block = block
                self._account_block(block, *counts)
            rs.migration_dirty_pages -= n + z + xb + skipped
            sent_since_wrap += n + z + xb + skipped
            sent += n + z + xb + skipped
            nbytes, packets, rs.page = nbytes + b, packets + pk, page
            cpu, chan = cpu + c_ns, chan + ch_ns
            t_left = t_cap - max(cpu, chan // channels)
            if status == kernels.SEND_NEED_CLEAR:
                self.clear_chunk(block, page >> self.shift)
            elif status == kernels.SEND_END_OF_BLOCK:
                rs.page = 0
                rs.block_index += 1
                if rs.block_index == len(blocks):
                    if not sent_since_wrap:
                        raise dirty_count_mismatch(rs.migration_dirty_pages)
                    sent_since_wrap = 0
                    rs.block_index = 0
                    self.rec.emit(ev.ScanWrap)
                    self.xbzrle_started = self.xbzrle is not None  # find_dirty_block: XBZRLE after the first lap
                    b, pk = self._multifd_sync(rs.last_sent_block or block)
                    nbytes, packets, chan = nbytes + b, packets + pk, chan + int(sendcost.channel_ns(sc.cv, 0, 0, pk))
        wait = int(sendcost.stage_ns(self.link_bytes_per_s, nbytes, cpu, chan, channels))
        yield from self._wait(wait + self.m.meter.drain())
        self._record_pages()
        return sent

    def _send_block(self, block: RAMBlock, extra: int, budget: int, cap: int, t_left: int):
        """Pages of one block from the scan position: (status, next page, the counts ``_account_block`` takes).

        ``send_pages``, or once XBZRLE has started ``send_pages_xbzrle``; multifd
        packets filled by the pages are counted and their headers added.
        """
        rs, sc, rl, w = self.rs, self.send, self.m.ram_list, block.words
        lazy = not rs.last_stage
        if self.xbzrle_started:
            x, out = self.xbzrle, self._xout
            status = send_pages_xbzrle(block.bmap, block.clear_bmap, rl.nonzero[w], rl.stale[w], rl.received[w],
                                       rs.page, block.pages, budget, cap, self.shift, lazy, self.zero_detect, extra,
                                       block.first_page, self._changed_bytes, rs.last_stage, self.dirty_sync_count,
                                       x.tags, x.ages, x.totals, self._xc, t_left, out)
            page, n, z, b, resent, unchanged, xb, skipped, cpu = (int(v) for v in out)
            return status, page, [n, z, b, resent, unchanged, 0, xb, skipped, cpu, 0]
        status = kernels.send_pages(block.bmap, block.clear_bmap, rl.nonzero[w], rl.stale[w], rl.received[w],
                                    rs.page, block.pages, budget, cap, self.shift, lazy, self.zero_detect, extra,
                                    sc.normal_bytes, sc.zero_bytes, sc.cv, t_left, self._out)
        page, n, z, b, resent, unchanged = (int(v) for v in self._out)
        pk = 0
        if n + z:
            if block is not rs.last_sent_block:  # multifd_queue_page: a new block sends the packet in progress
                pk += int(sendcost.send_partial(sc.cv, sc.state))
            pk += int(sendcost.queue_pages(sc.cv, sc.state, n, z))
            b += pk * sc.packet_bytes
        cpu, chan = int(sendcost.main_ns(sc.cv, n, z)), int(sendcost.channel_ns(sc.cv, n, z, pk))
        return status, page, [n, z, b, resent, unchanged, pk, 0, 0, cpu, chan]

    def _multifd_sync(self, block: RAMBlock) -> tuple[int, int]:
        """``multifd_ram_flush_and_sync`` (per-round mode, the default): the partial packet and a SYNC packet per
        channel go out, and ``RAM_SAVE_FLAG_MULTIFD_FLUSH`` on the main stream; (bytes, packets), 0 without multifd."""
        sc = self.send
        pk = int(sendcost.flush_and_sync(sc.cv, sc.state))
        if not pk:
            return 0, 0
        b = pk * sc.packet_bytes + sendcost.RAM_SAVE_FLAG_MULTIFD_FLUSH_BYTES
        self._account_block(block, 0, 0, b, 0, 0, pk, 0, 0, 0, int(sendcost.channel_ns(sc.cv, 0, 0, pk)))
        return b, pk

    def flush_deferred_clear(self) -> None:
        """send-before-clear: issue the clear of the chunk whose pages have all been sent by now."""
        if self._deferred is not None:
            block, chunk = self._deferred
            self._deferred = None
            self._log_clear(block, chunk)
            self.m.audit("send-before-clear")

    def _account_block(self, block: RAMBlock, *counts: int) -> None:
        acc = self._pending.setdefault(block.idstr, [0] * len(counts))
        for i, c in enumerate(counts):
            acc[i] += c

    def _record_pages(self) -> None:
        """The flush returned: the bytes count as transferred (``qemu_fflush``)."""
        for idstr, counts in self._pending.items():
            self.emit_pages(idstr, *counts)
        self._pending = {}

    def emit_pages(self, idstr: str, n: int, z: int, b: int, resent: int, unchanged: int, packets: int, xbzrle: int,
                   skipped: int, cpu_ns: int, channel_ns: int, ram_bytes: int | None = None) -> None:
        """Pages of one block are out: transferred, and who spent how long on them.

        ``ram_get_total_transferred_pages`` counts XBZRLE's pages too, skipped ones included.
        ``ram_transferred_add`` (precopy-/downtime-/postcopy-bytes) counts what the migration thread writes for
        a page on the main stream: ``save_normal_page``, ``save_zero_page``, ``save_xbzrle_page``. Multifd's
        packets go to ``mig_stats.multifd_bytes`` only (``multifd_send_thread``), and the main stream's
        RAM_SAVE_FLAG_MULTIFD_FLUSH (``multifd_ram_flush_and_sync``) to neither: with multifd only the zero
        pages that ``legacy`` detection sends on the main stream count. ``ram_bytes``: a caller that knows.
        """
        sc = self.send
        if ram_bytes is None:
            ram_bytes = z * sc.zero_bytes if sc.multifd else b
        self.transferred += b
        self.pages_sent += n + z + xbzrle + skipped
        self.rec.emit(ev.Transfer, kind="pages", block=idstr, normal=n, zero=z, bytes=b,
                      wire_ns=b * 10**9 // self.link_bytes_per_s, running=self.m.guest.running,
                      resent=resent, unchanged=unchanged, cpu_ns=cpu_ns, channel_ns=channel_ns, packets=packets,
                      multifd_bytes=packets * sc.packet_bytes + (n * sc.normal_bytes if sc.multifd else 0),
                      xbzrle=xbzrle, skipped=skipped, ram_bytes=ram_bytes)

    def clear_chunk(self, block: RAMBlock, chunk: int) -> None:
        """``migration_clear_memory_region_dirty_bitmap``: consume the chunk's bit, then log_clear.

        WRONG on purpose with send-before-clear: the clear is deferred until the
        scan enters the next chunk, i.e. after every page of this one was sent.
        A guest write between a page's send and that clear does not fault (the
        page is still writable), and the clear drops its bit: the write is lost.
        """
        block.clear_bmap[chunk] = 0
        if self.send_before_clear:
            self.flush_deferred_clear()
            self._deferred = (block, chunk)
        else:
            self._log_clear(block, chunk)

    def _log_clear(self, block: RAMBlock, chunk: int) -> None:
        size = PAGE_SIZE << self.shift
        start = chunk * size
        size = min(size, block.used_length - start)
        self.rec.emit(ev.LazyClear, block=block.idstr, chunk=chunk, start=start, size=size)
        self.m.memory.memory_region_clear_dirty_bitmap(block.mr, start, size)

    def _transfer(self, kind: str, nbytes: int, ram_bytes: int = 0):
        """``nbytes`` written and flushed; ``ram_bytes`` of them through ``ram_transferred_add``."""
        yield from self._transfer_parts((kind, nbytes, ram_bytes))

    def _transfer_parts(self, *parts: tuple[str, int, int]):
        """Writes that go out in one flush: (kind, bytes, of them ram_transferred_add's); one wait, one event each."""
        wires = [nbytes * 10**9 // self.link_bytes_per_s for _, nbytes, _ in parts]
        yield from self._wait(sum(wires))
        for (kind, nbytes, ram_bytes), wire_ns in zip(parts, wires):
            self.transferred += nbytes
            self.rec.emit(ev.Transfer, kind=kind, bytes=nbytes, wire_ns=wire_ns, running=self.m.guest.running,
                          ram_bytes=ram_bytes)

    # -- the end -------------------------------------------------------------------------------------
    def completion(self):
        """``migration_completion_precopy``: stop vCPUs, final sync, send the rest unlimited, device state."""
        self.rec.emit(ev.VcpusStopped)
        self.m.stop_vm()  # migration_stop_vm: downtime starts
        self.rs.last_stage = True  # ram_save_complete's flag, set here: no cancel once the VM is stopped
        yield from self.stop_costs()
        self._status("device")  # migration_switchover_start: ACTIVE -> DEVICE ("migration: Always set DEVICE state")
        yield from self.bitmap_sync("final", self.rs.migration_dirty_pages * PAGE_SIZE)
        while self.rs.migration_dirty_pages:  # send_slice raises rather than return 0 with pages left
            yield from self.send_slice(UNLIMITED)  # migration_switchover_start: no rate limit
        if self.send.multifd:  # ram_save_complete: multifd_ram_flush_and_sync before the EOS
            nbytes, packets = self._multifd_sync(self.rs.last_sent_block or self.m.ram_list.blocks[0])
            yield from self._wait(self.slice_ns(nbytes, 0, 0, packets))
            self._record_pages()
        yield from self.end_section("end", ram_eos=False)
        self._emit_xbzrle()
        # qemu_savevm_state_complete_precopy_non_iterable: every device's section, QEMU_VM_EOF, the vmdesc (the JSON
        # description of the device state, should_send_vmdesc), then the flush ends the downtime; none of it RAM's
        yield from self._transfer_parts(("device-state", self.sc.machine.switchover_state() + QEMU_VM_EOF_BYTES, 0),
                                        ("vmdesc", VMDESC_HEADER_BYTES + self.sc.machine.vmdesc, 0))
        self.check_oracle("switchover")
        self._status("completed")
        self.stop_reason = "completed"

    def stop_costs(self):
        """What ``vm_stop_force_state`` costs the migration thread before the final sync, step by step.

        ``do_vm_stop``: ``pause_all_vcpus`` kicks every vCPU out of KVM_RUN and
        waits for it; the VM state change notifies each virtio device, whose
        ``vhost_dev_stop`` asks the backend for every virtqueue's base
        (GET_VRING_BASE, after its in-flight requests); ``bdrv_drain_all`` waits for
        each block device's requests. The guest and the backends stopped writing
        at ``stop_vm`` already: these are times, not writes.
        """
        c = self.sc.costs
        steps = [("vm-stop", None, c.vm_stop_per_vcpu * self.m.guest.nvcpus)]
        for i, d in enumerate(self.sc.machine.devices):
            name = f"{i}:{d.kind}"
            if d.kind in VHOST_KINDS:  # a net queue pair is two virtqueues (rx, tx); a blk queue is one
                vqs = d.queues * (2 if d.kind != "vhost-user-blk" else 1)
                steps.append(("vhost-stop", name, c.vhost_stop_per_queue * vqs))
            if d.kind in ("vhost-user-blk", "virtio-blk"):
                steps.append(("block-drain", name, c.block_drain))
        for step, device, cost in steps:
            self.rec.emit(ev.SwitchoverStep, step=step, device=device, cost_ns=cost)
            yield from self._wait(cost)

    def cancel(self, reason: str) -> None:
        """The migration is cancelled: at ``migration.timeout`` (as guestperf does at max_time), after
        ``max_syncs`` (guestperf's max_iters) or by ``migrate-cancel``.

        ``migration_cancel`` -> ``ram_save_cleanup``: dirty logging for migration
        stops; the guest runs on at the source, which loses nothing. The oracle is
        asked what the migration would still have sent (``check_oracle``).
        """
        if self.pc is not None and self.pc.active:
            return self.pc.stop(reason)
        self._pending = {}  # migration_cancel shuts the stream down: a write in flight never completes
        self.check_oracle(reason)
        if self.rs is not None and self.m.memory.global_dirty_tracking & GLOBAL_DIRTY_MIGRATION:
            self.m.memory.memory_global_dirty_log_stop(GLOBAL_DIRTY_MIGRATION)
        self._status("cancelled")
        self.stop_reason = reason

    def check_oracle(self, at: str) -> None:
        """Destination vs source: stale pages, and those the migration would never send again (lost).

        At the switchover every stale page is lost: the guest resumes on the
        destination. At a cancel the migration stops mid-way, so the oracle asks
        what it would still send: it runs the data path of one more sync
        (listeners -> L2 -> bmap, the real code, with the recorder muted) and
        counts stale pages left outside bmap. Reading the dirty layers instead
        would let a bit that sits in a layer but never reaches bmap (a stuck
        word, a listener that never harvests) pass for remembered.
        """
        if at != "switchover" and self.rs is not None:
            with self.rec.muted():
                self._sync_into_bmap(last_stage=True)
            stale, lost = self.m.oracle(layers=False)
        else:
            stale, lost = self.m.oracle()
        if at == "switchover":
            lost = stale  # the guest resumes on the destination now: every stale page is lost
        self.rec.emit(ev.OracleCheck, at=at, stale_pages=stale, lost_pages=lost,
                      unassigned_writes=self.m.guest.unassigned_writes)
