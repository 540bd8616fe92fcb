"""Run a sweep's plan on local processes or a Dask cluster, one code path, resumable.

``execute`` hands each run not yet finished to a ``Pool`` (``LocalPool``: a
process per core; ``DaskPool``: a ``distributed.Client``), and records each row
as it comes back as ``DIR/rows/<key>.json`` (atomic): a row on disk is a finished
run, so an interrupted sweep run again does only the rest. A run that fails is a
row with its error; a worker that dies is too (the local pool is restarted and
its runs tried once more; Dask retries on its own). ``DIR/results.parquet`` is
rebuilt from the rows of the plan at the end, and also when interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from . import __version__
from .migration.rate import rate_limit_max
from .report import sweepdata
from .report.files import write_atomic
from .sweepplan import Plan, Run

ROWS_DIR, RUNS_DIR, RESULTS = "rows", "runs", "results.parquet"


@dataclass
class Job:
    """What a worker needs for one run (pickled to it): the run, and where its files go if kept."""

    run: Run
    keep: str | None  # DIR/runs/<key>/ or None


def run_job(job: Job) -> dict:
    """Simulate one run and return its row; never raises (an exception outside the simulation is its error too)."""
    from .report.files import write_run
    from .report.tables import summary as summarize
    from .sim import run as simulate

    row = base_row(job.run)
    try:
        result = simulate(job.run.scenario, progress=False)
        summary = write_run(result, Path(job.keep)) if job.keep else summarize(result.events)
        row.update(sweepdata.summary_row(summary), error=result.error, fingerprint=result.fingerprint,
                   **{"wall-time-s": round(result.wall_time_s, 3), "sim-speed": round(result.sim_speed, 3)})
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row
        row["error"] = f"{type(exc).__name__}: {exc}"
    if row["status"] is None:
        row["status"] = "failed"
    row["failed"] = sweepdata.is_failed(row)
    return row


def base_row(run: Run) -> dict:
    """The columns known before the run (the rest null until it ends)."""
    s = run.scenario
    rates = [g.count * g.workload.rate for g in s.machine.vcpus if g.workload.kind != "trace" and not g.phases]
    limit = s.migration.max_bandwidth
    bandwidth = min(s.network.bandwidth, limit) if rate_limit_max(limit) else s.network.bandwidth  # 0: unlimited
    row = dict.fromkeys(sweepdata.NAMES)
    row.update(key=run.key, variant=run.variant, seed=run.seed, params=run.params, version=__version__,
               bandwidth=bandwidth, **{"write-rate": sum(rates) if len(rates) == len(s.machine.vcpus) else None,
                                      "wrong-semantics": ", ".join(s.dirty_tracking.wrong_semantics())})
    return row


def lost_row(run: Run, exc: BaseException) -> dict:
    row = base_row(run)
    row.update(status="failed", error=f"worker lost: {type(exc).__name__}: {exc}", failed=True)
    return row


class LocalPool:
    """Processes on this machine (``workers``: default one per core)."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 1
        self._pool = ProcessPoolExecutor(self.workers)

    def submit(self, fn: Callable, arg):
        return self._pool.submit(fn, arg)

    def as_completed(self, futures: Iterable):
        return as_completed(futures)

    def lost(self, exc: BaseException) -> bool:
        """A worker process died: the pool is broken, every run it held comes back with this."""
        if isinstance(exc, BrokenProcessPool):
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = ProcessPoolExecutor(self.workers)
            return True
        return False

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskPool:
    """A dask.distributed cluster: an existing one (``address``) or a LocalCluster of ``local`` processes.

    The workers need dirtysim installed (the same version: the run keys include it).
    """

    def __init__(self, address: str | None = None, local: int | None = None):
        from distributed import Client, LocalCluster

        self._cluster = LocalCluster(n_workers=local, threads_per_worker=1, processes=True,
                                     dashboard_address=None) if local else None
        self._client = Client(self._cluster if local else address)
        self.workers = len(self._client.scheduler_info()["workers"])

    def submit(self, fn: Callable, arg):
        return self._client.submit(fn, arg, pure=False)

    def as_completed(self, futures: Iterable):
        from distributed import as_completed as dask_completed

        return dask_completed(list(futures))

    def lost(self, exc: BaseException) -> bool:
        return False  # the scheduler already retried the run on other workers (distributed.scheduler.allowed-failures)

    def close(self) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()


def finished(outdir: Path) -> dict[str, dict]:
    """Rows already on disk, by key. A file that is not such a row (not UTF-8 JSON, not a mapping with every
    column, another key: edited, or another tool's) is not a finished run: its run runs again and replaces it."""
    rows = {}
    for path in (outdir / ROWS_DIR).glob("*.json"):
        try:
            row = json.loads(path.read_bytes().decode())
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(row, dict) and row.get("key") == path.stem and all(n in row for n in sweepdata.NAMES):
            rows[path.stem] = row
    return rows


def execute(plan: Plan, outdir: Path, pool, keep: bool = False, progress: bool = False) -> tuple[list[dict], int]:
    """Run every run of ``plan`` not finished in ``outdir``; returns (the plan's rows in order, runs done now).

    Ctrl-C (``KeyboardInterrupt``) writes the results so far, then propagates.
    """
    done = finished(outdir)
    todo = [r for r in plan.runs if r.key not in done]
    failed = sum(1 for r in plan.runs if r.key in done and done[r.key]["failed"])
    bar = _bar(len(plan.runs), len(plan.runs) - len(todo), failed, progress)
    new = 0

    def record(row: dict) -> None:
        nonlocal failed, new
        write_atomic(outdir / ROWS_DIR / f"{row['key']}.json", (json.dumps(row) + "\n").encode())
        done[row["key"]] = row
        new += 1
        failed += row["failed"]
        if bar is not None:
            bar.set_postfix_str(f"{failed} failed", refresh=False)
            bar.update(1)

    retry: list[Run] = []

    def run_all(runs: list[Run], first: bool) -> None:
        futures = {pool.submit(run_job, Job(r, str(outdir / RUNS_DIR / r.key) if keep else None)): r for r in runs}
        for future in pool.as_completed(futures):
            run = futures[future]
            try:
                row = future.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker is a row, never the end of the sweep
                if pool.lost(exc) and first:
                    retry.append(run)
                    continue
                row = lost_row(run, exc)
            if row["stop-reason"] == "interrupted":  # Ctrl-C reached the worker too: not a finished run
                raise KeyboardInterrupt
            record(row)

    try:
        run_all(todo, first=True)
        for run in retry:  # a broken pool's runs one by one: one that kills its worker again takes no other with it
            run_all([run], first=False)
    finally:
        if bar is not None:
            bar.close()
        rows = [done[r.key] for r in plan.runs if r.key in done]
        write_atomic(outdir / RESULTS, sweepdata.parquet_bytes(rows, plan.axes, plan.variants, plan.dims))
    return rows, new


def _bar(total: int, already: int, failed: int, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=already, unit="run", file=sys.stderr, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n}/{total} runs [{elapsed}<{remaining}, {rate_fmt}] {postfix}")
    bar.set_postfix_str(f"{failed} failed")
    return bar


def write_sweep_figures(outdir: Path) -> list[str]:
    """Draw ``report.sweepplots.sweep_figures`` of ``OUT/results.parquet`` into OUT (an earlier sweep's other
    figure goes); returns the names written."""
    from .report.plots import figure_png
    from .report.sweepplots import FIGURES, sweep_figures

    figures = sweep_figures(sweepdata.load(outdir))
    for name in FIGURES:
        if name in figures:
            write_atomic(outdir / name, figure_png(figures[name]))
        else:
            (outdir / name).unlink(missing_ok=True)
    return list(figures)
