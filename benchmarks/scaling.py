"""Scaling curves: wall time and peak RSS against guest size, vCPU count and write rate.

Every point is ``dirtysim run`` of one base scenario (bench-64g-16vcpu.yaml)
in a fresh process, changed with ``--set`` and cut short by
``migration.timeout`` so that each point simulates the same few seconds
(``outputs.plots=false``: the process time is the simulation's, not the plot's). The
cost of a point is divided by its work, pages written by the guest plus pages
sent by the migration: if that ratio stays flat while the guest grows 128x or
the number of time steps changes, the engine's cost follows work, not guest
size or time steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import run_scenario, save_figure, table

BASE = "scenarios/bench-64g-16vcpu.yaml"
WORKLOAD = "machine.vcpus.0.workload"
# axis -> (label, values, overrides for a value); hot set = 1/8 of the guest, as in the base scenario
AXES = {
    "guest_size": ("guest size (GiB)", (8, 64, 256, 1024), lambda g: (f"machine.memory.size={g}GiB",
                                                                      f"{WORKLOAD}.hot={g // 8}GiB")),
    "vcpus": ("vCPUs", (1, 4, 16, 64, 256), lambda n: (f"machine.vcpus.0.count={n}",)),
    "write_rate": ("write rate per vCPU (MiB/s)", (16, 64, 256, 1024), lambda r: (f"{WORKLOAD}.rate={r}MiB/s",)),
}
QUICK_AXES = {"guest_size": (8, 64), "vcpus": (1, 16), "write_rate": (16, 64)}


def run(quick: bool, cache_dir: str) -> dict:
    """All points of all axes; each simulates ``timeout`` s of migration after the 1 s start."""
    timeout = "1s" if quick else "3s"
    res = {"base": BASE, "timeout": timeout, "axes": {}}
    for axis, (label, values, overrides) in AXES.items():
        points = []
        for v in QUICK_AXES[axis] if quick else values:
            r = run_scenario(BASE, (*overrides(v), f"migration.timeout={timeout}", "outputs.plots=false"), cache_dir)
            work = r["pages_written"] + r["pages_sent"]
            points.append({"value": v, **r, "work_pages": work,
                           "ns_per_work_page": r["wall_time_s"] * 1e9 / work if work else None,
                           "process_ns_per_work_page": r["process_wall_s"] * 1e9 / work if work else None})
        res["axes"][axis] = {"label": label, "points": points}
    res["fit"] = fit([p for a in res["axes"].values() for p in a["points"]])
    return res


TERMS = ("fixed_s", "s_per_page_written", "s_per_page_sent", "s_per_guest_page")


def fit(points: list[dict]) -> dict:
    """Least squares over all points: simulation wall = fixed + a x pages written + b x pages sent + c x guest pages.

    ``c`` is the cost that grows with the guest rather than with work (setup,
    the final oracle check, cache misses of bigger bitmaps); the residual of a
    point is what none of the terms explains. A term whose coefficient comes out
    negative (no physical meaning: it is below the noise, or its column moves
    against another's) is dropped and the rest refitted; it is reported as 0.
    """
    a = np.array([[1.0, p["pages_written"], p["pages_sent"], p["guest_pages"]] for p in points])
    y = np.array([p["wall_time_s"] for p in points])
    keep = list(range(a.shape[1]))
    while True:
        coef = np.linalg.lstsq(a[:, keep], y, rcond=None)[0]
        if (coef >= 0).all() or len(keep) == 1:
            break
        del keep[int(np.argmin(coef))]
    full = np.zeros(a.shape[1])
    full[keep] = coef
    pred = a @ full
    return {**dict(zip(TERMS, full.tolist())), "dropped": [TERMS[i] for i in range(a.shape[1]) if i not in keep],
            "residuals": [{"overrides": p["overrides"], "wall_time_s": p["wall_time_s"], "predicted_s": float(q)}
                          for p, q in zip(points, pred)]}


def plot(res: dict, out: Path) -> list[str]:
    """One PNG per axis: wall time, peak RSS and wall time per page of work."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for axis, a in res["axes"].items():
        x = [p["value"] for p in a["points"]]
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.8))
        ax1.plot(x, [p["wall_time_s"] for p in a["points"]], "o-", label="simulation wall")
        ax1.plot(x, [p["process_wall_s"] for p in a["points"]], "s--", label="process wall")
        ax1.set_ylabel("s")
        ax1.legend()
        ax2.plot(x, [p["vm_hwm_mib"] for p in a["points"]], "o-")
        ax2.set_ylabel("peak RSS (MiB)")
        ax3.plot(x, [p["ns_per_work_page"] for p in a["points"]], "o-", label="simulation wall")
        ax3.plot(x, [p["process_ns_per_work_page"] for p in a["points"]], "s--", label="process wall")
        ax3.set_ylabel("ns per page written or sent")
        ax3.set_ylim(bottom=0)
        ax3.legend()
        for ax in (ax1, ax2, ax3):
            ax.set_xscale("log", base=2)
            ax.set_xlabel(a["label"])
            ax.grid(alpha=0.3)
        fig.suptitle(f"{res['base']} with --set, {res['timeout']} of migration: {a['label']}")
        fig.tight_layout()
        name = f"scaling-{axis}.png"
        save_figure(fig, out / name)
        plt.close(fig)
        names.append(name)
    return names


def markdown(res: dict) -> str:
    out = [f"### Scaling ({res['base']} changed with --set, migration.timeout={res['timeout']})"]
    for a in res["axes"].values():
        rows = [[p["value"], p["status"], f"{p['sim_time_s']:.1f}", f"{p['wall_time_s']:.2f}",
                 f"{p['process_wall_s']:.2f}", f"{p['vm_hwm_mib']:.0f}", p["pages_written"], p["pages_sent"],
                 f"{p['ns_per_work_page']:.0f}", f"{p['process_ns_per_work_page']:.0f}"] for p in a["points"]]
        out += ["", table([a["label"], "status", "sim s", "sim wall s", "process wall s", "peak RSS MiB",
                           "pages written", "pages sent", "ns/page of work (sim)", "ns/page of work (process)"], rows)]
    f = res["fit"]
    residuals = ", ".join(f"{r['overrides'][0].split('=')[-1]} {r['wall_time_s'] - r['predicted_s']:+.2f}"
                          for r in f["residuals"])
    out += ["", f"Least-squares fit over all points: simulation wall = {f['fixed_s']:.3f} s + "
            f"{f['s_per_page_written'] * 1e9:.0f} ns x pages written + "
            f"{f['s_per_page_sent'] * 1e9:.0f} ns x pages sent + {f['s_per_guest_page'] * 1e9:.2f} ns x guest pages"
            + (f" (dropped, negative: {', '.join(f['dropped'])})" if f["dropped"] else "")
            + f"; residuals (measured - fitted, s): {residuals}"]
    return "\n".join(out)
