"""The big QEMU lock (``bql_lock``/``bql_unlock``, system/cpus.c) as the span it is held over.

Who takes it in dirtysim, as in QEMU: the migration thread around every
``migration_bitmap_sync`` (``ram_state_pending_exact``, ``ram_init_bitmaps``,
the throttle timer's sync, completion) and around starting dirty logging
(``qemu_savevm_state_do_setup``); the ``kvm-reaper`` thread around each reap
(``kvm_dirty_ring_reaper_thread``); a vCPU that exits with
KVM_EXIT_DIRTY_RING_FULL around its reap (``kvm_cpu_exec``); a vCPU's MMIO
exit (``prepare_mmio_access`` takes it for every device access since commit
4174495408a removed ``MemoryRegion::global_locking``); the dirty-rate threads
around their syncs (``calculate_dirtyrate_dirty_bitmap``, dirty-limit's
``global_dirty_log_sync``).

A holder asking at ``t`` gets the lock when the current hold ends, and the
lock is handed over in request order (QemuMutex promises no order; nothing
here contends often enough for that to matter). Requests come in time order:
every process asks at the simulated time it acts, after the lazy vCPUs were
brought up to it, and a vCPU asks at its exit's quantum. So one span, the
latest hold (a hold taken at the previous one's release extends it), is all
anyone can still meet; ``kernels.run_vcpus`` reads it for the MMIO exits.
Not modelled: the vCPUs' own MMIO handling holding the lock (short; they
contend only with each other), the main loop's timers and QMP.
"""

from __future__ import annotations

from typing import Callable, Generator

import numpy as np


class Bql:
    """The latest hold, as [start, end) in ``span`` (the array the vCPU kernel reads)."""

    def __init__(self):
        self.span = np.zeros(2, dtype=np.int64)

    @property
    def free_at(self) -> int:
        """When the lock is released (the end of the latest hold)."""
        return int(self.span[1])

    def wait(self, t: int) -> int:
        """ns a request at ``t`` waits for the lock."""
        return max(0, self.free_at - t)

    def hold(self, t: int, ns: int) -> int:
        """Take the lock at ``t`` (or at its release) for ``ns``; returns the wait."""
        wait = self.wait(t)
        if ns > 0:
            if not wait and self.free_at < t:  # free: a new hold; else it continues the one it waited for
                self.span[0] = t
            self.span[1] = t + wait + ns
        return wait

    def lock(self, now: Callable[[], int], sleep: Callable[[int], Generator]) -> Generator:
        """``bql_lock`` by a SimPy process: sleep until no hold covers the present; returns the ns waited.

        Waits again if the hold grew meanwhile (a vCPU's reap while this
        process slept), as a mutex would still be taken when it woke.
        """
        waited = 0
        while (ns := self.wait(now())) > 0:
            waited += ns
            yield from sleep(ns)
        return waited
