"""Hostile scenario input: every case gives one clear line and exit 2, never a traceback (issue 8, item 1).

Each row is an input a new (or hostile) user might give and the *whole* report the loader must
print, with the file path replaced by ``{file}``. The CLI tests check exit code 2, a single line on
stderr and that the simulation is never reached.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from dirtysim import sim
from dirtysim.cli import main
from dirtysim.scenario.load import ScenarioError, load_scenario
from dirtysim.scenario.source import MAX_FILE_BYTES

V = """machine:
  memory: {size: 1GiB}
  vcpus:
    - count: 1
      workload: {kind: uniform, rate: 10MiB/s}
"""
TCG = V.replace("machine:", "machine:\n  accel: tcg")
PC = V.replace("machine:", "machine:\n  type: pc")
BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{p}'] * 9 if p else ['x'] * 9)}]\n" for p, a in zip([None, *"abcdefgh"], "abcdefghi"))
FILE_CASES = [  # (id, file content, the whole report with the path as {file})
    # encodings and binaries
    ("latin1", "name: caf\xe9\n".encode("latin-1") + V.encode(),
     '{file}:1: not UTF-8 text (got byte 0xe9 at column 10; allowed: UTF-8 text)'),
    ("utf16_bom", V.encode("utf-16"),
     '{file}:1: the file is UTF-16 text (got a UTF-16 byte-order mark; allowed: UTF-8, e.g. iconv -f UTF-16 -t UTF-8)'),
    ("utf16_no_bom", V.encode("utf-16-le"),
     '{file}:1: not a text file (got a NUL byte at column 2, as in a binary or UTF-16 file; allowed: UTF-8 text)'),
    ("utf32_bom", V.encode("utf-32"),
     '{file}:1: the file is UTF-32 text (got a UTF-32 byte-order mark; allowed: UTF-8, e.g. iconv -f UTF-32 -t UTF-8)'),
    ("binary", bytes(range(128, 256)) * 4,
     '{file}:1: not UTF-8 text (got byte 0x80 at column 1; allowed: UTF-8 text)'),
    ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(20),
     '{file}:1: not UTF-8 text (got byte 0x89 at column 1; allowed: UTF-8 text)'),
    ("control_char", V + 'name: "a\x01b"\n',
     '{file}:6: a control character in the text (got U+0001 at column 9; allowed: printable UTF-8, tabs and newlines)'),
    # YAML structure
    ("empty", "",
     '{file}:1: the file is empty (a scenario needs at least machine.memory and machine.vcpus)'),
    ("only_comments", "# a scenario\n# to be written\n",
     '{file}:1: the file is empty (a scenario needs at least machine.memory and machine.vcpus)'),
    ("top_level_list", "- machine\n",
     '{file}:1: the top level must be a mapping of keys (got list)'),
    ("top_level_scalar", "hello\n",
     '{file}:1: the top level must be a mapping of keys (got str)'),
    ("machine_null", "machine: null\n",
     '{file}:1: machine: not a mapping (got null)'),
    ("tabs", "machine:\n\tmemory: {size: 1GiB}\n",
     "{file}:2: YAML syntax error: found character '\\t' that cannot start any token (YAML indents with spaces, never tabs)"),
    ("second_document", V + "---\n" + V,
     "{file}:6: a second YAML document (got '---' and more; allowed: one document per scenario file)"),
    ("alias_bomb", BOMB,
     '{file}:5: YAML expands to too many nodes (got more than 10000 after expanding aliases; allowed: at most 10000)'),
    ("recursive_alias", "machine: &a [*a]\n",
     '{file}:1: YAML alias *a is inside the node it refers to (a recursive alias; allowed: aliases to finished nodes)'),
    ("recursive_alias_mapping", "machine: &m {memory: *m}\n",
     '{file}:1: YAML alias *m is inside the node it refers to (a recursive alias; allowed: aliases to finished nodes)'),
    ("deep_nesting", "machine: " + "[" * 5000 + "]" * 5000 + "\n",
     '{file}:1: YAML nested too deeply (got more than 32 levels; allowed: at most 32)'),
    ("python_tag", V + "name: !!python/object/apply:os.system [ls]\n",
     '{file}:6: YAML tag not allowed (got !!python/object/apply:os.system; allowed: plain mappings, lists, strings, numbers and booleans)'),
    ("binary_tag", V + "name: !!binary aGVsbG8=\n",
     "{file}:6: name: not a string (got b'hello' (bytes))"),
    ("duplicate_nested_key", V.replace("{size: 1GiB}", "{size: 1GiB, size: 2GiB}"),
     '{file}:2: machine.memory.size: duplicate key (first given on line 2)'),
    ("integer_key", V + "1: x\n",
     '{file}:6: (top level): a key must be a name (got 1, read as int; allowed: names such as machine)'),
    ("boolean_key", V + "on: x\n",
     '{file}:6: (top level): a key must be a name (got on, read as bool; allowed: names such as machine)'),
    ("list_key", V + "? [a]\n: x\n",
     '{file}:6: (top level): a key must be a name (got a seq as a key; allowed: names such as machine)'),
    ("key_case", V.replace("  memory:", "  Memory:"),
     '{file}:1: machine.memory: required key is missing\n{file}:2: machine.Memory: unknown key; did you mean memory? (got a mapping; allowed: accel, memory, vcpus, devices, device_memory, device_state, vmdesc, type, memory_backend, max_ram_below_4g, smm)'),
    ("undefined_alias", V + "name: *nowhere\n",
     "{file}:6: YAML syntax error: found undefined alias 'nowhere'"),
    # numbers and units
    ("huge_integer", V.replace("count: 1", "count: 99999999999999999999999999999"),
     '{file}:4: machine.vcpus.0.count: out of range (got an integer of 29 digits; allowed: 1 .. 4096)'),
    ("nan_fraction", V.replace("{size: 1GiB}", "{size: 1GiB, zero_fraction: .nan}"),
     '{file}:2: machine.memory.zero_fraction: out of range (got NaN; allowed: 0.0 .. 1.0)'),
    ("inf_fraction", V.replace("{size: 1GiB}", "{size: 1GiB, zero_fraction: .inf}"),
     '{file}:2: machine.memory.zero_fraction: out of range (got Infinity; allowed: 0.0 .. 1.0)'),
    ("bool_fraction", V.replace("{size: 1GiB}", "{size: 1GiB, zero_fraction: true}"),
     '{file}:2: machine.memory.zero_fraction: not a number (got true; allowed: 0.0 .. 1.0)'),
    ("bool_count", V.replace("count: 1", "count: true"),
     '{file}:4: machine.vcpus.0.count: not an integer (got true; allowed: 1 .. 4096)'),
    ("float_count", V.replace("count: 1", "count: 1.0"),
     '{file}:4: machine.vcpus.0.count: not an integer (got 1.0; allowed: 1 .. 4096)'),
    ("exponent_unit", V.replace("1GiB", "1e3MiB"),
     '{file}:2: machine.memory.size: cannot read \'1e3MiB\' as a size (got "1e3MiB"; allowed: a number with a unit, e.g. 8GiB; units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, or QEMU\'s K, M, G, T, P, E (powers of 1024))'),
    ("hex_unit", V.replace("1GiB", "0x10GiB"),
     '{file}:2: machine.memory.size: cannot read \'0x10GiB\' as a size (got "0x10GiB"; allowed: a number with a unit, e.g. 8GiB; units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, or QEMU\'s K, M, G, T, P, E (powers of 1024))'),
    ("fractional_bytes", V.replace("1GiB", "1.5B"),
     '{file}:2: machine.memory.size: \'1.5B\' is not a whole number of the base unit (got "1.5B"; allowed: a number with a unit, e.g. 8GiB; units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, or QEMU\'s K, M, G, T, P, E (powers of 1024))'),
    ("float_size", V.replace("1GiB", "1.5"),
     "{file}:2: machine.memory.size: a size must be a whole number (got 1.5; allowed: a number with a unit, e.g. 8GiB; units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, or QEMU's K, M, G, T, P, E (powers of 1024))"),
    ("negative_duration", V + "migration: {timeout: -1s}\n",
     '{file}:6: migration.timeout: a duration must not be negative (got "-1s"; allowed: a number with a unit, e.g. 300ms; units: ns, us, ms, s, min)'),
    ("int_of_5000_digits", "seed: " + "9" * 5000 + "\n" + V,
     "{file}:1: an integer of 5000 characters (allowed: at most 64)"),
    ("size_of_5000_digits", V.replace("1GiB", "9" * 5000 + "B"),
     '{file}:2: machine.memory.size: a size this large is not supported (got "' + "9" * 49 + '... (5003 characters); '
     "allowed: a number with a unit, e.g. 8GiB; units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, or QEMU's K, M, G, T, "
     'P, E (powers of 1024))'),
    ("huge_size", V.replace("1GiB", "9E"),
     '{file}:2: machine.memory.size: a size this large is not supported (got "9E"; allowed: a number with a unit, e.g. 8GiB; units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, or QEMU\'s K, M, G, T, P, E (powers of 1024))'),
    ("date_duration", V + "timeline: [{at: 2024-01-01, pam: {enabled: true}}]\n",
     '{file}:6: timeline.0.at: expected a duration string (got 2024-01-01 (date); allowed: a number with a unit, e.g. 300ms; units: ns, us, ms, s, min)'),
    ("page_fraction_working_set", V.replace("rate: 10MiB/s}", "rate: 10MiB/s, working_set: 5000}"),
     '{file}:5: machine.vcpus.0.workload.working_set: not a whole number of 4KiB pages (got 5000B; allowed: a multiple of 4KiB)'),
    # zero where zero divides
    ("link_bandwidth_0", V + "network: {bandwidth: 0B/s}\n",
     '{file}:6: network.bandwidth: out of range (got "0B/s"; allowed: >= 1B/s)'),
    ("packet_0", V + "  devices: [{kind: vhost-user-net, rx: 1MiB/s, packet: 0}]\n",
     '{file}:6: machine.devices.0.packet: out of range (got 0; allowed: 64B .. 64KiB)'),
    ("request_0", V + "  devices: [{kind: vhost-user-blk, read: 1MiB/s, request: 0}]\n",
     '{file}:6: machine.devices.0.request: out of range (got 0; allowed: 512B .. 64MiB)'),
    ("request_not_sectors", V + "  devices: [{kind: vhost-user-blk, read: 1MiB/s, request: 1000}]\n",
     '{file}:6: machine.devices.0.request: a virtio-blk request is a whole number of 512-byte sectors (got 1000B; allowed: a multiple of 512B)'),
    ("bar_0", V + "  devices: [{kind: virtio-net, bar: 0}]\n",
     '{file}:6: machine.devices.0.bar: a PCI BAR size must be a power of two, at least 4KiB (got 0B; allowed: 4KiB, 8KiB, 16KiB, ..., e.g. 16MiB)'),
    ("bar_3MiB", V + "  devices: [{kind: vfio-pci, bar: 3MiB}]\n",
     '{file}:6: machine.devices.0.bar: a PCI BAR size must be a power of two, at least 4KiB (got 3MiB; allowed: 4KiB, 8KiB, 16KiB, ..., e.g. 16MiB)'),
    ("bar_768KiB", V + "  devices: [{kind: vfio-pci, bar: 768KiB}]\n",
     '{file}:6: machine.devices.0.bar: a PCI BAR size must be a power of two, at least 4KiB (got 768KiB; allowed: 4KiB, 8KiB, 16KiB, ..., e.g. 16MiB)'),
    ("bar_2KiB", V + "  devices: [{kind: virtio-blk, bar: 2KiB}]\n",
     '{file}:6: machine.devices.0.bar: a PCI BAR size must be a power of two, at least 4KiB (got 2KiB; allowed: 4KiB, 8KiB, 16KiB, ..., e.g. 16MiB)'),
    ("bar_unaligned", V + "  devices: [{kind: vfio-pci}]\ntimeline: [{at: 1s, bar: {device: 0, addr: 0x40100000}}]\n",
     '{file}:7: timeline.0.bar.addr: device 0 (vfio-pci): a BAR address must be aligned to the BAR size (PCI BARs are naturally aligned) (got 0x40100000; allowed: a multiple of 16MiB)'),
    ("bar_above_52_bits", V + "  devices: [{kind: vfio-pci}]\ntimeline: [{at: 1s, bar: {device: 0, addr: 0x10000000000000}}]\n",
     '{file}:7: timeline.0.bar.addr: device 0 (vfio-pci): a BAR must lie outside RAM and the DIMM area, below 2**52 (dirtysim keeps memslots 256 KiB aligned, so it does not split RAM around BARs) (got 0x10000000000000; allowed: a multiple of 16MiB at or above 1GiB)'),
    # a RAM-holding BAR over the pc/q35 hpet window (0xfed00000, 1 KiB): its memslot would not be whole pages
    ("bar_over_hpet", PC + "  devices: [{kind: vfio-pci}]\ntimeline: [{at: 1s, bar: {device: 0, addr: 0xfe000000}}]\n",
     "{file}:8: timeline.0.bar.addr: device 0 (vfio-pci): a BAR over the board's 1KiB hpet window would split its RAM off page boundaries (QEMU pads such a section to pages, kvm_align_section; dirtysim does not) (got 0xfe000000; allowed: a multiple of 16MiB that leaves out 0xfed00000 .. 0xfed003ff)"),
    ("vga_rom_over_hpet", PC.replace("pc", "q35") + "  devices: [{kind: VGA}]\ntimeline: [{at: 1s, bar: {device: 0, addr: 0xfed00000, rom: true}}]\n",
     "{file}:8: timeline.0.bar.addr: device 0 (VGA): a BAR over the board's 1KiB hpet window would split its RAM off page boundaries (QEMU pads such a section to pages, kvm_align_section; dirtysim does not) (got 0xfed00000; allowed: a multiple of 64KiB that leaves out 0xfed00000 .. 0xfed003ff)"),
    # two vfio-pci devices on one host device (an explicit host, or one that is another's default)
    ("vfio_same_host", V + "  devices: [{kind: vfio-pci, host: '0000:01:00.0'}, {kind: vfio-pci, host: '0000:01:00.0'}]\n",
     "{file}:6: machine.devices.1.host: vfio 0000:01:00.0: device is already attached (as device 0) (got 0000:01:00.0; allowed: a host address no other vfio-pci device has)"),
    ("vfio_host_is_a_default", V + "  devices: [{kind: vfio-pci, host: '0000:02:00.0'}, {kind: vfio-pci}]\n",
     "{file}:6: machine.devices.1.host: vfio 0000:02:00.0: device is already attached (as device 0) (got 0000:02:00.0; allowed: a host address no other vfio-pci device has)"),
    # PCIEXBAR's fields are reported at their own keys
    ("pciexbar_length", PC.replace("pc", "q35") + "timeline: [{at: 1s, pciexbar: {enabled: true, length: 32MiB}}]\n",
     '{file}:7: timeline.0.pciexbar.length: PCIEXBAR encodes an MMCONFIG length of 256MiB, 128MiB or 64MiB (got 32MiB; allowed: 256MiB, 128MiB, 64MiB)'),
    ("pciexbar_base", PC.replace("pc", "q35") + "timeline: [{at: 1s, pciexbar: {enabled: true, base: 0x1000000000}}]\n",
     '{file}:7: timeline.0.pciexbar.base: PCIEXBAR holds a base aligned to the length, below 64GiB (got 0x1000000000; allowed: a multiple of 256MiB below 64GiB)'),
    ("rom_4GiB", V + "  devices: [{kind: vfio-pci, rom: 4GiB}]\n",
     '{file}:6: machine.devices.0.rom: a PCI ROM BAR size is 0 or a power of two, at least 4KiB and at most 2GiB (the ROM BAR is a 32-bit register) (got 4GiB; allowed: 0B, 4KiB, 8KiB, ..., 2GiB, e.g. 64KiB)'),
    ("quantum_0", V + "engine: {quantum: 0s}\n",
     '{file}:6: engine.quantum: out of range (got "0s"; allowed: 10us .. 1s)'),
    ("quantum_1ns", V + "engine: {quantum: 1ns}\n",
     '{file}:6: engine.quantum: out of range (got "1ns"; allowed: 10us .. 1s)'),
    ("send_quantum_0", V + "engine: {send_quantum: 0ns}\n",
     '{file}:6: engine.send_quantum: out of range (got "0ns"; allowed: 10us .. 1s)'),
    ("reaper_period_0", V + "dirty_tracking: {mode: ring, reaper_period: 0s}\n",
     '{file}:6: dirty_tracking.reaper_period: out of range (got "0s"; allowed: >= 10us)'),
    ("buffers_too_small", V + "  devices: [{kind: vhost-user-blk, read: 1MiB/s, buffers: 8KiB}]\n",
     '{file}:6: machine.devices.0.buffers: device 0 (vhost-user-blk): its buffers do not fit in RAM (got 8KiB at 0x3fffe000; allowed: whole pages, at least 68KiB (1 used-ring page(s) + one request), inside 1GiB of RAM)'),
    # names
    ("name_nul", V + 'name: "a\\0b"\n',
     "{file}:6: name: not usable as a directory name (got 'a\\x00b'; allowed: 1 to 100 bytes, no / or \\ or control characters, not . or ..)"),
    ("name_slash", V + "name: ../../etc\n",
     "{file}:6: name: not usable as a directory name (got '../../etc'; allowed: 1 to 100 bytes, no / or \\ or control characters, not . or ..)"),
    ("name_backslash", V + "name: 'a\\b'\n",
     "{file}:6: name: not usable as a directory name (got 'a\\\\b'; allowed: 1 to 100 bytes, no / or \\ or control characters, not . or ..)"),
    ("name_dotdot", V + "name: ..\n",
     "{file}:6: name: not usable as a directory name (got '..'; allowed: 1 to 100 bytes, no / or \\ or control characters, not . or ..)"),
    ("name_empty", V + 'name: ""\n',
     "{file}:6: name: not usable as a directory name (got ''; allowed: 1 to 100 bytes, no / or \\ or control characters, not . or ..)"),
    ("name_long", V + "name: " + "x" * 300 + "\n",
     '{file}:6: name: not usable as a directory name (got 300 bytes; allowed: 1 to 100 bytes, no / or \\ or control characters, not . or ..)'),
    ("name_number", V + "name: 42\n",
     '{file}:6: name: not a string (got 42)'),
    ("output_dir_nul", V + 'outputs: {dir: "a\\0b"}\n',
     "{file}:6: outputs.dir: a path cannot contain a NUL character (got 'a\\x00b'; allowed: a directory path)"),
    # devices, accelerator, timeline
    ("vhost_with_tcg", TCG + "  devices: [{kind: vhost-user-net, rx: 1MiB/s}]\n",
     '{file}:7: machine.devices.0.kind: device 0 (vhost-user-net): vhost devices need KVM (ioeventfds and irqfds); TCG provides no eventfds (got vhost-user-net; allowed: accel: kvm, or a virtio-net/virtio-blk device)'),
    ("buffers_outside_ram", V + "  devices: [{kind: vhost-user-net, rx: 1MiB/s, buffer_offset: 1GiB}]\n",
     '{file}:6: machine.devices.0.buffers: device 0 (vhost-user-net): its buffers do not fit in RAM (got 64MiB at 0x40000000; allowed: whole pages, at least 8KiB (1 used-ring page(s) + one packet), inside 1GiB of RAM)'),
    ("ioeventfd_vfio", V + "  devices: [{kind: vfio-pci}]\ntimeline: [{at: 1s, ioeventfd: {device: 0}}]\n",
     '{file}:7: timeline.0.ioeventfd.device: device 0 (vfio-pci) has no virtio queues (got 0; allowed: a virtio or vhost device)'),
    ("duplicate_dimm_id", V.replace("  vcpus:", "  device_memory: 1GiB\n  vcpus:")
     + "timeline: [{at: 1s, hotplug: {id: d0, size: 256MiB}}, {at: 2s, hotplug: {id: d0, size: 256MiB}}]\n",
     "{file}:7: timeline.1.hotplug.id: a DIMM with this id is already plugged (qdev_set_id: Duplicate device ID) "
     "(got d0; allowed: an id other than d0)"),
    ("timeline_after_end", V + "timeline: [{at: 700s, pam: {enabled: true}}]\n",
     '{file}:6: timeline.0.at: after the end of the run (got 700s; allowed: at most migration.start_at + migration.timeout = 600s)'),
    ("tcg_ring", TCG + "dirty_tracking: {mode: ring}\n",
     '{file}:7: dirty_tracking.mode: the dirty ring is a KVM feature (kvm_dirty_ring_init); TCG guests dirty global dirty memory directly (got ring; allowed: bitmap with accel: tcg)'),
    ("tcg_clear_all", TCG + "dirty_tracking: {kvm_clear: clear-all}\n",
     '{file}:7: dirty_tracking.kvm_clear: a KVM_CLEAR_DIRTY_LOG variant, but accel is tcg (got clear-all; allowed: the default with accel: tcg)'),
    # memory backing (huge pages): the page size's short name, not a size
    ("backing_upper_case", V.replace("{size: 1GiB}", "{size: 1GiB, backing: 2M}"),
     "{file}:2: machine.memory.backing: not an allowed value (got \"2M\"; allowed: '4k', '2m' or '1g')"),
    ("backing_size", V.replace("{size: 1GiB}", "{size: 1GiB, backing: 2MiB}"),
     "{file}:2: machine.memory.backing: not an allowed value (got \"2MiB\"; allowed: '4k', '2m' or '1g')"),
    # resource limits
    ("guest_over_16TiB", V.replace("1GiB", "32TiB"),
     '{file}:2: machine.memory.size: RAM size must be at least 1MiB and a multiple of 256KiB (got 32TiB; allowed: e.g. 512MiB, 16GiB; at most 16TiB)'),
    ("device_memory_over_ceiling", V.replace("  vcpus:", "  device_memory: 16TiB\n  vcpus:"),
     "{file}:3: machine.device_memory: the device-memory area must be a multiple of 256KiB and, with RAM, within dirtysim's ceiling (got 16TiB; allowed: a multiple of 256KiB, at most 16383GiB)"),
    ("vcpus_over_4096", V.replace("count: 1", "count: 4000") + "    - count: 200\n      workload: {kind: uniform, rate: 1MiB/s}\n",
     "{file}:6: machine.vcpus.1.count: too many vCPUs across the groups (got 4200 so far; allowed: at most 4096 in all (QEMU's q35 max_cpus))"),
    ("events_budget", V + "engine: {quantum: 10us}\nmigration: {timeout: 36000s}\n",
     '{file}:6: engine.quantum: the run would take too many simulation steps (got about 3.64e+09 for 36000s of run and 0s of switchover; allowed: at most 1e+08: a longer quantum/send_quantum or a shorter migration.timeout)'),
    ("slow_switchover", V + "  device_state: 64GiB\nnetwork: {bandwidth: 1KB/s}\n",
     '{file}:7: network.bandwidth: the run would take too many simulation steps (got about 6.88e+08 for 600s of run '
     'and 68719477s of switchover; allowed: at most 1e+08: a faster link or less machine.device_state)'),
    ("device_state_over_64GiB", V + "  device_state: 7E\n",
     '{file}:6: machine.device_state: out of range (got "7E"; allowed: <= 64GiB)'),
    ("cost_of_an_hour", V + "costs: {bitmap_sync_per_gib: 1h}\n",
     "{file}:6: costs.bitmap_sync_per_gib: unknown unit 'h' (got \"1h\"; allowed: a number with a unit, e.g. 300ms; "
     "units: ns, us, ms, s, min)"),
    ("cost_over_1s", V + "costs: {bitmap_sync_per_gib: 60min}\n",
     "{file}:6: costs.bitmap_sync_per_gib: more than any single operation costs (got 3600s; allowed: 0 .. 1s)"),
    ("latency_over_10s", V + "network: {latency: 1min}\n",
     '{file}:6: network.latency: out of range (got "1min"; allowed: <= 10s)'),
    ("writes_budget", V.replace("10MiB/s", "100GiB/s") + "migration: {timeout: 3600s}\n",
     '{file}:6: migration.timeout: the run would make too many page writes (got about 9.44e+10 in 3600s; allowed: at most 2e+10: lower rates or a shorter migration.timeout)'),
    ("writes_per_quantum", V.replace("10MiB/s", "100GiB/s").replace("count: 1", "count: 1000") + "engine: {quantum: 1s}\nmigration: {timeout: 1s}\n",
     '{file}:6: engine.quantum: too many page writes in one quantum (got about 2.62e+10 per 1s; allowed: at most 16777216: a shorter quantum or lower rates)'),
    ("seed_negative", V + "seed: -1\n",
     '{file}:6: seed: out of range (got -1; allowed: 0 .. 9223372036854775807)'),
    ("seed_2_63", V + "seed: 9223372036854775808\n",
     '{file}:6: seed: out of range (got 9223372036854775808; allowed: 0 .. 9223372036854775807)'),
    # QEMU spellings
    ("qemu_spelling_twice", V + "migration: {downtime-limit: 500, downtime_limit: 1s}\n",
     "{file}:6: migration.downtime-limit: given twice: downtime-limit is QEMU's spelling of downtime_limit (got 500; allowed: one of downtime_limit, downtime-limit)"),
    ("qemu_spelling_negative", V + "migration: {max-bandwidth: -5}\n",
     '{file}:6: migration.max-bandwidth: a rate must not be negative (got -5; allowed: a number with a unit, e.g. 128MiB/s; units: B/s, KiB/s, MiB/s, GiB/s, TiB/s, KB/s, MB/s, GB/s, TB/s, bit/s, Kbit/s, Mbit/s, Gbit/s, Tbit/s)'),
    ("qemu_spelling_range", V + "dirty_tracking: {mode: ring, manual_protect: false, dirty-ring-size: 1000}\n",
     '{file}:6: dirty_tracking.dirty-ring-size: out of range (got 1000; allowed: 1024 .. 65536)'),
    ("qemu_spelling_typo", V + "migration: {downtime-limt: 500}\n",
     '{file}:6: migration.downtime-limt: unknown key; did you mean downtime-limit? (got 500; allowed: max_bandwidth, downtime_limit, avail_switchover_bandwidth, throttle_trigger_threshold, cpu_throttle_initial, cpu_throttle_increment, cpu_throttle_tailslow, max_cpu_throttle, vcpu_dirty_limit, x_vcpu_dirty_limit_period, start_at, capabilities, zero_page_detection, multifd_channels, xbzrle_cache_size, multifd_compression, timeout, x_postcopy_after_syncs, max_syncs)'),
    ("downtime_over_qemu_max", V + "migration: {downtime_limit: 2001s}\n",
     "{file}:6: migration.downtime_limit: above QEMU's maximum (migrate_params_check) (got 2001s; allowed: 0 .. 2000s)"),
    # more that a new user writes
    ("unknown_device_kind", V + "  devices: [{kind: e1000}]\n",
     "{file}:6: machine.devices.0.kind: unknown device kind (got \"e1000\"; allowed: 'vhost-user-net', 'vhost-net', "
     "'vhost-user-blk', 'virtio-net', 'virtio-blk', 'vfio-pci', 'VGA')"),
    ("device_without_kind", V + "  devices: [{rx: 1MiB/s}]\n",
     "{file}:6: machine.devices.0.kind: required key is missing (allowed: vhost-user-net, vhost-net, vhost-user-blk, "
     "virtio-net, virtio-blk, vfio-pci, VGA)"),
    ("duplicate_anchor", "x-a: &x 1\nx-b: &x 2\n" + V,
     "{file}:2: YAML anchor &x defined twice (first on line 1; allowed: one anchor per name)"),
    ("custom_tag", V + "name: !custom x\n",
     "{file}:6: YAML tag not allowed (got !custom; allowed: plain mappings, lists, strings, numbers and booleans)"),
    ("quoted_boolean", V + "outputs: {plots: 'yes'}\n", '{file}:6: outputs.plots: not a boolean (got "yes")'),
    ("two_timeline_actions", V + "timeline: [{at: 1s, pam: {enabled: true}, unplug: {id: d0}}]\n",
     "{file}:6: timeline.0: a timeline entry needs exactly one action (got unplug, pam; allowed: one of hotplug, "
     "unplug, bar, pam, ioeventfd, calc_dirty_rate, set, migrate_cancel, migrate_start_postcopy, pciexbar)"),
    ("ring_size_not_power_of_two", V + "dirty_tracking: {mode: ring, manual_protect: false, dirty-ring-size: 3072}\n",
     "{file}:6: dirty_tracking.dirty-ring-size: not a power of two (got 3072; allowed: 1024, 2048, ..., 65536)"),
    # the sending side
    ("multifd_channels_in_words", V + "migration: {capabilities: {multifd: true}, multifd-channels: two}\n",
     '{file}:6: migration.multifd-channels: not an integer (got "two"; allowed: 1 .. 255)'),
    ("multifd_channels_over_qemu_max", V + "migration: {capabilities: {multifd: true}, multifd-channels: 256}\n",
     "{file}:6: migration.multifd-channels: out of range (got 256; allowed: 1 .. 255)"),
    ("multifd_compression_not_modelled", V + "migration: {capabilities: {multifd: true}, multifd-compression: qpl}\n",
     "{file}:6: migration.multifd-compression: not an allowed value (got \"qpl\"; allowed: 'none', 'zlib' or 'zstd')"),
    ("xbzrle_cache_not_power_of_two", V + "migration: {capabilities: {xbzrle: true}, xbzrle-cache-size: 3MiB}\n",
     "{file}:6: migration.xbzrle-cache-size: Option xbzrle_cache_size expects a power of two no less than the target "
     "page size (migrate_params_check) (got 3MiB; allowed: 4KiB, 8KiB, ..., e.g. 64MiB)"),
    ("xbzrle_cache_bare_bytes", V + "migration: {xbzrle-cache-size: 1000}\n",
     "{file}:6: migration.xbzrle-cache-size: Option xbzrle_cache_size expects a power of two no less than the target "
     "page size (migrate_params_check) (got 1000B; allowed: 4KiB, 8KiB, ..., e.g. 64MiB)"),
    ("xbzrle_with_multifd", V + "migration: {capabilities: {xbzrle: true, multifd: true}}\n",
     "{file}:6: migration.capabilities.xbzrle: Multifd is not compatible with xbzrle (migrate_caps_check) (got true, "
     "with multifd: true; allowed: one of the two)"),
    ("bytes_per_write_zero", V.replace("rate: 10MiB/s", "rate: 10MiB/s, bytes_per_write: 0B"),
     '{file}:5: machine.vcpus.0.workload.bytes_per_write: out of range (got "0B"; allowed: 1B .. 4KiB)'),
    ("bytes_per_write_over_a_page", V.replace("rate: 10MiB/s", "rate: 10MiB/s, bytes_per_write: 8KiB"),
     '{file}:5: machine.vcpus.0.workload.bytes_per_write: out of range (got "8KiB"; allowed: 1B .. 4KiB)'),
    ("compression_ratio_below_one", V.replace("size: 1GiB", "size: 1GiB, zlib_ratio: 0.5"),
     "{file}:2: machine.memory.zlib_ratio: out of range (got 0.5; allowed: 1.0 .. 4096.0)"),
    ("negative_device_state", V + "  devices: [{kind: virtio-net, state: -4KiB}]\n",
     '{file}:6: machine.devices.0.state: a size must not be negative (got "-4KiB"; allowed: a number with a unit, '
     "e.g. 8GiB; units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, or QEMU's K, M, G, T, P, E (powers of 1024))"),
    ("sending_cost_over_a_second", V + "costs: {page_send: 2s}\n",
     "{file}:6: costs.page_send: more than any single operation costs (got 2s; allowed: 0 .. 1s)"),
]
OVERRIDE_CASES = [  # (--set arguments on a valid file, the whole report)
    (["migration.max_bandwidth=["],
     "--set migration.max_bandwidth: the value is not valid YAML: YAML syntax error: expected the node content, but found '<stream end>' (got '[')"),
    (["migration.max_bandwidth={a: 1, a: 2}"],
     "--set migration.max_bandwidth: the value is not valid YAML: a: duplicate key (first given on line 1) (got '{a: 1, a: 2}')"),
    (["migration=&a [*a]"],
     "--set migration: the value is not valid YAML: YAML alias *a is inside the node it refers to (a recursive alias; allowed: aliases to finished nodes) (got '&a [*a]')"),
    (["migratoin.downtime_limit=1s"],
     '--set migratoin: unknown key; did you mean migration? (got "1s"; allowed: name, seed, machine, dirty_tracking, costs, network, migration, engine, outputs, timeline, what_if)'),
    (["machine.memory.Size=1GiB"],
     '--set machine.memory.Size: unknown key; did you mean size? (got "1GiB"; allowed: size, zero_fraction, zlib_ratio, zstd_ratio, backing)'),
    (["foo.bar=1"],
     '--set foo: unknown key (got 1; allowed: name, seed, machine, dirty_tracking, costs, network, migration, engine, outputs, timeline, what_if)'),
    (["machine.vcpus.3.count=2"],
     '--set machine.vcpus.3.count: machine.vcpus has no item 3 (got 3; allowed: 0 .. 0)'),
    (["machine.vcpus.x.count=2"],
     '--set machine.vcpus.x.count: machine.vcpus has no item x (got x; allowed: 0 .. 0)'),
    (["machine.devices.0.kind=vfio-pci"],
     '--set machine.devices.0.kind: machine.devices has no item 0 (got 0; allowed: none: the list is not in the file)'),
    (["machine.vcpus.0.count.x=1"],
     '--set machine.vcpus.0.count.x: machine.vcpus.0.count is a value, not a mapping or list (got 1)'),
    (["=5"],
     "--set : not a key path (got ''; allowed: names joined by dots, e.g. machine.memory.size)"),
    (["a..b=1"],
     "--set a..b: not a key path (got 'a..b'; allowed: names joined by dots, e.g. machine.memory.size)"),
    (["migration.downtime_limit"],
     "--set migration.downtime_limit: expected key.path=value (got 'migration.downtime_limit'; allowed: e.g. migration.downtime_limit=500ms)"),
    (["name=a/b"],
     "--set name: not usable as a directory name (got 'a/b'; allowed: 1 to 100 bytes, no / or \\ or control characters, not . or ..)"),
    (["machine.vcpus.0.mmio_exits=20000000"],
     "--set machine.vcpus.0.mmio_exits: out of range (got 20000000; allowed: 0 .. 10000000)"),
    (["machine.vcpus.0.mmio_exits=1.5"],
     "--set machine.vcpus.0.mmio_exits: not an integer (got 1.5; allowed: 0 .. 10000000)"),
    (["migration.downtime-limit=2001000"],
     "--set migration.downtime-limit: above QEMU's maximum (migrate_params_check) (got 2001s; allowed: 0 .. 2000s)"),
]


def _report(path: Path, **kwargs) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, **kwargs)
    return str(info.value).replace(str(path), "{file}")


def _write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "s.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("content, expected", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_hostile_file(tmp_path: Path, content: str | bytes, expected: str) -> None:
    assert _report(_write(tmp_path, content)) == expected


@pytest.mark.parametrize("overrides, expected", OVERRIDE_CASES, ids=[o[0] for o, _ in OVERRIDE_CASES])
def test_hostile_override(tmp_path: Path, overrides: list[str], expected: str) -> None:
    assert _report(_write(tmp_path, V), overrides=overrides) == expected


@pytest.mark.parametrize("seed, got", [(-1, "-1"), (1 << 63, "9223372036854775808"), (10**30, "an integer of 31 digits")])
def test_hostile_seed(tmp_path: Path, seed: int, got: str) -> None:
    assert _report(_write(tmp_path, V), seed=seed) == f"--seed: out of range (got {got}; allowed: 0 .. {(1 << 63) - 1})"


def test_largest_seed_is_accepted(tmp_path: Path) -> None:
    assert load_scenario(_write(tmp_path, V), seed=(1 << 63) - 1).seed == (1 << 63) - 1


PATH_CASES = [  # (path relative to tmp_path, or absolute; the report)
    ("missing.yaml", "{file}: cannot read the file: No such file or directory"),
    ("a-directory", "{file}: cannot read the file: it is a directory (allowed: a scenario YAML file)"),
    ("s.yaml/below-a-file.yaml", "{file}: cannot read the file: Not a directory"),
    ("/dev/zero", f"{{file}}: the file is too large (got more than {MAX_FILE_BYTES} bytes; allowed: at most 1MiB of YAML)"),
    ("big.yaml", f"{{file}}: the file is too large (got more than {MAX_FILE_BYTES} bytes; allowed: at most 1MiB of YAML)"),
]


@pytest.mark.parametrize("name, expected", PATH_CASES, ids=[p for p, _ in PATH_CASES])
def test_hostile_path(tmp_path: Path, name: str, expected: str) -> None:
    _write(tmp_path, V)
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "big.yaml").write_bytes(b"# " + b"x" * MAX_FILE_BYTES + b"\n")
    assert _report(tmp_path / name) == expected


def test_unreadable_file(tmp_path: Path, monkeypatch) -> None:
    """(chmod 0 does not stop root, so the refusal is injected where the loader opens the file.)"""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("dirtysim.scenario.source.open", refuse, raising=False)
    assert _report(_write(tmp_path, V)) == "{file}: cannot read the file: Permission denied"


def test_alias_bomb_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    """9 levels of 9 aliases would expand to 387 million nodes (3 GiB and 45 s before the fix); refused in 8 MiB."""
    path = _write(tmp_path, BOMB)
    tracemalloc.start()
    try:
        _report(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


CLI_CASES = ["latin1", "png", "alias_bomb", "recursive_alias", "python_tag", "bar_3MiB", "timeline_after_end",
             "events_budget", "name_slash", "tcg_ring"]


@pytest.fixture
def no_simulation(monkeypatch):
    """A bad input must be refused before anything is simulated."""
    def refuse(*args, **kwargs):
        raise AssertionError("the simulation was reached")

    monkeypatch.setattr(sim, "run", refuse)


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_exit_2_with_one_line(tmp_path: Path, no_simulation, command: str, case: str) -> None:
    content, expected = next(c[1:] for c in FILE_CASES if c[0] == case)
    path = _write(tmp_path, content)
    result = CliRunner().invoke(main, [command, str(path), "-o", str(tmp_path / "out")][: 2 if command == "validate"
                                                                                       else 4])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr == expected.replace("{file}", str(path)) + "\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, expected", [
    (["--seed", "-1"], f"--seed: out of range (got -1; allowed: 0 .. {(1 << 63) - 1})"),
    (["--set", "migratoin.timeout=1s"], '--set migratoin: unknown key; did you mean migration? (got "1s"; allowed: '
                                        'name, seed, machine, dirty_tracking, costs, network, migration, engine, '
                                        'outputs, timeline, what_if)'),
    (["--set", "network.bandwidth=0B/s"], '--set network.bandwidth: out of range (got "0B/s"; allowed: >= 1B/s)'),
])
def test_cli_blames_the_option(tmp_path: Path, no_simulation, args: list[str], expected: str) -> None:
    result = CliRunner().invoke(main, ["run", str(_write(tmp_path, V)), *args])
    assert (result.exit_code, result.stderr) == (2, expected + "\n")


LEGITIMATE = [  # odd but valid: each loads, with the value it means
    ("utf8_bom", b"\xef\xbb\xbf" + V.encode(), "machine.memory.size", 1 << 30),
    ("windows_line_ends", V.replace("\n", "\r\n"), "machine.memory.size", 1 << 30),
    ("space_before_unit", V.replace("1GiB", "1 GiB"), "machine.memory.size", 1 << 30),
    ("qemu_suffix_G", V.replace("1GiB", "1G"), "machine.memory.size", 1 << 30),
    ("qemu_suffix_lower_k", V.replace("1GiB", "1048576k"), "machine.memory.size", 1 << 30),
    ("qemu_suffix_fraction", V.replace("1GiB", "0.5T"), "machine.memory.size", 512 << 30),
    ("qemu_rate_suffix", V + "migration: {max_bandwidth: 1G/s}\n", "migration.max_bandwidth", 1 << 30),
    ("idle_guest", V.replace("10MiB/s", "0B/s"), "machine.vcpus.0.workload.rate", 0),
    ("unlimited_max_bandwidth", V + "migration: {max-bandwidth: 0}\n", "migration.max_bandwidth", 0),
    ("qemu_downtime_limit_ms", V + "migration: {downtime-limit: 500}\n", "migration.downtime_limit", 500 * 10**6),
    ("qemu_spelled_with_unit", V + "migration: {downtime-limit: 2s}\n", "migration.downtime_limit", 2 * 10**9),
    ("qemu_clear_bitmap_shift", V + "dirty_tracking: {x-clear-bitmap-shift: 12}\n", "dirty_tracking.clear_bitmap_shift", 12),
    ("qemu_dirty_ring_size", V + "dirty_tracking: {mode: ring, dirty-ring-size: 1024}\n", "dirty_tracking.ring_size", 1024),
    ("qemu_zero_page_detection", V + "migration: {zero-page-detection: none}\n", "migration.zero_page_detection", "none"),
    ("anchor_and_alias", V.replace("{kind: uniform, rate: 10MiB/s}", "&w {kind: uniform, rate: 10MiB/s}")
     + "    - count: 2\n      workload: *w\n", "machine.vcpus.1.workload.rate", 10 << 20),
    ("x_extension_with_merge", "x-common: &w {kind: uniform, rate: 10MiB/s}\n"
     + V.replace("{kind: uniform, rate: 10MiB/s}", "{<<: *w, rate: 20MiB/s}"), "machine.vcpus.0.workload.rate", 20 << 20),
    ("name_null_is_default", V + "name: null\n", "name", "s"),
]


@pytest.mark.parametrize("content, key, value", [c[1:] for c in LEGITIMATE], ids=[c[0] for c in LEGITIMATE])
def test_legitimate_odd_input(tmp_path: Path, content: str | bytes, key: str, value) -> None:
    scenario = load_scenario(_write(tmp_path, content))
    for part in key.split("."):
        scenario = scenario[int(part)] if part.isdigit() else getattr(scenario, part)
    assert scenario == value


def test_set_replaces_the_other_spelling(tmp_path: Path) -> None:
    """--set downtime_limit wins over a downtime-limit in the file (and the reverse): no 'given twice'."""
    path = _write(tmp_path, V + "migration: {downtime-limit: 500}\n")
    assert load_scenario(path, ["migration.downtime_limit=1s"]).migration.downtime_limit == 10**9
    path = _write(tmp_path, V + "migration: {downtime_limit: 1s}\n")
    assert load_scenario(path, ["migration.downtime-limit=200"]).migration.downtime_limit == 200 * 10**6


@pytest.mark.parametrize("over", [["machine.vcpus.0.workload.rate=0B/s"], ["migration.max_bandwidth=0B/s"]],
                         ids=["idle-guest", "unlimited-max-bandwidth"])
def test_zero_rates_run(tmp_path: Path, over: list[str]) -> None:
    """A guest that writes nothing migrates in one pass; max-bandwidth 0 is QEMU's 'unlimited'."""
    path = _write(tmp_path, V.replace("1GiB", "64MiB") + "migration: {timeout: 5s}\n")
    result = sim.run(load_scenario(path, over), progress=False)
    assert result.error is None and result.stop_reason == "completed"
    if over[0].startswith("machine"):
        syncs = [e for e in result.events if type(e).__name__ == "BitmapSync"]
        assert sum(e.new_dirty_pages for e in syncs[1:]) == 0  # nothing dirtied after the setup sync


def test_guest_larger_than_host_memory(tmp_path: Path, monkeypatch) -> None:
    """The page oracle and bitmaps must fit in the memory this machine has available (both numbers named)."""
    monkeypatch.setattr("dirtysim.scenario.limits.available_memory", lambda: 512 << 20)
    path = _write(tmp_path, V.replace("1GiB", "1TiB"))
    assert _report(path) == (
        "{file}:2: machine.memory.size: the run needs about 768MiB of host memory (2 bytes per guest page + "
        "256MiB), more than the 512MiB available (got 1TiB of guest memory; allowed: at most about 512GiB on this "
        "machine)")


@pytest.mark.parametrize("case", ["latin1", "alias_bomb", "recursive_alias"])
def test_sweep_variants_file_is_read_like_a_scenario(tmp_path: Path, case: str) -> None:
    from dirtysim.sweep import load_variants

    content, expected = next(c[1:] for c in FILE_CASES if c[0] == case)
    path = _write(tmp_path, content)
    with pytest.raises(ScenarioError) as info:
        load_variants(path)
    assert str(info.value) == expected.replace("{file}", str(path))
