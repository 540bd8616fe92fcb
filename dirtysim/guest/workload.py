"""Page-write generators: which guest-physical pages a vCPU writes.

Each generator draws from the vCPU's own ``numpy.random.Generator`` so runs are
reproducible per stream. One call returns all pages of a quantum.
"""

from __future__ import annotations

import numpy as np

from ..scenario.schema import PAGE_SIZE, HotsetWorkload, Scenario, UniformWorkload, VcpuGroup


class Uniform:
    """Every page of the working set equally likely (``mm_dirty -p random``)."""

    def __init__(self, first_page: int, pages: int):
        self.first_page, self.pages = first_page, pages

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.first_page, self.first_page + self.pages, n, dtype=np.int64)


class Hotset:
    """``hot_share`` of the writes go uniformly to the hot region, the rest uniformly to the other pages."""

    def __init__(self, first_page: int, pages: int, hot_first: int, hot_pages: int, hot_share: float):
        self.first_page, self.pages = first_page, pages
        self.hot_first, self.hot_pages, self.hot_share = hot_first, hot_pages, hot_share

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        n_hot = int(rng.binomial(n, self.hot_share)) if n else 0
        cold_pages = self.pages - self.hot_pages
        if cold_pages == 0:
            n_hot = n
        out = np.empty(n, dtype=np.int64)
        out[:n_hot] = rng.integers(self.hot_first, self.hot_first + self.hot_pages, n_hot, dtype=np.int64)
        cold = rng.integers(0, max(cold_pages, 1), n - n_hot, dtype=np.int64)
        cold += (cold >= self.hot_first - self.first_page) * self.hot_pages  # skip over the hot region
        out[n_hot:] = cold + self.first_page
        return out


def make_workload(scenario: Scenario, group: VcpuGroup):
    offset, size = scenario.working_set(group)
    w = group.workload
    first, pages = offset // PAGE_SIZE, size // PAGE_SIZE
    if isinstance(w, HotsetWorkload):
        return Hotset(first, pages, first + w.hot_offset // PAGE_SIZE, w.hot // PAGE_SIZE, w.hot_share)
    assert isinstance(w, UniformWorkload)
    return Uniform(first, pages)
