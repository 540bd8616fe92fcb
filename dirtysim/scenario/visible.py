"""A workload given by the dirty rate migration sees, turned into the write rate that produces it.

QEMU's ``dirty-pages-rate`` counts pages that went clean -> dirty in a sync
period (about a second): distinct pages, a page written twice counted once.
For a write rate r (pages/s) spread over regions of N_i pages taking a share f_i
of the writes, the distinct pages written in T seconds are
W(r) = sum_i N_i (1 - exp(-r f_i T / N_i)); this module solves W(r) = D T for r
with T = 1 s. A sequential sweep writes a new page each time (W = r T up to its
working set). Zipf and database workloads are not converted (no closed form
worth the name); give them a ``rate``.
"""

from __future__ import annotations

import math

PERIOD_S = 1.0  # the sync period the visible rate is measured over


def distinct_pages(writes_per_s: float, regions: list[tuple[int, float]], seconds: float = PERIOD_S) -> float:
    """Expected distinct pages written in ``seconds``: regions are (pages, share of the writes)."""
    return sum(n * -math.expm1(-writes_per_s * share * seconds / n) for n, share in regions if n and share)


def write_rate(visible_pages_per_s: float, regions: list[tuple[int, float]]) -> float:
    """The write rate (pages/s) whose distinct pages per period equal ``visible_pages_per_s``.

    Raises ValueError when the regions cannot produce that many distinct pages in a period.
    """
    target = visible_pages_per_s * PERIOD_S
    ceiling = sum(n for n, share in regions if share)
    if target >= ceiling:
        raise ValueError(f"{target:.0f} distinct pages per {PERIOD_S:g} s, but the written regions hold only {ceiling}")
    lo, hi = target / PERIOD_S, target / PERIOD_S
    while distinct_pages(hi, regions) < target:
        hi *= 2
    for _ in range(200):  # bisection to well under a page per second
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if distinct_pages(mid, regions) < target else (lo, mid)
        if hi - lo < 1e-6 * hi:
            break
    return hi
