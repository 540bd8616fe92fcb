"""Outputs are whole or absent: checked and locked before the run, written together, one line on failure."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from builders import BASE, merge
from dirtysim.cli import main
from dirtysim.events.replay import read_log
from dirtysim.migration.precopy import PrecopyMigration
from dirtysim.report.files import OutputDir

ROOT = Path(__file__).resolve().parent.parent
RUN_SET = {"summary.json", "rounds.csv", "vcpus.csv", "guest.csv", "events.jsonl", "convergence.png"}


def _scenario(tmp_path: Path, **over) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, over)))
    return path


def _run(*args: str):
    return CliRunner().invoke(main, ["run", *args])


def _contents(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> tuple[Path, Path, dict[str, bytes]]:
    """A scenario and a directory holding a complete earlier run (seed 4) of it, and that run's bytes."""
    tmp = tmp_path_factory.mktemp("earlier")
    path, out = _scenario(tmp), tmp / "out"
    res = _run(str(path), "-o", str(out), "--seed", "4")
    assert res.exit_code == 0, res.output
    return path, out, _contents(out)


def _fresh_copy(earlier, tmp_path: Path) -> Path:
    _, _, files = earlier
    out = tmp_path / "out"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out


def test_output_path_that_is_a_file(tmp_path, earlier):
    (tmp_path / "f").write_text("x")
    res = _run(str(earlier[0]), "-o", str(tmp_path / "f"))
    assert (res.exit_code, res.stdout, res.stderr) == (2, "", f"{tmp_path / 'f'}: exists and is not a directory\n")
    res = _run(str(earlier[0]), "-o", str(tmp_path / "f" / "sub"))
    assert (res.exit_code, res.stderr) == (
        2, f"{tmp_path / 'f' / 'sub'}: cannot create the output directory: Not a directory\n")


def test_output_directory_not_writable(earlier):
    res = _run(str(earlier[0]), "-o", "/sys/dirtysim-out")  # sysfs: no new directories, even for root
    assert res.exit_code == 2 and res.stdout == ""
    assert re.fullmatch(r"/sys/dirtysim-out: cannot create the output directory: [A-Za-z ]+\n", res.stderr)


def test_two_runs_into_one_directory(tmp_path, earlier):
    with OutputDir(tmp_path / "busy"):
        res = _run(str(earlier[0]), "-o", str(tmp_path / "busy"))
    assert (res.exit_code, res.stdout, res.stderr) == (
        2, "", f"{tmp_path / 'busy'}: another dirtysim run (pid {os.getpid()}) is writing here; "
               "wait for it to end or choose another output directory\n")
    assert not (tmp_path / "busy" / "summary.json").exists()
    res = _run(str(earlier[0]), "-o", str(tmp_path / "busy"))  # the lock ends with its holder
    assert res.exit_code == 0, res.output


def _failing_write(monkeypatch, fail_on: str, exc: BaseException) -> None:
    real = pathlib.Path.write_bytes

    def write_bytes(self, data):
        if self.name == fail_on:
            raise exc
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


def test_disk_full_while_writing_keeps_the_earlier_set(tmp_path, earlier, monkeypatch):
    out = _fresh_copy(earlier, tmp_path)
    _failing_write(monkeypatch, "vcpus.csv", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    res = _run(str(earlier[0]), "-o", str(out), "--seed", "5")
    assert (res.exit_code, res.stdout, res.stderr) == (
        1, "", f"{out / 'vcpus.csv'}: cannot write: No space left on device; {out}/ keeps its previous files\n")
    assert _contents(out) == {**earlier[2], ".dirtysim.lock": f"{os.getpid()}\n".encode()}


def test_interrupt_while_writing_keeps_the_earlier_set(tmp_path, earlier, monkeypatch):
    out = _fresh_copy(earlier, tmp_path)
    _failing_write(monkeypatch, "rounds.csv", KeyboardInterrupt())
    res = _run(str(earlier[0]), "-o", str(out), "--seed", "5")
    assert (res.exit_code, res.stderr) == (130, f"interrupted: {out}/ keeps its previous files\n")
    assert _contents(out) == {**earlier[2], ".dirtysim.lock": f"{os.getpid()}\n".encode()}


def test_new_set_replaces_the_earlier_one_and_stale_files_go(tmp_path, earlier):
    out = _fresh_copy(earlier, tmp_path)
    (out / "notes.txt").write_text("mine")
    (out / ".tmp-left-by-a-killed-run").mkdir()
    res = _run(str(earlier[0]), "-o", str(out), "--seed", "5", "--set", "outputs.plots=false")
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == RUN_SET - {"convergence.png"} | {"notes.txt", ".dirtysim.lock"}
    assert json.loads((out / "summary.json").read_text())["dirtysim"]["seed"] == 5
    assert (out / "events.jsonl").read_bytes() != earlier[2]["events.jsonl"]


def test_replay_into_the_run_directory_keeps_the_log(tmp_path, earlier):
    out = _fresh_copy(earlier, tmp_path)
    res = CliRunner().invoke(main, ["replay", str(out / "events.jsonl"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "events.jsonl").read_bytes() == earlier[2]["events.jsonl"]
    assert (out / "rounds.csv").read_bytes() == earlier[2]["rounds.csv"]


def test_sweep_variant_name_cannot_leave_the_output_directory(tmp_path, earlier):
    variants = tmp_path / "v.yaml"
    variants.write_text(yaml.safe_dump({"variants": {"../escape": {"seed": 2}}}))
    res = CliRunner().invoke(main, ["sweep", str(earlier[0]), str(variants), "-o", str(tmp_path / "sw")])
    assert (res.exit_code, res.stdout) == (2, "")
    assert res.stderr == (f"{variants}: variants.../escape: variant '../escape' cannot name a directory inside out/: "
                          "use a name without '/', '\\', NUL, and not '.' or '..'\n")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "sw").exists()


@pytest.mark.parametrize("outputs_dir", ["/tmp/elsewhere", "../up"])
def test_scenario_outputs_dir_stays_inside_the_working_directory(tmp_path, outputs_dir):
    path = _scenario(tmp_path, outputs={"dir": outputs_dir})
    res = _run(str(path))
    assert (res.exit_code, res.stderr) == (
        2, f"{path}: outputs.dir: must be a relative path inside the working directory (got {outputs_dir!r}); "
           "use -o to write elsewhere\n")


def test_interrupt_during_the_simulation_writes_a_cancelled_summary(tmp_path, earlier, monkeypatch):
    """Ctrl-C reaches the simulation as KeyboardInterrupt (here from the third sync): partial rounds, exit 130."""
    real, calls = PrecopyMigration.bitmap_sync, []

    def bitmap_sync(self, *args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return (yield from real(self, *args, **kw))

    monkeypatch.setattr(PrecopyMigration, "bitmap_sync", bitmap_sync)
    out = tmp_path / "out"
    res = _run(str(earlier[0]), "-o", str(out))
    assert res.exit_code == 130 and res.stdout == ""
    assert re.fullmatch(rf"interrupted at \d+\.\d{{3}} simulated s: partial results in {re.escape(str(out))}/ "
                        r"\(status cancelled, 2 syncs\)\n", res.stderr)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["dirtysim"]["stop-reason"]) == ("cancelled", "interrupted")
    assert len((out / "rounds.csv").read_text().splitlines()) == 1 + 2
    _, events = read_log(out / "events.jsonl")  # the partial log is a whole, checkable log
    assert events[-1].stop_reason == "interrupted"


def test_sigint_to_a_running_simulation(tmp_path):
    """A real SIGINT to `dirtysim run` while the progress bar moves: exit 130, one line, cancelled summary."""
    path = _scenario(tmp_path, migration={"max_bandwidth": "32MiB/s", "timeout": "600s"})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "dirtysim.cli", "run", str(path), "-o", str(out), "--progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    seen = b""
    while b"sim-s" not in seen:  # the bar appears once the machine is built and SimPy runs
        chunk = proc.stderr.read1(4096)
        assert chunk, f"exited early: {seen!r}"
        seen += chunk
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=120)
    lines = (seen + rest).decode().splitlines()
    assert proc.returncode == 130, lines
    assert stdout == b""
    assert re.fullmatch(rf"interrupted at \d+\.\d{{3}} simulated s: partial results in {re.escape(str(out))}/ "
                        r"\(status cancelled, \d+ syncs\)", lines[-1])
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["dirtysim"]["stop-reason"]) == ("cancelled", "interrupted")
    read_log(out / "events.jsonl")


def test_interrupt_stops_a_sweep(tmp_path, earlier, monkeypatch):
    """Ctrl-C in the first variant stops the sweep: that variant's partial results, no later variant run."""
    real = PrecopyMigration.bitmap_sync

    def bitmap_sync(self, *args, **kw):
        if self.dirty_sync_count == 1:
            raise KeyboardInterrupt
        return (yield from real(self, *args, **kw))

    monkeypatch.setattr(PrecopyMigration, "bitmap_sync", bitmap_sync)
    variants = tmp_path / "v.yaml"
    variants.write_text(yaml.safe_dump({"variants": {"first": {"seed": 2}, "second": {"seed": 3}}}))
    res = CliRunner().invoke(main, ["sweep", str(earlier[0]), str(variants), "-o", str(tmp_path / "sw")])
    assert (res.exit_code, res.stdout, res.stderr) == (
        130, "", f"interrupted: the variants run so far are in {tmp_path / 'sw'}/ (the one interrupted with status "
                 "cancelled)\n")
    assert json.loads((tmp_path / "sw" / "first" / "summary.json").read_text())["status"] == "cancelled"
    assert not (tmp_path / "sw" / "second").exists()


def test_a_sweep_with_a_failed_variant_finishes_and_exits_1(tmp_path, earlier, monkeypatch):
    """A variant that raises is recorded as failed, the next one still runs, and the sweep says which failed."""
    real = PrecopyMigration.bitmap_sync

    def bitmap_sync(self, *args, **kw):
        if self.sc.seed == 2 and self.dirty_sync_count == 1:
            raise RuntimeError("injected")
        return (yield from real(self, *args, **kw))

    monkeypatch.setattr(PrecopyMigration, "bitmap_sync", bitmap_sync)
    variants = tmp_path / "v.yaml"
    variants.write_text(yaml.safe_dump({"variants": {"breaks": {"seed": 2}, "runs": {"seed": 3}}}))
    res = CliRunner().invoke(main, ["sweep", str(earlier[0]), str(variants), "-o", str(tmp_path / "sw")])
    assert res.exit_code == 1
    assert res.stderr == ("1 of 2 variants did not run as their scenario intends (an error, or pages lost under "
                          "correct semantics): breaks\n")
    assert json.loads((tmp_path / "sw" / "breaks" / "summary.json").read_text())["status"] == "failed"
    assert json.loads((tmp_path / "sw" / "runs" / "summary.json").read_text())["status"] == "completed"


def test_a_sweep_with_a_bad_value_names_the_variant_and_its_line(tmp_path, earlier):
    variants = tmp_path / "v.yaml"
    variants.write_text("variants:\n  fine: {seed: 2}\n  bad:\n    migration.downtime_limit: -5s\n")
    res = CliRunner().invoke(main, ["sweep", str(earlier[0]), str(variants), "-o", str(tmp_path / "sw")])
    assert (res.exit_code, res.stdout) == (2, "")
    assert res.stderr.startswith(f"{variants}:3: variants.bad: --set migration.downtime_limit: a duration must not "
                                 "be negative")
    assert not (tmp_path / "sw").exists()  # nothing ran


def test_deliberately_wrong_losses_do_not_fail_a_sweep():
    from dirtysim.sweep import failures

    rows = [{"variant": "a", "status": "completed", "lost-pages": 0, "wrong-semantics": ""},
            {"variant": "b", "status": "completed", "lost-pages": 7, "wrong-semantics": "send_order send-before-clear"},
            {"variant": "c", "status": "completed", "lost-pages": 1, "wrong-semantics": ""},
            {"variant": "d", "status": "failed", "lost-pages": 0, "wrong-semantics": ""}]
    assert failures(rows) == ["c", "d"]
