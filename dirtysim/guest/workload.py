"""Page-write generators: which guest-physical pages a vCPU writes, and when.

A workload is a hot/cold mixture (``uniform`` is the case with no hot region),
a zipf ranking, a sequential sweep, or a database (a hot/cold mixture plus a
sequential log). A share of the writes may store identical bytes
(``identical_rewrites``): KVM logs them, a content hash cannot see them. A vCPU
group writes between its ``start`` and ``stop`` and runs idle outside. Each
vCPU draws one uniform variate per write from its own ``numpy.random.Generator``
(every kind, so streams stay aligned); ``kernels.run_vcpus`` maps them to pages.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dirty import kernels as K
from ..scenario.schema import (
    PAGE_SIZE,
    DatabaseWorkload,
    HotsetWorkload,
    Scenario,
    SequentialWorkload,
    VcpuGroup,
    ZipfWorkload,
)

FOREVER = 1 << 62  # ns: a group with no stop time


@dataclass(frozen=True)
class Workload:
    """One vCPU's write pattern in guest-physical pages (``kernels.VI_*`` / ``VF_*`` hold these per vCPU)."""

    first_page: int  # working set, guest-physical pages
    pages: int
    hot_first: int = 0
    hot_pages: int = 0
    hot_share: float = 0.0
    identical_rewrites: float = 0.0  # share of writes storing the bytes already there
    kind: int = K.KIND_HOTSET
    zipf_s: float = 1.0
    log_first: int = 0
    log_pages: int = 1
    log_share: float = 0.0
    start_ns: int = 0
    stop_ns: int = FOREVER
    phases: tuple[tuple[int, int], ...] = ()  # (duration ns, rate B/s), cycling from time 0; () = constant rate


def make_workload(scenario: Scenario, group: VcpuGroup) -> Workload:
    offset, size = scenario.working_set(group)
    w = group.workload
    first, pages = offset // PAGE_SIZE, size // PAGE_SIZE
    common = {"identical_rewrites": w.identical_rewrites, "start_ns": group.start,
              "stop_ns": FOREVER if group.stop is None else group.stop,
              "phases": tuple((p.duration, p.rate) for p in group.phases)}
    if isinstance(w, HotsetWorkload):
        hot_pages = w.hot // PAGE_SIZE
        share = w.hot_share if hot_pages < pages else 1.0
        common.update(hot_first=first + w.hot_offset // PAGE_SIZE, hot_pages=hot_pages, hot_share=share)
    if isinstance(w, ZipfWorkload):
        common.update(kind=K.KIND_ZIPF, zipf_s=w.exponent)
    elif isinstance(w, SequentialWorkload):
        common.update(kind=K.KIND_SEQUENTIAL)
    elif isinstance(w, DatabaseWorkload):
        common.update(kind=K.KIND_DATABASE, log_first=first + w.log_offset // PAGE_SIZE, log_pages=w.log // PAGE_SIZE,
                      log_share=w.log_share)
    return Workload(first, pages, **common)
