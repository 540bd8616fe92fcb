"""The pc (i440fx) and q35 boards' memory map, built in QEMU's order with QEMU's names and priorities.

At machine creation, before the firmware runs (``info mtree -f`` under ``-S``):

* ``pc_memory_init`` (hw/i386/pc.c): ``ram-below-4g`` and ``ram-above-4g``
  alias the RAM backend into system memory (``layout.ram_ranges``); the BIOS
  (``x86_bios_rom_init``, hw/i386/pc_sysfw.c) is ``pc.bios``, read-only, at the
  top of 4 GiB in the ``pci`` address space, with its last 128 KiB aliased as
  ``isa-bios`` below 1 MiB (priority 1); ``pc.rom`` (128 KiB, read-only on a
  PCI machine) at 0xc0000, priority 1, also in ``pci``.
* the host bridge (``i440fx_pcihost_realize`` / ``mch_realize``):
  ``pc_pci_as_mapping_init`` maps ``pci`` over all of system memory at
  priority -1, below RAM, so it shows only in the PCI hole; ``smram-region``
  (priority 1 at 0xa0000) shows ``pci`` over the RAM below the VGA window
  while SMRAM is closed (its reset state); 13 PAM segments get four aliases
  each (``init_pam``), and the reset (``i440fx_update_memory_mappings`` /
  ``mch_update``) enables mode 0 of each, ``pam-pci``: the ROMs show through.
* the VGA (``vga_init``): ``vga-lowmem``, MMIO over 0xa0000-0xbffff in
  ``pci`` at priority 1, coalesced.

Not built: SMRAM as SMM CPUs see it (the ``smram`` container, ``smram-low``,
q35's TSEG and its blackholes, ``smram-open-high``), all closed or disabled at
reset and opened by no dirtysim action; device MMIO (ioapic, hpet, the APIC
window, q35's MMCONFIG once the firmware enables it) and the firmware's BARs.
"""

from __future__ import annotations

from typing import Callable

from ..memory.address_space import MemorySystem
from ..memory.region import MemoryRegion, memory_region_init, memory_region_init_alias, memory_region_init_io
from . import layout as L

PCI_SPACE_SIZE = 1 << 64  # memory_region_init(pci_memory, NULL, "pci", UINT64_MAX)
VGA_LOWMEM_SIZE = 0x20000  # vga_init_io: "vga-lowmem", 0x20000


class PcBoard:
    """The regions a pc or q35 board adds around its RAM backend, and the PAM switches of its host bridge."""

    def __init__(self, memory: MemorySystem, system: MemoryRegion, machine_type: str, ram: MemoryRegion,
                 max_ram_below_4g: int, make_rom: Callable[[str, int], MemoryRegion]):
        """Build the board around ``ram`` (the backend's region); ``make_rom(name, size)`` makes a ROM and its
        RAMBlock (``memory_region_init_ram`` + ``memory_region_set_readonly``)."""
        if machine_type not in ("pc", "q35"):
            raise ValueError(f"machine type {machine_type!r}: dirtysim builds pc and q35")
        self.memory, self.system, self.type = memory, system, machine_type
        add = memory.memory_region_add_subregion
        for i, (gpa, size, offset) in enumerate(L.ram_ranges(machine_type, ram.size, max_ram_below_4g)):
            add(system, gpa, memory_region_init_alias(("ram-below-4g", "ram-above-4g")[i], ram, offset, size))
        self.pci = memory_region_init("pci", PCI_SPACE_SIZE)
        self._firmware(make_rom)
        add(system, 0, self.pci, priority=-1)  # pc_pci_as_mapping_init: "Set to lower priority than RAM"
        smram_region = memory_region_init_alias("smram-region", self.pci, L.SMRAM_C_BASE, L.SMRAM_C_SIZE)
        if machine_type == "pc":  # i440fx maps SMRAM's window before PAM, the mch after it
            add(system, L.SMRAM_C_BASE, smram_region, priority=1)
        self.pam = [self._init_pam(ram, *L.pam_segment(i)) for i in range(L.PAM_REGIONS_COUNT)]
        if machine_type == "q35":
            add(system, L.SMRAM_C_BASE, smram_region, priority=1)
        self.pam_current = [0] * L.PAM_REGIONS_COUNT
        with memory.transaction():  # the reset's i440fx_update_memory_mappings / mch_update_pam: mode 0 everywhere
            for segment in self.pam:
                memory.memory_region_set_enabled(segment[0], True)
        vga = memory_region_init_io("vga-lowmem", VGA_LOWMEM_SIZE)
        add(self.pci, L.SMRAM_C_BASE, vga, priority=1)
        memory.memory_region_add_coalescing(vga, 0, VGA_LOWMEM_SIZE)

    def _firmware(self, make_rom: Callable[[str, int], MemoryRegion]) -> None:
        """``x86_bios_rom_init`` (isa-bios, then pc.bios at 4 GiB - size) and ``pc_memory_init``'s pc.rom."""
        bios = make_rom("pc.bios", L.BIOS_SIZE)
        isa_size = min(L.BIOS_SIZE, L.ISA_BIOS_MAX)
        isa_bios = memory_region_init_alias("isa-bios", bios, L.BIOS_SIZE - isa_size, isa_size)
        isa_bios.readonly = True  # memory_region_set_readonly(isa_bios, true), before it is mapped
        add = self.memory.memory_region_add_subregion
        add(self.pci, 1 * L.MIB - isa_size, isa_bios, priority=1)
        add(self.pci, (1 << 32) - L.BIOS_SIZE, bios)
        add(self.pci, L.PC_ROM_MIN_VGA, make_rom("pc.rom", L.PC_ROM_SIZE), priority=1)

    def _init_pam(self, ram: MemoryRegion, start: int, size: int) -> list[MemoryRegion]:
        """``init_pam``: alias[0..3] by PAM attribute, all disabled, each mapped at ``start`` with priority 1.

        QEMU names alias[2] (write-only) ``pam-pci`` although it aliases RAM read-write: pam.c does not
        distinguish reads from writes there (its own comment says so), and neither does dirtysim, so the
        FlatView shows the same names as QEMU's ``info mtree -f``.
        """
        pam_rom = memory_region_init_alias("pam-rom", ram, start, size)
        pam_rom.readonly = True
        aliases = [memory_region_init_alias("pam-pci", self.pci, start, size), pam_rom,
                   memory_region_init_alias("pam-pci", ram, start, size),
                   memory_region_init_alias("pam-ram", ram, start, size)]
        with self.memory.transaction():
            for alias in aliases:
                alias.enabled = False
                self.memory.memory_region_add_subregion(self.system, start, alias, priority=1)
        return aliases

    def pam_update(self, idx: int, mode: str) -> None:
        """``pam_update``: disable the segment's current alias, enable the one of ``mode`` (``layout.PAM_MODES``).

        QEMU decodes the mode from the PAM register's nibble; dirtysim takes it
        by name. Both changes fall in one transaction, as the host bridge's
        config write wraps them (``i440fx_update_memory_mappings``, ``mch_update_pam``).
        """
        attr = L.PAM_MODES.index(mode)
        aliases = self.pam[idx]
        with self.memory.transaction():
            self.memory.memory_region_set_enabled(aliases[self.pam_current[idx]], False)
            self.pam_current[idx] = attr
            self.memory.memory_region_set_enabled(aliases[attr], True)
