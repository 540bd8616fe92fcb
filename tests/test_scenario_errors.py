"""What a virtualization engineer sees when a scenario file is wrong.

Each case is a small broken file in ``tests/broken/`` plus the *whole* report
the loader must print, with the file path replaced by ``{file}``. Every line
must name the file, the line, the key path, the bad value ("got ...") and what
is allowed, as ``FILE:LINE: key.path: message (got VALUE; allowed ...)``.

Cases marked ``PROPOSED`` expect a better text than the loader prints today
(the current text is quoted in the comment); they fail until the loader is fixed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dirtysim.cli import main
from dirtysim.scenario.load import ScenarioError, load_scenario

BROKEN = Path(__file__).parent / "broken"

VALID = """\
machine:
  memory: {size: 1GiB}
  vcpus:
    - count: 1
      workload: {kind: uniform, rate: 10MiB/s}
"""

SIZE_ALLOWED = ("a number with a unit, e.g. 8GiB; units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, "
                "or QEMU's K, M, G, T, P, E (powers of 1024)")
RATE_ALLOWED = (
    "a number with a unit, e.g. 128MiB/s; units: B/s, KiB/s, MiB/s, GiB/s, TiB/s, KB/s, MB/s, GB/s, TB/s, "
    "bit/s, Kbit/s, Mbit/s, Gbit/s, Tbit/s"
)
DURATION_ALLOWED = "a number with a unit, e.g. 300ms; units: ns, us, ms, s, min"
TYPO = "unknown key; did you mean downtime_limit?"
MIGRATION_KEYS = ("max_bandwidth, downtime_limit, avail_switchover_bandwidth, throttle_trigger_threshold, "
                  "cpu_throttle_initial, cpu_throttle_increment, cpu_throttle_tailslow, max_cpu_throttle, "
                  "vcpu_dirty_limit, x_vcpu_dirty_limit_period, start_at, capabilities, zero_page_detection, "
                  "multifd_channels, xbzrle_cache_size, multifd_compression, timeout, x_postcopy_after_syncs, max_syncs")

CASES = [
    # PROPOSED. Today: "input should be a valid integer, unable to parse string as an integer (got "two")"
    # (pydantic wording, no "allowed").
    ("wrong_type_count.yaml",
     '{file}:4: machine.vcpus.0.count: not an integer (got "two"; allowed: 1 .. 4096)'),
    ("unknown_key_typo.yaml",
     f'{{file}}:7: migration.downtime_limt: {TYPO} (got "300ms"; allowed: {MIGRATION_KEYS})'),
    ("negative_size.yaml",
     f'{{file}}:2: machine.memory.size: a size must not be negative (got "-1GiB"; allowed: {SIZE_ALLOWED})'),
    ("bad_unit.yaml",
     f"{{file}}:2: machine.memory.size: unknown unit 'GiBs' (got \"8GiBs\"; allowed: {SIZE_ALLOWED})"),
    ("missing_workload.yaml",
     "{file}:4: machine.vcpus.0.workload: required key is missing"),
    ("missing_memory.yaml",
     "{file}:1: machine.memory: required key is missing"),
    ("missing_machine.yaml",
     "{file}:1: machine: required key is missing"),
    ("zero_fraction_too_big.yaml",
     "{file}:2: machine.memory.zero_fraction: out of range (got 1.5; allowed: 0.0 .. 1.0)"),
    ("hot_share_negative.yaml",
     "{file}:5: machine.vcpus.0.workload.hot_share: out of range (got -0.1; allowed: 0.0 .. 1.0)"),
    # PROPOSED. Today: "{file}:3: YAML syntax error: expected ',' or '}', but got ':'" -- line 3 is only
    # where PyYAML noticed; the unclosed '{' is on line 2 and the report should say so.
    ("yaml_syntax.yaml",
     "{file}:3: YAML syntax error: expected ',' or '}', but got ':' "
     "(while parsing a flow mapping that starts at line 2)"),
    ("empty.yaml",
     "{file}:1: the file is empty (a scenario needs at least machine.memory and machine.vcpus)"),
    ("top_level_list.yaml",
     "{file}:1: the top level must be a mapping of keys (got list)"),
    # PROPOSED. Today: "{file}:5: machine.vcpus.0.workload: unknown workload kind (got dict; ...)" --
    # "got dict" hides the bad value; the key at fault is workload.kind.
    ("unknown_workload_kind.yaml",
     "{file}:5: machine.vcpus.0.workload.kind: unknown workload kind (got \"sawtooth\"; allowed: 'uniform', 'hotset', 'zipf', 'sequential', 'database', 'trace')"),
    # PROPOSED. Today: "{file}:5: machine.vcpus.0.workload: the workload needs a 'kind' (got dict; allowed: uniform, hotset)".
    ("workload_without_kind.yaml",
     "{file}:5: machine.vcpus.0.workload.kind: required key is missing (allowed: uniform, hotset, zipf, sequential, database, trace)"),
    # PROPOSED. Today: "(got 5; allowed: >= 6)" and "(got 32; allowed: <= 31)" -- only the violated bound;
    # state the whole range, as the fractions already do.
    ("clear_bitmap_shift_low.yaml",
     "{file}:7: dirty_tracking.clear_bitmap_shift: out of range (got 5; allowed: 6 .. 31)"),
    ("clear_bitmap_shift_high.yaml",
     "{file}:7: dirty_tracking.clear_bitmap_shift: out of range (got 32; allowed: 6 .. 31)"),
    ("accel_hvf.yaml",
     "{file}:2: machine.accel: not an allowed value (got \"hvf\"; allowed: 'kvm' or 'tcg')"),
    ("rate_no_unit.yaml",
     f"{{file}}:5: machine.vcpus.0.workload.rate: a rate needs a unit (got 100; allowed: {RATE_ALLOWED})"),
    ("duration_no_unit.yaml",
     f"{{file}}:7: migration.downtime_limit: a duration needs a unit (got 300; allowed: {DURATION_ALLOWED})"),
    ("working_set_too_big.yaml",
     "{file}:5: machine.vcpus.0.workload.working_set: the working set does not fit in RAM "
     "(got offset 0B + 2GiB; allowed: offset + working_set <= 1GiB)"),
    # PROPOSED. Today: "rAM size must be ..." -- the loader lower-cases the first letter of every message.
    ("ram_size_not_multiple.yaml",
     "{file}:2: machine.memory.size: RAM size must be at least 1MiB and a multiple of 256KiB "
     "(got 1000000B; allowed: e.g. 512MiB, 16GiB; at most 16TiB)"),
    # PROPOSED. Today: "{file}:6: dirty_tracking: initially_set needs manual_protect (KVM_DIRTY_LOG_INITIALLY_SET
    # is a flag of MANUAL_PROTECT2) (got dict; allowed: initially_set: false when manual_protect: false)" --
    # wrong line (6 is 'dirty_tracking:'), no key, "got dict", two parentheses.
    ("initially_set_without_manual_protect.yaml",
     "{file}:8: dirty_tracking.initially_set: needs manual_protect: true, since KVM_DIRTY_LOG_INITIALLY_SET "
     "is a flag of KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (got true with manual_protect: false; "
     "allowed: false when manual_protect is false)"),
    # PROPOSED. Today: "(got list; allowed: at least 1 item)" -- show the value, not its Python type.
    ("empty_vcpus.yaml",
     "{file}:3: machine.vcpus: must not be empty (got []; allowed: at least 1 item)"),
    # PROPOSED. Today: "{file}:3: machine.vcpus: input should be a valid list (got dict)" -- pydantic wording,
    # Python type name, no "allowed"; a mapping here means the '- ' was forgotten.
    ("vcpus_not_a_list.yaml",
     '{file}:3: machine.vcpus: not a list (got a mapping; allowed: a list of vCPU groups, each item starting with "- ")'),
    # PROPOSED (order only). Today the same five lines come in schema order, with the unknown key last
    # (line 9 before line 8); a report should read top to bottom like the file.
    ("multiple_errors.yaml", "\n".join([
        "{file}:2: machine.accel: not an allowed value (got \"hvf\"; allowed: 'kvm' or 'tcg')",
        "{file}:3: machine.memory.zero_fraction: out of range (got 1.5; allowed: 0.0 .. 1.0)",
        f"{{file}}:6: machine.vcpus.0.workload.rate: a rate needs a unit (got 100; allowed: {RATE_ALLOWED})",
        f'{{file}}:8: migration.downtime_limt: {TYPO} (got "300ms"; allowed: {MIGRATION_KEYS})',
        f"{{file}}:9: migration.max_bandwidth: cannot read 'fast' as a rate (got \"fast\"; allowed: {RATE_ALLOWED})",
    ])),
]


def _report(path: Path, **kwargs) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, **kwargs)
    return str(info.value).replace(str(path), "{file}")


@pytest.mark.parametrize("filename, expected", CASES, ids=[name for name, _ in CASES])
def test_broken_scenario_report(filename: str, expected: str) -> None:
    assert _report(BROKEN / filename) == expected


def test_every_broken_file_has_a_case() -> None:
    on_disk = {p.name for p in BROKEN.glob("*.yaml")}
    assert on_disk == {name for name, _ in CASES}


@pytest.fixture
def valid_file(tmp_path: Path) -> Path:
    path = tmp_path / "valid.yaml"
    path.write_text(VALID)
    return path


OVERRIDE_CASES = [
    (["migration.max_bandwidth=fast"],
     f"--set migration.max_bandwidth: cannot read 'fast' as a rate (got \"fast\"; allowed: {RATE_ALLOWED})"),
    (["migration.downtime_limt=500ms"],
     f'--set migration.downtime_limt: {TYPO} (got "500ms"; allowed: {MIGRATION_KEYS})'),
    (["migration.downtime_limit"],
     "--set migration.downtime_limit: expected key.path=value (got 'migration.downtime_limit'; "
     "allowed: e.g. migration.downtime_limit=500ms)"),
]


@pytest.mark.parametrize("overrides, expected", OVERRIDE_CASES, ids=[o[0] for o, _ in OVERRIDE_CASES])
def test_override_error(valid_file: Path, overrides: list[str], expected: str) -> None:
    report = _report(valid_file, overrides=overrides)
    assert report == expected
    assert report.startswith(f"--set {overrides[0].split('=')[0]}")


def test_valid_override_applies(valid_file: Path) -> None:
    scenario = load_scenario(valid_file, overrides=["migration.downtime_limit=500ms"])
    assert scenario.migration.downtime_limit == 500_000_000


def test_cli_validate_broken_file_exits_2_with_report_on_stderr() -> None:
    path = BROKEN / "unknown_key_typo.yaml"
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f'{path}:7: migration.downtime_limt: {TYPO} (got "300ms"; allowed: {MIGRATION_KEYS})\n'
    )


def test_cli_validate_valid_file_exits_0(valid_file: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(valid_file)])
    assert result.exit_code == 0, result.output
    assert "\n  accel: kvm\n" in result.stdout
    assert result.stderr == ""
