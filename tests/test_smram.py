"""SMRAM on the pc and q35 boards, machine.smm, and KVM's second address space (the ``kvm-smram`` listener).

The expected tables follow QEMU's source: i440fx_pcihost_realize and
i440fx_update_memory_mappings (hw/pci-host/i440fx.c), mch_realize, mch_reset and
mch_update_smram (hw/pci-host/q35.c), register_smram_listener
(target/i386/kvm/kvm.c), tcg_cpu_realizefn and tcg_cpu_machine_done
(target/i386/tcg/system/tcg-cpu.c), x86_machine_is_smm_enabled (hw/i386/x86.c).
"""

from __future__ import annotations

import numpy as np
import pytest
import simpy
import yaml

from builders import BASE, merge, of, scenario, simulate
from dirtysim.events import schema as ev
from dirtysim.events.log import Recorder
from dirtysim.machine import Machine
from dirtysim.scenario.load import ScenarioError, load_scenario
from test_pc_map import HOLE_MMIO, PC_6G, Q35_6G

GIB = 1 << 30
AS1 = 1 << 16  # KVM slot ids of address space 1: slot | as_id << 16


def _machine(kind: str, **machine) -> Machine:
    sc = scenario(machine={"type": kind, "memory": {"size": "6GiB"}, **machine})
    env = simpy.Environment()
    return Machine(env, sc, Recorder(lambda: env.now), np.random.SeedSequence(sc.seed))


def _table(asp) -> list[tuple]:
    return [(fr.addr, fr.size, "rom" if fr.readonly else "ram" if fr.mr.is_ram else "i/o", fr.mr.name,
             fr.offset_in_region) for fr in asp.current_map]


def _tcg(table: list[tuple]) -> list[tuple]:
    """TCG's userspace IOAPIC and APIC (``ioapic_realize``, ``apic_realize``) instead of KVM's."""
    names = {"kvm-ioapic": "ioapic", "kvm-apic-msi": "apic-msi"}
    return [(a, s, t, names.get(n, n), o) for a, s, t, n, o in table]


# KVM-SMRAM on pc: KVM enables /machine/smram (register_smram_listener), which the i440fx had disabled
# (G_SMRAME clear): smram-low shows RAM over the VGA window, and it merges with ram-below-4g
PC_SMRAM_6G = [(0x0, 0xC0000, "ram", "pc.ram", 0x0)] + PC_6G[2:]


def test_kvm_smram_view_of_each_board():
    """pc: smram-low (RAM) over 0xa0000; q35: mch_reset disabled smram-low and smram-high, so KVM-SMRAM is
    system memory; both views hold the device MMIO through mem-smram."""
    pc, q35 = _machine("pc"), _machine("q35")
    assert _table(pc.as_smram) == PC_SMRAM_6G
    assert _table(q35.as_smram) == Q35_6G
    assert all(entry in _table(pc.as_smram) for entry in HOLE_MMIO)


@pytest.mark.parametrize("kind, smram_children", [
    ("pc", [("smram-low", 0xA0000, 0x20000, True)]),
    ("q35", [("smram-low", 0xA0000, 0x20000, False), ("smram-high", 0xFEDA0000, 0x20000, False),
             ("tseg-window", 0x80000000, 0, False), ("smbase-window", 0x30000, 0x10000, False)]),
])
def test_the_smram_container_at_reset(kind, smram_children):
    """/machine/smram: 4 GiB; its windows and their reset state (q35: every one disabled; TSEG empty at
    below_4g_mem_size, 2 GiB for a 6 GiB q35)."""
    smram = _machine(kind).board.smram
    assert (smram.name, smram.size) == ("smram", 4 * GIB)
    assert sorted((r.name, r.addr, r.size, r.enabled) for r in smram.subregions) == sorted(smram_children)


def test_q35_blackholes_and_open_high_are_mapped_disabled():
    system = _machine("q35").system_memory
    hidden = {r.name: (r.addr, r.size, r.priority, r.enabled) for r in system.subregions
              if r.name in ("smram-open-high", "tseg-blackhole", "smbase-blackhole")}
    assert hidden == {"smram-open-high": (0xFEDA0000, 0x20000, 1, False), "tseg-blackhole": (0x80000000, 0, 1, False),
                      "smbase-blackhole": (0x30000, 0x10000, 1, False)}


@pytest.mark.parametrize("kind", ["pc", "q35"])
def test_tcg_cpu_smm_sees_smram_through_its_alias(kind):
    """tcg_cpu_machine_done: an ``smram`` alias (priority 1) in each CPU's SMM root. The alias does not enable
    the i440fx's container, so with TCG, unlike KVM, cpu-smm shows no smram-low on pc."""
    m = _machine(kind, accel="tcg")
    smm = next(a for a in m.memory.address_spaces if a.name == "cpu-smm-1")
    assert [(r.name, r.priority, r.alias is m.board.smram) for r in smm.root.subregions] == [
        ("smram", 1, True), ("memory", 0, False)]
    assert _table(smm) == _tcg({"pc": PC_6G, "q35": Q35_6G}[kind])


def test_kvm_smram_listener_registration_and_memslots():
    """After the devices (machine-done): kvm-smram on KVM-SMRAM, priority 10; its memslots are address space
    1's (ids from 1 << 16), one per RAM range of its view; kvm-memory's stay address space 0's."""
    m = _machine("pc", devices=[{"kind": "vfio-pci"}])
    regs = [(e.listener, e.address_space, e.priority) for e in of(m.recorder.events, ev.ListenerRegistered)]
    assert regs[-1] == ("kvm-smram", "KVM-SMRAM", 10) and ("vfio", "memory", 0) in regs[:-1]
    slots = m.smram_listener.kvm.slots
    assert all(s.slot >= AS1 for s in slots) and all(s.slot < AS1 for s in m.kvm.slots)
    ram = [(fr.addr, fr.size, fr.readonly) for fr in m.as_smram.current_map if fr.mr.is_ram]
    assert sorted((s.gpa, s.size, s.readonly) for s in slots) == ram
    assert (0x0, 0xC0000, False) in ram and (0x0, 0xA0000, False) in [(s.gpa, s.size, s.readonly)
                                                                      for s in m.kvm.slots]


def test_kvm_smram_has_no_eventfd_hooks():
    """kvm_init gives ioeventfds and coalesced MMIO to kvm-memory only: vga-lowmem's coalesced range goes there."""
    m = _machine("pc")
    calls = {(e.listener, e.hook) for e in of(m.recorder.events, ev.ListenerCall)}
    assert ("kvm-memory", "coalesced_io_add") in calls and ("kvm-smram", "coalesced_io_add") not in calls


def test_q35_reset_comes_after_machine_done():
    """kvm-smram registers while smram-low and smram-high still show RAM (mch_realize enabled them), then the
    system reset (mch_update_smram) takes them away: region_del at 0xa0000 and 0xfeda0000."""
    m = _machine("q35")
    events = m.recorder.events
    first = next(i for i, e in enumerate(events) if isinstance(e, ev.ListenerRegistered) and e.listener == "kvm-smram")
    adds = [(e.section, e.offset, e.size) for e in of(events[first:], ev.ListenerCall)
            if e.listener == "kvm-smram" and e.hook == "region_add"]
    dels = [(e.section, e.offset, e.size) for e in of(events[first:], ev.ListenerCall)
            if e.listener == "kvm-smram" and e.hook == "region_del"]
    assert ("pc.ram", 0xFEDA0000, 0x20000) in adds  # smram-high before the reset
    assert ("pc.ram", 0xFEDA0000, 0x20000) in dels
    assert not any(s.gpa == 0xFEDA0000 for s in m.smram_listener.kvm.slots)


def test_smm_off():
    """machine.smm off: no kvm-smram; the i440fx still builds its SMRAM (no SMM check there), q35 builds none
    of it (``if (!mch->has_smm_ranges) return`` precedes smram-region), so RAM shows in q35's VGA window."""
    pc, q35 = _machine("pc", smm="off"), _machine("q35", smm="off")
    for m in (pc, q35):
        assert "kvm-smram" not in {e.listener for e in of(m.recorder.events, ev.ListenerRegistered)}
        assert not hasattr(m, "smram_listener")
    assert pc.board.smram is not None and _table(pc.as_memory) == PC_6G
    assert q35.board.smram is None
    assert _table(q35.as_memory) == [(0x0, 0xC0000, "ram", "pc.ram", 0x0)] + Q35_6G[2:]
    tcg = _machine("pc", accel="tcg", smm="off")  # tcg_cpu_machine_done links /machine/smram regardless
    assert next(a for a in tcg.memory.address_spaces if a.name == "cpu-smm-0").root.subregions[0].name == "smram"


@pytest.mark.parametrize("machine, message", [
    ({"smm": "on"}, "only the pc and q35 boards have SMM"),
    ({"type": "pc", "smm": "yes"}, "smm"),
])
def test_smm_key_is_checked(tmp_path, machine, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"machine": machine})))
    with pytest.raises(ScenarioError, match=message) as err:
        load_scenario(path)
    assert "machine.smm" in str(err.value) and ("on" in str(err.value))


@pytest.mark.parametrize("word", ["on", "off"])
def test_a_bare_on_or_off_is_the_onoffauto_word(tmp_path, word):
    """YAML 1.1 reads a bare ``smm: on`` as true: it means -machine smm=on, as written (not a type error)."""
    path = tmp_path / "s.yaml"
    text = yaml.safe_dump(merge(BASE, {"machine": {"type": "q35"}}))
    path.write_text(text.replace("machine:\n", f"machine:\n  smm: {word}\n", 1))
    assert load_scenario(path).machine.smm == word


def test_smm_is_dumped_only_when_set():
    assert "smm" not in scenario(machine={"type": "pc"}).model_dump()["machine"]
    assert scenario(machine={"type": "pc", "smm": "off"}).model_dump()["machine"]["smm"] == "off"


@pytest.mark.parametrize("kind", ["pc", "q35"])
@pytest.mark.parametrize("mode", ["bitmap", "ring"])
def test_migration_with_kvm_smram_loses_nothing(kind, mode):
    """Writes into low RAM (the hot set from backend offset 0: below 640 KiB and above 1 MiB): nothing lost.
    Bitmap: kvm-smram GETs its own slots as often as kvm-memory does; their first GET (INITIALLY_SET) returns
    pages, and once CLEARed a slot of address space 1 reports nothing (no vCPU in SMM writes through it).
    Ring: each sync flushes the rings twice, once per listener."""
    result = simulate(machine={"type": kind, "max_ram_below_4g": "512MiB"}, dirty_tracking={"mode": mode})
    assert result.stop_reason == "completed"
    assert of(result.events, ev.OracleCheck)[-1].lost_pages == 0
    nsyncs = len(of(result.events, ev.BitmapSync))
    if mode == "bitmap":
        gets = [e for e in of(result.events, ev.KvmGetDirtyLog) if e.slot >= AS1]
        assert gets and len(gets) == len([e for e in of(result.events, ev.KvmGetDirtyLog) if e.slot < AS1])
        per_sync = len(gets) // nsyncs
        cleared = {e.slot for e in of(result.events, ev.KvmClearDirtyLog) if e.slot >= AS1}
        assert sum(e.pages for e in gets[:per_sync]) > 0 and cleared
        assert all(e.pages == 0 for e in gets[per_sync:] if e.slot in cleared)
    else:
        reaps = [e for e in of(result.events, ev.DirtyRingReap) if e.reason == "sync"]
        assert len(reaps) == 2 * nsyncs


# -- vhost on a board -------------------------------------------------------------------------------------------

def _vhost_machine(kind: str, **dev) -> Machine:
    return _machine(kind, devices=[{"kind": "vhost-user-net", "rx": "1Gbit/s", **dev}])


def test_vhost_buffers_are_where_the_board_shows_them():
    """Default buffers sit at the top of the 6 GiB backend: on pc that is ram-above-4g, so the backend writes
    GPAs 4 GiB + (offset - 3 GiB); its memory table holds the board's RAM sections, ROMs and MMIO left out."""
    m = _vhost_machine("pc", buffers="2MiB")
    backend, listener = m.backends[0], m.backends[0].listener
    assert backend.used_first == (4 * GIB + 6 * GIB - 2 * (1 << 20) - 3 * GIB) // 4096
    assert [(s.offset_within_address_space, s.size) for s in listener.sections] == [
        (0x0, 0xA0000), (0x100000, 0xC0000000 - 0x100000), (0x100000000, 0xC0000000)]


@pytest.mark.parametrize("offset, gpa", [(0x80000, 0x80000), (5 * GIB, 6 * GIB)])
def test_vhost_log_sync_moves_bits_through_each_section(offset, gpa):
    """A page written by the backend reaches L2 at its RAM page: in ram-below-4g's last, shared log word
    (0x80000-0xbffff holds 0x9ffff's section end and the VGA window), and above 4 GiB (shift 4 GiB - 3 GiB)."""
    m = _vhost_machine("pc", buffers="128KiB", buffer_offset=offset)
    m.memory.memory_global_dirty_log_start(4)  # GLOBAL_DIRTY_MIGRATION
    listener = m.backends[0].listener
    page = gpa // 4096 + 1
    listener.log.words[page // 64] |= np.uint64(1) << np.uint64(page % 64)  # vu_log_page
    m.memory.memory_global_dirty_log_sync(False)
    ram = offset // 4096 + 1
    dirty = m.ram_list.dirty_memory
    assert dirty[ram // 64] & (np.uint64(1) << np.uint64(ram % 64))
    assert not listener.log.words.any()


@pytest.mark.parametrize("kind, mode", [("pc", "bitmap"), ("q35", "ring")])
def test_migration_with_vhost_on_a_board_loses_nothing(kind, mode):
    """A vhost-user-blk at the top of RAM (above 4 GiB: this 1 GiB guest splits at 512 MiB) and a
    vhost-user-net with buffers in low RAM (128 KiB from 512 KiB: ram-below-4g's first section ends mid-word)."""
    devices = [{"kind": "vhost-user-blk", "read": "50MiB/s", "buffers": "4MiB"},
               {"kind": "vhost-user-net", "rx": "200Mbit/s", "buffers": "128KiB", "buffer_offset": "512KiB"}]
    result = simulate(machine={"type": kind, "max_ram_below_4g": "512MiB", "devices": devices},
                      dirty_tracking={"mode": mode})
    assert result.stop_reason == "completed"
    assert of(result.events, ev.OracleCheck)[-1].lost_pages == 0
    assert sum(e.pages for e in of(result.events, ev.VhostLogSync)) > 0


def test_the_reset_holds_no_vcpu():
    """q35's reset swaps RAM for the ROMs under PAM (an overlapping delete and add: an inhibited update), but
    no vCPU runs yet (qemu_system_reset comes before vm_start): nothing is charged to the guest."""
    m = _machine("q35")
    assert any(e.inhibited for e in of(m.recorder.events, ev.KvmMemslotUpdate))
    assert m.guest.stats["inhibit_ns"].sum() == 0


# -- q35 MMCONFIG -----------------------------------------------------------------------------------------------

def _pciexbar(m: Machine, **act) -> str:
    from dirtysim.scenario.schema import TimelineEntry
    from dirtysim.timeline import apply_action
    apply_action(TimelineEntry.model_validate({"at": "0s", "pciexbar": act}), m.scenario, m, False, m.recorder)
    return of(m.recorder.events, ev.TimelineAction)[-1].result


def test_mmconfig_appears_when_the_firmware_enables_it():
    """mch_reset leaves pcie-mmcfg-mmio unmapped (the 6 GiB table has none); PCIEXBAR 0xb0000000 + 256 MiB
    enabled maps it in the PCI hole (RAM ends at 2 GiB on q35); a new length moves and resizes it (unmap, then
    map); disabled takes it away. KVM makes no memslot of it."""
    m = _machine("q35")
    assert m.board.mmcfg.container is None
    assert _pciexbar(m, enabled=True) == "done"
    view = _table(m.as_memory)
    assert (0xB0000000, 0x10000000, "i/o", "pcie-mmcfg-mmio", 0) in view and view[:-6] == Q35_6G[:-5]
    assert not any(s.gpa == 0xB0000000 for s in m.kvm.slots)
    _pciexbar(m, enabled=True, base=0xE0000000, length=64 << 20)
    assert [e[:2] for e in _table(m.as_memory) if e[3] == "pcie-mmcfg-mmio"] == [(0xE0000000, 0x4000000)]
    _pciexbar(m, enabled=False)
    assert _table(m.as_memory) == Q35_6G


@pytest.mark.parametrize("machine, act, message", [
    ({"type": "pc"}, {"enabled": True}, "PCIEXBAR is the q35 host bridge's"),
    ({"type": "q35"}, {"enabled": True, "length": "32MiB"}, "256MiB, 128MiB or 64MiB"),
    ({"type": "q35"}, {"enabled": True, "base": 0xB4000000}, "a base aligned to the length"),
])
def test_pciexbar_is_checked(tmp_path, machine, act, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"machine": machine, "timeline": [{"at": "1s", "pciexbar": act}]})))
    with pytest.raises(ScenarioError, match=message):
        load_scenario(path)


def test_tcg_cpus_share_the_flatview_of_system_memory():
    """``flatviews_reset`` renders each root region once per commit: every cpu-memory-N is over system memory,
    so all hold one FlatView (the board's many transactions render it once each, not once per vCPU)."""
    m = _machine("q35", accel="tcg", vcpus=[{"count": 4, "workload": {"kind": "uniform", "rate": "1MiB/s"}}])
    views = [a.current_map for a in m.memory.address_spaces if a.name.startswith("cpu-memory-")]
    assert len(views) == 4 and all(v is views[0] for v in views)
    assert views[0] == m.as_memory.current_map and views[0] is m.as_memory.current_map
