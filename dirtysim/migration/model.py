"""The closed-form precopy model (Liu et al., HPDC 2011, doi:10.1145/1996130.1996154) with QEMU's decision rule.

A uniform random writer making ``r`` page writes per second over ``N`` pages
dirties ``N (1 - exp(-r T / N))`` distinct pages in ``T`` seconds. Precopy sends
``R`` pages per second; QEMU syncs when the pending estimate drops below the
threshold (checked every ``check_s``, the length of one ``ram_save_iterate``)
and completes when the post-sync pending size is at or below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def dirtied_pages(n_pages: float, writes_per_s: float, seconds: float) -> float:
    """Expected distinct pages touched by ``writes_per_s * seconds`` uniform writes over ``n_pages``."""
    return n_pages * (1.0 - math.exp(-writes_per_s * seconds / n_pages))


@dataclass(frozen=True)
class ModelSync:
    t: float  # seconds after setup
    new_pages: float  # pages that went clean -> dirty
    pending_before: float
    pending_after: float


def precopy_syncs(n_pages: float, writes_per_s: float, send_pages_per_s: float, threshold_pages: float,
                  check_s: float = 0.05, max_syncs: int = 1000) -> tuple[list[ModelSync], bool]:
    """Syncs after setup until completion; returns (syncs, converged). The final sync is not listed."""
    t, pending, out = 0.0, float(n_pages), []
    while len(out) < max_syncs:
        if pending >= threshold_pages:
            checks = math.floor((pending - threshold_pages) / (send_pages_per_s * check_s)) + 1
            dt = checks * check_s
        else:
            dt = 0.0
        before = max(pending - send_pages_per_s * dt, 0.0)
        new = dirtied_pages(n_pages, writes_per_s, dt) * (1.0 - before / n_pages)
        t += dt
        pending = before + new
        out.append(ModelSync(t, new, before, pending))
        if pending <= threshold_pages:
            return out, True
        if dt == 0.0:
            break
    return out, False
