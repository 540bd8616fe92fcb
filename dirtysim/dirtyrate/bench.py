"""``dirtysim bench dirtyrate``: every estimator on a matrix of workloads, calc-times and seeds, against the truth.

Each job is one (workload, calc-time, seed): a fresh guest measured once per
mode (``compare.compare_estimators``). Jobs run in parallel processes; the
table gives, per workload, mode and calc-time, the median and 90th percentile
of the relative error against each truth and the median guest fault time.
"""

from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

from ..scenario.schema import Scenario
from .compare import TRUTHS, compare_estimators

MODES = ["page-sampling", "dirty-bitmap", "dirty-ring", "x-sampled-wp", "x-wss-curve"]
WORKLOADS = {  # 4 vCPUs each; per-vCPU rates
    "uniform": {"kind": "uniform", "rate": "64MiB/s"},
    "hot-set": {"kind": "hotset", "rate": "64MiB/s", "hot": "256MiB", "hot_share": 0.9},
    "small-hot-set": {"kind": "hotset", "rate": "128MiB/s", "hot": "32MiB", "hot_share": 0.95},
    "identical-rewrites": {"kind": "hotset", "rate": "64MiB/s", "hot": "256MiB", "hot_share": 0.9,
                           "identical_rewrites": 0.5},
}
# PML off: the estimators' cost to the guest shows as write-protect faults (as on AMD, or with PML disabled);
# with PML on no mode costs a fault and the guest-cost column would be 0 for all of them
RING = {"mode": "ring", "manual_protect": False, "initially_set": False, "pml": False}
BITMAP = {"pml": False}


MIGRATION = {"start_at": "1s", "max_bandwidth": "384MiB/s", "timeout": "120s"}  # for the prediction check


def guest(workload: dict, size: str, seed: int, ring: bool) -> Scenario:
    """The benchmark's guest: ``size`` of RAM, half of it zero, 4 vCPUs running ``workload``, migrated at 384 MiB/s (near the write rate, where the estimate matters)."""
    return Scenario.model_validate({"name": "bench-dirtyrate", "seed": seed, "dirty_tracking": RING if ring else BITMAP,
                                    "machine": {"memory": {"size": size, "zero_fraction": 0.5},
                                                "vcpus": [{"count": 4, "workload": workload}]},
                                    "migration": MIGRATION, "outputs": {"plots": False}})


def prediction_job(label: str, size: str, seed: int, modes: list[str]) -> list[dict]:
    """Migrate the workload's guest, and predict that migration from each estimator's 1 s measurement."""
    from ..report.tables import summary
    from ..sim import run
    from .predict import from_curve, from_rate, predict

    sc = guest(WORKLOADS[label], size, seed, False)
    result = run(sc, progress=False)
    s = summary(result.events)
    real = {"total-time": s["total-time"], "downtime": s.get("downtime"), "syncs": s["ram"]["dirty-sync-count"],
            "converged": s["status"] == "completed"}
    rows = []
    for r in compare_estimators(sc, [m for m in modes if m != "dirty-ring"], 1000, label=label):
        curve = from_curve(r["wss-pages"], r["wss-rate"]) if "wss-pages" in r else from_rate(r["estimate"])
        p = predict(sc, curve)
        rows.append({"workload": label, "mode": r["mode"], "seed": seed, "estimate": r["estimate"],
                     "predicted-total-ms": round(p.total_time_ms), "total-ms": real["total-time"],
                     "total-error": round(p.total_time_ms / real["total-time"] - 1, 3),
                     "predicted-downtime-ms": round(p.downtime_ms, 1), "downtime-ms": real["downtime"],
                     "predicted-passes": p.passes, "syncs": real["syncs"],
                     "predicted-converged": p.converged, "converged": real["converged"]})
    return rows


def job(label: str, size: str, calc_ms: int, seed: int, modes: list[str]) -> list[dict]:
    """One workload at one calc-time and seed: every mode (dirty-ring on a ring guest of the same seed)."""
    workload = WORKLOADS[label]
    rows = compare_estimators(guest(workload, size, seed, False), [m for m in modes if m != "dirty-ring"],
                              calc_ms, label=label)
    if "dirty-ring" in modes:
        rows += compare_estimators(guest(workload, size, seed, True), ["dirty-ring"], calc_ms, label=label)
    for r in rows:
        r.update({"calc-time-ms": calc_ms, "seed": seed, "size": size})
    return rows


def run_matrix(workloads: list[str], calc_times_ms: list[int], seeds: list[int], size: str, modes: list[str],
               workers: int | None = None, progress: bool = True) -> list[dict]:
    """All jobs in parallel processes (one per core by default), rows in a fixed order."""
    from tqdm import tqdm

    jobs = [(w, size, c, s, modes) for w in workloads for c in calc_times_ms for s in seeds]
    rows: dict[int, list[dict]] = {}
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        futures = {pool.submit(job, *j): i for i, j in enumerate(jobs)}
        for f in tqdm(as_completed(futures), total=len(jobs), disable=not progress, unit="job"):
            rows[futures[f]] = f.result()
    return [r for i in sorted(rows) for r in rows[i]]


def run_predictions(workloads: list[str], seeds: list[int], size: str, modes: list[str],
                    workers: int | None = None) -> list[dict]:
    """``prediction_job`` for every workload and seed, in parallel processes."""
    jobs = [(w, size, s, modes) for w in workloads for s in seeds]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        results = list(pool.map(prediction_job, *zip(*jobs)))
    return [r for rs in results for r in rs]


def summarize_predictions(rows: list[dict]) -> list[dict]:
    """Per (workload, mode): median |error| of the predicted total time, and how often convergence was right."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["workload"], r["mode"]), []).append(r)
    return [{"workload": w, "mode": m, "runs": len(rs),
             "total-time error median": round(float(np.median([abs(r["total-error"]) for r in rs])), 3),
             "converged right": sum(r["predicted-converged"] == r["converged"] for r in rs)}
            for (w, m), rs in groups.items()]


def summarize(rows: list[dict]) -> list[dict]:
    """Per (workload, mode, calc-time): median and p90 of |error| against each truth, median fault time."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["workload"], r["mode"], r["calc-time-ms"]), []).append(r)
    out = []
    for (w, m, c), rs in groups.items():
        row = {"workload": w, "mode": m, "calc-time-ms": c, "runs": len(rs)}
        for k in TRUTHS:
            errs = np.abs([x[f"error-vs-{k.removesuffix('-rate')}"] for x in rs])
            row[f"{k.removesuffix('-rate')} median"] = round(float(np.median(errs)), 3)
            row[f"{k.removesuffix('-rate')} p90"] = round(float(np.percentile(errs, 90)), 3)
        row["fault-ms median"] = round(float(np.median([x["guest-fault-ms"] for x in rs])), 2)
        out.append(row)
    return out


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))  # every column any row has, in first-seen order
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
