"""Figures from the event log and from sweeps, as ``matplotlib.figure.Figure`` objects.

No pyplot and no backend switch: a Figure built directly saves to PNG on any
machine, without a display and without changing the user's backend, and renders
in Jupyter as a cell's value once the inline backend is on (``%matplotlib
inline``, as the notebooks do). Only ``dirtysim.report.files`` and
``dirtysim.report.compare`` import this module, and only when they draw.

Each ``*_series`` function computes what one panel shows from a run's events
(or guest.csv rows); each ``plot_*`` function draws such a series on an ``ax``
(a new figure without one) and returns it, so notebooks can compose panels
and overlay runs (``label=`` names a run).
"""

from __future__ import annotations

import weakref

import numpy as np
from matplotlib.axes import Axes
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
            dirty -= e.pages
        else:
            continue
        t.append((e.t_ns - t0) / 1e9)
        v.append(dirty * f.page_size / MIB)
    stride = max(1, len(t) // MAX_POINTS)
    idx = sorted(keep.union(range(0, len(t), stride), (len(t) - 1,)) - {-1, len(t)})
    return [t[i] for i in idx], [v[i] for i in idx]


class Series(dict):
    """The data a plot function drew, by name (numpy arrays); ``ax`` is the axes it drew on.

    ``ax.figure`` shows (as a notebook cell's value) or saves the drawing when the
    function made its own figure (``ax=None``).
    """

    def __init__(self, data: dict, ax: Axes):
        super().__init__(data)
        self.ax = ax


def _axes(ax: Axes | None) -> Axes:
    """``ax``, or the axes of a new figure (no pyplot: see the module docstring)."""
    return Figure(figsize=(9, 3.5), layout="constrained").subplots() if ax is None else ax


_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _twin(ax: Axes) -> Axes:
    """The right-hand axis of ``ax``, made once: every run of an overlay draws its second quantity on the same one."""
    if ax not in _TWINS:
        _TWINS[ax] = ax.twinx()
    return _TWINS[ax]


def _seconds(f: tables._Fold):
    """Simulated ns -> seconds since migrate, as every time axis here."""
    t0 = f.migrate_ns or 0
    return lambda t_ns: (np.asarray(t_ns, dtype=np.int64) - t0) / 1e9


def remaining_series(events: list, f: tables._Fold | None = None) -> dict[str, np.ndarray]:
    """Remaining bytes over time (after each send slice, thinned, and after each sync) and threshold_size (MiB)."""
    f = tables.fold(events) if f is None else f
    sec = _seconds(f)
    rem_t, rem_v = _remaining(events, f)
    syncs = [e for e in events if type(e) is ev.BitmapSync]
    windows = [e for e in events if type(e) is ev.RateWindow]
    return {"time-s": np.array(rem_t), "remaining-mib": np.array(rem_v),
            "sync-time-s": sec([e.t_ns for e in syncs]),
            "sync-remaining-mib": np.array([e.migration_dirty_pages * f.page_size / MIB for e in syncs]),
            "threshold-time-s": sec([e.t_ns for e in windows]),
            "threshold-mib": np.array([e.threshold_size / MIB for e in windows])}


def rate_series(events: list, f: tables._Fold | None = None) -> dict[str, np.ndarray]:
    """Bandwidth of each 100 ms rate window and dirty-pages-rate x page size after each sync (MiB/s)."""
    f = tables.fold(events) if f is None else f
    sec = _seconds(f)
    syncs = [e for e in events if type(e) is ev.BitmapSync]
    windows = [e for e in events if type(e) is ev.RateWindow]
    return {"window-time-s": sec([e.t_ns for e in windows]),
            "bandwidth-mib-s": np.array([e.bandwidth * 1000 / MIB for e in windows]),
            "sync-time-s": sec([e.t_ns for e in syncs]),
            "dirty-rate-mib-s": np.array([e.dirty_pages_rate * f.page_size / MIB for e in syncs])}


def throttle_series(events: list, f: tables._Fold | None = None) -> dict[str, np.ndarray]:
    """The two throttles as steps (each value holds until the next point; the last point is the end of the log).

    ``cpu-throttle-percentage`` from 0 at migrate and at every ``cpu-throttle``;
    ``dirty-limit-ms``: ``dirty-limit-throttle-time-per-round`` (in ms) at every
    ``dirty-limit`` event (a round's value; a set keeps the last).
    """
    f = tables.fold(events) if f is None else f
    sec, end = _seconds(f), events[-1].t_ns if events else 0
    pct_t, pct = [f.migrate_ns or 0], [0]
    dl_t, dl = [], []
    for e in events:
        if type(e) is ev.CpuThrottle:
            pct_t.append(e.t_ns)
            pct.append(e.percentage)
        elif type(e) is ev.DirtyLimit:
            value = e.throttle_time_per_round / 1000 if e.reason == "round" else (dl[-1] if dl else 0.0)
            dl_t.append(e.t_ns)
            dl.append(value)
    if dl:
        dl_t.append(end)
        dl.append(dl[-1])
    return {"time-s": sec(pct_t + [end]), "cpu-throttle-percentage": np.array(pct + pct[-1:]),
            "dirty-limit-time-s": sec(dl_t), "dirty-limit-ms": np.array(dl, dtype=float)}


def guest_series(rows: list[dict]) -> dict[str, np.ndarray]:
    """guest.csv rows (``tables.guest_rows``, or read back: strings do) -> per sample, the mean over vCPUs of
    ``run-fraction`` and ``write-mib-s``. A sample's rows are consecutive, starting at vCPU 0."""
    vcpu = np.array([int(r["vcpu"]) for r in rows], dtype=np.int64)
    sample = np.cumsum(vcpu == 0) - 1
    count = np.bincount(sample)

    def mean(key: str) -> np.ndarray:
        return np.bincount(sample, weights=[float(r[key]) for r in rows]) / count if rows else np.zeros(0)

    return {"time-s": np.array([float(r["time-ms"]) for r in rows])[vcpu == 0] / 1000,
            "run-fraction": mean("run-fraction"), "write-mib-s": mean("write-mib-s")}


def run_curves(events: list, f: tables._Fold | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Every series of one run, by panel (remaining, rates, throttle, guest): what an overlay keeps of a run."""
    f = tables.fold(events) if f is None else f
    return {"remaining": remaining_series(events, f), "rates": rate_series(events, f),
            "throttle": throttle_series(events, f), "guest": guest_series(tables.guest_rows(events, f))}


def plot_remaining(s: dict, ax: Axes | None = None, *, label: str | None = None, color: str | None = None) -> Series:
    """``remaining_series`` on ``ax``: remaining bytes with the syncs marked (and threshold_size for one run).

    ``label``: the run's name in an overlay (then one color per run, the
    threshold left out); without it the elements are named for one run.
    """
    ax = _axes(ax)
    line, = ax.plot(s["time-s"], s["remaining-mib"], lw=1.2, color=color,
                    label=label or "remaining (migration_dirty_pages)")
    if label is None:
        ax.plot(s["threshold-time-s"], s["threshold-mib"], lw=1, ls="--", color="tab:green", label="threshold_size")
        for t in s["sync-time-s"]:
            ax.axvline(t, color="tab:red", lw=0.6, alpha=0.5)
    ax.plot(s["sync-time-s"], s["sync-remaining-mib"], "v", ms=5, color="tab:red" if label is None else line.get_color(),
            label="bitmap sync (dirty-sync-count)" if label is None else None)
    ax.set_ylabel("remaining MiB")
    ax.set_yscale("symlog", linthresh=1)
    ax.legend(loc="upper right", fontsize=8)
    return Series(s, ax)


def plot_rates(s: dict, ax: Axes | None = None, *, label: str | None = None, color: str | None = None) -> Series:
    """``rate_series`` on ``ax``: bandwidth (solid) against dirty-pages-rate x page size (red, or dashed in an
    overlay, where ``label`` names the run)."""
    ax = _axes(ax)
    line, = ax.step(s["window-time-s"], s["bandwidth-mib-s"], where="post", color=color,
                    label=label or "bandwidth (100 ms windows)")
    ax.step(s["sync-time-s"], s["dirty-rate-mib-s"], where="post",
            color="tab:red" if label is None else line.get_color(), ls="-" if label is None else "--",
            label="dirty-pages-rate x page size" if label is None else None)
    ax.set_ylabel("MiB/s")
    ax.legend(loc="lower right", fontsize=8)
    return Series(s, ax)


def plot_throttle(s: dict, ax: Axes | None = None, *, label: str | None = None, color: str | None = None) -> Series:
    """``throttle_series`` on ``ax``: cpu-throttle-percentage (left axis) and, if dirty-limit ran, its throttle time
    per round (dashed, right axis, ms). ``label`` names the run in an overlay."""
    ax = _axes(ax)
    line, = ax.step(s["time-s"], s["cpu-throttle-percentage"], where="post", color=color,
                    label=label or "cpu-throttle-percentage (auto-converge)")
    ax.set_ylabel("cpu throttle %")
    ax.set_ylim(-2, 100)
    if len(s["dirty-limit-ms"]):
        right = _twin(ax)
        right.step(s["dirty-limit-time-s"], s["dirty-limit-ms"], where="post", ls="--",
                   color="tab:purple" if label is None else line.get_color(),
                   label="dirty-limit-throttle-time-per-round" if label is None else None)
        right.set_ylabel("dirty-limit ms per round")
        if label is None:
            right.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    return Series(s, ax)


def plot_guest(s: dict, ax: Axes | None = None, *, label: str | None = None, color: str | None = None) -> Series:
    """``guest_series`` on ``ax``: the vCPUs' mean run fraction (left) and write MiB/s per vCPU (dashed, right).
    ``label`` names the run in an overlay."""
    ax = _axes(ax)
    line, = ax.plot(s["time-s"], s["run-fraction"], lw=1, color=color, label=label or "run fraction (mean of vCPUs)")
    ax.set_ylabel("run fraction")
    ax.set_ylim(-0.02, 1.05)
    right = _twin(ax)
    right.plot(s["time-s"], s["write-mib-s"], lw=1, ls="--", color="tab:orange" if label is None else line.get_color(),
               label="write MiB/s per vCPU" if label is None else None)
    right.set_ylabel("write MiB/s per vCPU")
    right.set_ylim(bottom=0)
    if label is None:
        right.legend(loc="lower right", fontsize=8)
    ax.legend(loc="lower left", fontsize=8)
    return Series(s, ax)


PANELS = (("remaining", plot_remaining), ("rates", plot_rates), ("throttle", plot_throttle), ("guest", plot_guest))


def convergence_figure(events: list, f: tables._Fold | None = None, title: str | None = None) -> Figure:
    """One run in four panels over seconds since migrate: remaining bytes and the syncs; dirty rate against
    bandwidth; the throttles; what the guest ran and wrote.

    ``f``: the fold of ``events`` when the caller already has it; ``title``: the
    run's name in the title (default: the scenario's name).
    """
    f = tables.fold(events) if f is None else f
    curves = run_curves(events, f)
    fig = Figure(figsize=(9, 11))  # a fixed layout: the constrained engine costs seconds on big logs
    fig.subplots_adjust(left=0.09, right=0.9, top=0.96, bottom=0.05, hspace=0.12)
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    for ax, (key, plot) in zip(axes, PANELS):
        plot(curves[key], ax)
    name = title if title is not None else events[0].name if events and isinstance(events[0], ev.RunStarted) else ""
    axes[0].set_title(f"{name}: {f.status}, {f.syncs} syncs")
    axes[-1].set_xlabel("seconds since migrate")
    return fig


OVERLAY_TITLES = {"remaining": "remaining (migration_dirty_pages), v = bitmap sync",
                  "rates": "bandwidth (solid) against dirty-pages-rate (dashed)",
                  "throttle": "cpu-throttle-percentage (solid); dirty-limit ms per round (dashed, right)",
                  "guest": "guest run fraction (solid); write MiB/s per vCPU (dashed, right)"}


def compare_figure(runs: dict[str, dict[str, dict]]) -> Figure:
    """Several runs (name -> ``run_curves``) overlaid in four panels, one color per run, named in the legends."""
    fig = Figure(figsize=(13, 8.5))
    fig.subplots_adjust(left=0.07, right=0.94, top=0.92, bottom=0.07, hspace=0.25, wspace=0.3)
    axes = fig.subplots(2, 2, sharex=True)
    for ax, (key, plot) in zip(axes.flat, PANELS):
        for i, (name, curves) in enumerate(runs.items()):
            plot(curves[key], ax, label=name, color=f"C{i % 10}")
        ax.set_title(OVERLAY_TITLES[key], fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("seconds since migrate")
    fig.suptitle(f"compare: {', '.join(runs)}")
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


def postcopy_latency_figure(rows: list[dict], title: str = "") -> Figure:
    """postcopy-latency.csv as bars: how many page faults waited [2^N, 2^(N+1)) us (postcopy-latency-dist)."""
    fig = Figure(figsize=(8, 3.5))
    fig.subplots_adjust(left=0.09, right=0.98, top=0.88, bottom=0.2)
    ax = fig.subplots()
    ax.bar([r["bucket"] for r in rows], [r["faults"] for r in rows], color="tab:blue")
    ax.set_xticks([r["bucket"] for r in rows], [_us_label(r["from-us"]) for r in rows], rotation=60, fontsize=7)
    ax.set_xlabel("fault wait, from (bucket [2^N, 2^(N+1)) us)")
    ax.set_ylabel("faults")
    ax.set_title(f"{title}: postcopy page-fault latency".lstrip(": "))
    return fig


def _us_label(us: int) -> str:
    return f"{us // 1000000}s" if us >= 1000000 else f"{us // 1000}ms" if us >= 1000 else f"{us}us"
