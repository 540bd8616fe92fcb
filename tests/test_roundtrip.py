"""What dirtysim writes about a scenario can be read back (issue 8, item 2).

``validate`` prints a valid scenario (units kept); ``dirtysim schema`` agrees with the loader on
every field; ``summary.json``'s scenario runs again with the same fingerprint; QEMU's spellings
and size suffixes are accepted.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from dirtysim.cli import main
from dirtysim.report.files import write_run
from dirtysim.scenario import schema as sc
from dirtysim.scenario.load import ScenarioError, load_scenario, scenario_json_schema
from dirtysim.sim import run

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))

# Every model of the schema at least once: both workloads, every device kind, every timeline action.
RICH = """\
name: rich
seed: 7
machine:
  accel: kvm
  memory: {size: 1GiB, zero_fraction: 0.25}
  device_memory: 1GiB
  vcpus:
    - {count: 2, workload: {kind: hotset, rate: 8MiB/s, hot: 64MiB, hot_share: 0.9, working_set: 512MiB}}
    - {count: 1, workload: {kind: uniform, rate: 1MiB/s, offset: 512MiB, working_set: 256MiB}}
    - {count: 1, start: 10ms, stop: 2s, workload: {kind: zipf, rate: 1MiB/s, exponent: 1.2, offset: 768MiB,
       working_set: 64MiB}}
    - {count: 1, workload: {kind: sequential, rate: 1MiB/s, offset: 832MiB, working_set: 64MiB},
       phases: [{duration: 100ms, rate: 0B/s}, {duration: 100ms, rate: 2MiB/s}]}
    - {count: 1, workload: {kind: database, rate: 1MiB/s, hot: 16MiB, hot_share: 0.5, log: 8MiB, log_offset: 32MiB,
       log_share: 0.2, offset: 896MiB, working_set: 64MiB}}
    - {count: 1, workload: {kind: trace, file: scenarios/traces/example.csv}}
  devices:
    - {kind: vhost-user-net, rx: 100Mbit/s, packet: 9000B, buffers: 8MiB}
    - {kind: vhost-user-blk, read: 10MiB/s, request: 128KiB, buffers: 8MiB}
    - {kind: virtio-net, queues: 2}
    - {kind: vfio-pci, bar: 32MiB}
    - {kind: VGA, vgamem_mb: 8}
dirty_tracking: {x-clear-bitmap-shift: 12}
costs: {write_fault: 3us}
network: {bandwidth: 25Gbit/s, latency: 50us}
migration: {start_at: 100ms, max-bandwidth: 1G/s, downtime-limit: 200, timeout: 3s,
            capabilities: {auto-converge: true}, cpu-throttle-initial: 30, max_syncs: 50}
engine: {quantum: 2ms}
outputs: {plots: false}
timeline:
  - {at: 10ms, bar: {device: 2, addr: 0x140000000}}
  - {at: 20ms, ioeventfd: {device: 2}}
  - {at: 30ms, pam: {enabled: true}}
  - {at: 40ms, hotplug: {id: d0, size: 256MiB}}
  - {at: 50ms, unplug: {id: d0}}
  - {at: 60ms, calc-dirty-rate: {calc-time: 50, calc-time-unit: millisecond, sample-pages: 256, mode: page-sampling}}
  - {at: 70ms, migrate-set-parameters: {downtime-limit: 250, cpu-throttle-increment: 5, x-vcpu-dirty-limit-period: 500}}
  - {at: 80ms, migrate-cancel: {}}
  - {at: 90ms, migrate-start-postcopy: {}}
what_if: {hotplug_during_migration: false}
"""
# Where each model sits in RICH (a --set path), to try every field's default and limits in place.
WHERE = {
    "Scenario": "", "Machine": "machine", "MemoryConfig": "machine.memory", "VcpuGroup": "machine.vcpus.0",
    "HotsetWorkload": "machine.vcpus.0.workload", "UniformWorkload": "machine.vcpus.1.workload",
    "ZipfWorkload": "machine.vcpus.2.workload", "SequentialWorkload": "machine.vcpus.3.workload",
    "DatabaseWorkload": "machine.vcpus.4.workload", "Phase": "machine.vcpus.3.phases.0",
    "TraceWorkload": "machine.vcpus.5.workload",
    "VhostUserNet": "machine.devices.0", "VhostUserBlk": "machine.devices.1", "VirtioDevice": "machine.devices.2",
    "VfioPci": "machine.devices.3", "Vga": "machine.devices.4", "DirtyTracking": "dirty_tracking", "Costs": "costs", "Network": "network",
    "Migration": "migration", "Engine": "engine", "Outputs": "outputs", "TimelineEntry": "timeline.0",
    "BarMap": "timeline.0.bar", "Ioeventfd": "timeline.1.ioeventfd", "Pam": "timeline.2.pam",
    "Hotplug": "timeline.3.hotplug", "Unplug": "timeline.4.unplug", "CalcDirtyRate": "timeline.5.calc_dirty_rate",
    "WhatIf": "what_if", "SetParameters": "timeline.6.set", "MigrateCancel": "timeline.7.migrate_cancel",
    "MigrateStartPostcopy": "timeline.8.migrate_start_postcopy",
    "Capabilities": "migration.capabilities",
}
# Models valid only on a board, placed in RICH_Q35 instead
RICH_Q35 = """\
name: rich-q35
machine: {type: q35, memory: {size: 1GiB}, vcpus: [{count: 1, workload: {kind: uniform, rate: 1MiB/s}}]}
timeline:
  - {at: 10ms, pciexbar: {enabled: true}}
"""
ON_A_BOARD = {"Pciexbar": "timeline.0.pciexbar"}
WHERE_ALL = {**WHERE, **ON_A_BOARD}
# Defaults valid in general but not with the rest of RICH: no devices or no device memory orphan RICH's timeline; an entry with no bar has no action;
# a pam action without enabled has no form; a pc/q35 board moves RICH's BAR address into RAM.
NOT_HERE = {("Machine", "devices"), ("Machine", "device_memory"),
            ("TimelineEntry", "bar"), ("Pam", "enabled")}
# rate: null is valid only with a visible_rate, which RICH's workloads do not give
NOT_HERE |= {(m, "rate") for m in ("UniformWorkload", "HotsetWorkload", "ZipfWorkload", "SequentialWorkload",
                                   "DatabaseWorkload", "TraceWorkload")}  # a trace's rate loads as 0
LOADS_AS = {("Scenario", "name"): "rich"}  # name: null means the file's name
FIELD_OF = {qemu: field for field, qemu in sc.QEMU_SPELLINGS.items()}


@pytest.fixture
def rich(tmp_path: Path) -> Path:
    path = tmp_path / "rich.yaml"
    path.write_text(RICH)
    return path


@pytest.fixture
def rich_q35(tmp_path: Path) -> Path:
    path = tmp_path / "rich-q35.yaml"
    path.write_text(RICH_Q35)
    return path


def _validate(path: Path) -> str:
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.parametrize("path", [*SHIPPED, None], ids=[p.name for p in SHIPPED] + ["rich"])
def test_validate_output_is_the_same_scenario(tmp_path: Path, rich: Path, path: Path | None) -> None:
    path = path or rich
    printed = _validate(path)
    again = tmp_path / "again.yaml"
    again.write_text(printed)
    assert load_scenario(again) == load_scenario(path)
    assert _validate(again) == printed  # a fixed point
    jsonschema.Draft202012Validator(scenario_json_schema()).validate(yaml.safe_load(printed))


def test_validate_writes_units(rich: Path) -> None:
    printed = yaml.safe_load(_validate(rich))
    assert printed["machine"]["memory"]["size"] == "1GiB"
    assert printed["migration"]["max_bandwidth"] == "1GiB/s"  # QEMU's 1G/s, spelled max-bandwidth
    assert printed["migration"]["downtime_limit"] == "200ms"  # QEMU's bare 200 under downtime-limit
    assert printed["network"]["bandwidth"] == "25Gbit/s"
    assert printed["machine"]["devices"][0]["packet"] == "9000B"
    assert printed["dirty_tracking"]["clear_bitmap_shift"] == 12
    assert printed["costs"]["clear_dirty_log_per_page"] == "73ns"


def test_summary_scenario_runs_again_with_the_same_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("machine:\n  memory: {size: 64MiB}\n  vcpus: [{count: 2, workload: {kind: uniform, "
                    "rate: 20MiB/s}}]\nmigration: {start_at: 100ms, timeout: 5s}\noutputs: {plots: false}\n")
    first = run(load_scenario(path, seed=3), progress=False)
    summary = write_run(first, tmp_path / "one")
    again = tmp_path / "from-summary.json"
    again.write_text(json.dumps(summary["dirtysim"]["scenario"]))
    second = run(load_scenario(again), progress=False)
    assert first.error is None and second.scenario == first.scenario
    assert second.fingerprint == first.fingerprint


def _models() -> dict[str, type[BaseModel]]:
    return {name: getattr(sc, name) for name in WHERE_ALL}


def _definitions() -> list[tuple[str, dict]]:
    schema = scenario_json_schema()
    return [("Scenario", schema), *schema["$defs"].items()]


def test_schema_names_every_model_and_field() -> None:
    assert {name for name, _ in _definitions()} == set(WHERE_ALL)
    for name, definition in _definitions():
        model = _models()[name]
        qemu = {sc.QEMU_SPELLINGS[f] for f in model.model_fields if f in sc.QEMU_SPELLINGS}
        assert set(definition["properties"]) == set(model.model_fields) | qemu, name
        assert set(definition.get("required", [])) == {n for n, f in model.model_fields.items() if f.is_required()}
        assert definition["additionalProperties"] is False, name


def _json_value(value) -> str:
    return json.dumps(value)  # JSON is YAML, so --set reads it


def _cases():
    for name, definition in _definitions():
        for prop, spec in definition["properties"].items():
            yield name, prop, spec


@pytest.mark.parametrize("model, prop, spec", list(_cases()), ids=[f"{m}.{p}" for m, p, _ in _cases()])
def test_loader_agrees_with_schema_on_field(rich: Path, rich_q35: Path, model: str, prop: str, spec: dict) -> None:
    """The schema's default loads (and is the model's default); what the schema forbids is refused."""
    rich = rich_q35 if model in ON_A_BOARD else rich
    path = ".".join(p for p in (WHERE_ALL[model], prop) if p)
    if "default" in spec and (model, prop) not in NOT_HERE:
        scenario = load_scenario(rich, [f"{path}={_json_value(spec['default'])}"])
        got = scenario
        for part in path.split("."):
            got = got[int(part)] if part.isdigit() else getattr(got, FIELD_OF.get(part, part))
        field = _models()[model].model_fields[FIELD_OF.get(prop, prop)]
        assert got == LOADS_AS.get((model, prop), field.get_default(call_default_factory=True))
    forbidden = []
    if "enum" in spec:
        forbidden.append("not-one-of-them")
    if "minimum" in spec:
        forbidden.append(spec["minimum"] - 1)
    if "maximum" in spec:
        forbidden.append(spec["maximum"] + 1)
    if spec.get("type") == "boolean":
        forbidden.append("yes please")
    for value in forbidden:
        with pytest.raises(ScenarioError, match=f"^--set {path}: "):
            load_scenario(rich, [f"{path}={_json_value(value)}"])


@pytest.mark.parametrize("model", list(WHERE_ALL))
def test_schema_forbids_unknown_keys_as_the_loader_does(rich: Path, rich_q35: Path, model: str) -> None:
    path = ".".join(p for p in (WHERE_ALL[model], "no_such_key") if p)
    with pytest.raises(ScenarioError, match=f"^--set {path}: unknown key"):
        load_scenario(rich_q35 if model in ON_A_BOARD else rich, [f"{path}=1"])


@pytest.mark.parametrize("qemu, field, value, expected", [
    ("downtime-limit", "downtime_limit", "500", 500 * 10**6),
    ("max-bandwidth", "max_bandwidth", "1073741824", 1 << 30),
    ("avail-switchover-bandwidth", "avail_switchover_bandwidth", "512M/s", 512 << 20),
    ("zero-page-detection", "zero_page_detection", "legacy", "legacy"),
])
def test_qemu_spellings_of_migration_parameters(rich: Path, qemu: str, field: str, value: str, expected) -> None:
    assert getattr(load_scenario(rich, [f"migration.{qemu}={value}"]).migration, field) == expected


def test_errors_name_the_key_as_written(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(RICH.replace("downtime-limit: 200", "downtime-limit: 3000000"))
    assert str(pytest.raises(ScenarioError, load_scenario, path).value) == (
        f"{path}:26: migration.downtime-limit: above QEMU's maximum (migrate_params_check) "
        f"(got 3000s; allowed: 0 .. 2000s)")
