"""Figures from the event log and from sweeps, as ``matplotlib.figure.Figure`` objects.

No pyplot and no backend switch: a Figure built directly saves to PNG on any
machine, without a display and without changing the user's backend, and renders
in Jupyter as a cell's value once the inline backend is on (``%matplotlib
inline``, as the notebooks do). Only ``dirtysim.report.files`` imports this
module, and only when a run writes its plot.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from ..events import schema as ev
from . import tables

MIB = 1 << 20


MAX_POINTS = 4000  # a line has at most about this many points: a 1 TiB run sends 300,000 slices


def _remaining(events: list, f: tables._Fold) -> tuple[list[float], list[float]]:
    """(seconds, MiB) of migration_dirty_pages after each sync and send slice, thinned for the plot.

    Every point next to a sync is kept (the jumps); between syncs the
    remaining bytes fall steadily, so every k-th slice draws the same line.
    """
    t0 = f.migrate_ns or 0
    t, v, keep, dirty = [], [], set(), f.ram_bytes // f.page_size
    for e in events:  # remaining (migration_dirty_pages) changes at syncs and with every send
        if type(e) is ev.BitmapSync:
            dirty = e.migration_dirty_pages
            keep.update((len(t) - 1, len(t)))
        elif type(e) is ev.Transfer and e.kind == "pages":
            dirty -= e.normal + e.zero
        else:
            continue
        t.append((e.t_ns - t0) / 1e9)
        v.append(dirty * f.page_size / MIB)
    stride = max(1, len(t) // MAX_POINTS)
    idx = sorted(keep.union(range(0, len(t), stride), (len(t) - 1,)) - {-1, len(t)})
    return [t[i] for i in idx], [v[i] for i in idx]


def convergence_figure(events: list, f: tables._Fold | None = None) -> Figure:
    """Remaining bytes over time with the syncs marked; dirty rate against measured bandwidth.

    ``f``: the fold of ``events`` when the caller already has it.
    """
    f = tables.fold(events) if f is None else f
    t0 = f.migrate_ns or 0
    sec = lambda t: (t - t0) / 1e9  # noqa: E731
    rem_t, rem_v = _remaining(events, f)
    syncs = [e for e in events if isinstance(e, ev.BitmapSync)]
    windows = [e for e in events if isinstance(e, ev.RateWindow)]
    fig = Figure(figsize=(9, 6.5))  # a fixed layout: the constrained engine costs seconds on big logs
    fig.subplots_adjust(left=0.09, right=0.97, top=0.94, bottom=0.08, hspace=0.12)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
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


SWEEP_PANELS = [("total-time", "total time (ms)"), ("transferred-mib", "transferred (MiB)"),
                ("write-not-dirty-pages", "write-not-dirty pages"), ("vcpu-lost-ms", "vCPU time lost (ms)")]


def sweep_figure(rows: list[dict]) -> Figure:
    """One bar per variant of a sweep (``sweep.comparison_row``) in four panels; variants that lost pages in red."""
    names = [r["variant"] for r in rows]
    colors = ["tab:red" if r["lost-pages"] else "tab:blue" for r in rows]
    fig = Figure(figsize=(11, 6.5), layout="constrained")
    for ax, (key, label) in zip(fig.subplots(2, 2).flat, SWEEP_PANELS):
        ax.barh(names, [r[key] for r in rows], color=colors)
        ax.set_title(label)
        ax.invert_yaxis()
    return fig


def remaining_figure(runs: dict[str, list[dict]]) -> Figure:
    """Remaining bytes after each sync (``rounds.csv`` rows) of several runs, one line per run."""
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.subplots()
    for name, rounds in runs.items():
        ax.plot([float(r["time"]) / 1000 for r in rounds], [int(r["remaining"]) / MIB for r in rounds], "o-",
                label=name)
    ax.set_yscale("log")
    ax.set_xlabel("seconds since migrate")
    ax.set_ylabel("remaining after sync (MiB)")
    ax.legend()
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (Agg, chosen by savefig for this one call)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def dirtyrate_figure(rows: list[dict]) -> Figure:
    """Each estimator's answer beside the truths of its window, one panel per workload (``compare_estimators``)."""
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig = Figure(figsize=(4.2 * len(workloads), 3.8), layout="constrained")
    axes = fig.subplots(1, len(workloads), squeeze=False)[0]
    styles = {"written-rate": ("k", "-", "pages written"), "content-changed-rate": ("tab:green", "--",
              "content changed"), "write-rate": ("tab:red", ":", "writes (with repeats)")}
    for ax, w in zip(axes, workloads):
        mine = [r for r in rows if r["workload"] == w]
        ax.bar(range(len(mine)), [r["estimate"] for r in mine], color="tab:blue", alpha=0.7)
        ax.set_xticks(range(len(mine)), [r["mode"] for r in mine], rotation=35, ha="right", fontsize=8)
        for key, (color, ls, label) in styles.items():
            ax.axhline(sum(r[key] for r in mine) / len(mine), color=color, ls=ls, lw=1.2, label=label)
        ax.set_title(w, fontsize=10)
        ax.set_ylabel("MiB/s")
    axes[0].legend(fontsize=7, loc="lower left")
    return fig
