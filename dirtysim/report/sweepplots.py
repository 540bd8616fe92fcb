"""A sweep's maps: heatmaps over two axes, lines over one with the seeds' spread (from ``dirtysim.load_sweep``).

Figures are built without pyplot, as in ``report.plots``. Axis values keep the
sweep file's order (``frame.attrs["axes"]``): "10Gbit/s" comes after "1Gbit/s"
because the file says so, not by sorting text. Each cell or point aggregates the
seeds of one point: the share of them that converged, the mean of the others
(downtime over the converged runs only, as only they have one).
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from . import sweepdata

# column, panel title, scale to the unit in the title
METRICS = [("converged", "converged (share of runs)", 1.0), ("total-time-ms", "total time (s)", 1e-3),
           ("downtime-ms", "downtime (ms)", 1.0), ("transferred", "transferred (GiB)", 2.0**-30),
           ("max-cpu-throttle-percentage", "max cpu throttle (%)", 1.0)]
FIGURES = ("heatmaps.png", "lines.png")
MAX_ANNOTATED = 150  # cells: above this many the numbers would not be readable


def _values(frame, key: str) -> list:
    """``key``'s values in the sweep file's order, as its column holds them (300 and 500ms: "300", "500ms")."""
    given = frame.attrs.get("axes", {}).get(key)
    return sweepdata.as_column(given) if given else sorted(frame[key].dropna().unique())


def _cells(frame, column: str, scale: float, by: list[str]):
    """The metric per point: share for ``converged``, else the mean over the point's runs that have it."""
    values = frame[column].astype(float) * scale
    return values.groupby([frame[k] for k in by]).agg(["mean", "min", "max"])


def plot_heatmap(frame, x: str, y: str, column: str, ax: Axes, title: str = "", scale: float = 1.0) -> np.ndarray:
    """One metric over ``x`` and ``y`` (the swept keys) on ``ax``; returns the grid drawn (rows: ``y``)."""
    xs, ys = _values(frame, x), _values(frame, y)
    cells = _cells(frame, column, scale, [y, x])["mean"]
    grid = np.array([[cells.get((vy, vx), np.nan) for vx in xs] for vy in ys], dtype=float)
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
    ax.figure.colorbar(image, ax=ax)
    ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=45, ha="right")
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    if grid.size <= MAX_ANNOTATED:
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7,
                        color="black" if image.norm(v) > 0.6 else "white")
    _boundary(frame, x, y, ax)
    return grid


def _per_value(frame, key: str, column: str) -> np.ndarray | None:
    """``column``'s one value at each value of ``key``, or None when it is not a function of ``key``."""
    values = frame.groupby(key)[column].agg(["min", "max"])
    if values.isna().any().any() or (values["min"] != values["max"]).any():
        return None
    return np.array([values["min"].get(v, np.nan) for v in _values(frame, key)], dtype=float)


def _boundary(frame, x: str, y: str, ax: Axes) -> None:
    """On a write-rate x bandwidth map, the line where the guest writes as fast as migration may send
    (precopy cannot converge to the right of it): log-interpolated between the cells' values."""
    for rate_key, bw_key, transpose in ((x, y, False), (y, x, True)):
        rates, bandwidths = _per_value(frame, rate_key, "write-rate"), _per_value(frame, bw_key, "bandwidth")
        if rates is None or bandwidths is None or len(set(rates)) < max(2, len(rates)) or len(set(bandwidths)) < 2:
            continue
        order = np.argsort(rates)
        at = np.interp(np.log(bandwidths), np.log(rates[order]), order.astype(float), left=np.nan, right=np.nan)
        rows, keep = np.arange(len(bandwidths), dtype=float), ~np.isnan(at)
        px, py = (rows[keep], at[keep]) if transpose else (at[keep], rows[keep])
        ax.plot(px, py, "w--", lw=2, marker="o", ms=3, label="write rate = bandwidth")
        ax.legend(loc="upper left", fontsize=7)
        return


def plot_line(frame, x: str, column: str, ax: Axes, title: str = "", scale: float = 1.0,
              label: str | None = None) -> None:
    """One metric over ``x``: the mean of each point's seeds, and their spread (min..max) shaded."""
    xs = _values(frame, x)
    cells = _cells(frame, column, scale, [x])
    pos = np.arange(len(xs))
    mean, lo, hi = ([cells[c].get(v, np.nan) for v in xs] for c in ("mean", "min", "max"))
    line = ax.plot(pos, mean, "o-", label=label)[0]
    ax.fill_between(pos, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_xticks(pos, [str(v) for v in xs], rotation=45, ha="right")
    ax.set_xlabel(x)
    ax.set_title(title)


def heatmap_figure(frame, x: str, y: str) -> Figure:
    """Every metric over ``x`` and ``y``, one row of panels per variant."""
    variants = frame.attrs.get("variants") or [None]
    fig = Figure(figsize=(4.2 * len(METRICS), 3.6 * len(variants)), layout="constrained")
    axes = fig.subplots(len(variants), len(METRICS), squeeze=False)
    for row, variant in zip(axes, variants):
        part = frame if variant is None else frame[frame["variant"] == variant]
        part.attrs = frame.attrs
        for ax, (column, title, scale) in zip(row, METRICS):
            plot_heatmap(part, x, y, column, ax, title if variant is None else f"{variant}: {title}", scale)
    return fig


def lines_figure(frame, x: str) -> Figure:
    """Every metric over ``x``, one line per variant with its seeds' spread."""
    fig = Figure(figsize=(4.2 * len(METRICS), 3.6), layout="constrained")
    variants = frame.attrs.get("variants") or [None]
    for ax, (column, title, scale) in zip(fig.subplots(1, len(METRICS)), METRICS):
        for variant in variants:
            part = frame if variant is None else frame[frame["variant"] == variant]
            part.attrs = frame.attrs
            plot_line(part, x, column, ax, title, scale, label=variant)
        if variants != [None]:
            ax.legend(fontsize=7)
    return fig


def sweep_figures(frame) -> dict[str, Figure]:
    """What ``dirtysim sweep`` draws: heatmaps.png over two dimensions, lines.png over one, else nothing."""
    dims = frame.attrs.get("dims", [])
    if len(dims) == 2:
        return {"heatmaps.png": heatmap_figure(frame, dims[0], dims[1])}
    if len(dims) == 1:
        return {"lines.png": lines_figure(frame, dims[0])}
    return {}
