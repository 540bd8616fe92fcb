"""What a send slice costs: wire bytes per page, and the CPU of the migration thread and the multifd senders.

QEMU's RAM sending is a pipeline. Without multifd the migration thread does
everything for a page (``ram_save_target_page``): find it in the bitmap and
clear its bit, ``buffer_is_zero`` (``save_zero_page``: a zero page is read
whole, a data page usually exits at the first sample), the page header, and
the socket write of 4 KiB (``save_normal_page`` -> ``qemu_fflush`` ->
writev). With multifd (``ram_save_multifd_page`` -> ``multifd_queue_page``)
the thread only queues page offsets into packets of ``MULTIFD_PACKET_SIZE``;
``multifd-channels`` sender threads (``multifd_send_thread``) zero-check
(``multifd_send_zero_page_detect``, with zero-page-detection ``multifd``),
compress and write them on their own connections. All connections share one
link. Each stage works in parallel with the others, so a slice of pages takes
the longest of: the wire time, the migration thread's CPU time, and the
senders' CPU time spread over the channels. The costs are scenario ``costs``;
set them to zero and a slice costs its wire time only, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dirty.kernels import NORMAL_PAGE_BYTES, PAGE_SIZE, ZERO_PAGE_BYTES
from ..dirty.sendcost import (CV_CHAN_NORMAL, CV_CHAN_PACKET, CV_CHAN_ZERO, CV_CHANNELS, CV_MAIN_NORMAL, CV_MAIN_PAGE,
                              CV_MAIN_ZERO, CV_MULTIFD, CV_PACKET_BYTES, CV_ROWS, CV_ZERO_IN_PACKETS, MULTIFD_PACKET_HEADER)
from ..scenario.schema import Scenario

# the scenario ``costs`` of the sending side and the switchover (``precopy.stop_costs``): all zero, a slice costs
# its wire time only and stopping the VM nothing (as before they existed)
SENDING_COSTS = ("migration_page", "zero_check_zero_page", "zero_check_data_page", "page_send", "multifd_packet",
                 "zlib_page", "zstd_page", "xbzrle_page", "vm_stop_per_vcpu", "vhost_stop_per_queue", "block_drain")


@dataclass
class SendCosts:
    """The per-page model of one scenario, resolved once: byte sizes and the cost vector the kernels read."""

    normal_bytes: int  # wire bytes of a normal page (its header, or its multifd offset slot, not counted here)
    zero_bytes: int
    cv: np.ndarray
    state: np.ndarray
    multifd: bool

    @property
    def packet_bytes(self) -> int:
        """Bytes of one multifd packet's header (0 without multifd)."""
        return MULTIFD_PACKET_HEADER if self.multifd else 0


def send_costs(scenario: Scenario) -> SendCosts:
    """The sending side of ``scenario``: which thread pays for what, and what a page puts on the wire.

    Without multifd both zero-page-detection modes scan in the migration thread
    (``ram_save_target_page_legacy``); with multifd ``legacy`` still scans there
    (``ram_save_target_page_multifd``) and ``multifd`` in the senders. A
    compressed page is ``4 KiB / ratio`` on the wire and its socket write
    shrinks with it.
    """
    mig, c, mem = scenario.migration, scenario.costs, scenario.machine.memory
    detect = mig.zero_page_detection
    multifd = mig.capabilities.multifd
    cv = np.zeros(CV_ROWS, dtype=np.int64)
    cv[CV_MAIN_PAGE] = c.migration_page
    cv[CV_CHANNELS] = mig.multifd_channels if multifd else 1
    if not multifd:
        scan = detect != "none"
        cv[CV_MAIN_ZERO] = c.zero_check_zero_page if scan else 0
        cv[CV_MAIN_NORMAL] = (c.zero_check_data_page if scan else 0) + c.page_send
        return SendCosts(NORMAL_PAGE_BYTES, ZERO_PAGE_BYTES, cv, np.zeros(1, dtype=np.int64), False)
    ratio = {"none": 1.0, "zlib": mem.zlib_ratio, "zstd": mem.zstd_ratio}[mig.multifd_compression]
    compress = {"none": 0, "zlib": c.zlib_page, "zstd": c.zstd_page}[mig.multifd_compression]
    data_bytes = int(round(PAGE_SIZE / ratio))
    cv[CV_MULTIFD] = 1
    cv[CV_PACKET_BYTES] = MULTIFD_PACKET_HEADER
    cv[CV_CHAN_PACKET] = c.multifd_packet
    cv[CV_CHAN_NORMAL] = compress + c.page_send * data_bytes // PAGE_SIZE
    if detect == "legacy":  # zero pages never reach a packet: save_zero_page on the main stream
        cv[CV_MAIN_ZERO] = c.zero_check_zero_page
        cv[CV_MAIN_NORMAL] = c.zero_check_data_page
        return SendCosts(data_bytes, ZERO_PAGE_BYTES, cv, np.zeros(1, dtype=np.int64), True)
    cv[CV_ZERO_IN_PACKETS] = 1
    if detect == "multifd":
        cv[CV_CHAN_ZERO] = c.zero_check_zero_page
        cv[CV_CHAN_NORMAL] += c.zero_check_data_page
    return SendCosts(data_bytes, 0, cv, np.zeros(1, dtype=np.int64), True)
