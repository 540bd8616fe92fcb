"""vhost-user device backends: device DMA into guest buffers, then used-ring writes.

A virtio-net backend receiving packets (``vu_queue_fill`` logs every written
buffer) and a virtio-blk backend serving reads both write guest memory without
KVM seeing it: the only record is the vhost log bit each write sets
(``vu_log_write`` -> ``vu_log_page``, atomic OR), plus the used-ring element
and index writes (``vring_used_write`` / ``vring_used_idx_set``). A backend is a
lazy actor like the guest (``kernels.run_backend`` applies many quanta at once).
"""

from __future__ import annotations

import numpy as np

from ..accel.vhost import VhostListener
from ..dirty import kernels
from ..dirty.ramlist import RAMList
from ..scenario.schema import PAGE_SIZE, VhostUserNet
from .lazy import LazyActor

NS_PER_S = 10**9


class VhostUserBackend(LazyActor):
    """One device: ``queues`` used-ring pages, then buffers used round-robin, a quantum at a time."""

    def __init__(self, name: str, spec, gpa: int, listener: VhostListener, ram_list: RAMList, guest_map,
                 quantum_ns: int):
        """``gpa``: guest-physical address of the device's buffers (used rings first); ``guest_map``
        (``oracle.GuestMap``): where the oracle sees the DMA land (the table decides if it does)."""
        self.name, self.listener, self.ram_list, self.quantum_ns = name, listener, ram_list, quantum_ns
        self.guest_map = guest_map
        self.queues = spec.queues
        rate = spec.rx if isinstance(spec, VhostUserNet) else spec.read  # bytes/s into guest memory
        unit = spec.packet if isinstance(spec, VhostUserNet) else spec.request
        self.rate_q, self.unit_div = rate * quantum_ns, unit * NS_PER_S
        self.unit_pages = -(-unit // PAGE_SIZE)
        self.used_first = gpa // PAGE_SIZE  # one used-ring page per queue
        self.buf_first = self.used_first + self.queues
        self.buf_slots = (spec.buffers // PAGE_SIZE - self.queues) // self.unit_pages
        self.carry = np.zeros(1, dtype=np.int64)
        self.cursor = np.zeros(1, dtype=np.int64)

    def run_quanta(self, n: int) -> None:
        """Per quantum: the units (packets or read requests) that arrived, then each used ring once."""
        ls, rl = self.listener, self.ram_list
        kernels.run_backend(
            n, self.rate_q, self.unit_div, self.carry, self.cursor, self.buf_slots, self.buf_first, self.unit_pages,
            self.used_first, self.queues, ls.tbl_gpa, ls.tbl_pages, self.guest_map.table, *rl.oracle_args(),
            ls.log.words, ls.logging)
        self.next_t += n * self.quantum_ns
