"""The pc (i440fx) and q35 boards' memory map, built in QEMU's order with QEMU's names and priorities.

At machine creation, after the system reset, before the firmware runs (``info mtree -f`` under ``-S``):

* ``x86_cpus_init``: the first CPU maps the APIC window (``x86_cpu_apic_realize``,
  priority 0x1000 at 0xfee00000, 1 MiB): ``kvm-apic-msi`` with KVM's in-kernel
  irqchip, ``apic-msi`` with TCG.
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
  each (``init_pam``), and ``i440fx_update_memory_mappings`` (end of realize) /
  ``mch_update`` (the system reset) enable mode 0 of each, ``pam-pci``: the ROMs
  show through. SMRAM as SMM CPUs see it is the ``smram`` container
  (/machine/smram): i440fx ``smram-low``, disabled as a whole while SMRAM's
  G_SMRAME is clear; q35 ``smram-low``, ``smram-high``, ``tseg-window`` and
  ``smbase-window``, each disabled by the reset, with ``smram-open-high``,
  ``tseg-blackhole`` and ``smbase-blackhole`` (disabled) in system memory. q35
  builds none of it without SMM (``smm-ranges``), not even ``smram-region``, so
  RAM shows in the VGA window then (as read in QEMU 10's q35.c; reported as a
  regression on qemu-devel in 2025, a fix may move that return); the i440fx
  always builds its SMRAM.
* ``ioapic_init_gsi``: the IOAPIC at 0xfec00000 (``kvm-ioapic`` / ``ioapic``,
  4 KiB); ``pc_basic_device_init``: ``hpet`` at 0xfed00000 (1 KiB); the VGA
  (``vga_init``): ``vga-lowmem``, MMIO over 0xa0000-0xbffff in ``pci`` at
  priority 1, coalesced (pc maps the VGA before the HPET, q35 after).

q35's MMCONFIG (``pcie-mmcfg-mmio``) exists from the host bridge's creation;
``mch_reset`` leaves it unmapped (PCIEXBAR's enable bit clear) until the
firmware writes PCIEXBAR (the timeline's ``pciexbar``, ``mch_update_pciexbar``).

Not built: an action that opens SMRAM or TSEG (no vCPU enters SMM in
dirtysim); the firmware's BARs; the port-I/O devices.

Departures: the host bridge's registers are taken by field (a PAM mode by
name, PCIEXBAR's enable, base and length), not decoded from config writes;
with TCG the APIC window is mapped after every CPU's address spaces exist
(QEMU maps it in CPU 0's realize, before CPU 1's address spaces): only the
order of the ``tcg`` listeners' begin/commit calls differs; KVM is assumed to
run with QEMU's default in-kernel irqchip (no ``kernel-irqchip=split``,
whose IOAPIC would be the userspace ``ioapic``).
"""

from __future__ import annotations

from typing import Callable, Optional

from ..memory.address_space import MemorySystem
from ..memory.region import MemoryRegion, memory_region_init, memory_region_init_alias, memory_region_init_io
from . import layout as L

PCI_SPACE_SIZE = 1 << 64  # memory_region_init(pci_memory, NULL, "pci", UINT64_MAX)
VGA_LOWMEM_SIZE = 0x20000  # vga_init_io: "vga-lowmem", 0x20000


class PcBoard:
    """The regions a pc or q35 board adds around its RAM backend, its SMRAM, and the PAM switches of its host bridge.

    ``smm``: ``x86_machine_is_smm_enabled`` (machine.smm on, or auto: KVM is
    assumed to have KVM_CAP_X86_SMM). ``kvm_irqchip``: KVM with the in-kernel
    irqchip (QEMU's default ``kernel-irqchip=on``), whose IOAPIC and APIC are
    ``kvm-ioapic`` and ``kvm-apic-msi``; TCG's are ``ioapic`` and ``apic-msi``.
    """

    def __init__(self, memory: MemorySystem, system: MemoryRegion, machine_type: str, ram: MemoryRegion,
                 max_ram_below_4g: int, make_rom: Callable[[str, int], MemoryRegion], smm: bool = True,
                 kvm_irqchip: bool = True):
        """Build the board around ``ram`` (the backend's region) in ``pc_init1`` / ``pc_q35_init`` order;
        ``make_rom(name, size)`` makes a ROM and its RAMBlock (``memory_region_init_ram`` + ``_set_readonly``)."""
        if machine_type not in ("pc", "q35"):
            raise ValueError(f"machine type {machine_type!r}: dirtysim builds pc and q35")
        self.memory, self.system, self.type, self.smm = memory, system, machine_type, smm
        add = memory.memory_region_add_subregion
        # x86_cpus_init comes first: the first CPU's x86_cpu_apic_realize maps the APIC window, once
        apic = memory_region_init_io("kvm-apic-msi" if kvm_irqchip else "apic-msi", L.APIC_SPACE_SIZE)
        add(system, L.APIC_DEFAULT_ADDRESS, apic, priority=L.APIC_PRIORITY)
        self.below_4g = L.ram_split(machine_type, ram.size, max_ram_below_4g)[0]
        for i, (gpa, size, offset) in enumerate(L.ram_ranges(machine_type, ram.size, max_ram_below_4g)):
            add(system, gpa, memory_region_init_alias(("ram-below-4g", "ram-above-4g")[i], ram, offset, size))
        self.pci = memory_region_init("pci", PCI_SPACE_SIZE)
        self._firmware(make_rom)
        add(system, 0, self.pci, priority=-1)  # pc_pci_as_mapping_init: "Set to lower priority than RAM"
        # q35: pcie_host_init makes MMCONFIG at the host bridge's creation; mch_reset leaves it unmapped
        self.mmcfg = memory_region_init_io("pcie-mmcfg-mmio", L.PCIE_MMCFG_SIZE_MAX) if machine_type == "q35" else None
        self.smram: Optional[MemoryRegion] = None  # /machine/smram: SMRAM as SMM CPUs see it
        self.smram_aliases: list[MemoryRegion] = []  # q35's smram-low, smram-high, cleared by mch_reset
        if machine_type == "pc":  # i440fx maps SMRAM's window before PAM, the mch after it
            self._i440fx_smram(ram)
        self.pam = [self._init_pam(ram, *L.pam_segment(i)) for i in range(L.PAM_REGIONS_COUNT)]
        self.pam_current = [0] * L.PAM_REGIONS_COUNT
        if machine_type == "pc":
            with memory.transaction():  # the end of i440fx_pcihost_realize: i440fx_update_memory_mappings
                self._pam_mode_0()
                memory.memory_region_set_enabled(self.smram, False)  # SMRAM register 0x02: G_SMRAME clear
        elif smm:  # mch_realize returns after PAM without SMM ranges (smm-ranges = x86_machine_is_smm_enabled)
            self._mch_smram(ram)
        ioapic = memory_region_init_io("kvm-ioapic" if kvm_irqchip else "ioapic", L.IOAPIC_SIZE)
        add(system, L.IO_APIC_DEFAULT_ADDRESS, ioapic)  # ioapic_init_gsi: sysbus_mmio_map
        if machine_type == "pc":  # pc_init1: pc_vga_init, then pc_basic_device_init; pc_q35_init the other way
            self._vga()
            add(system, L.HPET_BASE, memory_region_init_io("hpet", L.HPET_LEN))
        else:
            add(system, L.HPET_BASE, memory_region_init_io("hpet", L.HPET_LEN))
            self._vga()

    def _i440fx_smram(self, ram: MemoryRegion) -> None:
        """``i440fx_pcihost_realize``: ``smram-region`` (pci over the VGA window while SMRAM is closed), and
        ``smram``, a 4 GiB container holding ``smram-low`` (RAM at 0xa0000), linked as /machine/smram."""
        add = self.memory.memory_region_add_subregion
        add(self.system, L.SMRAM_C_BASE, memory_region_init_alias("smram-region", self.pci, L.SMRAM_C_BASE,
                                                                    L.SMRAM_C_SIZE), priority=1)
        self.smram = memory_region_init("smram", L.SMRAM_SIZE)
        add(self.smram, L.SMRAM_C_BASE, memory_region_init_alias("smram-low", ram, L.SMRAM_C_BASE, L.SMRAM_C_SIZE))

    def _mch_smram(self, ram: MemoryRegion) -> None:
        """``mch_realize`` after PAM: ``smram-region``; ``smram-open-high`` (RAM at 0xfeda0000, disabled); the
        ``smram`` container with ``smram-low`` and ``smram-high`` (enabled until the reset); TSEG, empty and
        disabled (``tseg-blackhole`` in system memory, ``tseg-window`` in smram, both of size 0 at
        below_4g_mem_size); the SMBASE window, disabled (``smbase-blackhole``, ``smbase-window``)."""
        memory, add = self.memory, self.memory.memory_region_add_subregion
        base, size = L.SMRAM_C_BASE, L.SMRAM_C_SIZE
        add(self.system, base, memory_region_init_alias("smram-region", self.pci, base, size), priority=1)
        open_high = memory_region_init_alias("smram-open-high", ram, base, size)
        add(self.system, L.SMRAM_OPEN_HIGH_BASE, open_high, priority=1)
        memory.memory_region_set_enabled(open_high, False)  # mapped, then disabled: two transactions
        self.smram = memory_region_init("smram", L.SMRAM_SIZE)
        low = memory_region_init_alias("smram-low", ram, base, size)
        add(self.smram, base, low)
        high = memory_region_init_alias("smram-high", ram, base, size)
        add(self.smram, L.SMRAM_OPEN_HIGH_BASE, high)
        self.smram_aliases = [low, high]
        add(self.system, self.below_4g, _disabled(memory_region_init_io("tseg-blackhole", 0)), priority=1)
        add(self.smram, self.below_4g, _disabled(memory_region_init_alias("tseg-window", ram, self.below_4g, 0)))
        add(self.system, L.SMBASE_ADDR, _disabled(memory_region_init_io("smbase-blackhole", L.SMBASE_SIZE)),
            priority=1)
        add(self.smram, L.SMBASE_ADDR, _disabled(memory_region_init_alias("smbase-window", ram, L.SMBASE_ADDR,
                                                                           L.SMBASE_SIZE)))

    def _vga(self) -> None:
        """``vga_init``: ``vga-lowmem``, MMIO over 0xa0000-0xbffff in ``pci`` at priority 1, coalesced."""
        vga = memory_region_init_io("vga-lowmem", VGA_LOWMEM_SIZE)
        self.memory.memory_region_add_subregion(self.pci, L.SMRAM_C_BASE, vga, priority=1)
        self.memory.memory_region_add_coalescing(vga, 0, VGA_LOWMEM_SIZE)

    def _pam_mode_0(self) -> None:
        """``pam_update`` of every segment with the reset's PAM registers (0): alias[0], ``pam-pci``."""
        for segment in self.pam:
            self.memory.memory_region_set_enabled(segment[0], True)
        self.pam_current = [0] * L.PAM_REGIONS_COUNT

    def reset(self) -> None:
        """The system reset after machine-done. q35, ``mch_reset`` -> ``mch_update``: PAM to mode 0 in one
        transaction, then (with SMM ranges) ``mch_update_smram`` in another: SMRAM register 0x02 and ESMRAMC
        0x38 leave smram-low and smram-high disabled, smram-region on, smram-open-high off, and TSEG empty
        (its re-placement at below_4g_mem_size changes nothing). The i440fx has no reset handler: its
        mappings were set at realize."""
        if self.type != "q35":
            return
        with self.memory.transaction():
            self._pam_mode_0()
        if self.smm:
            with self.memory.transaction():
                for alias in self.smram_aliases:
                    self.memory.memory_region_set_enabled(alias, False)

    def mch_update_pciexbar(self, enable: bool, addr: int, length: int) -> None:
        """q35 ``mch_update_pciexbar`` -> ``pcie_host_mmcfg_update``: in one transaction, unmap MMCONFIG if
        mapped, then (enabled) size it to ``length`` and map it at ``addr`` in system memory, priority 0.

        The firmware's write of PCIEXBAR (SeaBIOS, OVMF: 0xB0000000, 256 MiB,
        enabled). dirtysim takes the register's fields, not its encoding.
        """
        with self.memory.transaction():
            if self.mmcfg.container is not None:
                self.memory.memory_region_del_subregion(self.system, self.mmcfg)
            if enable:
                self.mmcfg.size = length  # pcie_host_mmcfg_init's memory_region_set_size, while unmapped
                self.memory.memory_region_add_subregion(self.system, addr, self.mmcfg)

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


def _disabled(mr: MemoryRegion) -> MemoryRegion:
    """``memory_region_set_enabled(mr, false)`` before ``mr`` is mapped: its mapping then changes no view."""
    mr.enabled = False
    return mr
