"""dirtysim benchmarks: kernels, end-to-end scenarios, scaling curves and the quantum study, in one run.

Not a test: every figure is a measurement, written with the machine and the
load average to ``DIR/results.json``, ``DIR/results.md`` and PNG plots (each
file atomically). Run ``make bench`` or ``.venv/bin/python benchmarks/run.py
[--quick] [--only SECTION] [--output DIR]``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernels  # noqa: E402
import quantum  # noqa: E402
import scaling  # noqa: E402
import scenarios  # noqa: E402
from common import ROOT, machine_info, write_json, write_text  # noqa: E402

# Fresh-process sections first: Linux keeps the parent's RSS high-water mark in a child's
# ru_maxrss across fork+exec, so the children run before the parent allocates the kernels' bitmaps
# (the children also report their own VmHWM).
SECTIONS = {"scenarios": scenarios, "scaling": scaling, "quantum": quantum, "kernels": kernels}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", type=Path, default=ROOT / "out" / "bench", help="output directory (default out/bench)")
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the code works (< 2 min)")
    ap.add_argument("--only", choices=SECTIONS, action="append", help="run only this section (repeatable)")
    args = ap.parse_args(argv)
    chosen = args.only or list(SECTIONS)
    t0 = time.perf_counter()
    res = {"machine": machine_info(), "quick": args.quick, "loadavg_at_start": os.getloadavg(), "sections": {}}
    # One numba cache for every child, filled (and the cold compile timed) before the timed runs.
    with tempfile.TemporaryDirectory(prefix="dirtysim-numba-cache-") as cache_dir:
        if set(chosen) - {"kernels"}:
            res["compile"] = scenarios.bench_compile(cache_dir)
        for name in SECTIONS:
            if name not in chosen:
                continue
            s0 = time.perf_counter()
            mod = SECTIONS[name]
            res["sections"][name] = mod.run(args.quick) if name == "kernels" else mod.run(args.quick, cache_dir)
            res["sections"][name]["section_wall_s"] = time.perf_counter() - s0
            print(f"[{name}: {res['sections'][name]['section_wall_s']:.0f} s]", file=sys.stderr, flush=True)
    res["loadavg_at_end"] = os.getloadavg()
    res["total_wall_s"] = time.perf_counter() - t0
    args.output.mkdir(parents=True, exist_ok=True)
    if "scaling" in res["sections"]:
        res["sections"]["scaling"]["plots"] = scaling.plot(res["sections"]["scaling"], args.output)
    write_json(args.output, "results.json", res)
    md = markdown(res)
    write_text(args.output, "results.md", md + "\n")
    print(md)
    print(f"\nwritten: {args.output}/results.json, results.md"
          + "".join(f", {p}" for p in res["sections"].get("scaling", {}).get("plots", [])))


def markdown(res: dict) -> str:
    m = res["machine"]
    out = [f"## dirtysim benchmarks{' (--quick)' if res['quick'] else ''}, {m['date']}, commit {m['git_commit']}", "",
           f"{m['cpu_model']} ({m['usable_cpus']} CPUs, AVX-512 {'yes' if m['avx512'] else 'no'}), "
           f"Python {m['python']}, numpy {m['numpy']}, numba {m['numba']}; load average "
           f"{res['loadavg_at_start'][0]:.2f} at start, {res['loadavg_at_end'][0]:.2f} at end; "
           f"whole run {res['total_wall_s']:.0f} s."]
    if "compile" in res:
        out += ["", scenarios.compile_markdown(res["compile"])]
    for name, section in res["sections"].items():
        out += ["", SECTIONS[name].markdown(section)]
    return "\n".join(out)


if __name__ == "__main__":
    main()
