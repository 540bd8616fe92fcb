"""Page-write generators: which guest-physical pages a vCPU writes.

A workload is a hot/cold mixture described by five numbers; ``uniform`` is the
case with no hot region. A share of the writes may store identical bytes
(``identical_rewrites``): KVM logs them, a content hash cannot see them. Each vCPU draws uniform variates from its own
``numpy.random.Generator`` (reproducible per stream) and one kernel call maps
all vCPUs' variates of a quantum to page numbers (``kernels.map_writes``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..scenario.schema import PAGE_SIZE, HotsetWorkload, Scenario, VcpuGroup


@dataclass(frozen=True)
class Workload:
    """``hot_share`` of the writes fall uniformly on the hot region, the rest uniformly on the other pages."""

    first_page: int  # working set, guest-physical pages
    pages: int
    hot_first: int = 0
    hot_pages: int = 0
    hot_share: float = 0.0
    identical_rewrites: float = 0.0  # share of writes storing the bytes already there


def make_workload(scenario: Scenario, group: VcpuGroup) -> Workload:
    offset, size = scenario.working_set(group)
    w = group.workload
    first, pages = offset // PAGE_SIZE, size // PAGE_SIZE
    if isinstance(w, HotsetWorkload):
        hot_pages = w.hot // PAGE_SIZE
        share = w.hot_share if hot_pages < pages else 1.0
        return Workload(first, pages, first + w.hot_offset // PAGE_SIZE, hot_pages, share, w.identical_rewrites)
    return Workload(first, pages, identical_rewrites=w.identical_rewrites)
