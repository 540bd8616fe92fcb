"""Where the time of one simulation goes: cProfile of ``sim.run`` split into engine Python, RNG, numba, SimPy.

``python benchmarks/profile_run.py SCENARIO [--top N]`` runs the scenario once
in this process (kernels loaded first, outputs not written) and prints the
shares and the top functions by own time. numba's dispatcher makes a frame
for each compiled call while a profiler runs, so a kernel's time is the own
time of its entry in ``dirtysim/dirty/kernels.py``. numpy's Generator methods
are Cython, invisible to cProfile: ``np.random.default_rng`` (how the machine
makes each stream) is replaced by a subclass whose methods are Python frames
over the same bit generator, so the streams are unchanged. The profiler slows the
Python side; the shares, not the wall time, are the result. The sim-speed
printed is from an unprofiled run before the profiled one.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np

from dirtysim.scenario.load import load_scenario
from dirtysim.sim import run, warm_up_kernels

RNG_METHODS = ("random", "integers", "exponential", "standard_normal", "normal", "uniform", "choice", "permutation",
               "shuffle", "poisson", "binomial")


class ProfiledGenerator(np.random.Generator):
    """``np.random.Generator`` whose drawing methods cProfile can see (each calls the Cython one)."""


for _name in RNG_METHODS:
    def _method(self, *args, _name=_name, **kwargs):
        return getattr(np.random.Generator, _name)(self, *args, **kwargs)
    _method.__code__ = _method.__code__.replace(co_name=f"rng.{_name}")  # the name cProfile reports
    setattr(ProfiledGenerator, _name, _method)


def profiled_rng(seed=None) -> ProfiledGenerator:
    return ProfiledGenerator(np.random.PCG64(seed))


CATEGORIES = ("guest loop (dirtysim/guest, Python)", "migration loop (dirtysim/migration, Python)",
              "event log (dirtysim/events, Python)", "other dirtysim Python (setup, accel, memory)",
              "RNG (numpy.random)", "numba kernels", "SimPy", "numpy (other)", "other (builtins, stdlib)")


def category(file: str, func: str) -> str:
    """The part of the program a function belongs to (by its file; RNG and numpy by name)."""
    if file.endswith("dirtysim/dirty/kernels.py"):
        return "numba kernels"
    if func.startswith("rng.") or "numpy/random" in file or "numpy.random" in func:
        return "RNG (numpy.random)"
    if "/simpy/" in file:
        return "SimPy"
    for part, cat in (("/dirtysim/guest/", CATEGORIES[0]), ("/dirtysim/migration/", CATEGORIES[1]),
                      ("/dirtysim/events/", CATEGORIES[2]), ("/dirtysim/", CATEGORIES[3])):
        if part in file:
            return cat
    if "numpy" in file or "numpy" in func:
        return "numpy (other)"
    return "other (builtins, stdlib)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--runs", type=int, default=3, help="unprofiled runs for the sim-speed (median)")
    args = ap.parse_args()
    scenario = load_scenario(args.scenario)
    np.random.default_rng = profiled_rng
    warm_up_kernels()
    plain = [run(scenario, progress=False) for _ in range(args.runs)]
    speeds = sorted(r.sim_speed for r in plain)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(run, scenario, progress=False)
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    shares = dict.fromkeys(CATEGORIES, 0.0)
    rows = []
    for (file, _line, func), (_cc, ncalls, tottime, _cum, _callers) in stats.stats.items():
        cat = category(file, func)
        shares[cat] = shares.get(cat, 0.0) + tottime
        rows.append((tottime, ncalls, f"{file.split('site-packages/')[-1].split('/work/')[-1]}:{func}", cat))
    total = sum(shares.values())
    print(f"{args.scenario}: sim-speed unprofiled {speeds[len(speeds) // 2]:.1f}x (median of {args.runs}; "
          f"best {speeds[-1]:.1f}x; {plain[0].sim_time_ns / 1e9:.2f} sim-s); profiled run {wall:.2f} s wall\n")
    print("| share of profiled time | % |\n|---|---:|")
    for cat, t in shares.items():
        print(f"| {cat} | {100 * t / total:.0f} |")
    print(f"\n| top functions by own time | calls | % | category |\n|---|---:|---:|---|")
    for tottime, ncalls, where, cat in sorted(rows, reverse=True)[:args.top]:
        print(f"| `{where}` | {ncalls} | {100 * tottime / total:.1f} | {cat} |")


if __name__ == "__main__":
    main()
