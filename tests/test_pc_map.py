"""The pc (i440fx) and q35 boards: QEMU's memory map, PAM, and what the listeners see of it.

The expected tables are written out from QEMU's source rules (hw/i386/pc_piix.c,
pc_q35.c, pc.c pc_memory_init, pc_sysfw.c x86_bios_rom_init, hw/pci-host/pam.c,
i440fx.c / q35.c, hw/display/vga.c), as ``info mtree -f`` prints them for the
machine at creation (``-S``: after the system reset, before the firmware runs),
with KVM's in-kernel irqchip (QEMU's default kernel-irqchip=on).
"""

from __future__ import annotations

import numpy as np
import pytest
import simpy
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import BASE, merge, of, scenario, simulate
from dirtysim.board.layout import ram_split
from dirtysim.cli import main
from dirtysim.events import schema as ev
from dirtysim.events.log import Recorder
from dirtysim.machine import Machine
from dirtysim.memory.address_space import GLOBAL_DIRTY_MIGRATION
from dirtysim.scenario.load import ScenarioError, load_scenario
from dirtysim.scenario.schema import TimelineEntry
from dirtysim.timeline import apply_action

GIB, MIB, KIB = 1 << 30, 1 << 20, 1 << 10
MODES = ("disabled", "read-only", "write-only", "read-write")

# info mtree -f, address space "memory", 6 GiB guest: (start, size, type, region, offset in the region)
LOW_1M = [
    (0x0, 0xA0000, "ram", "pc.ram", 0x0),  # ram-below-4g
    (0xA0000, 0x20000, "i/o", "vga-lowmem", 0x0),  # smram-region (SMRAM closed) -> pci -> vga-lowmem
    (0xC0000, 0x20000, "rom", "pc.rom", 0x0),  # pam-pci (PAM 0 at reset) -> pci -> pc.rom
    (0xE0000, 0x20000, "rom", "pc.bios", 0x20000),  # pam-pci -> pci -> isa-bios: the last 128 KiB of 256
]
# device MMIO in the PCI hole (KVM, in-kernel irqchip)
HOLE_MMIO = [
    (0xFEC00000, 0x1000, "i/o", "kvm-ioapic", 0x0),  # ioapic_init_gsi: IO_APIC_DEFAULT_ADDRESS, 4 KiB
    (0xFED00000, 0x400, "i/o", "hpet", 0x0),  # pc_basic_device_init: HPET_BASE, HPET_LEN
    (0xFEE00000, 0x100000, "i/o", "kvm-apic-msi", 0x0),  # x86_cpu_apic_realize: APIC_SPACE_SIZE, priority 0x1000
]
PC_6G = LOW_1M + [
    (0x100000, 0xC0000000 - 0x100000, "ram", "pc.ram", 0x100000),  # 6 GiB >= 3.5 GiB: gigabyte aligned, 3 GiB low
    *HOLE_MMIO,
    (0xFFFC0000, 0x40000, "rom", "pc.bios", 0x0),  # (uint32_t)(-bios_size)
    (0x100000000, 0xC0000000, "ram", "pc.ram", 0xC0000000),  # ram-above-4g: the other 3 GiB
]
Q35_6G = LOW_1M + [
    (0x100000, 0x80000000 - 0x100000, "ram", "pc.ram", 0x100000),  # 6 GiB >= 0xb0000000: 2 GiB low
    *HOLE_MMIO,  # smram-open-high (0xfeda0000) and the blackholes are disabled; MMCONFIG is not mapped at reset
    (0xFFFC0000, 0x40000, "rom", "pc.bios", 0x0),
    (0x100000000, 0x100000000, "ram", "pc.ram", 0x80000000),  # 4 GiB above
]


def _machine(**over) -> Machine:
    sc = scenario(**over)
    env = simpy.Environment()
    return Machine(env, sc, Recorder(lambda: env.now), np.random.SeedSequence(sc.seed))


def _board(kind: str, **machine) -> Machine:
    return _machine(machine={"type": kind, "memory": {"size": "6GiB"}, **machine})


def _table(m: Machine, lo: int = 0, hi: int = 1 << 64) -> list[tuple]:
    """``mtree_print_flatview``'s columns: a read-only range prints as rom, a RAM device as ramd."""
    return [(fr.addr, fr.size, "rom" if fr.readonly else "ramd" if fr.mr.is_ram_device else "ram" if fr.mr.is_ram
             else "i/o", fr.mr.name,
             fr.offset_in_region) for fr in m.as_memory.current_map if lo <= fr.addr < hi]


@pytest.mark.parametrize("kind, expected", [("pc", PC_6G), ("q35", Q35_6G)])
def test_six_gib_map_is_qemus(kind, expected):
    m = _board(kind)
    assert _table(m) == expected
    assert [(b.idstr, b.used_length) for b in m.ram_list.blocks] == [("pc.ram", 6 * GIB), ("pc.bios", 256 * KIB),
                                                                     ("pc.rom", 256 * KIB)]  # pc.rom padded


def test_a_user_backend_names_the_ramblock_by_its_canonical_path():
    """-object memory-backend-ram,id=mem0: host_memory_backend_get_name gives /objects/mem0 (machine types >= 4.1)."""
    m = _board("pc", memory_backend="mem0")
    assert m.ram.idstr == "/objects/mem0"
    assert [row[3] for row in _table(m)] == ["/objects/mem0" if r[3] == "pc.ram" else r[3] for r in PC_6G]


@pytest.mark.parametrize("kind, size, max_below, split", [
    ("pc", 4 * GIB, 0, (3 * GIB, GIB)),  # pc_init1's examples: qemu -M pc -m 4G
    ("pc", 4 * GIB, 2 * GIB, (2 * GIB, 2 * GIB)),  # -M pc,max-ram-below-4g=2G -m 4G
    ("pc", 3968 * MIB, 4 * GIB, (3968 * MIB, 0)),  # -M pc,max-ram-below-4g=4G -m 3968M
    ("pc", 3 * GIB, 0, (3 * GIB, 0)),  # below 3.5 GiB: no split
    ("pc", 3584 * MIB, 0, (3 * GIB, 512 * MIB)),  # exactly 3.5 GiB: split, gigabyte aligned
    ("q35", 2 * GIB, 0, (2 * GIB, 0)),  # below 0xb0000000
    ("q35", 0xB0000000, 0, (2 * GIB, 0xB0000000 - 2 * GIB)),
    ("q35", 6 * GIB, 1 * GIB, (1 * GIB, 5 * GIB)),  # max-ram-below-4g lowers lowmem
    ("q35", 2 * GIB, 4 * GIB, (2 * GIB, 0)),
])
def test_ram_split_follows_qemu(kind, size, max_below, split):
    assert ram_split(kind, size, max_below) == split


def _expected_with_pam(kind: str, modes: dict[int, int]) -> list[tuple]:
    """The 6 GiB table with 0xc0000-0xfffff by pam_update's rule: mode 0 shows pci (pc.rom, isa-bios), 1 RAM
    read-only, 2 and 3 RAM read-write; neighbours of one region, contiguous in it and alike, merge."""
    table = {"pc": PC_6G, "q35": Q35_6G}[kind]
    rows = [list(r) for r in table[:2]]
    for addr in range(0xC0000, 0x100000, 16 * KIB):
        seg = 0 if addr >= 0xF0000 else (addr - 0xC0000) // (16 * KIB) + 1
        mode = modes.get(seg, 0)
        if mode == 0:
            rows.append([addr, 16 * KIB, "rom", "pc.rom" if addr < 0xE0000 else "pc.bios", addr - 0xC0000])
        else:
            rows.append([addr, 16 * KIB, "rom" if mode == 1 else "ram", "pc.ram", addr])
    rows += [list(r) for r in table[4:]]
    merged: list[list] = []
    for row in rows:  # flatview_simplify
        last = merged[-1] if merged else None
        if last and last[0] + last[1] == row[0] and last[2:4] == row[2:4] and last[4] + last[1] == row[4]:
            last[1] += row[1]
        else:
            merged.append(row)
    return [tuple(r) for r in merged]


def _pam(m: Machine, segment: int, mode: str) -> None:
    entry = TimelineEntry.model_validate({"at": "0s", "pam": {"segment": segment, "mode": mode}})
    apply_action(entry, m.scenario, m, False, m.recorder)


@pytest.mark.parametrize("kind", ["pc", "q35"])
def test_each_pam_segment_in_each_mode_splits_and_merges_as_qemu(kind):
    m = _board(kind, devices=[{"kind": "vfio-pci"}])
    vfio = m.devices[0]["vfio"]
    for segment in range(13):
        for mode in (1, 2, 3, 0):
            _pam(m, segment, MODES[mode])
            assert _table(m) == _expected_with_pam(kind, {segment: mode}), (segment, MODES[mode])
            assert set(vfio.mappings.items()) == {(fr.addr, fr.size) for fr in m.as_memory.current_map
                                                  if fr.mr.is_ram}
    assert _table(m) == {"pc": PC_6G, "q35": Q35_6G}[kind]  # all back to disabled: merged again


def test_shadowing_the_bios_like_seabios():
    """All 13 segments read-write: the RAM behind them joins the RAM above 1 MiB in one range; then the
    BIOS segment read-only splits it again (a read-only range never merges with a writable one)."""
    m = _board("pc")
    for segment in range(13):
        _pam(m, segment, "read-write")
    assert _table(m, 0xC0000, 0xFEC00000) == [(0xC0000, 0xC0000000 - 0xC0000, "ram", "pc.ram", 0xC0000)]
    _pam(m, 0, "read-only")
    assert _table(m, 0xC0000, 0xFEC00000) == [(0xC0000, 0x30000, "ram", "pc.ram", 0xC0000),
                                               (0xF0000, 0x10000, "rom", "pc.ram", 0xF0000),
                                               (0x100000, 0xC0000000 - 0x100000, "ram", "pc.ram", 0x100000)]


def test_a_pam_toggle_reaches_the_listeners_as_qemu_orders_it():
    """Segment 1 read-write: pc.rom's section goes (region_del), then the RAM segment and the rest of pc.rom
    come (region_add), in address order; the kvm-memory slot set follows."""
    m = _board("pc", devices=[{"kind": "vfio-pci"}])
    start = len(m.recorder.events)
    _pam(m, 1, "read-write")
    calls = [(e.hook, e.section, e.offset, e.size) for e in of(m.recorder.events[start:], ev.ListenerCall)
             if e.listener == "vfio" and e.hook in ("region_add", "region_del")]
    assert calls == [("region_del", "pc.rom", 0xC0000, 0x20000), ("region_add", "pc.ram", 0xC0000, 0x4000),
                     ("region_add", "pc.rom", 0xC4000, 0x1C000)]
    assert sorted((s.gpa, s.size, s.readonly) for s in m.kvm.slots)[:4] == [
        (0x0, 0xA0000, False), (0xC0000, 0x4000, False), (0xC4000, 0x1C000, True), (0xE0000, 0x20000, True)]


@pytest.mark.parametrize("kind", ["pc", "q35"])
def test_vfio_maps_the_ram_sections_and_no_mmio(kind):
    m = _board(kind, devices=[{"kind": "vfio-pci"}])
    vfio = m.devices[0]["vfio"]
    assert sorted(vfio.mappings.items()) == [(a, s) for a, s, t, _, _ in {"pc": PC_6G, "q35": Q35_6G}[kind]
                                             if t != "i/o"]
    assert not any(a <= 0xA0000 < a + s for a, s in vfio.mappings.items())  # vga-lowmem is never mapped


def test_the_guest_writes_ram_through_the_board():
    """Workload offsets are offsets in the RAM backend: the oracle's map puts backend byte 3 GiB at 4 GiB (pc)."""
    m = _board("pc")
    assert m.guest_map.table.T.tolist() == [[0, 0xA0, 0], [0x100, 0xC0000 - 0x100, 0x100],
                                             [0x100000, 0xC0000, 0xC0000]]  # guest page, pages, RAM page
    assert m.guest.runs[1] == 0 and m.guest.runs[1 + 3 * 512] == 0x100000  # 2 MiB runs: 3 GiB goes to 4 GiB


@pytest.mark.parametrize("kind, accel, mode", [("pc", "kvm", "bitmap"), ("q35", "kvm", "bitmap"), ("pc", "kvm", "ring"),
                                               ("q35", "tcg", "bitmap")])
def test_migration_on_a_board_loses_nothing(kind, accel, mode):
    """The whole run on the board: RAM split at 512 MiB, every PAM mode toggled while migrating."""
    timeline = [{"at": f"{250 + 10 * i}ms", "pam": {"segment": s, "mode": m}}
                for i, (s, m) in enumerate([(1, "read-write"), (0, "read-only"), (2, "write-only"), (1, "disabled"),
                                            (0, "read-write"), (2, "disabled")])]
    result = simulate(machine={"type": kind, "accel": accel, "max_ram_below_4g": "512MiB",
                               "devices": [{"kind": "vfio-pci"}]},
                      dirty_tracking={"mode": mode}, timeline=timeline)
    assert result.stop_reason == "completed"
    assert of(result.events, ev.OracleCheck)[-1].lost_pages == 0
    assert [e.result for e in of(result.events, ev.TimelineAction)] == ["done"] * 6


def test_a_segment_slot_going_keeps_its_neighbours_write_protection():
    """Dirty ring: segment 1 (0xc0000) read-write stays one slot while segment 3 (0xc8000, in the same 64-page
    word) goes from read-only RAM (a slot) to the ROM (no slot). Deleting segment 3's slot must leave segment
    1's pages write-protected, or the guest's next write there makes no ring entry and the page is lost."""
    m = _machine(machine={"type": "pc", "max_ram_below_4g": "512MiB"}, dirty_tracking={"mode": "ring"})
    m.memory.memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION)
    for segment, mode in ((1, "read-write"), (3, "read-only"), (3, "disabled")):
        _pam(m, segment, mode)
    page = 0xC0000 // 4096
    m.kvm.apply_writes(np.array([page], dtype=np.int64), np.array([1, 1], dtype=np.int64),
                       np.zeros(2, dtype=np.int64))
    assert m.kvm.unreaped_pages()[page // 64] == np.uint64(1) << np.uint64(page % 64)


@pytest.mark.parametrize("machine, timeline, message", [
    ({"type": "pc"}, [{"at": "1s", "pam": {"enabled": True}}], "machine.type pc has 13 PAM segments"),
    ({}, [{"at": "1s", "pam": {"segment": 1, "mode": "read-only"}}], "machine.type none has one shadow ROM"),
    ({"type": "q35", "devices": [{"kind": "vhost-net", "rx": "1Mbit/s", "buffers": "1MiB", "buffer_offset": "512KiB"}]},
     [], "a vhost device's buffers lie in one RAM range the board shows"),
    ({"type": "pc", "memory": {"size": "6GiB"}, "devices": [{"kind": "vhost-net", "rx": "1Mbit/s", "buffers": "2MiB",
                                                             "buffer_offset": "3071MiB"}]},
     [], "a vhost device's buffers lie in one RAM range the board shows"),
    ({"type": "pc", "vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "1MiB/s", "offset": "1MiB"}}]},
     [], "a working set reaches RAM through the board in 2MiB runs"),
    ({"max_ram_below_4g": "1GiB"}, [], "only the pc and q35 boards split RAM"),
    ({"type": "pc", "max_ram_below_4g": "5GiB"}, [], "max_ram_below_4g"),
])
def test_what_the_boards_refuse(tmp_path, machine, timeline, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"machine": machine, "timeline": timeline})))
    with pytest.raises(ScenarioError, match=message):
        load_scenario(path)


@pytest.mark.parametrize("mmap, row", [(True, (0xFD000000, 16 * MIB, "ramd", "0000:01:00.0 BAR 0 mmaps[0]", 0)),
                                       (False, (0xFD000000, 16 * MIB, "i/o", "0000:01:00.0 BAR 0", 0))])
def test_a_bar_goes_into_the_pci_hole(mmap, row):
    """``pci_update_mappings``: the BAR in ``pci`` at priority 1; it shows where RAM leaves the hole. vfio maps
    its mmap (a RAM device); with x-no-mmap the BAR is the device region, MMIO, which vfio skips."""
    m = _board("pc", devices=[{"kind": "vfio-pci", "bar": "16MiB", "mmap": mmap}])
    entry = TimelineEntry.model_validate({"at": "0s", "bar": {"device": 0, "addr": 0xFD000000}})
    apply_action(entry, m.scenario, m, False, m.recorder)
    assert row in _table(m)
    assert (0xFD000000 in m.devices[0]["vfio"].mappings) == mmap


@pytest.mark.parametrize("addr, ok", [(0xFD000000, True), (0xB0000000, False), (0xFF000000, False)])
def test_bar_addresses_on_a_board(addr, ok):
    """RAM below 4 GiB ends at 3 GiB (pc, 6 GiB): a BAR may not cover it, nor pc.bios at the top of 4 GiB."""
    over = {"machine": {"type": "pc", "memory": {"size": "6GiB"}, "devices": [{"kind": "vfio-pci", "bar": "16MiB"}]},
            "timeline": [{"at": "1s", "bar": {"device": 0, "addr": addr}}]}
    if ok:
        scenario(**over)
    else:
        with pytest.raises(ValueError, match="a BAR must lie outside RAM"):
            scenario(**over)


def test_listeners_trace_of_a_pam_segment(tmp_path):
    """``dirtysim listeners --trace``: the board's sections at creation, then one segment's split."""
    path = tmp_path / "pc.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"machine": {"type": "q35", "devices": [{"kind": "vfio-pci"}]},
                                                "timeline": [{"at": "1s", "pam": {"segment": 12,
                                                                                  "mode": "read-only"}}]})))
    res = CliRunner().invoke(main, ["listeners", str(path), "--trace"])
    assert res.exit_code == 0, res.output
    created, toggled = res.output.split("# at 1s: pam {'segment': 12, 'mode': 'read-only'}")
    skipped = "vfio           region_add       vga-lowmem @0xa0000+0x20000"
    assert skipped not in created  # vfio_listener_skipped_section: MMIO; --all-hooks shows it
    assert skipped in CliRunner().invoke(main, ["listeners", str(path), "--all-hooks"]).output
    vfio = [line.split()[1:] for line in toggled.splitlines() if line.split()[:1] == ["vfio"]
            and "region_" in line]
    assert vfio == [["region_del", "pc.bios", "@0xe0000+0x20000"], ["region_add", "pc.bios", "@0xe0000+0xc000"],
                    ["region_add", "pc.ram", "@0xec000+0x4000"], ["region_add", "pc.bios", "@0xf0000+0x10000"]]


@given(st.lists(st.tuples(st.integers(0, 12), st.sampled_from(MODES)), min_size=1, max_size=12))
@settings(max_examples=25, deadline=None)
def test_any_pam_sequence_keeps_map_slots_and_oracle_in_step(steps):
    """After any sequence of pam_update calls: the map is the rule's, KVM's memslots and vfio's mappings are its
    RAM ranges, and the oracle's own map of writable RAM is its writable RAM ranges."""
    m = _board("q35", devices=[{"kind": "vfio-pci"}])
    modes: dict[int, int] = {}
    for segment, mode in steps:
        _pam(m, segment, mode)
        modes[segment] = MODES.index(mode)
    assert _table(m) == _expected_with_pam("q35", modes)
    view = m.as_memory.current_map
    ram = {(fr.addr, fr.size) for fr in view if fr.mr.is_ram}
    assert {(s.gpa, s.size) for s in m.kvm.slots} == ram == set(m.devices[0]["vfio"].mappings.items())
    writable = [(fr.addr // 4096, fr.size // 4096) for fr in view if fr.mr.is_ram and not fr.readonly]
    runs = [tuple(r) for r in m.guest_map.table.T[:, :2].tolist()]
    assert _joined(writable) == runs


def _joined(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent (first page, pages) ranges as one: the oracle keeps runs, not sections."""
    out: list[list[int]] = []
    for first, pages in ranges:
        if out and out[-1][0] + out[-1][1] == first:
            out[-1][1] += pages
        else:
            out.append([first, pages])
    return [tuple(r) for r in out]
