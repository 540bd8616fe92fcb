"""Figures from the event log (each function returns a matplotlib Figure)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..events import schema as ev  # noqa: E402
from . import tables  # noqa: E402

MIB = 1 << 20


def convergence_figure(events: list) -> plt.Figure:
    """Remaining bytes over time with the syncs marked; dirty rate against measured bandwidth."""
    f = tables.fold(events)
    t0 = f.migrate_ns or 0
    sec = lambda t: (t - t0) / 1e9  # noqa: E731
    rem_t, rem_v, dirty = [], [], f.ram_bytes // f.page_size
    for e in events:  # remaining (migration_dirty_pages) changes at syncs and with every send
        if isinstance(e, ev.BitmapSync):
            dirty = e.migration_dirty_pages
        elif isinstance(e, ev.Transfer) and e.kind == "pages":
            dirty -= e.normal + e.zero
        else:
            continue
        rem_t.append(sec(e.t_ns))
        rem_v.append(dirty * f.page_size / MIB)
    syncs = [e for e in events if isinstance(e, ev.BitmapSync)]
    windows = [e for e in events if isinstance(e, ev.RateWindow)]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, constrained_layout=True)
    ax1.plot(rem_t, rem_v, lw=1.2, label="remaining (migration_dirty_pages)")
    ax1.plot([sec(e.t_ns) for e in windows], [e.threshold_size / MIB for e in windows], lw=1, ls="--",
             color="tab:green", label="threshold_size")
    for e in syncs:
        ax1.axvline(sec(e.t_ns), color="tab:red", lw=0.6, alpha=0.5)
    ax1.plot([sec(e.t_ns) for e in syncs], [e.migration_dirty_pages * f.page_size / MIB for e in syncs], "v",
             color="tab:red", ms=5, label="bitmap sync (dirty-sync-count)")
    ax1.set_ylabel("MiB")
    ax1.set_yscale("symlog", linthresh=1)
    ax1.legend(loc="upper right", fontsize=8)
    title = f"{events[0].name if events and isinstance(events[0], ev.RunStarted) else ''}: {f.status}"
    ax1.set_title(f"{title}, {f.syncs} syncs")
    ax2.step([sec(e.t_ns) for e in windows], [e.bandwidth * 1000 / MIB for e in windows], where="post",
             label="bandwidth (100 ms windows)")
    ax2.step([sec(e.t_ns) for e in syncs], [e.dirty_pages_rate * f.page_size / MIB for e in syncs], where="post",
             color="tab:red", label="dirty-pages-rate x page size")
    ax2.set_ylabel("MiB/s")
    ax2.set_xlabel("seconds since migrate")
    ax2.legend(loc="upper right", fontsize=8)
    return fig


def figure_png(fig) -> bytes:
    """The figure as PNG bytes."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
