"""``dirtysim`` command line: run | compare | dirtyrate | validate | schema | listeners | sweep | replay | trace |
calibrate.

Exit codes: 0 ok, 2 bad input or an unusable output directory (nothing was
simulated), 1 the simulation failed, lost pages (its result record is still
written) or the outputs could not be written, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path

import click

from .scenario.load import ScenarioError, load_scenario, scenario_json_schema, scenario_yaml

EXIT_OK, EXIT_SIM_ERROR, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130  # 130: 128 + SIGINT, as shells report it


def _load(file: str, overrides=(), seed=None):
    try:
        return load_scenario(file, overrides, seed)
    except ScenarioError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_BAD_INPUT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dirtysim")
def main() -> None:
    """Simulate QEMU/KVM dirty-page tracking and precopy live migration."""


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "outdir", type=click.Path(), help="output directory")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="override a scenario key")
@click.option("--seed", type=int, help="override the scenario seed")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: when stderr is a TTY)")
def run(file: str, outdir: str | None, overrides: tuple[str, ...], seed: int | None, progress: bool | None) -> None:
    """Run the scenario FILE; write summary.json, rounds.csv, vcpus.csv, guest.csv, events.jsonl, convergence.png.

    The output directory is locked and checked before the run, and written whole
    or not at all (see dirtysim/report/files.py). Ctrl-C stops the simulation and
    writes what was simulated, with status cancelled (stop reason interrupted): exit 130.
    """
    from .report.files import write_run
    from .sim import run as simulate

    scenario = _load(file, overrides, seed)
    out = _output_dir(file, scenario, outdir)
    with _claim(out) as target:
        result = _writing(target, lambda: simulate(scenario, progress=progress))
        summary = _writing(target, lambda: write_run(result, target))
    if result.stop_reason == "interrupted":
        below_bar = "\n" if (sys.stderr.isatty() if progress is None else progress) else ""
        click.echo(f"{below_bar}interrupted at {result.sim_time_ns / 1e9:.3f} simulated s: partial results in {out}/ "
                   f"(status {summary['status']}, {summary['ram']['dirty-sync-count']} syncs)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    _print_summary(summary, out)
    lost = summary["dirtysim"]["lost-pages"]
    wrong = scenario.dirty_tracking.wrong_semantics()
    if lost and wrong:
        click.echo(f"                  (expected: deliberately wrong {', '.join(wrong)})")
    sys.exit(EXIT_SIM_ERROR if result.error or (lost and not wrong) else EXIT_OK)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", "outdir", default="out/compare", show_default=True, type=click.Path(),
              help="output directory")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="override a key of every scenario")
@click.option("--seed", type=int, help="override every scenario's seed")
@click.option("--progress/--no-progress", default=None, help="progress bars (default: when stderr is a TTY)")
def compare(files: tuple[str, ...], outdir: str, overrides: tuple[str, ...], seed: int | None,
            progress: bool | None) -> None:
    """Run each scenario of FILES and compare them side by side.

    Each run's usual files go to OUTPUT/<name>/ (name: the scenario's, by default
    its file name); OUTPUT/compare.csv (also printed) has one row per run and
    OUTPUT/compare.png overlays their remaining bytes, dirty rate against
    bandwidth, throttles and guest slowdown (drawn unless every scenario has
    outputs.plots false). Every file is checked and every output directory locked
    before the first run; exit codes as for run.
    """
    from .report.compare import COMPARE_FILES, FIELDS, Comparison, duplicate_names, markdown
    from .report.files import child, write_run
    from .sim import run as simulate

    scenarios = [(file, _load(file, overrides, seed)) for file in files]  # a file given twice is a clash too
    clash = duplicate_names((file, s.name) for file, s in scenarios)
    if clash:
        _fail(clash, EXIT_BAD_INPUT)
    root = Path(outdir)
    comparison = Comparison(plots=any(s.outputs.plots for _, s in scenarios))
    failed = False
    with contextlib.ExitStack() as stack:
        top = stack.enter_context(_claim(root))
        targets = [stack.enter_context(_claim(child(root, s.name, "name"))) for _, s in scenarios]
        for target, (file, scenario) in zip(targets, scenarios):
            result = _writing(target, functools.partial(simulate, scenario, progress=progress))
            summary = _writing(target, functools.partial(write_run, result, target))
            comparison.add(scenario.name, result.events, summary)
            if result.stop_reason == "interrupted":
                _fail(f"interrupted: the runs so far are in {root}/<name>/ ({scenario.name} with status cancelled)",
                      EXIT_INTERRUPTED)
            lost, wrong = summary["dirtysim"]["lost-pages"], scenario.dirty_tracking.wrong_semantics()
            failed = failed or result.error is not None or bool(lost and not wrong)
        made = _writing(top, comparison.files)
        _writing(top, functools.partial(top.commit, made, COMPARE_FILES))
    click.echo(markdown(comparison.rows, FIELDS))
    click.echo(f"\noutputs: {root}/<name>/ and {root}/{', '.join(made)}")
    sys.exit(EXIT_SIM_ERROR if failed else EXIT_OK)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--mode", default="page-sampling", show_default=True,
              help="page-sampling | dirty-bitmap | dirty-ring (QEMU's calc-dirty-rate modes), or dirtysim's "
                   "x-sampled-wp | x-wss-curve")
@click.option("--calc-time", default=1, show_default=True, help="measurement time, in --calc-time-unit")
@click.option("--calc-time-unit", default="second", show_default=True, help="second | millisecond")
@click.option("--sample-pages", type=int, help="samples per GiB (page-sampling; QEMU's default 512, 128..16384)")
@click.option("--x-sample-shift", type=int, help="x-sampled-wp, x-wss-curve: protect one page in 2^N (0..6; 6)")
@click.option("--start", default="1s", show_default=True, help="simulated time at which the measurement starts")
@click.option("-o", "--output", "outdir", type=click.Path(), help="also write dirtyrate.json and events.jsonl here")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="override a scenario key")
@click.option("--seed", type=int, help="override the scenario seed")
def dirtyrate(file: str, mode: str, calc_time: int, calc_time_unit: str, sample_pages: int | None,
              x_sample_shift: int | None, start: str, outdir: str | None, overrides: tuple[str, ...],
              seed: int | None) -> None:
    """Measure the dirty rate of the guest of scenario FILE as QEMU's calc-dirty-rate does (no migration).

    Prints query-dirty-rate's answer and, beside it, the truth from the page
    oracle over the same window (pages written, pages whose content changed,
    page writes with repeats) as JSON.
    """
    from .dirtyrate.config import DirtyRateConfig, DirtyRateError, check_run, tracking_flags
    from .dirtyrate.report import ground_truth, query_dirty_rate
    from .dirtyrate.thread import BUILT_MODES
    from .report.files import write_dirtyrate
    from .scenario.units import parse_duration
    from .sim import run_dirtyrate

    scenario = _load(file, overrides, seed)
    try:
        start_ns = parse_duration(start)
    except ValueError as exc:
        _fail(f"--start: {exc}", EXIT_BAD_INPUT)
    if start_ns < 0:
        _fail(f"--start: must not be negative (got {start})", EXIT_BAD_INPUT)
    try:
        config = DirtyRateConfig.from_qmp(calc_time, calc_time_unit, sample_pages, mode, sample_shift=x_sample_shift,
                                          **tracking_flags(scenario))
    except DirtyRateError as exc:
        _fail(f"calc-dirty-rate: {exc}", EXIT_BAD_INPUT)
    try:
        check_run(scenario, start_ns, config.calc_time_ms)
    except DirtyRateError as exc:
        _fail(f"--start: {exc}", EXIT_BAD_INPUT)
    if mode not in BUILT_MODES:
        _fail(f"--mode: {mode} is not built yet (built: {', '.join(BUILT_MODES)})", EXIT_BAD_INPUT)
    result = run_dirtyrate(scenario, config, start_ns, progress=False)
    record = {"query-dirty-rate": query_dirty_rate(result.events, calc_time_unit),
              "truth": ground_truth(result.events),
              "simulation": {"seed": scenario.seed, "fingerprint": result.fingerprint, "error": result.error,
                             "wall-time-s": round(result.wall_time_s, 3), "sim-speed": round(result.sim_speed, 3)}}
    if outdir:
        with _claim(Path(outdir)) as target:
            _writing(target, lambda: write_dirtyrate(result, target, record))
    click.echo(json.dumps(record, indent=2))
    if result.error:
        _fail(f"error: {result.error}", EXIT_SIM_ERROR)


@main.group()
def bench() -> None:
    """Benchmarks of dirtysim's models against their ground truth."""


@bench.command("dirtyrate")
@click.option("-o", "--output", "outdir", default="out/bench-dirtyrate", show_default=True, type=click.Path(),
              help="where rows.csv, summary.csv, summary.md and estimates.png go")
@click.option("--quick", is_flag=True, help="2 workloads x 1 calc-time x 3 seeds on 1 GiB (about a minute on 2 cores)")
@click.option("--seeds", default=5, show_default=True, type=click.IntRange(1, 1000), help="seeds per cell")
@click.option("--size", default="4GiB", show_default=True, help="guest RAM")
@click.option("--workers", type=click.IntRange(1, 256), help="parallel processes (default: one per core)")
def bench_dirtyrate(outdir: str, quick: bool, seeds: int, size: str, workers: int | None) -> None:
    """Every dirty-rate estimator on workloads x calc-times x seeds: error against each truth, guest overhead."""
    from .dirtyrate import bench as B
    from .report.files import json_bytes
    from .report.plots import dirtyrate_figure, figure_png
    from .scenario.units import parse_size

    try:
        parse_size(size)
    except ValueError as exc:
        _fail(f"--size: {exc}", EXIT_BAD_INPUT)
    workloads, calc_times = (["uniform", "identical-rewrites"], [1000]) if quick else (list(B.WORKLOADS), [250, 1000, 4000])
    if quick:
        seeds, size = 3, "1GiB"
    with _claim(Path(outdir)) as target:
        rows = B.run_matrix(workloads, calc_times, list(range(1, seeds + 1)), size, B.MODES, workers,
                            progress=sys.stderr.isatty())
        summary = B.summarize(rows)
        preds = B.run_predictions(workloads, list(range(1, seeds + 1)), size, B.MODES, workers)
        pred_summary = B.summarize_predictions(preds)
        files = {"rows.csv": B.csv_text(rows).encode(), "summary.csv": B.csv_text(summary).encode(),
                 "summary.md": B.markdown(summary).encode(), "predictions.csv": B.csv_text(preds).encode(),
                 "predictions.md": B.markdown(pred_summary).encode(),
                 "estimates.png": figure_png(dirtyrate_figure([r for r in rows if r["seed"] == 1 and
                                                               r["calc-time-ms"] == 1000])),
                 "run.json": json_bytes({"workloads": workloads, "calc-times-ms": calc_times, "seeds": seeds,
                                         "size": size, "modes": B.MODES})}
        _writing(target, lambda: target.commit(files, list(files)))
    click.echo(B.markdown(summary), nl=False)
    click.echo(B.markdown(pred_summary), nl=False)
    click.echo(f"outputs           {outdir}/  ({', '.join(sorted(files))})")


def _output_dir(file: str, scenario, outdir: str | None) -> Path:
    """-o, else the scenario's ``outputs.dir`` (relative, inside the working directory), else out/<name>."""
    from .report.files import OutputError, child

    if outdir:
        return Path(outdir)
    chosen = scenario.outputs.dir
    if chosen is not None:
        if Path(chosen).is_absolute() or ".." in Path(chosen).parts or "\0" in chosen:
            _fail(f"{file}: outputs.dir: must be a relative path inside the working directory (got {chosen!r}); "
                  "use -o to write elsewhere", EXIT_BAD_INPUT)
        return Path(chosen)
    try:
        return child(Path("out"), scenario.name, "name")
    except OutputError as exc:
        _fail(f"{file}: {exc}", EXIT_BAD_INPUT)


@contextlib.contextmanager
def _claim(out: Path):
    """The locked output directory; not usable (not writable, another run in it) -> one line, exit 2."""
    from .report.files import OutputDir, OutputError

    try:
        target = OutputDir(out).__enter__()
    except OutputError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    try:
        yield target
    finally:
        target.__exit__()


def _writing(target, work):
    """Run ``work``; a failed write is one line and exit 1, Ctrl-C outside the simulation exit 130."""
    from .report.files import OutputError

    try:
        return work()
    except OutputError as exc:
        _fail(str(exc), EXIT_SIM_ERROR)
    except KeyboardInterrupt:
        state = "holds the new files" if target.committed else "keeps its previous files"
        _fail(f"interrupted: {target.path}/ {state}", EXIT_INTERRUPTED)


def _fail(message: str, code: int):
    click.echo(message, err=True)
    sys.exit(code)


def _print_summary(s: dict, out: Path) -> None:
    d, ram = s["dirtysim"], s["ram"]
    mib = 1 << 20
    lines = [
        f"status            {s['status']} (stop reason: {d['stop-reason']})",
        f"total-time        {s['total-time']} ms   setup-time {s.get('setup-time', '-')} ms   "
        f"downtime {s.get('downtime', '-')} ms",
        f"transferred       {ram['transferred'] / mib:.1f} MiB of {ram['total'] / mib:.0f} MiB RAM   "
        f"(normal {ram['normal']} pages, duplicate {ram['duplicate']} zero pages)",
        f"dirty-sync-count  {ram['dirty-sync-count']}   mbps {ram['mbps']}",
        f"lost-pages        {d['lost-pages']}",
        f"simulation        seed {d['seed']}, fingerprint {d['fingerprint']}, {d['wall-time-s']} s wall "
        f"(+{d['compile-time-s']} s kernel load), {d['sim-speed']} sim-s per wall-s",
    ]
    if "postcopy-faults" in d:
        blocktime = s.get("destination", {}).get("postcopy-blocktime", "-")
        lines.insert(4, f"postcopy          {d['postcopy-ms']} ms, {ram['postcopy-requests']} requests, "
                        f"{d['postcopy-faults']} faults, blocktime {blocktime} ms, guest downtime "
                        f"{d['guest-downtime-ms']} ms")
    if s.get("error-desc"):
        lines.insert(1, f"error             {s['error-desc']}")
    click.echo("\n".join(lines))
    files = ", ".join(p.name for p in sorted(out.iterdir()) if not p.name.startswith("."))
    click.echo(f"outputs           {out}/  ({files})")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE")
def validate(file: str, overrides: tuple[str, ...]) -> None:
    """Check FILE against the schema; print the resolved scenario as YAML (itself a valid scenario)."""
    scenario = _load(file, overrides)
    click.echo(scenario_yaml(scenario), nl=False)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--trace", is_flag=True, help="also apply the timeline's map actions and print the hook calls each "
                                           "listener acts on (as its QEMU counterpart: vfio skips MMIO, kvm-memory "
                                           "queues only memslot sections, ...)")
@click.option("--all-hooks", is_flag=True, help="with the timeline, print every hook call, acted on or not")
@click.option("--vfio-trace", is_flag=True, help="with the timeline, print each vfio listener's decisions as QEMU's "
                                                "trace events (vfio_listener_region_add_ram, _del, _skip)")
def listeners(file: str, trace: bool, all_hooks: bool, vfio_trace: bool) -> None:
    """Print the memory listeners FILE's machine registers (name, address space, priority), in order."""
    import numpy as np
    import simpy

    from .events import schema as ev
    from .events.log import Recorder
    from .machine import Machine
    from .timeline import MIGRATION_ACTIONS, apply_action

    scenario = _load(file)
    if vfio_trace and not any(d.kind == "vfio-pci" for d in scenario.machine.devices):
        _fail(f"--vfio-trace: {file} has no vfio-pci device in machine.devices, so no vfio listener to trace",
              EXIT_BAD_INPUT)
    env = simpy.Environment()
    rec = Recorder(lambda: env.now)
    acted: set[int] = set()  # id() of the ListenerCall events the listener acted on

    def observe(event: ev.ListenerCall, did: bool) -> None:
        if did:
            acted.add(id(event))

    machine = Machine(env, scenario, rec, np.random.SeedSequence(scenario.seed), on_listener_call=observe)
    for e in rec.events:
        if isinstance(e, ev.ListenerRegistered):
            click.echo(f"{e.listener:<14} {e.address_space:<16} priority {e.priority}")
    if not (trace or all_hooks or vfio_trace):
        return
    shown = 0
    vfio = machine.vfio_container if vfio_trace else None  # the one container of address_space_memory
    traced = 0

    def hook_calls():
        nonlocal shown, traced
        for e in rec.events[shown:]:
            if isinstance(e, ev.ListenerCall) and (trace or all_hooks) and (all_hooks or id(e) in acted):
                masks = f" log {e.old_mask:#x}->{e.new_mask:#x}" if e.hook in ("log_start", "log_stop") else ""
                where = f" {e.section or '-'} @{e.offset:#x}+{e.size:#x}" if e.section is not None or e.size else ""
                click.echo(f"  {e.listener:<14} {e.hook:<16}{where}{masks}")
            elif isinstance(e, ev.TimelineAction):
                click.echo(f"  -> {e.action} {e.target}: {e.result}")
        shown = len(rec.events)
        if vfio is not None:
            for line in vfio.trace[traced:]:
                click.echo(f"  {line}")
            traced = len(vfio.trace)

    click.echo("\n# machine creation")
    hook_calls()
    for entry in sorted(scenario.timeline, key=lambda e: e.at):
        kind, act = entry.action
        click.echo(f"\n# at {entry.at / 1e9:g}s: {kind} {act.model_dump(mode='json')}")
        if kind in MIGRATION_ACTIONS:  # no migration here: nothing for a listener
            click.echo("  -> not a memory-map action: skipped")
            continue
        apply_action(entry, scenario, machine, False, rec)
        hook_calls()


@main.command()
def schema() -> None:
    """Print the JSON Schema of scenario files."""
    click.echo(json.dumps(scenario_json_schema(), indent=2))


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("variants_file", metavar="[VARIANTS]", required=False, type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", "outdir", type=click.Path(), help="output directory")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="override for every run")
@click.option("-j", "--jobs", type=click.IntRange(1, 4096), help="local processes (default: one per core)")
@click.option("--scheduler", metavar="tcp://HOST:PORT", help="run on this existing dask.distributed cluster")
@click.option("--dask-local", type=click.IntRange(1, 4096), metavar="N",
              help="start a dask LocalCluster of N worker processes and run on it")
@click.option("--keep-runs", is_flag=True, help="also write each run's files (rounds, events, ...) to OUTPUT/runs/<key>/")
@click.option("--plots/--no-plots", default=True, show_default=True,
              help="heatmaps.png over two swept dimensions, lines.png over one")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: when stderr is a TTY)")
def sweep(file: str, variants_file: str | None, outdir: str | None, overrides: tuple[str, ...], jobs: int | None,
          scheduler: str | None, dask_local: int | None, keep_runs: bool, plots: bool, progress: bool | None) -> None:
    """Run the sweep FILE (a SWEEP.yaml: base scenario, axes, seeds, variants; see README "Sweeps").

    Writes OUTPUT/results.parquet (one row per run; dirtysim.load_sweep reads it),
    OUTPUT/rows/<key>.json as each run ends (a second invocation runs only the
    runs without one), and with --keep-runs each run's files. Exit 0 when every
    run ran as its scenario intends, 1 when any failed or lost pages under correct
    semantics (the sweep still finishes), 2 for bad input (nothing ran), 130 on Ctrl-C.

    The former form, FILE a scenario and VARIANTS its named variants, runs them one
    after another and writes OUTPUT/<variant>/, comparison.csv and compare's files.
    """
    if variants_file is not None:
        given = [name for name, value in [("--jobs", jobs), ("--scheduler", scheduler), ("--dask-local", dask_local),
                                          ("--keep-runs", keep_runs), ("--no-plots", not plots),
                                          ("--progress", progress is not None)] if value]
        if given:
            _fail(f"{', '.join(given)}: only with a SWEEP.yaml (the SCENARIO VARIANTS form runs its variants in "
                  f"order, here)", EXIT_BAD_INPUT)
        _sweep_variants(file, variants_file, outdir, overrides)
        return
    from .sweepplan import load_plan
    from .sweeprun import DaskPool, LocalPool, RESULTS, execute

    if scheduler is not None and dask_local:
        _fail("--scheduler and --dask-local: give one (an existing cluster, or one to start here)", EXIT_BAD_INPUT)
    if scheduler is not None and not scheduler.strip():
        _fail("--scheduler: expected the address of a dask scheduler (got ''; allowed: e.g. tcp://HOST:8786)",
              EXIT_BAD_INPUT)
    try:
        plan = load_plan(file, overrides)
    except ScenarioError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    out = Path(outdir or f"out/{Path(file).stem}")
    show = sys.stderr.isatty() if progress is None else progress
    with _claim(out):
        try:
            pool = DaskPool(scheduler, dask_local) if scheduler or dask_local else LocalPool(jobs)
        except Exception as exc:  # noqa: BLE001 - no scheduler there (a timeout), not an address, a scheme
            # distributed cannot use here (ucx:// without ucx raises TypeError): bad input, never a traceback
            given = (f"--scheduler {scheduler}: cannot connect" if scheduler
                     else f"--dask-local {dask_local}: cannot start")
            _fail(f"{given}: {type(exc).__name__}: {exc}", EXIT_BAD_INPUT)
        try:
            rows, new = execute(plan, out, pool, keep=keep_runs, progress=show)
            figures = _sweep_figures(out) if plots else []
        except KeyboardInterrupt:
            _fail(f"interrupted: the finished runs are in {out}/{RESULTS}; run the same command again to run the rest",
                  EXIT_INTERRUPTED)
        except OSError as exc:
            _fail(f"{out}: cannot write: {exc}", EXIT_SIM_ERROR)
        finally:
            pool.close()
    failed = [r for r in rows if r["failed"]]
    click.echo(f"{len(rows)} runs ({new} run now, {len(rows) - new} already done) on {pool.workers} workers: "
               f"{sum(r['converged'] is True for r in rows)} converged, {len(failed)} failed")
    click.echo(f"outputs: {out}/{RESULTS}" + "".join(f", {out}/{name}" for name in figures))
    if failed:
        shown = "; ".join(f"{r['key']} ({r['error'] or str(r['lost-pages']) + ' lost pages'})" for r in failed[:5])
        shown += "; ..." if len(failed) > 5 else ""
        _fail(f"{len(failed)} of {len(rows)} runs did not run as their scenario intends (an error, or pages lost "
              f"under correct semantics): {shown}", EXIT_SIM_ERROR)


def _sweep_figures(out: Path) -> list[str]:
    """The sweep's figures; without pandas (the ``[pandas]`` extra) a note instead of them."""
    from .sweeprun import write_sweep_figures

    try:
        return write_sweep_figures(out)
    except ImportError as exc:
        click.echo(f"no figures: {exc}", err=True)
        return []


def _sweep_variants(file: str, variants_file: str, outdir: str | None, overrides: tuple[str, ...]) -> None:
    """``dirtysim sweep SCENARIO VARIANTS``: the variants in order, with a comparison table."""
    from .sweep import failures, load_variants, markdown, run_variants

    from .report.compare import COMPARE_FILES
    from .report.files import OutputError

    try:
        variants = load_variants(variants_file)
        out = Path(outdir or f"out/{Path(file).stem}-sweep")
        rows = run_variants(file, variants, out, overrides)
    except ScenarioError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except OutputError as exc:
        _fail(str(exc), EXIT_SIM_ERROR)
    except KeyboardInterrupt:
        _fail(f"interrupted: the variants run so far are in {out}/ (the one interrupted with status cancelled)",
              EXIT_INTERRUPTED)
    click.echo(markdown(rows))
    overlay = "".join(f", {n}" for n in COMPARE_FILES if (out / n).exists())
    click.echo(f"\noutputs: {out}/<variant>/ and {out}/comparison.csv{overlay}")
    failed = failures(rows)
    if failed:
        _fail(f"{len(failed)} of {len(rows)} variants did not run as their scenario intends (an error, or pages "
              f"lost under correct semantics): {', '.join(failed)}", EXIT_SIM_ERROR)


@main.command()
@click.argument("events", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "outdir", type=click.Path(), required=True)
def replay(events: str, outdir: str) -> None:
    """Check a saved events.jsonl, then recompute rounds.csv, vcpus.csv, guest.csv, summary.json and the plot from it."""
    from .report.files import write_replay

    _, log = _read_log(events)
    with _claim(Path(outdir)) as target:
        summary = _writing(target, lambda: write_replay(log, target))
    click.echo(f"replayed {len(log)} events -> {outdir}/ (status {summary['status']}, "
               f"fingerprint {summary['dirtysim']['fingerprint']})")


@main.command()
@click.argument("events", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False),
              help="trace file (default: trace.json beside EVENTS)")
def trace(events: str, output: str | None) -> None:
    """Write a checked events.jsonl as Chrome trace JSON for the Perfetto UI (ui.perfetto.dev)."""
    from .report.files import write_atomic
    from .report.trace import trace_bytes

    _, log = _read_log(events)
    path = Path(output) if output else Path(events).with_name("trace.json")
    try:
        write_atomic(path, trace_bytes(log))
    except OSError as exc:
        _fail(f"{path}: cannot write: {exc.strerror}", EXIT_SIM_ERROR)
    click.echo(f"{path}  ({len(log)} events; open it in https://ui.perfetto.dev)")


@main.command()
@click.option("--quick", is_flag=True, help="64 MiB of pages, 3 runs per cost, short socket runs (a few seconds; "
                                            "rougher numbers)")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="also write the block to this file")
def calibrate(quick: bool, output: str | None) -> None:
    """Measure this machine's per-page sending costs; print them as a scenario `costs:` block.

    Zero check, page send over loopback TCP, zlib and (with a zstd module)
    zstd compression, each the median of several runs; the costs it cannot
    measure keep their defaults, marked so.
    """
    from .calibrate import FULL, QUICK, CalibrationError, costs_yaml, measure
    from .report.files import write_atomic

    if output == "":
        _fail("--output: an empty path (allowed: a file name, e.g. costs.yaml)", EXIT_BAD_INPUT)
    path = Path(output) if output else None
    if path is not None and not path.parent.is_dir():
        _fail(f"--output: directory {path.parent} does not exist", EXIT_BAD_INPUT)
    if path is not None and not os.access(path.parent, os.W_OK):
        _fail(f"--output: directory {path.parent} is not writable", EXIT_BAD_INPUT)
    try:
        block = costs_yaml(measure(QUICK if quick else FULL))
    except (CalibrationError, OSError) as exc:
        _fail(f"calibrate: {exc}", EXIT_SIM_ERROR)
    except KeyboardInterrupt:
        _fail("interrupted: nothing written", EXIT_INTERRUPTED)
    if path is not None:
        try:
            write_atomic(path, block.encode())
        except OSError as exc:
            _fail(f"{path}: cannot write: {exc.strerror}", EXIT_SIM_ERROR)
    click.echo(block, nl=False)


def _read_log(path: str):
    """The checked header and events of a log; a bad log is one ``FILE:LINE: message`` and exit 2."""
    from .events.replay import LogError, read_log

    try:
        return read_log(path)
    except LogError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
