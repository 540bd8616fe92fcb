"""Postcopy live migration (``migration/postcopy-ram.c``, ``postcopy_start`` and the postcopy paths of ``ram.c``).

After ``migrate-start-postcopy`` the migration thread stops the VM, syncs once
more and sends a discard bitmap (every page dirty now is dropped on the
destination), then the device state in one package; the guest resumes on the
destination. From then on the source pushes the remaining pages in the
background (the VM is stopped: nothing is re-dirtied, no more syncs), and a
destination vCPU that touches a page it does not hold blocks in a userfault
until the page arrives: the fault thread asks for it on the return path, the
source sends it at once (``ram_save_queue_pages``), and placing it wakes the
vCPU. The migration completes when nothing is left to send.

The destination's vCPUs run in ``destkernels.run_vcpus_dest`` between
decisions. A fault at ``t`` cannot change what the destination holds before
``t + lookahead`` (the request crosses the link, a page needs ``postcopy_place``
to land), so the guest is run ahead by at most ``lookahead`` and every vCPU is
independent inside that interval (conservative lookahead, as parallel
discrete-event simulation does): the result is exact, not approximated.

Three bitmaps over RAM pages follow the destination: ``present`` (QEMU's
``receivedmap``: cleared by the discard, set by each placement), ``written``
(pages its guest wrote) and ``unplaced`` (pages still to be placed since the
switch). The oracle checks at the switch that no stale page survives outside
the bitmap or on the destination, and at the end that every page arrived once
and no placement overwrote a destination write.
"""

from __future__ import annotations

import heapq
import itertools

import numpy as np

from ..dirty import kernels, sendcost
from ..dirty import destkernels as D
from ..events import schema as ev
from .invariant import BrokenInvariant

MAX_DISCARDS_PER_COMMAND = 12  # postcopy-ram.c
CMD_HEADER = 5  # qemu_savevm_command_send: QEMU_VM_COMMAND byte, be16 command, be16 length
PING = CMD_HEADER + 4  # qemu_savevm_send_ping: a be32 value
# postcopy_start's package: ping 2, CMD_PACKAGED (header + be32 length), then inside it LISTEN, the device
# state, ping 3, RUN (QEMU 10.0/10.1: no PACKAGED_LOADED ping, departure D1)
PACKAGE_OVERHEAD = PING + (CMD_HEADER + 4) + CMD_HEADER + PING + CMD_HEADER
# qemu_savevm_state_complete_postcopy: QEMU_VM_SECTION_END (byte + be32 section id) then QEMU_VM_EOF
POSTCOPY_END_BYTES = 5 + 1
RAM_SAVE_FLAG_EOS_BYTES = 8
UNLIMITED = 1 << 62
PLACE, REQUEST = 0, 1  # destination work items, in (time, seq) order


def discard_bytes(idstr: str, ranges: int) -> tuple[int, int]:
    """(commands, bytes) of one block's discard: ``postcopy_discard_send_range`` batches 12 ranges per
    ``qemu_savevm_send_postcopy_ram_discard``: header, version and length bytes, the idstr, 16 bytes per range."""
    commands = -(-ranges // MAX_DISCARDS_PER_COMMAND)
    return commands, commands * (CMD_HEADER + 3 + len(idstr)) + 16 * ranges


class Postcopy:
    """The postcopy side of a ``PrecopyMigration`` (held as ``mig.pc``): the switch, the push, the destination."""

    def __init__(self, mig):
        self.mig, self.env, self.m, self.rec, self.sc = mig, mig.env, mig.m, mig.rec, mig.sc
        caps = self.sc.migration.capabilities
        self.preempt = caps.postcopy_preempt
        self.latency = self.sc.network.latency
        self.fault_ns, self.place_ns = self.sc.costs.postcopy_fault, self.sc.costs.postcopy_place
        self.lookahead = self.latency + min(self.fault_ns, self.place_ns)  # > 0: scenario/postcopy.py
        self.trigger: str | None = None  # start_postcopy: set by migrate-start-postcopy or after N syncs
        self.active = False  # migration_in_postcopy
        self.stopped_ns: int | None = None  # postcopy_start stopped the VM
        self.work: list = []  # (time, seq, PLACE | REQUEST, data): what the destination and the source do next
        self._seq = itertools.count()
        self.waiters: dict[int, list[list]] = {}  # RAM page -> [vcpu, fault ns, request ns, served, wait bytes]
        self.link_debt_ns = 0  # wire time of requested pages, taken from the background push
        self.preempt_block = None  # the preempt channel's last block (its own pss)
        self.jump: tuple | None = None  # ram_save_queue_pages: the scan continues after the requested page
        self.last_arrival = 0
        self.counts = np.zeros(3, dtype=np.int64)  # place(): placed, double, clobbered in one call
        self.double = self.clobbered = 0
        self.io = np.zeros(2, dtype=np.int64)  # run_vcpus_dest: faults pending, writes that hit no RAM

    # -- migrate-start-postcopy ------------------------------------------------------------------------
    def request(self, trigger: str) -> str:
        """``qmp_migrate_start_postcopy``: only sets ``start_postcopy``; QEMU's error before ``migrate``."""
        if self.mig.rs is None:
            return "refused: Postcopy must be started after migration has been started"
        if self.trigger is None:
            self.trigger = trigger
        return "done"

    def switch_due(self) -> bool:
        """``migration_iteration_run``: start postcopy when asked (must_precopy is 0: RAM is all postcopiable).

        ``x-postcopy-after-syncs`` asks as guestperf does once dirty-sync-count reaches ``post_copy_iters``.
        """
        after = self.sc.migration.x_postcopy_after_syncs
        if self.trigger is None and after is not None and self.mig.dirty_sync_count >= after:
            self.trigger = "after-syncs"
        return self.trigger is not None and not self.active

    # -- postcopy_start ----------------------------------------------------------------------------------
    def start(self, pending: int):
        """``postcopy_start``: stop, discard sync, discard bitmap, device package; the guest resumes remotely.

        The downtime runs from ``migration_stop_vm`` to the package's flush
        (``migration_downtime_end``). ``ram_postcopy_send_discard_bitmap`` syncs
        (dirty-sync-count + 1, not the last stage) and restarts the scan at the
        first page; every page dirty then is discarded on the destination.
        """
        mig, rs, rl = self.mig, self.mig.rs, self.m.ram_list
        self.rec.emit(ev.PostcopyStart, trigger=self.trigger, must_precopy=0, can_postcopy=pending,
                      threshold_size=mig.counters.threshold_size, dirty_sync_count=mig.dirty_sync_count)
        self.rec.emit(ev.VcpusStopped)
        self.m.stop_vm()  # migration_stop_vm: downtime starts
        self.stopped_ns = self.env.now
        yield from mig.stop_costs()  # vm_stop_force_state
        mig._status("device")  # migration_switchover_start
        mig.counters.rate_limit_max = 0  # RATE_LIMIT_DISABLED, then max-postcopy-bandwidth (0: unlimited)
        yield from mig.bitmap_sync("postcopy-discard", pending)
        # ram.c skips the lazy clear in postcopy as in the last stage (10.1, "Avoid clearing dirty bitmap for
        # postcopy too"); send_slice reads last_stage for it. It also keeps migrate-cancel refused (P2).
        rs.last_stage = True
        rs.reset(rl)  # last_seen_block, last_sent_block, last_page = 0
        words = rl.dirty_memory.shape[0]
        self.todo = np.zeros(words, dtype=np.uint64)  # pages to send since the switch
        for block in rl.blocks:
            self.todo[block.words] = block.bmap
        self.unplaced = self.todo.copy()
        self.written = np.zeros(words, dtype=np.uint64)
        skip = self.sc.what_if.postcopy_skip_discard
        self.present = rl.received.copy() if skip else rl.received & ~self.todo  # ram_discard_range
        self._switch_oracle()
        if not skip:
            yield from self._discard()
        package = PACKAGE_OVERHEAD + self.sc.machine.switchover_state()
        yield from mig._transfer("postcopy-package", package)  # qemu_savevm_send_packaged + flush
        self.active = True
        mig._status("postcopy-active")  # downtime ends (departure D1: no POSTCOPY_DEVICE state)
        self.env.process(self._destination(package))
        yield from mig._transfer("postcopy-ping", PING)  # ping 4

    def _discard(self):
        """``postcopy_each_ram_send_discard``: one range per run of dirty pages, 12 ranges per command."""
        total = 0
        for block in self.m.ram_list.blocks:
            n = block.bmap.shape[0]
            ranges = int(D.count_runs(block.bmap, 0, n))
            commands, nbytes = discard_bytes(block.idstr, ranges)
            self.rec.emit(ev.PostcopyDiscard, block=block.idstr, pages=int(kernels.count_set(block.bmap, 0, n)),
                          ranges=ranges, commands=commands, bytes=nbytes)
            total += nbytes
        if total:
            yield from self.mig._transfer("postcopy-discard", total)

    def _switch_oracle(self) -> None:
        """After the discard sync: a stale page must be in the bitmap (to be sent) and not on the destination."""
        stale = self.m.ram_list.stale
        n = stale.shape[0]
        lost = int(kernels.count_set(stale & (~self.todo | self.present), 0, n))
        self.rec.emit(ev.OracleCheck, at="postcopy-switch", stale_pages=int(kernels.count_set(stale, 0, n)),
                      lost_pages=lost, unassigned_writes=self.m.guest.unassigned_writes)

    # -- the source in postcopy --------------------------------------------------------------------------
    def iteration_run(self):
        """``migration_iteration_run`` in postcopy: complete when nothing is pending, else ``ram_save_iterate``."""
        if self.mig.rs.migration_dirty_pages == 0:
            yield from self.completion()
            return True
        yield from self.iterate()
        return False

    def iterate(self):
        """``ram_save_iterate`` after the switch: background slices (no multifd, no lazy clear) for up to 50 ms.

        Each slice's pages land on the destination one latency plus a placement
        after the slice (and the requested pages' wire time) has gone out.
        """
        mig, rs = self.mig, self.mig.rs
        t0 = mig.now_ms()
        while rs.migration_dirty_pages and mig.now_ms() - t0 <= kernels.MAX_WAIT_MS:
            start = self._global_page()
            yield from mig.send_slice(UNLIMITED)
            end = self._global_page()
            debt, self.link_debt_ns = self.link_debt_ns, 0
            if debt:
                yield from mig._wait(debt)
            self._slice_sent(start, end)
            if self.jump is not None:  # get_queued_page: the scan goes on from the requested page
                rs.block_index, rs.page = self.jump
                self.jump = None
        yield from mig.end_section("part", ram_eos=True)  # ram_save_iterate's EOS: ram_transferred_add(8)

    def _global_page(self) -> int:
        rs, blocks = self.mig.rs, self.m.ram_list.blocks
        return blocks[rs.block_index].first_page + rs.page if rs.block_index < len(blocks) else 0

    def _slice_sent(self, start: int, end: int) -> None:
        """The pages a slice took out of the bitmap (scanned from ``start`` to ``end``) go in flight."""
        if end > start:
            w0, w1 = start >> 6, -(-end // 64)
        else:  # the scan wrapped: look at every word
            w0, w1 = 0, self.todo.shape[0]
        sent = np.zeros(w1 - w0, dtype=np.uint64)
        for block in self.m.ram_list.blocks:
            lo, hi = max(w0, block.words.start), min(w1, block.words.stop)
            if lo < hi:
                b0 = lo - block.words.start
                sent[lo - w0:hi - w0] = self.todo[lo:hi] & ~block.bmap[b0:b0 + hi - lo]
        self.todo[w0:w1] &= ~sent
        self._in_flight(self.env.now + self.latency + self.place_ns, w0, sent)

    def _in_flight(self, arrive: int, w0: int, mask: np.ndarray) -> None:
        if not mask.any():
            return
        self.last_arrival = max(self.last_arrival, arrive)
        heapq.heappush(self.work, (arrive, next(self._seq), PLACE, (w0, mask)))

    def _request_arrives(self, r: int, entry: list) -> None:
        """``ram_save_queue_pages`` for one REQ_PAGES: send the page now unless already sent.

        ``get_queued_page`` drops a request whose bitmap bit is clear: the page
        is on its way (or placed) and is never sent twice. Otherwise the page
        goes out at once: without preempt on the main channel, behind the
        ``send_buffer`` bytes the unthrottled push has queued in the socket
        (the scan then continues after it); with preempt on its own channel
        from the return-path thread (``ram_save_host_page_urgent``). Its wire
        time is taken from the background push either way (one link).
        """
        mig, rs, rl = self.mig, self.mig.rs, self.m.ram_list
        bi, block = next((i, b) for i, b in enumerate(rl.blocks) if b.first_page <= r < b.first_page + b.pages)
        p = r - block.first_page
        if not (block.bmap[p >> 6] >> np.uint64(p & 63)) & np.uint64(1):
            return  # entry stays "in-flight"
        last = self.preempt_block if self.preempt else rs.last_sent_block  # each channel names its block once
        extra = 0 if block is last else 1 + len(block.idstr)
        w, sc = block.words, mig.send
        kernels.send_pages(block.bmap, block.clear_bmap, rl.nonzero[w], rl.stale[w], rl.received[w], p, p + 1,
                           UNLIMITED, UNLIMITED, mig.shift, False, mig.zero_detect, extra, sc.normal_bytes,
                           sc.zero_bytes, sc.cv, UNLIMITED, mig._out)
        _, n, z, nbytes, resent, unchanged = (int(x) for x in mig._out)
        rs.migration_dirty_pages -= 1
        mig.emit_pages(block.idstr, n, z, nbytes, resent, unchanged, 0, 0, 0, int(sendcost.main_ns(sc.cv, n, z)),
                       int(sendcost.channel_ns(sc.cv, n, z, 0)), ram_bytes=nbytes)  # save_normal/zero_page
        self.todo[r >> 6] &= ~(np.uint64(1) << np.uint64(r & 63))
        queued = 0
        if self.preempt:
            self.preempt_block = block
        else:
            rs.last_sent_block = block
            self.jump = (bi, p + 1)
            queued = self.sc.network.send_buffer if rs.migration_dirty_pages else 0
        link = self.sc.network.bandwidth
        wire = nbytes * 10**9 // link
        self.link_debt_ns += wire
        entry[3], entry[4] = ("preempt" if self.preempt else "urgent"), queued
        mask = np.zeros(1, dtype=np.uint64)
        mask[0] = np.uint64(1) << np.uint64(r & 63)
        self._in_flight(self.env.now + queued * 10**9 // link + wire + self.latency + self.place_ns, r >> 6, mask)

    # -- the destination ---------------------------------------------------------------------------------
    def _destination(self, package_bytes: int):
        """The destination: RUN (``loadvm_postcopy_handle_run_bh``) one latency after the package, then its
        vCPUs, placements and the requests reaching the source, in time order, until the migration ends."""
        yield self.env.timeout(self.latency)
        self.rec.emit(ev.PostcopyRunning, package_bytes=package_bytes)
        guest = self.m.guest
        nv = guest.nvcpus
        self.dv = np.zeros((D.DV_ROWS, nv), dtype=np.int64)
        self.dv[D.DV_NEXT] = self.env.now
        self.dv[D.DV_PEND] = -1
        self.faults = np.zeros((3, nv), dtype=np.int64)  # a vCPU faults at most once before it is woken
        while self.mig.stop_reason is None:
            now = self.env.now
            while self.work and self.work[0][0] <= now:
                _, _, kind, data = heapq.heappop(self.work)
                if kind == PLACE:
                    self._place(*data)
                else:
                    self._request_arrives(*data)
            h = self._horizon(now)
            self._run_guest(h)
            yield self.env.timeout(h - now)

    def _horizon(self, now: int) -> int:
        """How far the guest may run before the destination can change: the next placement or request due,
        a fault's earliest consequence (its vCPU's next write + lookahead) and the earliest placement another
        process could schedule (its next wake-up + latency + postcopy_place)."""
        running = self.dv[D.DV_BLOCKED] == 0
        first_write = int(self.dv[D.DV_NEXT][running].min()) if running.any() else int(D.NEVER)
        fault_effect = max(now, first_write) + self.lookahead
        other_wake = max(now, int(min(self.env.peek(), D.NEVER)))
        h = min(fault_effect, other_wake + self.latency + self.place_ns)
        return min(h, self.work[0][0]) if self.work else h

    def _run_guest(self, h: int) -> None:
        g = self.m.guest
        while D.run_vcpus_dest(h, g.vi, g.vf, g.runs, g.ubuf, g.guest_map.table, self.present, self.written, self.dv,
                               self.faults, self.io) == D.DEST_REFILL:
            g.refill()
        for v, r, t in self.faults[:, :int(self.io[D.IO_NFAULTS])].T.tolist():
            entry = [v, t, t + self.fault_ns + self.latency, "in-flight", 0]  # migrate_send_rp_req_pages
            self.waiters.setdefault(r, []).append(entry)
            heapq.heappush(self.work, (entry[2], next(self._seq), REQUEST, (r, entry)))
        self.io[D.IO_NFAULTS] = 0

    def _place(self, w0: int, mask: np.ndarray) -> None:
        """``postcopy_place_page`` for each page of ``mask``: receivedmap set, waiting vCPUs woken."""
        D.place(self.present, self.written, w0, mask, self.counts)
        _, double, clobbered = (int(x) for x in self.counts)
        self.double += double
        self.clobbered += clobbered
        self.unplaced[w0:w0 + mask.shape[0]] &= ~mask
        w1 = w0 + mask.shape[0]
        for r in [r for r in self.waiters if w0 <= r >> 6 < w1 and (mask[(r >> 6) - w0] >> np.uint64(r & 63)) & 1]:
            for v, fault_ns, request_ns, served, wait_bytes in self.waiters.pop(r):
                self.dv[D.DV_BLOCKED, v] = 0
                self.dv[D.DV_NEXT, v] = self.env.now
                self.rec.emit(ev.PostcopyFault, vcpu=v, page=r, fault_ns=fault_ns, request_ns=request_ns,
                              served=served, wait_bytes=wait_bytes)

    # -- the end -------------------------------------------------------------------------------------------
    def completion(self):
        """``migration_completion_postcopy``: RAM's EOS, section end and EOF, then the destination's SHUT.

        The source waits on the return path (``close_return_path_on_source``)
        until the destination has loaded everything: the last page in flight
        placed, one latency back.
        """
        mig = self.mig
        yield from mig._transfer("eos", RAM_SAVE_FLAG_EOS_BYTES)
        yield from mig._transfer("postcopy-end", POSTCOPY_END_BYTES)
        shut = max(self.last_arrival, self.env.now) + self.latency
        yield from mig._wait(shut - self.env.now)
        if self.waiters:
            raise BrokenInvariant(f"postcopy completed with vCPUs still blocked on pages {sorted(self.waiters)}")
        self.check_oracle("postcopy-complete")
        mig._status("completed")
        mig.stop_reason = "completed"

    def stop(self, reason: str) -> None:
        """The run ends in postcopy (``migration.timeout``): QEMU cannot cancel it ("Postcopy migration in
        progress, cannot cancel."), so the status stays postcopy-active; unsent pages are pending, not lost."""
        self.check_oracle(reason)
        self.mig.stop_reason = reason

    def check_oracle(self, at: str) -> None:
        """Every page placed once. Lost: a page the destination neither holds nor will still receive, and a
        page sent onto one it held (``UFFDIO_COPY`` fails with -EEXIST: the destination keeps a copy older
        than the source's, or its guest's write on such a copy)."""
        n = self.present.shape[0]
        lost = int(kernels.count_set(~self.present & ~self.unplaced, 0, n)) + self.double
        self.rec.emit(ev.OracleCheck, at=at, stale_pages=int(kernels.count_set(self.m.ram_list.stale, 0, n)),
                      lost_pages=lost, unassigned_writes=self.m.guest.unassigned_writes + int(self.io[D.IO_UNASSIGNED]),
                      double_placed=self.double, clobbered=self.clobbered)
