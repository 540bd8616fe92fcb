"""``dirtysim sweep SWEEP.yaml``: expansion and validation before any run, resume by run key, the Parquet rows,
failures as rows, and the Dask path giving the local path's rows. Tiny guests (64 MiB, ~1 s simulated)."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

import dirtysim
from dirtysim.cli import main
from dirtysim.migration.precopy import PrecopyMigration
from dirtysim.report import sweepdata
from dirtysim.scenario.load import ScenarioError
from dirtysim.sweepplan import load_plan

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "name": "tiny", "seed": 1,
    "machine": {"memory": {"size": "64MiB"},
                "vcpus": [{"count": 1, "workload": {"kind": "hotset", "rate": "16MiB/s", "hot": "8MiB",
                                                    "hot_share": 0.9}}]},
    "network": {"bandwidth": "1Gbit/s"},
    "migration": {"start_at": "50ms", "max_bandwidth": "0B/s", "timeout": "1s"},
    "outputs": {"plots": False},
}
RATE = "machine.vcpus.0.workload.rate"
# the columns every sweep has, in order, with their Parquet types: changing them is a new SCHEMA_VERSION
STABLE = [("key", "string"), ("variant", "string"), ("seed", "int64"), ("status", "string"), ("stop-reason", "string"),
          ("converged", "bool"), ("total-time-ms", "int64"), ("downtime-ms", "int64"), ("transferred", "int64"),
          ("dirty-sync-count", "int64"), ("max-cpu-throttle-percentage", "int64"), ("guest-run-fraction", "double"),
          ("resent-pages", "int64"), ("lost-pages", "int64"), ("wrong-semantics", "string"), ("write-rate", "int64"),
          ("bandwidth", "int64"), ("wall-time-s", "double"), ("sim-speed", "double"), ("fingerprint", "string"),
          ("error", "string"), ("failed", "bool"), ("version", "string")]


@pytest.fixture
def forked_workers(monkeypatch):
    """The local pool's workers are forked, so a fault monkeypatched here reaches them whatever the platform's
    default start method (Python 3.14 made it forkserver on Linux)."""
    fork = multiprocessing.get_context("fork")
    monkeypatch.setattr("dirtysim.sweeprun.ProcessPoolExecutor",
                        lambda *a, **kw: ProcessPoolExecutor(*a, mp_context=fork, **kw))


def _sweep(tmp_path: Path, text: str) -> Path:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


GRID = "base: tiny.yaml\naxes:\n  - grid:\n      {rate}: [16MiB/s, 256MiB/s]\nseeds: [1, 2]\n".format(rate=RATE)


def _invoke(*args: str):
    return CliRunner().invoke(main, ["sweep", *args])


def test_axes_seeds_and_variants_expand_in_order(tmp_path):
    path = _sweep(tmp_path, f"""base: tiny.yaml
set: {{migration.timeout: 2s}}
axes:
  - grid: {{{RATE}: [16MiB/s, 32MiB/s], network.bandwidth: [1Gbit/s, 10Gbit/s]}}
  - zip: {{migration.downtime-limit: [100, 200], migration.max-bandwidth: [1GiB/s, 2GiB/s]}}
  - random: {{samples: 3, seed: 7, keys: {{machine.memory.zero_fraction: {{uniform: [0.1, 0.5]}}}}}}
seeds: 2
variants: {{plain: {{}}, ring: {{dirty_tracking.mode: ring}}}}
""")
    plan = load_plan(path)
    assert len(plan.runs) == 2 * 4 * 2 * 3 * 2
    first = plan.runs[0]
    assert (first.variant, first.seed) == ("plain", 1)
    assert list(first.params) == [RATE, "network.bandwidth", "migration.downtime-limit", "migration.max-bandwidth",
                                  "machine.memory.zero_fraction"]
    assert first.scenario.migration.timeout == 2 * 10**9 and first.scenario.migration.downtime_limit == 100 * 10**6
    assert plan.runs[-1].scenario.dirty_tracking.mode == "ring"
    assert len({r.key for r in plan.runs}) == len(plan.runs)
    zipped = {(r.params["migration.downtime-limit"], r.params["migration.max-bandwidth"]) for r in plan.runs}
    assert zipped == {(100, "1GiB/s"), (200, "2GiB/s")}
    assert [r.key for r in load_plan(path).runs] == [r.key for r in plan.runs]  # random axes draw the same points


@pytest.mark.parametrize("axes, line, message", [
    ("  - grid:\n      migration.downtime_limit: [100ms, -5s]\n", 4,
     "axes.0.grid.migration.downtime_limit[1]: --set migration.downtime_limit: a duration must not be negative"),
    ("  - zip:\n      network.bandwidth: [1Gbit/s, 2Gbit/s]\n      migration.downtime-limit: [100]\n", 3,
     "axes.0.zip: the lists of a zip step together, so they need one length (got network.bandwidth: 2, "
     "migration.downtime-limit: 1)"),
    ("  - grid:\n      migration.no_such_key: [1]\n", 4, "axes.0.grid.migration.no_such_key[0]: --set "
                                                          "migration.no_such_key: unknown key"),
])
def test_a_bad_axis_value_is_reported_before_anything_runs(tmp_path, axes, line, message):
    path = _sweep(tmp_path, f"base: tiny.yaml\naxes:\n{axes}")
    res = _invoke(str(path), "-o", str(tmp_path / "out"))
    assert (res.exit_code, res.stdout) == (2, "")
    assert res.stderr.startswith(f"{path}:{line}: {message}"), res.stderr
    assert not (tmp_path / "out").exists()


def test_a_bad_variant_value_names_the_variant_key_and_line(tmp_path):
    path = _sweep(tmp_path, "base: tiny.yaml\nvariants:\n  fine: {}\n  bad:\n    dirty_tracking.clear_bitmap_shift: 5\n")
    with pytest.raises(ScenarioError) as exc:
        load_plan(path)
    assert exc.value.lines == [f"{path}:5: variants.bad.dirty_tracking.clear_bitmap_shift: --set "
                               "dirty_tracking.clear_bitmap_shift: out of range (got 5; allowed: 6 .. 31)"]


def test_two_points_of_one_scenario_are_refused(tmp_path):
    path = _sweep(tmp_path, f"base: tiny.yaml\naxes:\n  - grid: {{{RATE}: [1MiB/s, 1024KiB/s]}}\n")
    with pytest.raises(ScenarioError, match="are the same scenario and seed"):
        load_plan(path)


def test_an_interrupted_sweep_resumes_with_only_the_rest(tmp_path, monkeypatch):
    """Ctrl-C after two rows are on disk: exit 130; run again, only the two others run."""
    import dirtysim.sweeprun as sweeprun

    path, out = _sweep(tmp_path, GRID), tmp_path / "out"
    real, rows = sweeprun.write_atomic, []

    def write_atomic(target: Path, data: bytes):
        if target.parent.name == "rows" and len(rows) == 2:
            raise KeyboardInterrupt
        real(target, data)
        rows.append(target)

    monkeypatch.setattr(sweeprun, "write_atomic", write_atomic)
    res = _invoke(str(path), "-o", str(out), "-j", "1")
    assert res.exit_code == 130
    assert "run the same command again to run the rest" in res.stderr
    before = {p.name: p.stat().st_mtime_ns for p in (out / "rows").iterdir()}
    assert len(before) == 2 and len(dirtysim.load_sweep(out)) == 2
    monkeypatch.setattr(sweeprun, "write_atomic", real)
    res = _invoke(str(path), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("4 runs (2 run now, 2 already done)")
    after = {p.name: p.stat().st_mtime_ns for p in (out / "rows").iterdir()}
    assert len(after) == 4 and all(after[name] == t for name, t in before.items())
    frame = dirtysim.load_sweep(out)
    assert sorted(frame["key"]) == sorted(r.key for r in load_plan(path).runs)


def test_the_parquet_schema_is_stable_and_documented(tmp_path):
    path, out = _sweep(tmp_path, GRID + "variants: {a: {}, b: {network.bandwidth: 10Gbit/s}}\n"), tmp_path / "out"
    res = _invoke(str(path), "-o", str(out))
    assert res.exit_code == 0, res.output
    schema = pq.read_schema(out / "results.parquet")
    assert [(f.name, str(f.type)) for f in schema][:len(STABLE)] == STABLE
    assert [f.name for f in schema][len(STABLE):] == [RATE]
    assert sweepdata.COLUMNS and [(n, t) for n, t, _ in sweepdata.COLUMNS] == STABLE
    readme = (ROOT / "README.md").read_text()
    documented = re.findall(r"^\| `([^`]+)` \| (\w+) \|", readme.split("### The results table", 1)[1], re.M)
    assert documented[:len(STABLE)] == STABLE
    frame = dirtysim.load_sweep(out)
    assert len(frame) == 8 and frame.attrs["axes"] == {RATE: ["16MiB/s", "256MiB/s"]}
    assert frame.attrs["variants"] == ["a", "b"]
    assert set(frame["status"]) <= {"completed", "cancelled"} and not frame["failed"].any()
    assert (frame["bandwidth"] == frame["variant"].map({"a": 125_000_000, "b": 1_250_000_000})).all()


def test_a_run_that_raises_is_a_row_and_the_sweep_finishes_with_exit_1(tmp_path, monkeypatch, forked_workers):
    real = PrecopyMigration.bitmap_sync

    def bitmap_sync(self, *args, **kw):
        if self.sc.seed == 2 and self.sc.machine.vcpus[0].workload.rate == 16 << 20:
            raise RuntimeError("injected")
        return (yield from real(self, *args, **kw))

    monkeypatch.setattr(PrecopyMigration, "bitmap_sync", bitmap_sync)
    path, out = _sweep(tmp_path, GRID), tmp_path / "out"
    res = _invoke(str(path), "-o", str(out))
    assert res.exit_code == 1
    assert res.stdout.startswith("4 runs (4 run now, 0 already done)")
    assert "1 of 4 runs did not run as their scenario intends" in res.stderr and "RuntimeError: injected" in res.stderr
    frame = dirtysim.load_sweep(out).set_index(["seed", RATE])
    assert frame.loc[(2, "16MiB/s"), "error"] == "RuntimeError: injected"
    assert frame.loc[(2, "16MiB/s"), "status"] == "failed" and frame["failed"].sum() == 1
    assert frame.drop(index=(2, "16MiB/s"))["error"].isna().all()


def test_a_worker_that_dies_is_a_row_and_takes_no_other_run_with_it(tmp_path, monkeypatch, forked_workers):
    real = PrecopyMigration.bitmap_sync

    def bitmap_sync(self, *args, **kw):
        if self.sc.seed == 2 and self.sc.machine.vcpus[0].workload.rate == 16 << 20:
            os._exit(9)
        return (yield from real(self, *args, **kw))

    monkeypatch.setattr(PrecopyMigration, "bitmap_sync", bitmap_sync)
    path, out = _sweep(tmp_path, GRID), tmp_path / "out"
    res = _invoke(str(path), "-o", str(out), "-j", "2")
    assert res.exit_code == 1
    frame = dirtysim.load_sweep(out).set_index(["seed", RATE])
    assert frame.loc[(2, "16MiB/s"), "error"].startswith("worker lost: BrokenProcessPool")
    assert frame.drop(index=(2, "16MiB/s"))["error"].isna().all()


def test_dask_local_cluster_gives_the_local_rows(tmp_path):
    pytest.importorskip("distributed")
    path = _sweep(tmp_path, GRID)
    for pool, out in ([["-j", "2", "--keep-runs"], "local"], [["--dask-local", "2"], "dask"]):
        res = _invoke(str(path), "-o", str(tmp_path / out), *pool)
        assert res.exit_code == 0, res.output
        assert res.stdout.startswith("4 runs (4 run now, 0 already done) on 2 workers")
    timing = ["wall-time-s", "sim-speed"]
    local, dask = (dirtysim.load_sweep(tmp_path / d).drop(columns=timing) for d in ("local", "dask"))
    assert local.equals(dask)
    assert local["fingerprint"].nunique() == 4
    for key, fingerprint in zip(local["key"], local["fingerprint"]):  # --keep-runs: each run's own files
        summary = json.loads((tmp_path / "local" / "runs" / key / "summary.json").read_text())
        assert summary["dirtysim"]["fingerprint"] == fingerprint
    assert not (tmp_path / "dask" / "runs").exists()


def test_options_of_the_sweep_file_form_are_refused_with_variants(tmp_path):
    path = _sweep(tmp_path, "variants: {a: {}}\n")
    res = _invoke(str(tmp_path / "tiny.yaml"), str(path), "-j", "2", "-o", str(tmp_path / "out"))
    assert (res.exit_code, res.stderr) == (2, "--jobs: only with a SWEEP.yaml (the SCENARIO VARIANTS form runs its "
                                              "variants in order, here)\n")


def test_heatmaps_aggregate_the_seeds_and_draw_the_boundary(tmp_path):
    """Cells are the seeds' mean in the file's axis order; the boundary crosses each bandwidth row where the
    write rate equals it (log-interpolated between the columns)."""
    from matplotlib.figure import Figure

    from dirtysim.report.sweepplots import plot_heatmap

    path, out = _sweep(tmp_path, GRID.replace("[16MiB/s, 256MiB/s]", "[64MiB/s, 16MiB/s, 256MiB/s]")
                       .replace("seeds", "  - grid: {network.bandwidth: [100Mbit/s, 1Gbit/s]}\nseeds")), tmp_path / "o"
    res = _invoke(str(path), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert res.stdout.endswith(f"outputs: {out}/results.parquet, {out}/heatmaps.png\n")
    frame = dirtysim.load_sweep(out)
    assert frame.attrs["dims"] == [RATE, "network.bandwidth"]
    ax = Figure().subplots()
    grid = plot_heatmap(frame, RATE, "network.bandwidth", "total-time-ms", ax)
    for (i, bw), (j, rate) in [((i, b), (j, r)) for i, b in enumerate(["100Mbit/s", "1Gbit/s"])
                               for j, r in enumerate(["64MiB/s", "16MiB/s", "256MiB/s"])]:
        cell = frame[(frame[RATE] == rate) & (frame["network.bandwidth"] == bw)]["total-time-ms"]
        assert len(cell) == 2 and grid[i, j] == cell.mean()
    (line,) = [l for l in ax.lines if l.get_label() == "write rate = bandwidth"]
    # 1Gbit/s = 119.2 MiB/s lies between the columns 64MiB/s (0) and 256MiB/s (2): log-interpolated
    expected = np.log(125e6 / (64 << 20)) / np.log(4) * 2
    assert line.get_xydata().ravel().tolist() == pytest.approx([expected, 1.0])  # 100Mbit/s: left of every column


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_are_valid(path):
    plan = load_plan(path)
    assert plan.runs and plan.dims


def test_lines_show_each_variant_with_its_seeds_spread(tmp_path):
    from matplotlib.figure import Figure

    from dirtysim.report.sweepplots import plot_line

    path, out = _sweep(tmp_path, GRID + "variants: {a: {}, b: {network.bandwidth: 100Mbit/s}}\n"), tmp_path / "o"
    res = _invoke(str(path), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert res.stdout.endswith(f"outputs: {out}/results.parquet, {out}/lines.png\n")
    frame = dirtysim.load_sweep(out)
    ax = Figure().subplots()
    b = frame[frame["variant"] == "b"]
    plot_line(b, RATE, "transferred", ax)
    (band,) = ax.collections
    assert ax.lines[0].get_ydata().tolist() == [b[b[RATE] == r]["transferred"].mean() for r in ("16MiB/s", "256MiB/s")]
    lows = band.get_paths()[0].vertices[:, 1]
    assert min(lows) == b["transferred"].min() and max(lows) == b["transferred"].max()


def test_random_axes_draw_from_their_seed_within_bounds_and_units(tmp_path):
    axis = "  - random: {{samples: 50, seed: {seed}, keys: {{migration.downtime-limit: {{log-uniform: [100, 1000], " \
           "unit: ms}}, machine.memory.zero_fraction: {{choice: [0.1, 0.5]}}}}}}\n"
    plans = [load_plan(_sweep(tmp_path, f"base: tiny.yaml\naxes:\n{axis.format(seed=seed)}")) for seed in (1, 1, 2)]
    limits = [r.scenario.migration.downtime_limit for r in plans[0].runs]
    assert all(100 * 10**6 <= t <= 1000 * 10**6 and t % 10**6 == 0 for t in limits)
    assert {r.params["machine.memory.zero_fraction"] for r in plans[0].runs} == {0.1, 0.5}
    assert [r.key for r in plans[0].runs] == [r.key for r in plans[1].runs] != [r.key for r in plans[2].runs]
    bad = _sweep(tmp_path, "base: tiny.yaml\naxes:\n  - random: {samples: 3, seed: 1, keys: {seed: {normal: [0, 1]}}}\n")
    with pytest.raises(ScenarioError, match=r"sweep.yaml:3: axes.0.random.keys.seed: expected \{uniform: \[lo, hi\]\}"):
        load_plan(bad)


@pytest.mark.parametrize("bounds", ["uniform: [1, .inf]", "uniform: [.nan, 2]", "uniform: [-1.0e+308, 1.7e+308]",
                                    "log-uniform: [1, 1.0e+400]"])
def test_random_bounds_numpy_cannot_draw_between_are_one_clear_line_and_exit_2(tmp_path, bounds):
    """Infinite bounds, or a width beyond a float (numpy's uniform raised OverflowError, a traceback)."""
    path = _sweep(tmp_path, f"base: tiny.yaml\naxes:\n  - random: {{samples: 2, seed: 1, keys: "
                            f"{{network.bandwidth: {{{bounds}, unit: Gbit/s}}}}}}\n")
    res = _invoke(str(path), "-o", str(tmp_path / "out"))
    assert (res.exit_code, res.stdout) == (2, ""), res.output
    assert res.stderr.startswith(f"{path}:3: axes.0.random.keys.network.bandwidth: expected {{uniform: [lo, hi]}}")
    assert res.stderr.count("\n") == 1 and len(res.stderr) < len(str(path)) + 300, res.stderr  # value clipped


def test_a_random_bound_of_400_digits_is_refused_where_it_is_written(tmp_path):
    """An integer no float holds never reaches the axis: the YAML loader refuses it (Python's int() would raise)."""
    path = _sweep(tmp_path, "base: tiny.yaml\naxes:\n  - random: {samples: 2, seed: 1, keys: "
                            "{network.bandwidth: {log-uniform: [1, " + "9" * 400 + "], unit: Gbit/s}}}\n")
    res = _invoke(str(path), "-o", str(tmp_path / "out"))
    assert (res.exit_code, res.stdout, res.stderr) == (2, "", f"{path}:3: an integer of 400 characters (allowed: at "
                                                              "most 64)\n")


def test_a_swept_int_beyond_int64_is_a_string_column_not_a_traceback(tmp_path):
    """x-postcopy-after-syncs has no upper bound: 10**26 ran, then pyarrow's int64 column raised OverflowError."""
    big = 10**26
    path = _sweep(tmp_path, "base: tiny.yaml\nset: {migration.capabilities.postcopy-ram: true}\naxes:\n"
                            f"  - grid: {{migration.x-postcopy-after-syncs: [{big}, 2]}}\n")
    res = _invoke(str(path), "-o", str(tmp_path / "out"), "-j", "1", "--no-plots")
    assert res.exit_code == 0, res.output
    column = pq.read_table(tmp_path / "out" / "results.parquet").column("migration.x-postcopy-after-syncs")
    assert str(column.type) == "string" and column.to_pylist() == [str(big), "2"]


@pytest.mark.parametrize("content", [b"\xff{", b"{\"key\": 1}", b"[]", b"{"])
def test_a_row_file_that_is_not_a_row_is_run_again_not_a_traceback(tmp_path, content):
    """rows/<key>.json not UTF-8, not JSON, or without the columns: was a UnicodeDecodeError or KeyError."""
    path, out = _sweep(tmp_path, "base: tiny.yaml\n"), tmp_path / "out"
    (out / "rows").mkdir(parents=True)
    (out / "rows" / f"{load_plan(path).runs[0].key}.json").write_bytes(content)
    (out / "rows" / "stray.json").write_bytes(content)
    res = _invoke(str(path), "-o", str(out), "-j", "1", "--no-plots")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("1 runs (1 run now, 0 already done)"), res.stdout


@pytest.mark.parametrize("args, expected", [
    (["--scheduler", ""], "--scheduler: expected the address of a dask scheduler (got ''"),
    (["--scheduler", "", "--dask-local", "1"], "--scheduler and --dask-local: give one"),
    (["--scheduler", "ucx://127.0.0.1:1"], "--scheduler ucx://127.0.0.1:1: cannot connect: "),
    (["--scheduler", "foo://x:1"], "--scheduler foo://x:1: cannot connect: ValueError: unknown address scheme 'foo'"),
])
def test_a_scheduler_that_is_no_scheduler_is_one_line_and_exit_2(tmp_path, args, expected):
    """'' ran on local processes as if not given; ucx:// without ucx was a TypeError traceback."""
    path = _sweep(tmp_path, "base: tiny.yaml\n")
    res = _invoke(str(path), "-o", str(tmp_path / "out"), *args)
    assert (res.exit_code, res.stdout) == (2, ""), res.output
    assert res.stderr.startswith(expected) and res.stderr.count("\n") == 1, res.stderr


def test_a_mixed_axis_draws_every_point(tmp_path):
    """[300, 500ms] is a string column ("300", "500ms"): the plots looked its points up by the file's 300 and
    drew nothing there."""
    from dirtysim.report.sweepplots import lines_figure

    key = "migration.downtime-limit"
    path = _sweep(tmp_path, f"base: tiny.yaml\naxes:\n  - grid: {{{key}: [300, 500ms]}}\n")
    res = _invoke(str(path), "-o", str(tmp_path / "out"), "-j", "1", "--no-plots")
    assert res.exit_code == 0, res.output
    frame = dirtysim.load_sweep(tmp_path / "out")
    assert frame[key].tolist() == ["300", "500ms"]
    total_time = lines_figure(frame, key).axes[1].lines[0].get_ydata()
    assert not np.isnan(np.asarray(total_time, dtype=float)).any(), total_time


@pytest.mark.parametrize("over, line, message", [
    ("machine.vcpus.0.phases: [{duration: 100ms, rate: 0B/s}]", 2,
     "set.machine.vcpus.0.phases: --set machine.vcpus.0.phases: rate phases are not modelled yet with postcopy-ram"),
    ("what_if.hotplug_during_migration: true", 2, "set.what_if.hotplug_during_migration: --set "
     "what_if.hotplug_during_migration: RAMBlocks that come and go are not modelled yet with postcopy-ram"),
    ("network.latency: 0ns, costs.postcopy_fault: 0ns", 2, "a page request must take some time"),
])
def test_postcopy_refusals_dirtysim_adds_are_one_line_and_exit_2(tmp_path, over, line, message):
    """scenario/postcopy.py's own refusals (after migrate_caps_check's), fed through a sweep's set."""
    path = _sweep(tmp_path, f"base: tiny.yaml\nset: {{migration.capabilities.postcopy-ram: true, {over}}}\n")
    res = _invoke(str(path), "-o", str(tmp_path / "out"))
    assert (res.exit_code, res.stdout) == (2, ""), res.output
    assert res.stderr.startswith(f"{path}:{line}: ") and message in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_a_variants_file_gives_its_values_as_written(tmp_path):
    """``variants: FILE``: each variant's mapping as the file gives it; a bad value names the file and variant."""
    path = _sweep(tmp_path, "base: tiny.yaml\nvariants: v.yaml\n")
    (tmp_path / "v.yaml").write_text("variants:\n  a: {network.bandwidth: 2Gbit/s}\n  b: {migration.downtime-limit: "
                                     "500ms}\n")
    plan = load_plan(path)
    assert [(r.variant, r.scenario.network.bandwidth) for r in plan.runs] == [("a", 250_000_000), ("b", 125_000_000)]
    assert plan.runs[0].scenario.migration.downtime_limit != plan.runs[1].scenario.migration.downtime_limit == 500_000_000
    (tmp_path / "v.yaml").write_text("variants:\n  a: {}\n  b: {dirty_tracking.clear_bitmap_shift: 5}\n")
    with pytest.raises(ScenarioError) as exc:
        load_plan(path)
    assert exc.value.lines == [f"{tmp_path / 'v.yaml'}:3: variants.b: --set dirty_tracking.clear_bitmap_shift: "
                               "out of range (got 5; allowed: 6 .. 31)"]


def test_a_sweep_too_large_to_resolve_is_refused_before_resolving_any_run(tmp_path):
    """seeds: 10000 x 20 points: refused at once (each run is resolved and held before any runs)."""
    values = ", ".join(f"{n}MiB/s" for n in range(1, 21))
    path = _sweep(tmp_path, f"base: tiny.yaml\naxes:\n  - grid: {{{RATE}: [{values}]}}\nseeds: 10000\n")
    res = _invoke(str(path), "-o", str(tmp_path / "out"))
    assert (res.exit_code, res.stdout) == (2, ""), res.output
    assert res.stderr == f"{path}:2: axes: 200000 runs (allowed: at most 100000 in one sweep file)\n"
