"""Which postcopy scenarios QEMU accepts and dirtysim models: ``migrate_caps_check``'s rules, then ours.

QEMU's messages are quoted from ``migration/options.c:migrate_caps_check``.
The multifd rule is QEMU 9.2's: 10.0 (P. Pandit's series) accepts multifd with
postcopy but sends nothing on multifd after the switch; dirtysim models 9.2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .schema import Scenario

NOT_YET = "not modelled yet with postcopy-ram"


def postcopy_refusal(sc: "Scenario") -> Optional[tuple[tuple, str, str, str]]:
    """(loc, message, got, allowed) for the first rule ``sc`` breaks, or None."""
    mig, caps = sc.migration, sc.migration.capabilities
    loc = ("migration", "capabilities")
    if caps.postcopy_preempt and not caps.postcopy_ram:
        return (loc + ("postcopy-preempt",), "Postcopy preempt requires postcopy-ram (migrate_caps_check)", "true",
                "postcopy-ram: true")
    if mig.x_postcopy_after_syncs is not None and not caps.postcopy_ram:
        return (("migration", "x-postcopy-after-syncs"), "Enable postcopy with migrate_set_capability before the "
                "start of migration (qmp_migrate_start_postcopy)", str(mig.x_postcopy_after_syncs),
                "postcopy-ram: true")
    if not caps.postcopy_ram:
        return None
    if caps.multifd:
        return (loc + ("postcopy-ram",), "Postcopy is not yet compatible with multifd (migrate_caps_check, "
                "QEMU <= 9.2; multifd with postcopy is not modelled)", "true, with multifd: true", "one of the two")
    if caps.xbzrle:
        return (loc + ("postcopy-ram",), f"xbzrle is {NOT_YET} (QEMU uses XBZRLE only before the switch: "
                "ram_save_page)", "true, with xbzrle: true", "one of the two")
    for i, group in enumerate(sc.machine.vcpus):
        if group.phases:
            return (("machine", "vcpus", i, "phases"), f"rate phases are {NOT_YET} (the destination vCPUs write at "
                    "one rate)", f"{len(group.phases)} phases", "no phases")
        if group.workload.kind == "trace":
            return (("machine", "vcpus", i, "workload"), f"trace workloads are {NOT_YET}", "trace",
                    "a generated workload")
    if sc.what_if.hotplug_during_migration:
        return (("what_if", "hotplug_during_migration"), f"RAMBlocks that come and go are {NOT_YET}", "true",
                "false")
    if sc.network.latency + min(sc.costs.postcopy_fault, sc.costs.postcopy_place) <= 0:
        return (("network", "latency"), "a page request must take some time: the destination's vCPUs run ahead of "
                "the source by network.latency + min(costs.postcopy_fault, costs.postcopy_place)", "0",
                "latency > 0 or both postcopy costs > 0")
    return None
