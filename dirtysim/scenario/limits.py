"""Resource limits checked before a run, so a scenario cannot hang or exhaust the machine.

The ceilings are dirtysim's, chosen so the largest legitimate study still runs
(a 16 TiB guest, 4096 vCPUs, hours of simulated time at 1 ms quanta) while a
typo (a 1 ns quantum with a 10 h timeout) is refused with the limit named.
"""

from __future__ import annotations

from pathlib import Path

MAX_RAM = 16 << 40  # guest RAM + device memory; dirtysim's ceiling (bitmaps of 4 Gi pages)
MAX_VCPUS = 4096  # across all groups: QEMU's q35 max_cpus (hw/i386/pc_q35.c)
MIN_QUANTUM = 10_000  # ns: 10 us, the shortest vCPU or send slice (and kvm-reaper period)
MAX_STEPS = 10**8  # simulation steps (quanta, send slices, rate windows, reaps): about an hour of wall time
MAX_WRITES = 2 * 10**10  # guest page writes over the whole run (vCPUs and device DMA): ~10 ns each
MAX_WRITES_PER_QUANTUM = 1 << 24  # page writes batched in one quantum (their arrays take ~40 bytes each)
# Host memory per guest page: one bit per layer (KVM bitmap and QEMU's copy of it, global dirty
# memory, bmap, the oracle's nonzero/stale/received bits, the oracle check's union, a vhost log):
# about 1 byte; 2 bytes is the budget, with room for the check's temporaries.
HOST_BYTES_PER_PAGE = 2
HOST_BASE_BYTES = 256 << 20  # Python, numpy, numba and the event log of a short run
BUFFER_DELAY_NS = 100 * 10**6  # migration-stats.h: one rate-limit window
MAX_WAIT_NS = 50 * 10**6  # ram.c: one ram_save_iterate, at most one sync each


def steps(horizon_ns: int, migrate_ns: int, quantum_ns: int, send_quantum_ns: int, actors: int,
          timers_ns: list[int], timeline: int) -> int:
    """Upper bound of the SimPy steps of a run.

    ``actors`` (the guest and each vhost backend) step every quantum until the
    horizon; the migration thread sends one slice per send quantum, closes a
    window per ``BUFFER_DELAY`` and iterates (and may sync) per ``MAX_WAIT``;
    each periodic timer (the ring reaper, the guest sampler, the throttle and
    dirty-limit threads) wakes once per period at most.
    """
    n = actors * horizon_ns // quantum_ns + migrate_ns // send_quantum_ns
    n += migrate_ns // BUFFER_DELAY_NS + 2 * (migrate_ns // MAX_WAIT_NS) + timeline
    return n + sum(horizon_ns // period for period in timers_ns)


def available_memory() -> int | None:
    """``MemAvailable`` from /proc/meminfo in bytes, or None where there is no such file."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def host_memory_needed(guest_bytes: int, page_size: int) -> int:
    return HOST_BASE_BYTES + guest_bytes // page_size * HOST_BYTES_PER_PAGE
