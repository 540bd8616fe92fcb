"""The command line as a user meets it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from builders import BASE
from dirtysim.cli import main
from dirtysim.scenario.units import parse_size

ROOT = Path(__file__).resolve().parent.parent


def _scenario_file(tmp_path: Path, **over) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump({**BASE, **over}))
    return path


def test_run_writes_every_output(tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", str(_scenario_file(tmp_path)), "-o", str(out), "--seed", "4",
                                    "--set", "migration.downtime_limit=200ms"])
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == {"summary.json", "rounds.csv", "vcpus.csv", "guest.csv", "events.jsonl",
                                               "convergence.png", ".dirtysim.lock"}  # no temporary left
    vcpu_rows = list(csv.DictReader((out / "vcpus.csv").open()))
    assert len(vcpu_rows) == 2 * len(list(csv.DictReader((out / "rounds.csv").open())))  # 2 vCPUs, every sync
    assert sum(int(r["faults"]) for r in vcpu_rows) == 0  # PML (on by default): first writes are logged, no fault
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dirtysim"]["pml-logged-pages"] > 0
    assert summary["status"] == "completed"
    assert summary["dirtysim"]["lost-pages"] == 0
    assert summary["dirtysim"]["seed"] == 4
    assert summary["dirtysim"]["scenario"]["migration"]["downtime_limit"] == "200ms"
    for key in ("total-time", "downtime", "setup-time"):
        assert isinstance(summary[key], int)
    ram = summary["ram"]
    # beyond ram_transferred_add's bytes: the device state, the vmdesc (16KiB by default), and the stream's
    # framing (file header, RAM's block list, section headers and footers, ram_save_complete's EOS): a few KiB
    framing = ram["transferred"] - ram["precopy-bytes"] - ram["downtime-bytes"] - parse_size(
        summary["dirtysim"]["scenario"]["machine"]["device_state"]) - (16 << 10)
    assert 0 < framing < 4096
    assert ram["normal-bytes"] == ram["normal"] * 4096
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert len(rows) == ram["dirty-sync-count"]
    assert [int(r["dirty-sync-count"]) for r in rows] == list(range(1, len(rows) + 1))
    assert "lost-pages        0" in res.output and str(out) in res.output


def test_timeout_run_reports_stop_reason(tmp_path):
    path = _scenario_file(tmp_path, migration={"max_bandwidth": "32MiB/s", "timeout": "3s"})
    res = CliRunner().invoke(main, ["run", str(path), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["status"] == "cancelled"
    assert summary["dirtysim"]["stop-reason"] == "timeout"
    assert summary["dirtysim"]["lost-pages"] == 0
    assert summary["ram"]["remaining"] > 0 and "expected-downtime" in summary


def test_lost_pages_exit_code(tmp_path):
    """A loss is a failure (exit 1) unless the scenario asks for deliberately wrong semantics."""
    path = _scenario_file(tmp_path, dirty_tracking={"kvm_clear": "clear-all"}, seed=9)
    res = CliRunner().invoke(main, ["run", str(path), "-o", str(tmp_path / "w")])
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["dirtysim"]["lost-pages"] > 0
    assert res.exit_code == 0 and "expected: deliberately wrong kvm_clear clear-all" in res.output


def test_validate_and_schema():
    res = CliRunner().invoke(main, ["validate", str(ROOT / "scenarios" / "quickstart.yaml")])
    assert res.exit_code == 0
    resolved = yaml.safe_load(res.output)
    assert resolved["migration"]["downtime_limit"] == "300ms"
    assert resolved["dirty_tracking"]["clear_bitmap_shift"] == 18
    schema = json.loads(CliRunner().invoke(main, ["schema"]).output)
    assert "machine" in schema["properties"] and "machine" in schema["required"]


def test_qemu_defaults_for_everything_unset(tmp_path):
    res = CliRunner().invoke(main, ["validate", str(_scenario_file(tmp_path, migration={}))])
    m = yaml.safe_load(res.output)["migration"]
    assert m["max_bandwidth"] == "128MiB/s" and m["downtime_limit"] == "300ms"
    assert m["avail_switchover_bandwidth"] == "0B/s" and m["zero_page_detection"] == "multifd"


def test_every_shipped_scenario_validates_and_says_what_it_shows():
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        assert path.read_text().startswith("# "), f"{path.name} must start with a comment saying what it shows"
        res = CliRunner().invoke(main, ["validate", str(path)])
        assert res.exit_code == 0, (path, res.output)


def test_matplotlib_is_imported_only_to_plot():
    """`dirtysim run` with plots off, replay and trace never import matplotlib (it costs ~0.5 s to import)."""
    import subprocess
    import sys

    code = ("import sys, dirtysim.cli, dirtysim.sim, dirtysim.sweep, dirtysim.report.files, dirtysim.report.trace; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
