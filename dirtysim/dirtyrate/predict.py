"""Predict a precopy migration from a dirty-rate estimate: the pass-by-pass model, with a working-set curve.

The closed-form model of ``migration.model`` (Liu et al., HPDC 2011) in the
pass form: pass 0 sends all RAM; each next pass sends what was dirtied while
the previous one was sent, ``W(T_{i-1})``; the migration stops when a pass's
pages fit in the downtime limit at the send rate (QEMU's ``threshold_size``),
and that last pass is the downtime. Only ``W(t)`` depends on the estimate: a
rate gives a straight line (capped at RAM), ``x-wss-curve``'s fit gives
``N (1 - exp(-r t / N))``. A page takes what a send slice gives it
(``migration/sending.py``): the slowest of its bytes at min(link,
max-bandwidth), the migration thread's CPU and the multifd senders'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..dirty import sendcost
from ..migration.rate import XFER_LIMIT_RATIO
from ..migration.sending import send_costs
from ..scenario.schema import PAGE_SIZE, Scenario
from .sampled_wp import curve_at

MIB = 1 << 20
MAX_PASSES = 100
BATCH = 1 << 20  # pages per kind the per-page times are taken over (integer ns per slice)


@dataclass(frozen=True)
class Prediction:
    total_time_ms: float
    passes: int
    downtime_ms: float
    converged: bool


def send_bytes_per_s(scenario: Scenario) -> float:
    """What one migration thread puts on the wire: min(link, max-bandwidth); max-bandwidth 0 is unlimited."""
    link = scenario.network.bandwidth
    cap = scenario.migration.max_bandwidth
    return float(min(link, cap) if cap >= XFER_LIMIT_RATIO else link)


def page_seconds(scenario: Scenario) -> tuple[float, float]:
    """Seconds a data page and a zero page take in a long run of their kind (``sendcost.slice_ns``).

    With zero-page-detection ``none`` nobody looks for zero pages: each is sent as a data page.
    """
    sc = send_costs(scenario)
    bw = int(send_bytes_per_s(scenario))
    packets = BATCH // sendcost.MULTIFD_PAGES if sc.multifd else 0
    normal = sendcost.slice_ns(sc.cv, bw, BATCH * sc.normal_bytes + packets * sc.packet_bytes, BATCH, 0, packets)
    if scenario.migration.zero_page_detection == "none":
        return normal / BATCH / 1e9, normal / BATCH / 1e9
    zero_packets = packets if sc.zero_bytes == 0 else 0  # in packets unless legacy detection sends them itself
    zero = sendcost.slice_ns(sc.cv, bw, BATCH * sc.zero_bytes + zero_packets * sc.packet_bytes, 0, BATCH,
                             zero_packets)
    return normal / BATCH / 1e9, zero / BATCH / 1e9


def predict(scenario: Scenario, dirtied) -> Prediction:
    """The passes for ``dirtied(t)`` = distinct pages written within ``t`` seconds (capped at RAM).

    The threshold is QEMU's: what the measured bandwidth moves in downtime-limit,
    i.e. downtime-limit / (seconds per data page) pages.
    """
    mem = scenario.machine.memory
    pages = mem.size // PAGE_SIZE
    normal_s, zero_s = page_seconds(scenario)
    first = pages * mem.zero_fraction * zero_s + pages * (1 - mem.zero_fraction) * normal_s
    threshold_pages = scenario.migration.downtime_limit / 1e9 / normal_s
    t, dt = first, first
    for n in range(1, MAX_PASSES + 1):
        pending = min(dirtied(dt), pages)
        dt = pending * normal_s
        if pending <= threshold_pages:
            return Prediction((t + dt) * 1000, n, dt * 1000, True)
        t += dt
    return Prediction(t * 1000, MAX_PASSES, math.nan, False)


def from_rate(mib_per_s: float):
    """W(t) for an estimator that gives one rate: a straight line."""
    pages_per_s = mib_per_s * MIB / PAGE_SIZE
    return lambda t: pages_per_s * t


def from_curve(wss_pages: float, wss_rate: float):
    """W(t) from ``x-wss-curve``'s fit (-1: unbounded, as the event records it)."""
    n = math.inf if wss_pages < 0 else wss_pages
    r = math.inf if wss_rate < 0 else wss_rate
    return lambda t: curve_at(n, r, t)
