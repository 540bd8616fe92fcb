"""numba kernels of the sending side's cost model (``migration/sending.py`` builds their cost vector).

Kept apart from ``kernels.py`` so both the Python send path and ``iterate_slices``
call the same compiled functions.
"""

from __future__ import annotations

import numba

jit = numba.njit(cache=True, nogil=True)

PAGE_SIZE = 4096
MULTIFD_PACKET_SIZE = 512 << 10  # multifd.h: bytes of page data one packet carries at most
MULTIFD_PAGES = MULTIFD_PACKET_SIZE // PAGE_SIZE  # multifd_ram_page_count(): 128 offsets per packet
# sizeof(MultiFDPacket_t) (hdr 12, pages_alloc/normal_pages/next_packet_size 12, packet_num 8, zero_pages and
# unused32 8, unused64 24, ramblock 256) + one be64 offset per page slot: multifd_send_setup's packet_len,
# written whole for every packet, data or sync
MULTIFD_PACKET_HEADER = 320 + 8 * MULTIFD_PAGES
RAM_SAVE_FLAG_MULTIFD_FLUSH_BYTES = 8  # the main stream's flush marker after a per-round sync

# rows of the cost vector ``SendCosts.cv`` (int64, nanoseconds unless stated)
(CV_MAIN_PAGE, CV_MAIN_ZERO, CV_MAIN_NORMAL, CV_CHAN_ZERO, CV_CHAN_NORMAL, CV_CHAN_PACKET, CV_CHANNELS,
 CV_MULTIFD, CV_PACKET_BYTES, CV_ZERO_IN_PACKETS, CV_ROWS) = range(11)
# rows of the multifd state ``SendCosts.state``: pages in the packet being filled
MF_FILL = 0


@jit
def queue_pages(cv, state, normal, zero):
    """``multifd_queue_page`` for ``normal`` + ``zero`` pages: the packets filled (and sent) by them.

    A packet goes to a channel when its 128 slots are full; the rest waits in
    ``state[MF_FILL]`` for the next pages or a flush. Returns 0 without multifd.
    """
    if cv[CV_MULTIFD] == 0:
        return 0
    queued = normal + (zero if cv[CV_ZERO_IN_PACKETS] else 0)
    fill = state[MF_FILL] + queued
    state[MF_FILL] = fill % MULTIFD_PAGES
    return fill // MULTIFD_PAGES


@jit
def send_partial(cv, state):
    """``multifd_send``: the packet in progress goes out unfilled (its block changed, or a flush). 0 or 1."""
    if cv[CV_MULTIFD] == 0 or state[MF_FILL] == 0:
        return 0
    state[MF_FILL] = 0
    return 1


@jit
def flush_and_sync(cv, state):
    """``multifd_ram_flush_and_sync``: the partial packet goes out, then one SYNC packet per channel.

    Returns the packets sent; their bytes are ``packets * cv[CV_PACKET_BYTES]`` plus
    the main stream's ``RAM_SAVE_FLAG_MULTIFD_FLUSH`` (the caller adds it). 0 without multifd.
    """
    if cv[CV_MULTIFD] == 0:
        return 0
    return send_partial(cv, state) + cv[CV_CHANNELS]


@jit
def main_ns(cv, normal, zero):
    """The migration thread's CPU time for ``normal`` + ``zero`` pages."""
    return (normal + zero) * cv[CV_MAIN_PAGE] + zero * cv[CV_MAIN_ZERO] + normal * cv[CV_MAIN_NORMAL]


@jit
def channel_ns(cv, normal, zero, packets):
    """The multifd senders' CPU time, summed over the channels."""
    return zero * cv[CV_CHAN_ZERO] + normal * cv[CV_CHAN_NORMAL] + packets * cv[CV_CHAN_PACKET]


@jit
def stage_ns(link, nbytes, cpu, chan, channels):
    """The slowest of the wire, the migration thread's ``cpu`` and the senders' ``chan`` spread over the channels."""
    return max(nbytes * 1_000_000_000 // link, cpu, -(-chan // channels))


@jit
def slice_ns(cv, link, nbytes, normal, zero, packets):
    """How long a slice takes: the slowest of the wire, the migration thread and the senders (pipelined)."""
    return stage_ns(link, nbytes, main_ns(cv, normal, zero), channel_ns(cv, normal, zero, packets), cv[CV_CHANNELS])
