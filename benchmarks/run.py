"""dirtysim benchmarks: one run measures the bitmap sync kernel, numba compile time and two scenarios.

Writes ``benchmarks/results.json`` (atomically) and prints Markdown tables. Not a test: it asserts
only that the numpy and numba syncs agree. Run it with ``make bench`` or
``.venv/bin/python benchmarks/run.py``; it takes about 30 s.

Protocol of the bitmap measurements (as in ``perf-limits.md``): median of RUNS timed calls after
WARMUPS untimed ones, the kernels taking turns; before every call the inputs are restored and a
128 MiB scratch array is streamed (both untimed), so the bitmaps come from DRAM. GB = 1e9 bytes.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from dirtysim.dirty.kernels import sync_xchg
from dirtysim.report.files import write_atomic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results.json"

WORDS = 1 << 22  # 1 TiB guest = 2^28 pages of 4 KiB = 2^22 uint64 words = 32 MiB per bitmap
STREAMED_BYTES = 2 * WORDS * 8  # src and dst: 64 MiB
SCRATCH_WORDS = (128 << 20) // 8
DENSITIES = (0.01, 0.30)
DENSITY_BITS = 12  # densities are rounded to multiples of 1/4096
RUNS, WARMUPS = 15, 2
NUMPY_BLOCK = 1 << 15  # words per block: 256 KiB, so a block's three arrays stay in L2
SCENARIOS = ("scenarios/quickstart.yaml", "scenarios/bench-64g-16vcpu.yaml")


# --- bitmap kernels -----------------------------------------------------------------------------

@numba.njit(nogil=True)
def xor_reduce(a, b):
    """Stream both arrays once (the memory-bandwidth reference); the XOR keeps the loads alive."""
    x = np.uint64(0)
    for i in range(a.shape[0]):
        x ^= a[i] ^ b[i]
    return x


def numba_sync(src, dst):
    return int(sync_xchg(src, dst, 0, src.shape[0]))


_tmp = np.empty(NUMPY_BLOCK, dtype=np.uint64)
_counts = np.empty(NUMPY_BLOCK, dtype=np.uint8)


def numpy_sync(src, dst):
    """The reference semantic in plain numpy: new = popcount(src & ~dst); dst |= src; src[:] = 0.

    Blocked so each step works in L2, with preallocated ``out=`` buffers (no temporaries).
    """
    new = 0
    for w in range(0, src.shape[0], NUMPY_BLOCK):
        s, d = src[w:w + NUMPY_BLOCK], dst[w:w + NUMPY_BLOCK]
        t, c = _tmp[:s.shape[0]], _counts[:s.shape[0]]
        np.invert(d, out=t)
        np.bitwise_and(t, s, out=t)
        np.bitwise_count(t, out=c)
        new += int(c.sum(dtype=np.uint32))  # a block holds at most 2^21 bits; uint32 sums faster than uint64
        np.bitwise_or(d, s, out=d)
        s.fill(0)
    return new


def stream_read(src, dst):
    return int(xor_reduce(src, dst))


BITMAP_KERNELS = {"numba sync_xchg": numba_sync, "numpy sync (blocked)": numpy_sync, "stream read (numba xor)": stream_read}


def random_bitmap(rng: np.random.Generator, density: float) -> np.ndarray:
    """WORDS words whose bits are set independently with probability k/2^DENSITY_BITS ~= density.

    Built from the binary digits of the probability, least significant first: AND with a fresh
    random word maps p to p/2, OR maps p to (1+p)/2. Much faster than comparing 2^28 floats.
    """
    k = round(density * (1 << DENSITY_BITS))
    x = np.zeros(WORDS, dtype=np.uint64)
    for i in range(DENSITY_BITS):
        r = rng.bit_generator.random_raw(WORDS)
        if (k >> i) & 1:
            np.bitwise_or(x, r, out=x)
        else:
            np.bitwise_and(x, r, out=x)
    return x


def time_runs(kernels: dict, inputs: list[np.ndarray], scratch: np.ndarray) -> dict:
    """Per kernel, the median of RUNS calls after WARMUPS; every call gets restored inputs from DRAM.

    The kernels take turns, so a change of background load hits all of them alike.
    """
    work = [x.copy() for x in inputs]
    half = scratch.shape[0] // 2
    times = {name: [] for name in kernels}
    for _ in range(WARMUPS + RUNS):
        for name, kernel in kernels.items():
            for w, x in zip(work, inputs):
                np.copyto(w, x)
            xor_reduce(scratch[:half], scratch[half:])  # evict the bitmaps from the caches
            t0 = time.perf_counter()
            kernel(*work)
            times[name].append(time.perf_counter() - t0)
    return {name: stats(ts[WARMUPS:]) for name, ts in times.items()}


def stats(times: list[float]) -> dict:
    med = float(np.median(times))
    return {"median_ms": med * 1e3, "min_ms": min(times) * 1e3, "gb_per_s": STREAMED_BYTES / med / 1e9,
            "spread": (max(times) - min(times)) / med, "times_ms": [t * 1e3 for t in times]}


def check_same(inputs: list[np.ndarray]) -> int:
    """numpy and numba syncs must agree on the count and on both resulting bitmaps."""
    a, b = [x.copy() for x in inputs], [x.copy() for x in inputs]
    new = numba_sync(*a)
    assert numpy_sync(*b) == new and all(np.array_equal(x, y) for x, y in zip(a, b)), "numpy != numba sync"
    return new


def bench_bitmaps() -> list[dict]:
    rng = np.random.default_rng(2026)
    scratch = np.ones(SCRATCH_WORDS, dtype=np.uint64)
    rows = []
    for density in DENSITIES:
        inputs = [random_bitmap(rng, density), random_bitmap(rng, density)]  # src, dst
        row = {"density": density, "effective_density": round(density * (1 << DENSITY_BITS)) / (1 << DENSITY_BITS),
               "new_dirty_pages": check_same(inputs)}
        row["kernels"] = time_runs(BITMAP_KERNELS, inputs, scratch)
        numba_ms, numpy_ms, stream_ms = (row["kernels"][name]["median_ms"] for name in BITMAP_KERNELS)
        row["numba_pct_of_stream_read"] = 100 * stream_ms / numba_ms
        row["numpy_pct_of_stream_read"] = 100 * stream_ms / numpy_ms
        row["numba_speedup_over_numpy"] = numpy_ms / numba_ms
        rows.append(row)
    return rows


# --- fresh-process measurements -----------------------------------------------------------------

COMPILE_CHILD = """
import json, time
t0 = time.perf_counter()
import dirtysim.sim as sim
t1 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "warm_up_kernels_s": sim.warm_up_kernels()}))
"""

SCENARIO_CHILD = """
import json, resource, sys
from dirtysim.report.tables import summary
from dirtysim.scenario.load import load_scenario
from dirtysim.sim import run
r = run(load_scenario(sys.argv[1]), progress=False)
s = summary(r.events)
print(json.dumps({"status": s["status"], "stop_reason": r.stop_reason, "error": r.error,
                  "sim_time_s": r.sim_time_ns / 1e9, "wall_time_s": r.wall_time_s, "sim_speed": r.sim_speed,
                  "compile_time_s": r.compile_time_s, "events": len(r.events),
                  "lost_pages": s["dirtysim"]["lost-pages"], "dirty_sync_count": s["ram"]["dirty-sync-count"],
                  "downtime_ms": s.get("downtime"),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "vm_hwm_mib": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024}))
"""


def run_child(code: str, cache_dir: str, *args: str) -> dict:
    """Run ``python -c code args`` in a fresh process with its own numba cache; parse its last line."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_wall_s": wall}


def bench_compile(cache_dir: str) -> dict:
    """warm_up_kernels() with an empty numba cache (compile), then again from the filled cache (load)."""
    return {"cold": run_child(COMPILE_CHILD, cache_dir), "cached": run_child(COMPILE_CHILD, cache_dir)}


def bench_scenarios(cache_dir: str) -> dict:
    return {Path(p).stem: run_child(SCENARIO_CHILD, cache_dir, p) for p in SCENARIOS}


# --- report -------------------------------------------------------------------------------------

def machine_info() -> dict:
    def field(path: str, key: str):
        lines = Path(path).read_text().splitlines()
        return next((ln.split(":", 1)[1].strip() for ln in lines if ln.split(":")[0].strip() == key), None)

    cpu = lambda key: field("/proc/cpuinfo", key)  # noqa: E731
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "cpu_model": cpu("model name"), "cpu_family": cpu("cpu family"), "cpu_model_number": cpu("model"),
        "avx512": "avx512f" in (cpu("flags") or "").split(), "cores_per_socket": cpu("cpu cores"),
        "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "mem_total": field("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(), "python": platform.python_version(), "numpy": np.__version__,
        "numba": numba.__version__, "git_commit": git.stdout.strip() or None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_at_start": os.getloadavg(),
    }


def markdown(res: dict) -> str:
    m = res["machine"]
    out = [f"## dirtysim benchmarks, {m['date']}: {m['cpu_model']} ({m['usable_cpus']} CPUs, "
           f"AVX-512 {'yes' if m['avx512'] else 'no'}), Python {m['python']}, numpy {m['numpy']}, numba {m['numba']}",
           "",
           f"Sync of a 1 TiB guest's bitmaps (2 x 32 MiB streamed), median of {RUNS} runs from DRAM:", "",
           "| kernel | density | median ms | GB/s of bitmap | % of stream read | spread |",
           "|---|---:|---:|---:|---:|---:|"]
    for row in res["bitmap"]:
        stream_ms = row["kernels"]["stream read (numba xor)"]["median_ms"]
        for name, k in row["kernels"].items():
            out.append(f"| {name} | {row['density']:.0%} | {k['median_ms']:.2f} | {k['gb_per_s']:.1f} | "
                       f"{100 * stream_ms / k['median_ms']:.0f}% | {k['spread']:.0%} |")
    out.append("")
    out += ["| density | numba % of memory limit | numba speed-up over numpy |", "|---:|---:|---:|"]
    out += [f"| {r['density']:.0%} | {r['numba_pct_of_stream_read']:.0f}% | {r['numba_speedup_over_numpy']:.1f}x |"
            for r in res["bitmap"]]
    c = res["compile"]
    out += ["", "| numba `warm_up_kernels()`, fresh process | seconds | import dirtysim.sim s | process wall s |",
            "|---|---:|---:|---:|"]
    out += [f"| {label} | {c[key]['warm_up_kernels_s']:.3f} | {c[key]['import_s']:.3f} | {c[key]['process_wall_s']:.2f} |"
            for key, label in (("cold", "cold compile (empty cache dir)"), ("cached", "cached load (2nd process)"))]
    out += ["", "| scenario | status | sim s | wall s | sim-speed | compile s | events | syncs | lost pages | peak RSS MiB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in res["scenarios"].items():
        out.append(f"| {name} | {s['status']} ({s['stop_reason']}) | {s['sim_time_s']:.2f} | {s['wall_time_s']:.2f} | "
                   f"{s['sim_speed']:.2f} | {s['compile_time_s']:.3f} | {s['events']} | {s['dirty_sync_count']} | "
                   f"{s['lost_pages']} | {s['peak_rss_mib']:.0f} |")
    out += ["", f"load average at start {m['loadavg_at_start'][0]:.2f}, at end {res['loadavg_at_end'][0]:.2f}; "
                f"whole run {res['total_wall_s']:.0f} s. Scenario compile s = cached load (same numba cache dir)."]
    return "\n".join(out)


def main() -> None:
    t0 = time.perf_counter()
    res = {"machine": machine_info(),
           "protocol": {"runs": RUNS, "warmups": WARMUPS, "words": WORDS, "streamed_bytes": STREAMED_BYTES,
                        "scratch_bytes": SCRATCH_WORDS * 8, "numpy_block_words": NUMPY_BLOCK, "gb": 1e9}}
    # Children first: Linux keeps the parent's RSS high-water mark in a child's ru_maxrss across
    # fork+exec, so spawning after the 450 MiB of bitmap arrays would inflate the children's peak RSS.
    with tempfile.TemporaryDirectory(prefix="dirtysim-numba-cache-") as cache_dir:
        res["compile"] = bench_compile(cache_dir)
        res["scenarios"] = bench_scenarios(cache_dir)
    res["bitmap"] = bench_bitmaps()
    res["loadavg_at_end"] = os.getloadavg()
    res["total_wall_s"] = time.perf_counter() - t0
    write_atomic(RESULTS, (json.dumps(res, indent=2) + "\n").encode())
    print(markdown(res))


if __name__ == "__main__":
    main()
