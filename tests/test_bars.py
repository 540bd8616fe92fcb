"""Devices with memory BARs (issue 12 item 2): a vfio device's mmap'd BAR (a RAM device), VGA's VRAM, MMIO BARs,
and what the kvm-memory, vfio and vhost listeners do with each, as QEMU's rules decide it:

* ``vfio_listener_skipped_section`` / ``vfio_listener_region_add`` (hw/vfio/listener.c): vfio maps every section
  whose region ``memory_region_is_ram`` (RAM, ROMs read-only, RAM devices) and skips the rest (MMIO);
* ``kvm_set_phys_mem`` (accel/kvm/kvm-all.c): the same sections become memslots; ``kvm_mem_flags`` logs a slot
  when ``memory_region_get_dirty_log_mask`` is non-zero, which VGA's client makes true outside migration;
* ``memory_region_get_dirty_log_mask`` (system/memory.c): MIGRATION only for a migratable RAMBlock, so never for
  a RAM device; migration skips it (``ramblock_is_ignored``).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import simpy
import yaml
from click.testing import CliRunner

from builders import BASE, merge, of, scenario, simulate
from dirtysim.cli import main
from dirtysim.events import schema as ev
from dirtysim.events.log import Recorder
from dirtysim.machine import Machine
from dirtysim.memory.address_space import GLOBAL_DIRTY_MIGRATION
from dirtysim.memory.region import DIRTY_MEMORY_MIGRATION, DIRTY_MEMORY_VGA
from dirtysim.scenario.load import ScenarioError, load_scenario
from dirtysim.scenario.schema import TimelineEntry
from dirtysim.timeline import apply_action

MIB, GIB = 1 << 20, 1 << 30
HIGH = 0x800000000  # 32 GiB: above RAM and the DIMM area on every machine type here
DEVICES = [{"kind": "vfio-pci", "bar": "16MiB"}, {"kind": "virtio-blk", "bar": "16KiB"}, {"kind": "VGA"},
           {"kind": "vfio-pci", "bar": "1MiB", "mmap": False}]
# map every BAR, then move the vfio BAR over the VGA's old place, then the VGA's elsewhere
STEPS = [(0, HIGH), (1, HIGH + 16 * MIB), (2, HIGH + 32 * MIB), (3, HIGH + 48 * MIB), (0, HIGH + 64 * MIB),
         (2, HIGH + 80 * MIB), (0, HIGH + 32 * MIB)]


def _machine(**machine) -> Machine:
    sc = scenario(machine={"memory": {"size": "2GiB"}, "devices": DEVICES, **machine})
    env = simpy.Environment()
    return Machine(env, sc, Recorder(lambda: env.now), np.random.SeedSequence(sc.seed))


def _bar(m: Machine, device: int, addr: int) -> None:
    apply_action(TimelineEntry.model_validate({"at": "0s", "bar": {"device": device, "addr": addr}}), m.scenario, m,
                 False, m.recorder)


@pytest.mark.parametrize("kind", ["none", "pc", "q35"])
def test_the_vfio_listener_maps_exactly_the_ram_and_ram_device_sections_never_mmio(kind):
    """Before and after each BAR map and move: vfio's DMA mappings are the FlatView's RAM sections (RAM, ROMs,
    RAM devices), each ROM read-only, and no mapping touches an MMIO section; kvm's memslots are the same set."""
    m = _machine(type=kind)
    vfio = m.devices[0]["vfio"]
    for step in [None, *STEPS]:
        if step is not None:
            _bar(m, *step)
        view = m.as_memory.current_map
        ram = {(fr.addr, fr.size) for fr in view if fr.mr.is_ram}
        assert set(vfio.mappings.items()) == ram
        assert vfio.readonly == {fr.addr for fr in view if fr.mr.is_ram and fr.readonly}
        mmio = [fr for fr in view if not fr.mr.is_ram]
        assert not any(fr.addr < a + s and a < fr.end for a, s in vfio.mappings.items() for fr in mmio)
        assert {(s.gpa, s.size) for s in m.kvm.slots} == ram
    names = {fr.mr.name: fr for fr in m.as_memory.current_map}
    assert names["0000:01:00.0 BAR 0 mmaps[0]"].addr in vfio.mappings  # the RAM device, at its last place
    assert names["vga.vram"].addr in vfio.mappings
    assert names["virtio-blk1-bar"].addr not in vfio.mappings  # MMIO
    assert names["0000:04:00.0 BAR 0"].addr not in vfio.mappings  # x-no-mmap: the device region, MMIO
    assert not any(name.startswith("0000:04:00.0") and name.endswith("mmaps[0]") for name in names)


def test_kvm_maps_the_ram_device_unlogged_and_vram_logged_for_vga_outside_migration():
    """``kvm_mem_flags``: vga.vram's slot logs from the moment it is mapped (the VGA client), migration or not;
    the RAM device's slot never logs, not even while migrating (no MIGRATION bit: no migratable RAMBlock)."""
    m = _machine(type="pc")
    for step in STEPS[:3]:
        _bar(m, *step)
    slots = {s.gpa: s for s in m.kvm.slots}
    vram, bar = m.devices[2]["bar"], slots[HIGH]
    assert m.memory.global_dirty_tracking == 0
    assert m.memory.memory_region_get_dirty_log_mask(vram) == 1 << DIRTY_MEMORY_VGA
    assert slots[HIGH + 32 * MIB].logging and slots[HIGH + 32 * MIB].size == 16 * MIB
    assert bar.ram_addr is None and not bar.logging and not bar.readonly and bar.size == 16 * MIB
    assert HIGH + 16 * MIB not in slots  # virtio's MMIO BAR: no slot
    m.memory.memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION)
    assert m.memory.memory_region_get_dirty_log_mask(vram) == (1 << DIRTY_MEMORY_VGA) | (1 << DIRTY_MEMORY_MIGRATION)
    bar_region = next(fr.mr for fr in m.as_memory.current_map if fr.addr == HIGH)
    assert m.memory.memory_region_get_dirty_log_mask(bar_region) == 0
    assert not bar.logging and all(s.logging for s in m.kvm.slots if s.ram_addr is not None and not s.readonly)
    # kvm_log_start acts only on a 0 -> non-zero change: vram was logging already, so its log_start is not acted on
    calls = {(e.hook, e.section) for e in of(m.recorder.events, ev.ListenerCall) if e.listener == "kvm-memory"}
    assert ("log_start", "vga.vram") in calls


def test_vga_vram_is_a_migrated_ramblock_and_the_ram_device_is_none():
    m = _machine(type="q35")
    blocks = {b.idstr: b for b in m.ram_list.blocks}
    assert blocks["vga.vram"].used_length == 16 * MIB  # vgamem_mb's default, vga-pci.c
    assert not any("mmaps" in name for name in blocks)
    assert m.ram_list.ram_bytes_total() == sum(b.used_length for b in blocks.values())


@pytest.mark.parametrize("accel, mode", [("kvm", "bitmap"), ("kvm", "ring"), ("tcg", "bitmap")])
def test_a_migration_with_vga_and_a_vfio_bar_loses_nothing_and_sends_the_vram(accel, mode):
    """VRAM starts stale at the destination like all RAM: stale 0 at switchover means it was sent; the BAR's
    RAM device has no RAMBlock, so nothing of it is sent or compared."""
    result = simulate(machine={"type": "pc", "accel": accel,
                               "devices": [{"kind": "VGA", "vgamem_mb": 8}, {"kind": "vfio-pci"}]},
                      dirty_tracking={"mode": mode},
                      timeline=[{"at": "50ms", "bar": {"device": 0, "addr": HIGH}},
                                {"at": "50ms", "bar": {"device": 1, "addr": HIGH + 16 * MIB}},
                                {"at": "60ms", "bar": {"device": 0, "addr": HIGH + 64 * MIB, "rom": True}},
                                {"at": "300ms", "bar": {"device": 1, "addr": HIGH + 32 * MIB}}])
    assert result.stop_reason == "completed"
    check = [c for c in of(result.events, ev.OracleCheck) if c.at == "switchover"][-1]
    assert (check.stale_pages, check.lost_pages) == (0, 0)
    added = {e.idstr: e.size for e in of(result.events, ev.RamBlockAdded)}
    assert added["vga.vram"] == 8 * MIB and "vga.rom" in added and not any("mmaps" in idstr for idstr in added)
    dma = of(result.events, ev.VfioDma)
    assert ("unmap", HIGH + 16 * MIB, 16 * MIB) in [(d.op, d.iova, d.size) for d in dma]


def test_vhost_leaves_vram_and_the_ram_device_out_of_its_memory_table():
    """``vhost_section``: VRAM carries the VGA client, which vhost cannot log; a RAM device has no fd."""
    m = _machine(devices=[*DEVICES, {"kind": "vhost-net", "rx": "1Mbit/s"}])
    for step in STEPS[:3]:
        _bar(m, *step)
    vhost = m.trackers[1]
    assert {(s.mr.name) for s in vhost.sections} == {m.ram.idstr}


def test_registration_replay_of_a_vfio_device_on_pc_shows_the_firmware_in_address_order():
    """``listener_add_address_space``: vfio, registered at device realize after the board, gets region_add for
    every flat range in address order, pc.bios and pc.rom included (mapped read-only), vga-lowmem skipped."""
    m = _machine(type="pc", memory={"size": "6GiB"})
    events = m.recorder.events
    start = next(i for i, e in enumerate(events) if isinstance(e, ev.ListenerRegistered) and e.listener == "vfio")
    end = next(i for i, e in enumerate(events) if i > start and isinstance(e, ev.ListenerRegistered))
    replay = [(e.hook, e.section, e.offset, e.size) for e in of(events[start:end], ev.ListenerCall)
              if e.listener == "vfio"]
    from test_pc_map import PC_6G
    assert replay == [("region_add", name, addr, size) for addr, size, _, name, _ in PC_6G]
    vfio = m.devices[0]["vfio"]
    assert vfio.trace[:5] == [
        "vfio_listener_region_add_ram region_add [ram] 0x0 - 0x9ffff [pc.ram+0x0]",
        "vfio_listener_region_skip SKIPPING region_add 0xa0000 - 0xbffff  # vga-lowmem",
        "vfio_listener_region_add_ram region_add [ram] 0xc0000 - 0xdffff [pc.rom+0x0]",
        "vfio_listener_region_add_ram region_add [ram] 0xe0000 - 0xfffff [pc.bios+0x20000]",
        "vfio_listener_region_add_ram region_add [ram] 0x100000 - 0xbfffffff [pc.ram+0x100000]"]
    assert {0xC0000, 0xE0000, 0xFFFC0000} <= vfio.readonly


def _write(tmp_path, machine: dict, timeline: list) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"machine": machine, "timeline": timeline})))
    return str(path)


def _hook_lines(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()
            if line.startswith("  ") and not line.startswith("  ->") and not line.split()[0].startswith("vfio_")]


def test_listeners_trace_shows_only_what_each_listener_acts_on_and_all_hooks_everything(tmp_path):
    path = _write(tmp_path, {"type": "pc", "devices": [{"kind": "vfio-pci"}, {"kind": "virtio-net"}]},
                  [{"at": "1s", "bar": {"device": 1, "addr": HIGH}},
                   {"at": "2s", "bar": {"device": 0, "addr": HIGH + 16 * MIB}}])
    every = CliRunner().invoke(main, ["listeners", path, "--all-hooks"])
    acted = CliRunner().invoke(main, ["listeners", path, "--trace"])
    assert every.exit_code == 0 and acted.exit_code == 0, every.output + acted.output
    every_lines, acted_lines = _hook_lines(every.output), _hook_lines(acted.output)
    assert len(acted_lines) < len(every_lines)
    assert all(line in every_lines for line in acted_lines)
    mmio = ("vga-lowmem", "virtio-net1-bar")
    for listener in ("vfio", "kvm-memory"):  # neither maps MMIO: the calls happen, and --trace hides them
        assert any(l[:2] == [listener, "region_add"] and l[2] in mmio for l in every_lines)
        assert not any(l[:2] == [listener, "region_add"] and l[2] in mmio for l in acted_lines)
    assert ["vfio", "region_add", "0000:01:00.0", "BAR", "0", "mmaps[0]", f"@{HIGH + 16 * MIB:#x}+0x1000000"] \
        in acted_lines
    # kvm_region_commit returns at once when nothing was queued: the virtio BAR's commit is hidden
    virtio_step = acted.output.split("# at 1s")[1].split("# at 2s")[0]
    assert "kvm-memory     commit" not in virtio_step and "kvm-memory     commit" in every.output.split("# at 1s")[1]


def test_vfio_trace_prints_qemus_trace_events_for_the_dma_sequence(tmp_path):
    """``--vfio-trace``: hw/vfio/trace-events' formats, "region_add [ram] 0x%"PRIx64" - 0x%"PRIx64" [%p]",
    "region_del 0x%"PRIx64" - 0x%"PRIx64, "SKIPPING %s 0x%"PRIx64" - 0x%"PRIx64 (inclusive ends)."""
    path = _write(tmp_path, {"devices": [{"kind": "vfio-pci", "bar": "1MiB"}, {"kind": "virtio-blk"}]},
                  [{"at": "1s", "bar": {"device": 0, "addr": HIGH}},
                   {"at": "1s", "bar": {"device": 1, "addr": HIGH + MIB}},
                   {"at": "2s", "bar": {"device": 0, "addr": HIGH + 2 * MIB}}])
    res = CliRunner().invoke(main, ["listeners", path, "--vfio-trace"])
    assert res.exit_code == 0, res.output
    lines = [line.strip() for line in res.output.splitlines() if line.strip().startswith("vfio_")]
    pattern = re.compile(r"^(vfio_listener_region_add_ram region_add \[ram\] 0x[0-9a-f]+ - 0x[0-9a-f]+ \[.+\]"
                         r"|vfio_listener_region_del region_del 0x[0-9a-f]+ - 0x[0-9a-f]+  # .+"
                         r"|vfio_listener_region_skip SKIPPING region_(add|del) 0x[0-9a-f]+ - 0x[0-9a-f]+  # .+)$")
    assert all(pattern.match(line) for line in lines), lines
    bar = "0000:01:00.0 BAR 0 mmaps[0]"
    assert lines == [
        f"vfio_listener_region_add_ram region_add [ram] 0x0 - {GIB - 1:#x} [pc.ram+0x0]",
        f"vfio_listener_region_add_ram region_add [ram] {HIGH:#x} - {HIGH + MIB - 1:#x} [{bar}+0x0]",
        f"vfio_listener_region_skip SKIPPING region_add {HIGH + MIB:#x} - {HIGH + MIB + 0x3fff:#x}  # virtio-blk1-bar",
        f"vfio_listener_region_del region_del {HIGH:#x} - {HIGH + MIB - 1:#x}  # {bar}",
        f"vfio_listener_region_add_ram region_add [ram] {HIGH + 2 * MIB:#x} - {HIGH + 3 * MIB - 1:#x} [{bar}+0x0]"]


@pytest.mark.parametrize("device, message", [
    ({"kind": "VGA", "vgamem_mb": 24}, "vga_common_init makes VRAM a power of two from 1 to 512 MiB"),
    ({"kind": "VGA", "vgamem_mb": 1024}, "vga_common_init makes VRAM a power of two from 1 to 512 MiB"),
    ({"kind": "vfio-pci", "host": "01:00.0"}, "a host PCI address is domain:bus:device.function"),
    ({"kind": "vfio-pci", "mmap": "sometimes"}, "mmap"),
    ({"kind": "vfio-pci", "rom": "48KiB"}, "a PCI ROM BAR size is 0 or a power of two, at least 4KiB"),
])
def test_what_the_bar_devices_refuse(tmp_path, device, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"machine": {"devices": [device]}})))
    with pytest.raises(ScenarioError, match=re.escape(message)):
        load_scenario(path)


def test_one_vga_per_machine(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"machine": {"devices": [{"kind": "VGA"}, {"kind": "VGA"}]}})))
    with pytest.raises(ScenarioError, match=r"machine\.devices\.1\.kind.*Only one global VGA device"):
        load_scenario(path)


def test_a_vga_has_no_ioeventfds(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"machine": {"devices": [{"kind": "VGA"}]},
                                                "timeline": [{"at": "1s", "ioeventfd": {"device": 0}}]})))
    with pytest.raises(ScenarioError, match=r"device 0 \(VGA\) has no virtio queues"):
        load_scenario(path)


def test_the_vga_option_rom_bar_is_a_read_only_slot_and_a_read_only_dma_mapping():
    """``pci_add_option_rom``: ``vga.rom`` (``memory_region_init_rom``, a migrated RAMBlock) is BAR 6. Mapped,
    it is a read-only memslot (``kvm_set_phys_mem``: KVM_MEM_READONLY) and vfio maps it without write access."""
    m = _machine(type="pc")
    rom = m.devices[2]["rom"]
    assert rom.name == "vga.rom" and rom.readonly and rom.ram_block.idstr == "vga.rom"
    assert [b.idstr for b in m.ram_list.blocks][-2:] == ["vga.vram", "vga.rom"]  # realize, then the ROM
    apply_action(TimelineEntry.model_validate({"at": "0s", "bar": {"device": 2, "addr": HIGH, "rom": True}}),
                 m.scenario, m, False, m.recorder)
    slot = next(s for s in m.kvm.slots if s.gpa == HIGH)
    assert slot.readonly and slot.size == 64 << 10 and not slot.logging
    assert m.devices[0]["vfio"].mappings[HIGH] == 64 << 10 and HIGH in m.devices[0]["vfio"].readonly
    m.memory.memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION)
    assert slot.logging  # a migratable RAMBlock: the MIGRATION client logs the read-only slot too


def test_a_rom_bar_needs_a_device_with_an_option_rom(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"machine": {"devices": [{"kind": "vfio-pci"}]},
                                                "timeline": [{"at": "1s", "bar": {"device": 0, "addr": HIGH,
                                                                                  "rom": True}}]})))
    with pytest.raises(ScenarioError, match=r"timeline\.0\.bar\.rom: device 0 \(vfio-pci\) has no option ROM"):
        load_scenario(path)


def test_devices_register_their_listeners_in_qemus_realize_order():
    """Netdev backends first (``net_init_clients``: vhost_dev_init of vhost-user-net), then each -device in
    command-line order: vfio's container listener at attach, vhost-user-blk's vhost then its virtio listener,
    the virtio devices' ``virtio``; a VGA registers none but creates its RAMBlocks in its turn."""
    devices = [{"kind": "vfio-pci"}, {"kind": "vhost-user-blk", "read": "1MiB/s", "buffers": "4MiB"}, {"kind": "VGA"},
               {"kind": "vhost-user-net", "rx": "1Mbit/s", "buffers": "4MiB"}, {"kind": "virtio-net"}]
    m = _machine(devices=devices)
    order = [e.listener for e in of(m.recorder.events, ev.ListenerRegistered)]
    assert order == ["kvm-memory", "kvm-io", "vhost", "vfio", "vhost", "virtio", "virtio", "virtio"]
    assert [t.device for t in m.trackers[1:]] == ["vhost-user-net3", "vhost-user-blk1"]
    assert [b.idstr for b in m.ram_list.blocks] == [m.ram.idstr, "vga.vram", "vga.rom"]
    # the vfio BAR is built after the listener is registered, and is not mapped: no section of it anywhere
    assert not any("BAR" in (fr.mr.name) for fr in m.as_memory.current_map)


def test_under_tcg_the_vfio_bar_maps_and_the_guest_keeps_writing_ram():
    """TCG has no memslots: the mapped RAM device stays out of the CPU's writable RAM table (it has no RAMBlock
    in dirtysim), and vfio still maps it."""
    m = _machine(accel="tcg", devices=[{"kind": "vfio-pci"}])
    _bar(m, 0, HIGH)
    assert HIGH in m.devices[0]["vfio"].mappings
    assert HIGH // 4096 not in m.tcg_memory.slot_gpa.tolist() and m.tcg_memory.slot_gpa.tolist() == [0]


def test_vfio_devices_share_one_container_and_its_listener():
    """``vfio_connect_container``: a second device joins the address space's container; no second listener, and
    the one listener maps both devices' mmap'd BARs (peer-to-peer DMA)."""
    m = _machine(devices=[{"kind": "vfio-pci"}, {"kind": "vfio-pci", "host": "0000:3b:00.1"}])
    assert [e.listener for e in of(m.recorder.events, ev.ListenerRegistered)].count("vfio") == 1
    vfio = m.vfio_container
    assert m.devices[0]["vfio"] is vfio is m.devices[1]["vfio"] and vfio.devices == ["vfio-pci0", "vfio-pci1"]
    _bar(m, 0, HIGH)
    _bar(m, 1, HIGH + 16 * MIB)
    assert {HIGH, HIGH + 16 * MIB} <= set(vfio.mappings)
    assert any(fr.mr.name == "0000:3b:00.1 BAR 0 mmaps[0]" for fr in m.as_memory.current_map)


def test_a_vfio_rom_bar_is_mmio_that_kvm_and_vfio_skip():
    """``vfio_pci_size_rom``: ``vfio[<host>].rom`` is MMIO (``vfio_rom_read`` serves reads from the device), unlike
    a VGA's ``vga.rom``: mapped, it gets no memslot and no DMA mapping, and no RAMBlock exists for it."""
    m = _machine(type="q35", devices=[{"kind": "vfio-pci", "rom": "256KiB"}, {"kind": "VGA"}])
    _bar(m, 0, HIGH)
    apply_action(TimelineEntry.model_validate({"at": "0s", "bar": {"device": 0, "addr": HIGH + 16 * MIB, "rom": True}}),
                 m.scenario, m, False, m.recorder)
    apply_action(TimelineEntry.model_validate({"at": "0s", "bar": {"device": 1, "addr": HIGH + 32 * MIB, "rom": True}}),
                 m.scenario, m, False, m.recorder)
    rows = {fr.mr.name: fr for fr in m.as_memory.current_map}
    assert rows["vfio[0000:01:00.0].rom"].addr == HIGH + 16 * MIB and not rows["vfio[0000:01:00.0].rom"].mr.is_ram
    slots, vfio = {s.gpa for s in m.kvm.slots}, m.vfio_container
    assert HIGH + 16 * MIB not in slots and HIGH + 16 * MIB not in vfio.mappings
    assert HIGH + 32 * MIB in slots and HIGH + 32 * MIB in vfio.readonly  # vga.rom: RAM, read-only
    assert "vfio_listener_region_skip SKIPPING region_add " f"{HIGH + 16 * MIB:#x} - {HIGH + 16 * MIB + 0x3ffff:#x}" \
        "  # vfio[0000:01:00.0].rom" in vfio.trace
    assert not any("vfio[" in b.idstr for b in m.ram_list.blocks)


@pytest.mark.parametrize("device", [{"kind": "virtio-net", "bar": "16MiB"}, {"kind": "vfio-pci", "mmap": False}])
def test_an_mmio_bar_over_the_hpet_window_is_accepted_and_maps_no_memslot(tmp_path, device):
    """Only RAM in a BAR needs whole pages (kvm_set_phys_mem skips MMIO): a BAR of MMIO may cover hpet's 1 KiB."""
    path = _write(tmp_path, {"type": "q35", "devices": [device]}, [{"at": "1s", "bar": {"device": 0,
                                                                                       "addr": 0xFE000000}}])
    every = CliRunner().invoke(main, ["listeners", path, "--all-hooks"]).output.split("# at 1s")[1]
    acted = CliRunner().invoke(main, ["listeners", path, "--trace"]).output.split("# at 1s")[1]
    assert "kvm-memory     region_add" in every and "@0xfed00400+0xffc00" in every  # the BAR split around hpet
    assert "region_add" not in acted and "-> bar " in acted  # no listener maps any of it


def test_listeners_trace_skips_the_migration_actions_of_a_timeline(tmp_path):
    """``dirtysim listeners --trace`` applies map actions only: a migrate_cancel, migrate_start_postcopy,
    calc_dirty_rate or set in the timeline is shown as skipped (it raised AttributeError)."""
    path = _write(tmp_path, {"type": "q35", "devices": [{"kind": "vfio-pci"}]},
                  [{"at": "1s", "migrate_cancel": {}}, {"at": "1s", "migrate_start_postcopy": {}},
                   {"at": "1s", "calc_dirty_rate": {"calc_time": 1}}, {"at": "1s", "set": {"max_bandwidth": "1GiB/s"}},
                   {"at": "2s", "bar": {"device": 0, "addr": HIGH}}])
    for flag in ("--trace", "--all-hooks", "--vfio-trace"):
        res = CliRunner().invoke(main, ["listeners", path, flag])
        assert res.exit_code == 0, res.output
        assert res.output.count("-> not a memory-map action: skipped") == 4
        assert "-> bar vfio-pci0: done" in res.output


def test_vfio_trace_without_a_vfio_device_is_bad_input(tmp_path):
    path = _write(tmp_path, {"type": "pc", "devices": [{"kind": "virtio-net"}]}, [])
    res = CliRunner().invoke(main, ["listeners", path, "--vfio-trace"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [f"--vfio-trace: {path} has no vfio-pci device in machine.devices, "
                                               "so no vfio listener to trace"]
