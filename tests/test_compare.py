"""``dirtysim compare`` and the overlay a sweep writes: runs side by side, bad input refused before any run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from builders import merge
from dirtysim.cli import main
from dirtysim.report import compare, plots

PNG = b"\x89PNG\r\n\x1a\n"
TINY = {  # throttled before its 5 s timeout when auto-converge is on (about 0.3 s of wall time)
    "seed": 3,
    "machine": {"memory": {"size": "64MiB", "zero_fraction": 0.25},
                "vcpus": [{"count": 2, "workload": {"kind": "hotset", "rate": "8MiB/s", "hot": "32MiB",
                                                    "hot_share": 1.0}}]},
    "migration": {"max_bandwidth": "16MiB/s", "start_at": "200ms", "timeout": "5s"},
    "outputs": {"plots": False},
}


def _scenario(tmp_path: Path, stem: str, **over) -> Path:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(merge(TINY, over)))
    return path


def _compare(*args: str):
    return CliRunner().invoke(main, ["compare", *args])


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_compare_runs_each_scenario_and_tables_them(tmp_path):
    ac = _scenario(tmp_path, "ac", name="throttled", migration={"capabilities": {"auto-converge": True}})
    base = _scenario(tmp_path, "base")  # named by its file
    out = tmp_path / "cmp"
    res = _compare(str(ac), str(base), "-o", str(out))
    assert res.exit_code == 0, res.output
    for name in ("throttled", "base"):
        assert {"summary.json", "rounds.csv", "vcpus.csv", "guest.csv", "events.jsonl"} <= \
            {p.name for p in (out / name).iterdir()}
    assert not (out / "compare.png").exists() and not (out / "throttled" / "convergence.png").exists()  # plots off
    rows = _rows(out / "compare.csv")
    assert list(rows[0]) == compare.FIELDS
    assert [r["name"] for r in rows] == ["throttled", "base"]
    assert [(r["status"], r["stop-reason"], r["total-time-ms"], r["downtime-ms"]) for r in rows] == \
        [("cancelled", "timeout", "5000", "")] * 2
    assert [r["max-cpu-throttle-percentage"] for r in rows] == ["20", "0"]  # cpu-throttle-initial
    assert float(rows[0]["guest-run-fraction"]) < float(rows[1]["guest-run-fraction"]) < 1
    assert [r["lost-pages"] for r in rows] == ["0", "0"]
    assert "| throttled | cancelled | timeout | 5000 | - |" in res.output  # the table, printed


def test_compare_draws_the_overlay_when_a_run_draws_plots(tmp_path):
    one = _scenario(tmp_path, "one", outputs={"plots": True})
    two = _scenario(tmp_path, "two")
    out = tmp_path / "cmp"
    res = _compare(str(one), str(two), "-o", str(out), "--set", "migration.timeout=1s", "--seed", "5")
    assert res.exit_code == 0, res.output
    assert (out / "compare.png").read_bytes()[:8] == PNG
    assert (out / "one" / "convergence.png").exists() and not (out / "two" / "convergence.png").exists()
    assert [r["total-time-ms"] for r in _rows(out / "compare.csv")] == ["1000", "1000"]  # --set reached both
    again = _compare(str(one), str(two), "-o", str(out), "--set", "outputs.plots=false")
    assert again.exit_code == 0, again.output
    assert not (out / "compare.png").exists()  # the earlier figure does not outlive its table


def test_duplicate_names_are_refused_before_running(tmp_path):
    a = _scenario(tmp_path, "a", name="same")
    b = _scenario(tmp_path, "b", name="same")
    res = _compare(str(a), str(b), "-o", str(tmp_path / "cmp"))
    assert res.exit_code == 2
    assert res.stderr == (f"{a} and {b} are both named 'same': each run is written to <output>/<name>/, so give "
                          "each scenario its own name (name: ... in the file, or --set name=...)\n")
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("text,message", [
    (None, ": cannot read the file: No such file or directory"),
    ("machine: {memory: [\n", ":2: YAML syntax error: expected the node content, but found '<stream end>'")],
    ids=["missing", "broken"])
def test_bad_input_is_refused_before_running(tmp_path, text, message):
    """The loader's message for the bad file, exit 2, and no run: not even the good file before it."""
    good = _scenario(tmp_path, "good")
    bad = tmp_path / "bad.yaml"
    if text is not None:
        bad.write_text(text)
    res = _compare(str(good), str(bad), "-o", str(tmp_path / "cmp"))
    assert (res.exit_code, res.stdout, res.stderr) == (2, "", f"{bad}{message}\n")
    assert not (tmp_path / "cmp").exists()


def test_row_and_markdown_from_a_summary():
    summary = {"status": "completed", "total-time": 1234, "downtime": 56, "ram": {"transferred": 789,
               "dirty-sync-count": 4}, "dirtysim": {"stop-reason": "completed", "max-cpu-throttle-percentage": 30,
                                                    "guest-slowdown": {"run-fraction": 0.75}, "lost-pages": 0,
                                                    "migration-thread-busy": 0.5, "multifd-busy": 0.25}}
    row = compare.row("x", summary)
    assert row == {"name": "x", "status": "completed", "stop-reason": "completed", "total-time-ms": 1234,
                   "downtime-ms": 56, "transferred": 789, "dirty-sync-count": 4, "max-cpu-throttle-percentage": 30,
                   "guest-run-fraction": 0.75, "migration-thread-busy": 0.5, "multifd-busy": 0.25, "lost-pages": 0}
    del summary["dirtysim"]["multifd-busy"]  # a summary written before the sending costs: no such field
    assert compare.row("x", summary)["multifd-busy"] is None
    del summary["downtime"]
    assert compare.markdown([compare.row("y", summary)], ["name", "downtime-ms"]) == \
        "| name | downtime-ms |\n|---|---|\n| y | - |"
    assert compare.duplicate_names([("a.yaml", "a"), ("b.yaml", "b")]) is None


def test_sweep_writes_the_overlay_and_names_each_variant(tmp_path, monkeypatch):
    titles = []
    original = plots.convergence_figure

    def recording(events, f=None, title=None):
        fig = original(events, f, title)
        titles.append(fig.axes[0].get_title())
        return fig

    monkeypatch.setattr(plots, "convergence_figure", recording)
    path = _scenario(tmp_path, "tiny", outputs={"plots": True}, migration={"timeout": "1s"})
    variants = tmp_path / "variants.yaml"
    variants.write_text(yaml.safe_dump({"variants": {"plain": {}, "ac": {"migration.capabilities.auto-converge": True}}},
                                       sort_keys=False))
    out = tmp_path / "sw"
    res = CliRunner().invoke(main, ["sweep", str(path), str(variants), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert [r["name"] for r in _rows(out / "compare.csv")] == ["plain", "ac"]
    assert (out / "compare.png").read_bytes()[:8] == PNG and (out / "comparison.csv").exists()
    assert [t.split(":")[0] for t in titles] == ["tiny / plain", "tiny / ac"]


def test_the_same_file_twice_is_a_clash_too(tmp_path):
    a = _scenario(tmp_path, "a", name="twice")
    res = _compare(str(a), str(a), "-o", str(tmp_path / "cmp"))
    assert res.exit_code == 2 and "are both named 'twice'" in res.stderr
    assert not (tmp_path / "cmp").exists()
