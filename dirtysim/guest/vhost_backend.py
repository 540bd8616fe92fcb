"""vhost-user device backends as actors: device DMA into guest buffers, then used-ring writes.

A virtio-net backend receiving packets (``vu_queue_fill`` logs every written
buffer) and a virtio-blk backend serving reads both write guest memory without
KVM seeing it: the only record is the vhost log bit each write sets
(``vu_log_write`` -> ``vu_log_page``, atomic OR), plus the used-ring element
and index writes (``vring_used_write`` / ``vring_used_idx_set``).
"""

from __future__ import annotations

import numpy as np
import simpy

from ..accel.vhost import VhostListener
from ..dirty import kernels
from ..scenario.schema import PAGE_SIZE, VhostUserNet
from .actor import QuantumActor

NS_PER_S = 10**9


class VhostUserBackend(QuantumActor):
    """One device: ``queues`` used-ring pages, then buffers used round-robin, a quantum at a time."""

    def __init__(self, env: simpy.Environment, name: str, spec, offset: int, listener: VhostListener,
                 gen: np.ndarray, quantum_ns: int):
        super().__init__(env, quantum_ns)  # stops at vhost_dev_stop (switchover)
        self.name, self.listener, self.gen = name, listener, gen
        self.queues = spec.queues
        self.rate = spec.rx if isinstance(spec, VhostUserNet) else spec.read  # bytes/s into guest memory
        self.unit = spec.packet if isinstance(spec, VhostUserNet) else spec.request
        self.unit_pages = -(-self.unit // PAGE_SIZE)
        first = offset // PAGE_SIZE
        self.used_rings = np.arange(first, first + self.queues, dtype=np.int64)  # one page per queue
        self.buf_first = first + self.queues
        self.buf_slots = (spec.buffers // PAGE_SIZE - self.queues) // self.unit_pages
        self.cursor = 0
        self.carry = 0
        self.pages_written = 0

    def step(self, quantum_ns: int) -> None:
        """Write the units (packets or read requests) of one quantum, then each used ring once."""
        n, self.carry = divmod(self.carry + self.rate * quantum_ns, self.unit * NS_PER_S)
        if n == 0:
            return
        slots = (self.cursor + np.arange(n, dtype=np.int64)) % self.buf_slots
        self.cursor = int((self.cursor + n) % self.buf_slots)
        pages = (self.buf_first + slots[:, None] * self.unit_pages + np.arange(self.unit_pages)).ravel()
        pages = np.concatenate([pages, self.used_rings[: min(self.queues, n)]])
        ls = self.listener
        self.pages_written += int(kernels.backend_writes(pages, ls.tbl_gpa, ls.tbl_pages, ls.tbl_ram, self.gen,
                                                         ls.log.words, ls.logging))
