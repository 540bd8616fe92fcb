"""Shared helpers of the benchmark sections: the machine, output files, fresh-process scenario runs."""

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

from dirtysim.report.files import json_bytes, write_atomic

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "child.py"
MIB = 1 << 20
PAGE_SIZE = 4096


def machine_info() -> dict:
    """CPU, memory, versions, git commit, date: what a reader needs to compare two runs."""
    def field(path: str, key: str):
        lines = Path(path).read_text().splitlines()
        return next((ln.split(":", 1)[1].strip() for ln in lines if ln.split(":")[0].strip() == key), None)

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "cpu_model": field("/proc/cpuinfo", "model name"),
        "avx512": "avx512f" in (field("/proc/cpuinfo", "flags") or "").split(),
        "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "mem_total": field("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(), "python": platform.python_version(), "numpy": np.__version__,
        "numba": numba.__version__, "git_commit": git.stdout.strip() or None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_text(out: Path, name: str, text: str) -> None:
    write_atomic(out / name, text.encode())


def write_json(out: Path, name: str, obj) -> None:
    write_atomic(out / name, json_bytes(obj))


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as PNG, atomically (rendered to memory, then ``write_atomic``)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_atomic(path, buf.getvalue())


def median_time(fn, runs: int, warmups: int = 1, setup=None) -> list[float]:
    """Times (s) of ``runs`` calls of ``fn`` after ``warmups`` untimed ones; ``setup`` runs untimed before each."""
    times = []
    for i in range(warmups + runs):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        if i >= warmups:
            times.append(time.perf_counter() - t0)
    return times


def run_scenario(file: str, overrides: tuple[str, ...] = (), cache_dir: str | None = None) -> dict:
    """``dirtysim run FILE -o TMP [--set ...]`` in a fresh process; its summary.json plus process measures.

    The child (``child.py``) is the CLI itself; at exit it reports its own
    ``VmHWM`` and ``ru_maxrss`` (peak RSS) and CPU time. ``ru_maxrss`` is read in
    the child because a child's high-water mark seen from the parent (``wait4``)
    includes the parent's RSS at fork on Linux. Pages written are summed from
    rounds.csv (``vcpu-writes``) plus those after the last sync; pages sent are
    normal + zero pages.
    """
    env = dict(os.environ)
    if cache_dir:
        env["NUMBA_CACHE_DIR"] = cache_dir
    with tempfile.TemporaryDirectory(prefix="dirtysim-bench-") as tmp:
        stats = Path(tmp) / "process.json"
        env["DIRTYSIM_BENCH_STATS"] = str(stats)
        args = [sys.executable, str(CHILD), "run", file, "-o", str(Path(tmp) / "out"), "--no-progress"]
        for o in overrides:
            args += ["--set", o]
        t0 = time.perf_counter()
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        summary_path = Path(tmp) / "out" / "summary.json"
        if not summary_path.exists():
            raise RuntimeError(f"{file} {' '.join(overrides)}: no summary (exit {proc.returncode}):\n{proc.stderr}")
        s = json.loads(summary_path.read_text())
        process = json.loads(stats.read_text())
        written = _column_sum(Path(tmp) / "out" / "rounds.csv", "vcpu-writes") + process.pop("unsynced_writes")
    d, ram = s["dirtysim"], s["ram"]
    guest_pages = ram["total"] // PAGE_SIZE
    sent = ram["normal"] + ram["duplicate"]
    return {
        "file": file, "overrides": list(overrides), "exit_code": proc.returncode,
        "status": s["status"], "stop_reason": d["stop-reason"], "total_time_ms": s.get("total-time"),
        "sim_time_s": d["sim-speed"] * d["wall-time-s"], "wall_time_s": d["wall-time-s"], "sim_speed": d["sim-speed"],
        "compile_time_s": d["compile-time-s"], "fingerprint": d["fingerprint"], "lost_pages": d["lost-pages"],
        "events": d["events"], "syncs": ram["dirty-sync-count"],
        "downtime_ms": d["downtime-ns"] / 1e6 if d.get("downtime-ns") is not None else None,
        "transferred": ram["transferred"], "guest_pages": guest_pages,
        "pages_written": written, "pages_sent": sent,
        "process_wall_s": wall, **process,
        "rss_bytes_per_page": process["vm_hwm_mib"] * MIB / guest_pages,
    }


def _column_sum(path: Path, column: str) -> int:
    lines = path.read_text().splitlines()
    k = lines[0].split(",").index(column)
    return sum(int(float(ln.split(",")[k])) for ln in lines[1:] if ln)


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
