"""Where the pc (i440fx) and q35 machines put RAM, ROMs and windows: QEMU's numbers, without regions.

The scenario schema checks a scenario against these (where a working set or a
BAR may go), and ``board.pc`` builds the region tree from them. Guest RAM is
one backend of ``size`` bytes; workloads and device buffers address it by
offset in that backend (ram_addr within it), as they do with ``machine.type:
none`` where the backend sits at guest-physical 0. ``ram_ranges`` says where
the board shows each part of the backend.
"""

from __future__ import annotations

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
MACHINE_TYPES = ("none", "pc", "q35")
DEFAULT_RAM_ID = "pc.ram"  # MachineClass::default_ram_id of pc and q35 (pc_machine_class_init)
ABOVE_4G_MEM_START = 4 * GIB  # x86ms->above_4g_mem_start (hw/i386/x86.c)
PC_ROM_MIN_VGA, PC_ROM_SIZE = 0xC0000, 0x20000  # include/hw/i386/pc.h: PC_ROM_MAX 0xe0000 - PC_ROM_MIN_VGA
# x86_bios_rom_init sizes pc.bios by the firmware file: 256 KiB for the SeaBIOS build QEMU ships and uses on
# pc and q35 [not confirmed in the source: it is the file's size, not a constant]
BIOS_SIZE = 256 * KIB
ISA_BIOS_MAX = 128 * KIB  # x86_bios_rom_init: the last 128 KiB of the BIOS below 1 MiB
SMRAM_C_BASE, SMRAM_C_SIZE = 0xA0000, 0x20000  # SMRAM_C_BASE / MCH_HOST_BRIDGE_SMRAM_C_BASE, and their size
PAM_BIOS_BASE, PAM_BIOS_SIZE = 0xF0000, 0x10000  # include/hw/pci-host/pam.h
PAM_EXPAN_BASE, PAM_EXPAN_SIZE = 0xC0000, 0x4000
PAM_REGIONS_COUNT = 13
SMRAM_SIZE = 4 * GIB  # i440fx_pcihost_realize / mch_realize: memory_region_init(smram, "smram", 4 * GiB)
SMRAM_OPEN_HIGH_BASE = 0xFEDA0000  # mch_realize: smram-open-high in system memory, smram-high in smram
SMBASE_ADDR, SMBASE_SIZE = 0x30000, 0x10000  # MCH_HOST_BRIDGE_SMBASE_ADDR / _SIZE (include/hw/pci-host/q35.h)
# Device MMIO mapped in system memory: (QEMU define, address, size)
APIC_DEFAULT_ADDRESS, APIC_SPACE_SIZE = 0xFEE00000, 0x100000  # target/i386/cpu.h
APIC_PRIORITY = 0x1000  # x86_cpu_apic_realize: memory_region_add_subregion_overlap(..., 0x1000)
IO_APIC_DEFAULT_ADDRESS, IOAPIC_SIZE = 0xFEC00000, 0x1000  # include/hw/intc/ioapic.h; ioapic_realize's 0x1000
HPET_BASE, HPET_LEN = 0xFED00000, 0x400  # include/hw/timer/hpet.h
# q35 MMCONFIG: PCIEXBAR at reset (MCH_HOST_BRIDGE_PCIEXBAR_DEFAULT, enable bit clear), the region's
# initial size (pcie_host_init: PCIE_MMCFG_SIZE_MAX) and the lengths PCIEXBAR encodes (256, 128, 64 MiB)
PCIEXBAR_DEFAULT = 0xB0000000
PCIE_MMCFG_SIZE_MAX = 256 * MIB
PCIEXBAR_LENGTHS = (256 * MIB, 128 * MIB, 64 * MIB)
PCIEXBAR_ADDR_LIMIT = 1 << 36  # MCH_HOST_BRIDGE_PCIEXBAR_ADMSK: address bits 26..35
# The PAM attribute (RE | WE << 1) selects the alias pam_update enables: init_pam's alias[0..3]
PAM_MODES = ("disabled", "read-only", "write-only", "read-write")


def pam_segment(idx: int) -> tuple[int, int]:
    """(start, size) of ``pam_regions[idx]``: 0 is the BIOS area at 0xF0000, 1..12 the 16 KiB expansion areas.

    ``i440fx_init`` / ``mch_realize``: ``init_pam(pam_regions[0], PAM_BIOS_BASE,
    PAM_BIOS_SIZE)``, then ``pam_regions[i + 1]`` at ``PAM_EXPAN_BASE + i * PAM_EXPAN_SIZE``.
    """
    if not 0 <= idx < PAM_REGIONS_COUNT:
        raise ValueError(f"PAM segment {idx}: QEMU has segments 0 .. {PAM_REGIONS_COUNT - 1}")
    if idx == 0:
        return PAM_BIOS_BASE, PAM_BIOS_SIZE
    return PAM_EXPAN_BASE + (idx - 1) * PAM_EXPAN_SIZE, PAM_EXPAN_SIZE


def ram_split(machine_type: str, ram_size: int, max_ram_below_4g: int = 0) -> tuple[int, int]:
    """(below_4g_mem_size, above_4g_mem_size): QEMU's split of the RAM backend around the PCI hole.

    pc (``pc_init1``, hw/i386/pc_piix.c): lowmem is max-ram-below-4g (default
    0xe0000000, 3.5 GiB); a guest at least that large is gigabyte aligned
    (``gigabyte_align``, every machine type since pc-i440fx-2.0): lowmem at
    most 0xc0000000. q35 (``pc_q35_init``): lowmem 0x80000000 for a guest of
    0xb0000000 or more, else 0xb0000000, then at most max-ram-below-4g
    (default 4 GiB). Both: RAM of at least lowmem splits there, else it all
    lies below 4 GiB. ``max_ram_below_4g`` 0 is QEMU's "not set".
    """
    if machine_type == "pc":
        limit = max_ram_below_4g or 0xE0000000
        lowmem = min(limit, 0xC0000000) if ram_size >= limit else limit
    elif machine_type == "q35":
        lowmem = min(0x80000000 if ram_size >= 0xB0000000 else 0xB0000000, max_ram_below_4g or 4 * GIB)
    else:
        raise ValueError(f"machine type {machine_type!r} has no RAM split (pc, q35)")
    if ram_size >= lowmem:
        return lowmem, ram_size - lowmem
    return ram_size, 0


def ram_ranges(machine_type: str, ram_size: int, max_ram_below_4g: int = 0) -> list[tuple[int, int, int]]:
    """(guest-physical address, size, offset in the backend) of ``ram-below-4g`` and ``ram-above-4g``.

    ``pc_memory_init``: ram-below-4g aliases the backend from 0 at GPA 0;
    ram-above-4g, only when there is RAM above, the rest at ``above_4g_mem_start``.
    """
    if machine_type == "none":
        return [(0, ram_size, 0)]
    below, above = ram_split(machine_type, ram_size, max_ram_below_4g)
    return [(0, below, 0)] + ([(ABOVE_4G_MEM_START, above, below)] if above else [])


def device_memory_base(machine_type: str, ram_size: int, max_ram_below_4g: int = 0) -> int:
    """Start of the DIMM area. pc/q35 (``pc_memory_init``): ``ROUND_UP(pc_above_4g_end, 1 GiB)``, where
    ``pc_above_4g_end`` is ``above_4g_mem_start + above_4g_mem_size``; ``none``: above 4 GiB and RAM."""
    if machine_type == "none":
        return -(-max(ram_size, 4 * GIB) // GIB) * GIB
    _, above = ram_split(machine_type, ram_size, max_ram_below_4g)
    return -(-(ABOVE_4G_MEM_START + above) // GIB) * GIB

