"""End to end: numba compile time, then each reference scenario in a fresh ``dirtysim run`` process.

Targets (issue "Speed at scale"): sim-speed (simulated s per wall s) of the
quickstart >= 100x, of the 64 GiB / 16-vCPU guest >= 50x, of the 1 TiB /
64-vCPU guest >= 10x; peak RSS <= 2 bytes per guest page + 200 MiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from common import MIB, ROOT, run_scenario, table

# scenario -> minimum sim-speed
TARGETS = {"scenarios/quickstart.yaml": 100, "scenarios/bench-64g-16vcpu.yaml": 50,
           "scenarios/bench-1t-64vcpu.yaml": 10}
# The quickstart again without its convergence plot: the plot's matplotlib import and layout cost
# about a second of process time and 30 MiB of RSS, which the other rows include.
RUNS = [*((file, ()) for file in TARGETS), ("scenarios/quickstart.yaml", ("outputs.plots=false",))]
QUICK = RUNS[:1]
RSS_BYTES_PER_PAGE, RSS_BASE_MIB = 2, 200

COMPILE_CHILD = """
import json, time
t0 = time.perf_counter()
import dirtysim.sim as sim
t1 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "warm_up_kernels_s": sim.warm_up_kernels(notice=False)}))
"""


def bench_compile(cache_dir: str) -> dict:
    """``warm_up_kernels()`` in a fresh process with an empty numba cache (compile), then from the filled cache."""
    def child() -> dict:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", COMPILE_CHILD], cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, NUMBA_CACHE_DIR=cache_dir), check=True)
        return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_wall_s": time.perf_counter() - t0}

    return {"cold": child(), "cached": child()}


def check(r: dict) -> dict:
    """The targets this run meets: sim-speed, peak RSS per guest page, no lost page."""
    rss_limit_mib = RSS_BYTES_PER_PAGE * r["guest_pages"] / MIB + RSS_BASE_MIB
    target = TARGETS[r["file"]]
    return {"sim_speed_target": target, "sim_speed_ok": r["sim_speed"] >= target,
            "rss_limit_mib": rss_limit_mib, "rss_ok": r["vm_hwm_mib"] <= rss_limit_mib,
            "no_lost_pages": r["lost_pages"] == 0}


def run(quick: bool, cache_dir: str) -> dict:
    runs = {}
    for file, overrides in QUICK if quick else RUNS:
        r = run_scenario(file, overrides, cache_dir)
        runs[" ".join((file, *overrides))] = {**r, "targets": check(r)}
    return {"runs": runs}


def compile_markdown(c: dict) -> str:
    return "\n".join(["### numba compile time", "", table(
        ["numba `warm_up_kernels()`, fresh process", "s", "import dirtysim.sim s", "process wall s"],
        [[label, f"{c[key]['warm_up_kernels_s']:.2f}", f"{c[key]['import_s']:.2f}", f"{c[key]['process_wall_s']:.2f}"]
         for key, label in (("cold", "cold compile (empty cache)"), ("cached", "cached load"))])])


def markdown(res: dict) -> str:
    out = ["### End to end (each scenario in a fresh `dirtysim run` process, numba cache warm)", ""]
    rows = []
    for name, r in res["runs"].items():
        t = r["targets"]
        speed_ok = "ok" if t["sim_speed_ok"] else "MISSED"
        rows.append([name.split("/")[-1], r["status"], f"{r['sim_time_s']:.1f}", f"{r['wall_time_s']:.2f}",
                     f"**{r['sim_speed']:.1f}x** (>= {t['sim_speed_target']}x: {speed_ok})",
                     f"{r['process_wall_s']:.2f}", f"{r['cpu_s']:.2f}", f"{r['compile_time_s']:.2f}",
                     f"{r['vm_hwm_mib']:.0f}", f"{r['rss_bytes_per_page']:.2f}",
                     f"{t['rss_limit_mib']:.0f} ({'ok' if t['rss_ok'] else 'MISSED'})",
                     r["syncs"], r["lost_pages"], f"`{r['fingerprint']}`"])
    out.append(table(["scenario", "status", "sim s", "sim wall s", "sim-speed", "process wall s", "process CPU s",
                      "kernel load s", "peak RSS MiB", "RSS B/page", "RSS limit MiB", "syncs", "lost pages",
                      "fingerprint"], rows))
    return "\n".join(out)
