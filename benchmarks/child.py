"""``python benchmarks/child.py run FILE ...`` is ``python -m dirtysim.cli run FILE ...`` that reports itself.

At exit it writes its own peak RSS (``VmHWM`` from /proc/self/status and
``ru_maxrss``) and CPU time (user + system) as JSON to the file named by
``DIRTYSIM_BENCH_STATS``, for ``common.run_scenario``. It also reports the
guest writes made after the last dirty sync (``unsynced_writes``): rounds.csv
counts a vCPU's writes at each sync, so a run cut short by its timeout would
otherwise miss the writes since its last sync. They are read from the vCPU
counter table when the machine finishes.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path


_unsynced = {"writes": 0}


def _count_unsynced_writes() -> None:
    """Wrap ``Machine.finish`` to read the writes not yet taken by a sync (``VI_WRITES``)."""
    from dirtysim.dirty import kernels
    from dirtysim.machine import Machine

    finish = Machine.finish

    def counted(self) -> None:
        finish(self)
        _unsynced["writes"] = int(self.guest.vi[kernels.VI_WRITES].sum())

    Machine.finish = counted


def _own_usage() -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    status = Path("/proc/self/status").read_text()
    kib = {key: int(status.split(f"{key}:")[1].split()[0]) for key in ("VmHWM", "RssAnon", "RssFile")}
    # RssAnon/RssFile at exit tell a peak of heap data from mapped library pages (which the host may reclaim)
    return {"vm_hwm_mib": kib["VmHWM"] / 1024, "ru_maxrss_mib": ru.ru_maxrss / 1024,
            "rss_anon_at_exit_mib": kib["RssAnon"] / 1024, "rss_file_at_exit_mib": kib["RssFile"] / 1024,
            "cpu_user_s": ru.ru_utime, "cpu_sys_s": ru.ru_stime, "cpu_s": ru.ru_utime + ru.ru_stime,
            "unsynced_writes": _unsynced["writes"]}


def main() -> None:
    from dirtysim.cli import main as cli

    _count_unsynced_writes()
    sys.argv = ["dirtysim", *sys.argv[1:]]
    try:
        cli()
    finally:
        Path(os.environ["DIRTYSIM_BENCH_STATS"]).write_text(json.dumps(_own_usage()))


if __name__ == "__main__":
    main()
