"""The scenario timeline: memory-map actions at given simulated times, each an event with its outcome.

Hotplug and unplug go through QEMU's rule first: ``qdev_device_add_from_qdict``
and ``qdev_unplug`` refuse while a migration is running ("device_add not
allowed while migrating"). ``what_if.hotplug_during_migration`` lifts that rule
to show what the migration code would have to do.
"""

from __future__ import annotations

from .dirtyrate.thread import DirtyRateThread
from .events import schema as ev
from .scenario.schema import QEMU_SPELLINGS, parameter_changes


# The actions run_timeline gives the migration (or the dirty-rate thread); apply_action handles every other kind
MIGRATION_ACTIONS = frozenset({"calc_dirty_rate", "set", "migrate_cancel", "migrate_start_postcopy"})


def run_timeline(env, scenario, machine, migration, recorder):
    """A SimPy process applying the timeline entries in time order."""
    dirtyrate = DirtyRateThread(env, scenario, machine, recorder)
    for entry in sorted(scenario.timeline, key=lambda e: e.at):
        if entry.at > env.now:
            yield from machine.sleep(entry.at - env.now)
        kind, act = entry.action
        if kind == "calc_dirty_rate":
            target, result = "mig/dirtyrate", _calc_dirty_rate(env, act, scenario, dirtyrate)
            recorder.emit(ev.TimelineAction, action=kind, target=target, result=result)
        elif kind == "set":
            changes = parameter_changes(act)
            migration.set_parameters(changes)
            recorder.emit(ev.MigrateSetParameters, parameters={QEMU_SPELLINGS[k]: v for k, v in changes.items()})
            recorder.emit(ev.TimelineAction, action=kind, target="migration", result="done")
        elif kind == "migrate_cancel":
            result = "done" if migration.request_cancel() else "ignored: no migration is active (or it is " \
                                                                "already stopping)"
            if migration.pc is not None and migration.pc.stopped_ns is not None:  # qmp_migrate_cancel
                result = "refused: Postcopy migration in progress, cannot cancel."
            recorder.emit(ev.TimelineAction, action=kind, target="migration", result=result)
        elif kind == "migrate_start_postcopy":
            recorder.emit(ev.TimelineAction, action=kind, target="migration", result=_start_postcopy(migration))
        else:
            apply_action(entry, scenario, machine, migration.is_running(), recorder)


def _start_postcopy(migration) -> str:
    """``qmp_migrate_start_postcopy``: QEMU's errors, else the request (acted on at the next iteration)."""
    if migration.pc is None:
        return "refused: Enable postcopy with migrate_set_capability before the start of migration"
    return migration.pc.request("migrate-start-postcopy")


def _calc_dirty_rate(env, act, scenario, thread: DirtyRateThread) -> str:
    """``qmp_calc_dirty_rate``: one measurement at a time; it runs beside the migration on its own thread."""
    if thread.state == "measuring":
        return "refused: the dirty rate is already being measured."
    thread.start(act.config(scenario))
    return "started"


def apply_action(entry, scenario, machine, migrating: bool, recorder) -> None:
    """Apply one timeline entry now and record its outcome."""
    kind, act = entry.action
    target, result = _apply(kind, act, scenario, machine, migrating)
    recorder.emit(ev.TimelineAction, action=kind, target=target, result=result)


def _apply(kind: str, act, scenario, machine, migrating: bool) -> tuple[str, str]:
    if kind in ("hotplug", "unplug") and migrating and not scenario.what_if.hotplug_during_migration:
        verb = "device_add" if kind == "hotplug" else "device_del"
        return act.id, f"refused: {verb} not allowed while migrating"
    if kind == "hotplug":
        machine.hotplug_dimm(act.id, act.size)
        return act.id, "done"
    if kind == "unplug":
        machine.unplug_dimm(act.id)
        return act.id, "done"
    if kind == "bar":
        machine.map_bar(act.device, act.addr, act.rom)
        return machine.devices[act.device]["name"], "done"
    if kind == "pam":
        return machine.set_pam(act), "done"
    if kind == "pciexbar":
        machine.board.mch_update_pciexbar(act.enabled, act.base, act.length)
        return "pcie-mmcfg-mmio", "done"
    return machine.devices[act.device]["name"], machine.set_ioeventfds(act.device, act.enabled)
