"""Costs KVM and QEMU pay for dirty tracking, and the bytes QEMU counts (issue 12, items 4 and 5).

Each test reproduces one rule's number from the events of a small run.
"""

from __future__ import annotations

import pytest

from builders import NO_COSTS, merge, of, simulate
from dirtysim.events import schema as ev
from dirtysim.migration import precopy as P
from dirtysim.report.tables import summary

pytestmark = pytest.mark.rules

SMALL = {"machine": {"memory": {"size": "256MiB"}}, "costs": NO_COSTS}


# --------------------------------------------------------------------------- item 5: byte accounting


def _bytes(events, **pick) -> int:
    return sum(e.bytes for e in of(events, ev.Transfer) if all(getattr(e, k) == v for k, v in pick.items()))


def test_precopy_and_downtime_bytes_are_only_ram_transferred_add():
    """``ram_transferred_add``: the pages (``save_normal_page``, ``save_zero_page``) and ``ram_save_iterate``'s
    EOS; not ``ram_save_setup``'s block list, not ``ram_save_complete``'s EOS, not the section framing,
    the device state or the vmdesc (savevm.c), which are in ``transferred`` only."""
    res = simulate(**SMALL)
    events, s = res.events, summary(res.events)
    ram = s["ram"]
    assert s["status"] == "completed"
    iterates = len([e for e in of(events, ev.Transfer) if e.kind == "section-part"])
    assert iterates >= 1
    pages = _bytes(events, kind="pages")
    assert ram["precopy-bytes"] + ram["downtime-bytes"] == pages + iterates * P.RAM_SAVE_FLAG_EOS_BYTES
    machine = res.scenario.machine
    framing = (P.QEMU_VM_FILE_HEADER_BYTES + P.section_start_bytes("ram") + P.SECTION_FOOTER_BYTES  # setup
               + iterates * (P.SECTION_PART_BYTES + P.SECTION_FOOTER_BYTES)  # each ram_save_iterate
               + P.SECTION_PART_BYTES + P.SECTION_FOOTER_BYTES + P.RAM_SAVE_FLAG_EOS_BYTES  # ram_save_complete
               + machine.switchover_state() + P.QEMU_VM_EOF_BYTES + P.VMDESC_HEADER_BYTES + machine.vmdesc)
    setup_list = _bytes(events, kind="setup") - (P.QEMU_VM_FILE_HEADER_BYTES + P.section_start_bytes("ram")
                                                 + P.SECTION_FOOTER_BYTES)
    assert setup_list == 8 + sum(1 + len(b) + 8 for b in ["pc.ram"]) + P.RAM_SAVE_FLAG_EOS_BYTES
    assert ram["transferred"] - ram["precopy-bytes"] - ram["downtime-bytes"] == framing + setup_list


def test_vmdesc_is_transferred_in_the_downtime_but_not_downtime_bytes():
    base = summary(simulate(**SMALL).events)
    more = summary(simulate(**merge(SMALL, {"machine": {"vmdesc": "1MiB"}})).events)
    assert more["ram"]["downtime-bytes"] == base["ram"]["downtime-bytes"]
    assert more["ram"]["transferred"] - base["ram"]["transferred"] == (1 << 20) - (16 << 10)


def test_multifd_packets_are_multifd_bytes_not_precopy_bytes():
    """``multifd_send_thread`` adds a packet to ``mig_stats.multifd_bytes`` only: with multifd and zero pages
    in the packets (zero-page-detection multifd), precopy- and downtime-bytes hold ``ram_save_iterate``'s EOS
    markers alone."""
    res = simulate(**merge(SMALL, {"migration": {"capabilities": {"multifd": True}}}))
    events, ram = res.events, summary(res.events)["ram"]
    iterates = len([e for e in of(events, ev.Transfer) if e.kind == "section-part"])
    assert ram["multifd-bytes"] > 200 << 20
    assert ram["precopy-bytes"] + ram["downtime-bytes"] == iterates * P.RAM_SAVE_FLAG_EOS_BYTES


# --------------------------------------------------------------------------- item 4: enabling dirty logging

MODES = {  # dirty_tracking -> does kvm_mmu_slot_apply_flags protect the whole slot when logging turns on
    "legacy": ({"manual_protect": False}, True),
    "manual": ({"manual_protect": True, "initially_set": False}, True),
    "ring": ({"mode": "ring"}, True),
    "manual+initially-set": ({"manual_protect": True, "initially_set": True}, False),
}


def _setup(size: str, tracking: dict):
    costs = {**NO_COSTS, "log_start_per_gib": "20us", "log_start_wp_per_gib": "4ms"}
    res = simulate(machine={"memory": {"size": size}}, dirty_tracking=tracking, costs=costs,
                   migration={"timeout": "300ms"})
    return res.events, summary(res.events)


@pytest.mark.parametrize("mode", list(MODES))
def test_enabling_logging_costs_the_migration_thread_its_slots_at_setup(mode):
    """``ram_init_bitmaps`` -> ``memory_global_dirty_log_start`` -> ``kvm_log_start``: the kernel protects the
    whole slot (``kvm_mmu_slot_apply_flags``) in every mode but manual protect with INITIALLY_SET; setup-time
    (``migration_thread``: SETUP -> ACTIVE) holds it, and grows with the guest where the slot is protected."""
    tracking, protects = MODES[mode]
    times = {}
    for gib in (2, 8):
        events, s = _setup(f"{gib}GiB", tracking)
        starts = of(events, ev.KvmLogStart)
        assert [e.write_protected for e in starts] == [protects]
        per_gib = 4_000_000 if protects else 20_000
        assert sum(e.cost_ns for e in starts) == per_gib * gib
        times[gib] = s["setup-time"]
    if protects:
        assert times == {2: 8, 8: 32}  # 4 ms per GiB, in whole ms (the sync and the header cost 0 here)
    else:
        assert times == {2: 0, 8: 0}  # 20 us per GiB: near zero


# --------------------------------------------------------------------------- item 4: the sync, per non-zero word


def _sync_run(workload: dict):
    costs = {**NO_COSTS, "dirty_word_atomic": "10ns"}
    return simulate(machine={"memory": {"size": "1GiB"}, "vcpus": [{"count": 1, "workload": workload}]},
                    costs=costs, migration={"timeout": "3s"}).events


def test_the_sync_pays_an_atomic_per_non_zero_word_and_client():
    """``physical_memory_set_dirty_lebitmap`` ORs each non-zero word of the fetched bitmap into DIRTY_MEMORY_VGA
    and _MIGRATION (2 atomics); ``physical_memory_sync_dirty_bitmap`` exchanges each non-zero word of global dirty
    memory into bmap (1 atomic). With every other cost at zero, that is the whole of a sync's cost."""
    events = _sync_run({"kind": "uniform", "rate": "64MiB/s"})
    gets: list[ev.KvmGetDirtyLog] = []
    checked = 0
    for e in events:
        if isinstance(e, ev.KvmGetDirtyLog):
            assert e.cost_ns == e.words * 2 * 10
            gets.append(e)
        elif isinstance(e, ev.BitmapSync):
            assert e.cost_ns == sum(g.cost_ns for g in gets) + e.dirty_words * 10
            checked += bool(e.dirty_words)
            gets = []
    assert checked >= 2


def test_a_dense_bitmap_costs_more_per_page_than_a_sparse_one_costs_less():
    """Pages written side by side share words: a sequential writer's sync costs about 1/64 of a random writer's
    for the same dirty pages."""
    def per_page(events):
        syncs = [e for e in of(events, ev.BitmapSync) if e.reason != "setup" and e.new_dirty_pages]
        return sum(e.cost_ns for e in syncs) / sum(e.new_dirty_pages for e in syncs)

    sparse = per_page(_sync_run({"kind": "uniform", "rate": "64MiB/s"}))
    dense = per_page(_sync_run({"kind": "sequential", "rate": "64MiB/s"}))
    assert sparse > 8 * dense


# --------------------------------------------------------------------------- item 4: PML


def _pml_run(pml: bool):
    """A write-heavy guest migrating with the legacy bitmap: every bit KVM hands QEMU was set by a first write
    after protection (the GET re-protects what it returns), so the GETs count those writes exactly."""
    costs = {**NO_COSTS, "write_fault": "2us", "pml_full_exit": "5us"}
    res = simulate(machine={"memory": {"size": "1GiB"}, "vcpus": [
        {"count": 2, "workload": {"kind": "uniform", "rate": "64MiB/s", "working_set": "256MiB"}}]},
        dirty_tracking={"manual_protect": False, "pml": pml}, costs=costs,
        migration={"max_bandwidth": "1GiB/s", "timeout": "30s"})
    assert res.stop_reason == "completed"
    stats = of(res.events, ev.VcpuStats)
    per_vcpu = {v: [s for s in stats if s.vcpu == v] for v in (0, 1)}
    first_writes = sum(e.pages for e in of(res.events, ev.KvmGetDirtyLog))
    return res, per_vcpu, first_writes


def test_with_pml_first_writes_are_logged_without_a_fault_and_exit_per_512():
    """``vmx`` with ``enable_pml``: logging clears the D-bits (``kvm_mmu_slot_leaf_clear_dirty``) instead of
    write-protecting; the CPU logs a first write's GPA into the vCPU's 512-entry buffer, and a full buffer is
    a PML-full exit (``handle_pml_full``). No write-protect fault at all."""
    res, per_vcpu, first_writes = _pml_run(pml=True)
    logged = 0
    for rows in per_vcpu.values():
        n = sum(s.pml_logged for s in rows)
        exits = sum(s.pml_full_exits for s in rows)
        assert sum(s.faults for s in rows) == 0 and sum(s.fault_ns for s in rows) == 0
        assert exits == n // 512 and exits > 10
        assert sum(s.pml_full_ns for s in rows) == exits * 5000
        logged += n
    assert logged == first_writes
    s = summary(res.events)["dirtysim"]
    assert s["vcpu-faults"] == 0 and s["pml-logged-pages"] == logged
    assert s["pml-full-exits"] == sum(n // 512 for n in (sum(x.pml_logged for x in r) for r in per_vcpu.values()))


def test_without_pml_each_first_write_after_protection_faults():
    """Without PML, KVM write-protects the pages it logs: each first write after protection is a fault
    (``write_fault`` of run time), and nothing goes through a PML buffer."""
    _, per_vcpu, first_writes = _pml_run(pml=False)
    rows = [s for r in per_vcpu.values() for s in r]
    assert sum(s.faults for s in rows) == first_writes > 10_000
    assert sum(s.fault_ns for s in rows) == 2000 * first_writes
    assert sum(s.pml_logged + s.pml_full_exits for s in rows) == 0


# --------------------------------------------------------------------------- item 4: CLEAR by mapping level

CLEAR_PRICES = {"clear_dirty_log_per_page": "73ns", "clear_dirty_log_huge_per_page": "2ns"}


def _clears_by_pass(events) -> list[list[ev.KvmClearDirtyLog]]:
    """The KVM_CLEAR_DIRTY_LOGs after each bitmap sync, in order (pass 1 follows the first sync)."""
    passes: list[list[ev.KvmClearDirtyLog]] = []
    for e in events:
        if isinstance(e, ev.BitmapSync):
            passes.append([])
        elif isinstance(e, ev.KvmClearDirtyLog) and e.reprotected:
            assert passes, "a CLEAR before the first sync"
            passes[-1].append(e)
    return [p for p in passes if p]


@pytest.mark.parametrize("backing", ["4k", "2m", "1g"])
def test_first_clear_of_a_huge_backed_guest_costs_the_huge_price_later_ones_4k(backing):
    """``kvm_arch_mmu_enable_log_dirty_pt_masked`` with INITIALLY_SET: the first CLEAR of a page since logging
    started write-protects its huge mapping (2 ns a page, dirty_log_perf_test iteration 1, anchors C.6); the
    next write splits it, so every later CLEAR re-protects 4 KiB mappings (73 ns, iteration 2). 4 KiB backing
    pays 73 ns both times."""
    over = merge(SMALL, {"machine": {"memory": {"backing": backing}}, "costs": CLEAR_PRICES,
                         "migration": {"max_bandwidth": "128MiB/s"}})
    res = simulate(**over)
    passes = _clears_by_pass(res.events)
    assert len(passes) >= 2, "needs a second pass with dirtied pages"
    first, second = passes[0], passes[1]
    pages = 256 << 20 >> 12
    assert sum(e.reprotected for e in first) == pages  # INITIALLY_SET: every page reported, every page cleared
    huge = backing != "4k"
    assert all(e.cost_ns == e.reprotected * (2 if huge else 73) for e in first)
    assert all(e.cost_ns == e.reprotected * 73 for p in passes[1:] for e in p)
    assert sum(e.reprotected for e in second) > 0


def test_backing_4k_is_the_default_and_dumps_as_before():
    from builders import scenario
    sc = scenario(**SMALL)
    assert sc.machine.memory.backing == "4k"
    assert "backing" not in sc.model_dump()["machine"]["memory"]
    assert "clear_dirty_log_huge_per_page" not in scenario().model_dump()["costs"]
    assert scenario(machine={"memory": {"backing": "1g"}}).model_dump()["machine"]["memory"]["backing"] == "1g"
