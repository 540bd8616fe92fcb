"""``dirtysim replay`` checks a log before folding it: every way a log can be damaged is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from builders import scenario
from dirtysim.cli import main
from dirtysim.events import schema as ev
from dirtysim.events.replay import MAX_LINE_BYTES, read_log
from dirtysim.report.files import json_bytes, write_replay, write_run
from dirtysim.sim import run
from golden import golden

WALL_CLOCK = ("wall-time-s", "compile-time-s", "sim-speed")


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> list[bytes]:
    """The lines of a small, real, completed run's events.jsonl (with their newlines)."""
    out = tmp_path_factory.mktemp("run")
    write_run(run(scenario(seed=5), progress=False), out, plots=False)
    return (out / "events.jsonl").read_bytes().splitlines(keepends=True)


def _obj(line: bytes) -> dict:
    return msgspec.json.decode(line)


def _line(obj: dict) -> bytes:
    return msgspec.json.encode(obj) + b"\n"


def _index(lines: list[bytes], kind: str, nth: int = 0, after: int = 0) -> int:
    """Index in ``lines`` of the nth event of type ``kind`` after index ``after``."""
    hits = [i for i, line in enumerate(lines) if i > after and _obj(line)["type"] == kind]
    return hits[nth]


def _replay(tmp_path: Path, data: bytes):
    path = tmp_path / "events.jsonl"
    path.write_bytes(data)
    res = CliRunner().invoke(main, ["replay", str(path), "-o", str(tmp_path / "re")])
    return path, res


def _rejected(tmp_path: Path, lines: list[bytes], line: int, message: str) -> None:
    path, res = _replay(tmp_path, b"".join(lines))
    assert (res.exit_code, res.stdout, res.stderr) == (2, "", f"{path}:{line}: {message}\n")
    assert not (tmp_path / "re").exists()


def test_a_whole_log_replays(tmp_path, log):
    _, res = _replay(tmp_path, b"".join(log))
    assert res.exit_code == 0, res.output
    assert "status completed" in res.stdout


def test_truncated_log_ends_without_run_finished(tmp_path, log):
    last_seq = _obj(log[-2])["seq"]
    _rejected(tmp_path, log[:-1], len(log), f"log ends without run-finished (truncated after seq {last_seq}?)")


def test_log_cut_inside_a_line(tmp_path, log):
    cut = log[:-1] + [log[-1][: len(log[-1]) // 2]]
    _rejected(tmp_path, cut, len(log), "not JSON: Input data was truncated")


def test_shuffled_log(tmp_path, log):
    i = _index(log, "transfer", 3)
    shuffled = log[:i] + [log[i + 1], log[i]] + log[i + 2:]
    seq = _obj(log[i])["seq"]
    _rejected(tmp_path, shuffled, i + 1, f"seq {seq + 1} where {seq} was expected: events missing, duplicated "
                                         "or out of order")


def test_concatenated_logs(tmp_path, log):
    _rejected(tmp_path, log + log, len(log) + 1, "a second dirtysim-log header: two logs concatenated")


def test_concatenated_event_lines(tmp_path, log):
    _rejected(tmp_path, log + log[1:], len(log) + 1,
              f"run-started after run-finished (line {len(log)}): two logs concatenated?")


def test_edited_transfer_breaks_the_next_sync(tmp_path, log):
    i = _index(log, "transfer", 5)
    edited = _obj(log[i])
    edited["normal"] += 1
    j = _index(log, "bitmap-sync", 0, after=i)
    sync = _obj(log[j])
    before = sync["migration_dirty_pages"] - sync["new_dirty_pages"] - 1
    _rejected(tmp_path, log[:i] + [_line(edited)] + log[i + 1:], j + 1,
              f"migration_dirty_pages {sync['migration_dirty_pages']} != {before} before the sync "
              f"+ new_dirty_pages {sync['new_dirty_pages']}")


def test_edited_scenario(tmp_path, log):
    started, header = _obj(log[1]), _obj(log[0])
    started["scenario"]["migration"]["max_bandwidth"] *= 2
    _rejected(tmp_path, [log[0], _line(started)] + log[2:], 2,
              f"the scenario does not match the header's scenario_hash {header['scenario_hash']}: log edited?")


def test_edited_seed_in_header(tmp_path, log):
    header = _obj(log[0])
    header["seed"] = 6
    _rejected(tmp_path, [_line(header)] + log[1:], 2, "seed 5 does not match the header's 6: log edited?")


def test_time_going_back(tmp_path, log):
    i = _index(log, "bitmap-sync", 2)
    edited = _obj(log[i])
    edited["t_ns"] = 0
    _rejected(tmp_path, log[:i] + [_line(edited)] + log[i + 1:], i + 1,
              f"t_ns 0 is before the previous event's {_obj(log[i - 1])['t_ns']}: time goes back")


def test_more_pages_sent_than_dirty(tmp_path, log):
    final = _index(log, "bitmap-sync", -1)
    remaining = _obj(log[final])["migration_dirty_pages"]
    i = _index(log, "transfer", 0, after=final)
    edited = _obj(log[i])
    assert edited["kind"] == "pages"
    edited["zero"] = edited.get("zero", 0) + remaining + 1  # a zero count is omitted from the line
    sent = edited.get("normal", 0) + edited["zero"]
    _rejected(tmp_path, log[:i] + [_line(edited)] + log[i + 1:], i + 1,
              f"remaining goes negative ({remaining - sent} pages) after this transfer: more pages sent than "
              "were dirty")


def test_completed_with_pages_left(tmp_path, log):
    i = _index(log, "transfer", -1)
    while _obj(log[i])["kind"] != "pages":
        i -= 1
    edited = _obj(log[i])
    edited["normal"] -= 1
    _rejected(tmp_path, log[:i] + [_line(edited)] + log[i + 1:], _index(log, "migration-status", -1) + 1,
              "completed with migration_dirty_pages 1, not 0")


def test_oracle_reporting_more_lost_than_stale(tmp_path, log):
    i = _index(log, "oracle-check")
    edited = _obj(log[i])
    edited["lost_pages"] = 3
    _rejected(tmp_path, log[:i] + [_line(edited)] + log[i + 1:], i + 1, "lost_pages 3 > stale_pages 0")


def test_future_schema_version(tmp_path, log):
    header = _obj(log[0])
    future = ev.SCHEMA_VERSION + 1
    header.update(schema_version=future, dirtysim_version="9.0", digest="new-field")
    allowed = ", ".join(str(v) for v in range(1, future))  # every version so far is readable
    _rejected(tmp_path, [_line(header)] + log[1:], 1,
              f"log schema version {future} (written by dirtysim 9.0) is not one this dirtysim reads (allowed: {allowed})")


def test_log_without_header(tmp_path, log):
    _rejected(tmp_path, log[1:], 1,
              "no dirtysim-log header line (got type 'run-started'): written before logs had a header: rerun the scenario")


def test_empty_file(tmp_path):
    _rejected(tmp_path, [], 1, "empty file: no dirtysim-log header")


def test_header_only(tmp_path, log):
    _rejected(tmp_path, log[:1], 2, "no events after the header (truncated?)")


def test_not_utf8(tmp_path, log):
    i = _index(log, "transfer", 2)
    bad = log[i].replace(b'"pages"', b'"pa\xffes"')
    column = bad.index(b"\xff") + 1
    _rejected(tmp_path, log[:i] + [bad] + log[i + 1:], i + 1, f"not UTF-8 text (byte 0xff at column {column})")


def test_unknown_event_type(tmp_path, log):
    i = _index(log, "scan-wrap") if any(b'"scan-wrap"' in x for x in log) else _index(log, "transfer", 2)
    seq, t_ns = _obj(log[i])["seq"], _obj(log[i])["t_ns"]
    alien = _line({"type": "kvm-magic", "seq": seq, "t_ns": t_ns})
    _rejected(tmp_path, log[:i] + [alien] + log[i + 1:], i + 1, "unknown event type 'kvm-magic'")


def test_known_event_with_a_wrong_field(tmp_path, log):
    i = _index(log, "transfer", 2)
    edited = _obj(log[i])
    edited["normal"] = "many"
    _rejected(tmp_path, log[:i] + [_line(edited)] + log[i + 1:], i + 1,
              "not a valid transfer: Expected `int`, got `str` - at `$.normal`")


def test_blank_line(tmp_path, log):
    _rejected(tmp_path, log[:5] + [b"\n"] + log[5:], 6, "empty line")


def test_huge_line(tmp_path, log):
    huge = b'{"type":"transfer","pad":"' + b"x" * (2 * MAX_LINE_BYTES) + b'"}\n'
    _rejected(tmp_path, log[:7] + [huge] + log[7:], 8, f"line longer than {MAX_LINE_BYTES} bytes: not an event log")


def test_missing_file(tmp_path):
    res = CliRunner().invoke(main, ["replay", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "re")])
    assert (res.exit_code, res.stderr) == (2, f"{tmp_path / 'nope.jsonl'}: cannot read the log: No such file or directory\n")


RUNS = list(golden.runs())


@pytest.mark.parametrize("name,path,overrides", RUNS, ids=[r[0] for r in RUNS])
def test_replay_of_every_scenario_reproduces_its_outputs(tmp_path, name, path, overrides):
    """Run (shrunk as in the golden table), write, check and fold the log again: same bytes, less wall clock.

    Both sides go through the same folds, so this checks that the log on disk holds everything the tables need,
    not the folds themselves (test_rules_tables.py recomputes those by hand); a few summary fields are recounted
    here straight from the events.
    """
    result = golden.result(path, tuple(overrides))
    write_run(result, tmp_path / "run", plots=False)
    _, events = read_log(tmp_path / "run" / "events.jsonl")
    write_replay(events, tmp_path / "re", plots=False)
    for table in ("rounds.csv", "vcpus.csv", "guest.csv"):
        assert (tmp_path / "run" / table).read_bytes() == (tmp_path / "re" / table).read_bytes(), table
    original = json.loads((tmp_path / "run" / "summary.json").read_text())
    transfers = [e for e in events if isinstance(e, ev.Transfer)]
    assert original["ram"]["transferred"] == sum(e.bytes for e in transfers)
    assert original["ram"]["normal"] == sum(e.normal for e in transfers if e.kind != "device-state")
    assert original["ram"]["dirty-sync-count"] == sum(isinstance(e, ev.BitmapSync) for e in events)
    assert original["dirtysim"]["events"] == len(events)
    original["dirtysim"].update(dict.fromkeys(WALL_CLOCK))
    assert json_bytes(original) == (tmp_path / "re" / "summary.json").read_bytes()


SPECIAL = {  # runs whose logs exercise the checker's rarer paths
    "hotplug during migration (a block added while migrating)": (
        golden.ROOT / "scenarios" / "memory-map.yaml", ("what_if.hotplug_during_migration=true",)),
    "clear-all (oracle audits)": (golden.ROOT / "scenarios" / "quickstart.yaml",
                                  ("dirty_tracking.kvm_clear=clear-all", "machine.memory.size=4GiB",
                                   "machine.vcpus.0.workload.working_set=3GiB")),
}


@pytest.mark.parametrize("path,overrides", SPECIAL.values(), ids=list(SPECIAL))
def test_rarer_logs_are_accepted_and_replay(tmp_path, path, overrides):
    from dirtysim.scenario.load import load_scenario

    result = run(load_scenario(path, list(overrides)), progress=False)
    assert result.error is None
    write_run(result, tmp_path / "run", plots=False)
    _, events = read_log(tmp_path / "run" / "events.jsonl")
    kinds = {e.__struct_config__.tag for e in events}
    if "hotplug" in str(overrides):
        setup = next(e.seq for e in events if getattr(e, "status", None) == "setup")
        assert any(e.__struct_config__.tag == "ram-block-added" and e.seq > setup for e in events)
    else:
        assert sum(e.__struct_config__.tag == "oracle-check" for e in events) > 1 and "oracle-check" in kinds
    write_replay(events, tmp_path / "re", plots=False)
    assert (tmp_path / "run" / "rounds.csv").read_bytes() == (tmp_path / "re" / "rounds.csv").read_bytes()


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(ran_ns=[s["interval_ns"] + 1] * len(s["ran_ns"])),
     "a vCPU ran and slept longer than the {interval} ns the guest-sample covers"),
    (lambda s: s.update(writes=s["writes"][:-1]), "guest-sample lists of different lengths (one entry per vCPU)"),
    (lambda s: s.update(throttle_ns=[-1] * len(s["throttle_ns"])),
     "not a valid guest-sample: Expected `int` >= 0 - at `$.throttle_ns[0]`"),
])
def test_a_tampered_guest_sample(tmp_path, log, edit, message):
    lines = list(log)
    i = _index(lines, "guest-sample")
    sample = _obj(lines[i])
    edit(sample)
    lines[i] = _line(sample)
    _rejected(tmp_path, lines, i + 1, message.format(interval=sample["interval_ns"]))



@pytest.mark.parametrize("tag,field,value,message", [
    ("switchover-step", "cost_ns", -5, "Expected `int` >= 0 - at `$.cost_ns`"),
    ("switchover-step", "step", "nap", "Invalid enum value 'nap' - at `$.step`"),
    ("transfer", "cpu_ns", -1, "Expected `int` >= 0 - at `$.cpu_ns`"),
    ("bitmap-sync", "bql_wait_ns", -1, "Expected `int` >= 0 - at `$.bql_wait_ns`"),
    ("vcpu-stats", "bql_wait_ns", -3, "Expected `int` >= 0 - at `$.bql_wait_ns`"),
    ("vcpu-stats", "mmio_exits", "many", "Expected `int`, got `str` - at `$.mmio_exits`")])
def test_new_event_fields_are_checked(tmp_path, log, tag, field, value, message):
    """The sending side's, the switchover's and the BQL's fields: a negative time or count, an unknown step or a
    string for a number is a corrupted log."""
    i = _index(log, tag, -1)
    edited = _obj(log[i])
    edited[field] = value
    _rejected(tmp_path, log[:i] + [_line(edited)] + log[i + 1:], i + 1, f"not a valid {tag}: {message}")
