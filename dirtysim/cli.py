"""``dirtysim`` command line: run | validate | schema | replay.

Exit codes: 0 ok, 2 bad input (nothing was simulated), 1 the simulation failed
or lost pages (its result record is still written).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .scenario.load import ScenarioError, load_scenario, scenario_json_schema, scenario_yaml

EXIT_OK, EXIT_SIM_ERROR, EXIT_BAD_INPUT = 0, 1, 2


def _load(file: str, overrides=(), seed=None):
    try:
        return load_scenario(file, overrides, seed)
    except ScenarioError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_BAD_INPUT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dirtysim")
def main() -> None:
    """Simulate QEMU/KVM dirty-page tracking and precopy live migration."""


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False), help="output directory")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="override a scenario key")
@click.option("--seed", type=int, help="override the scenario seed")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: when stderr is a TTY)")
def run(file: str, outdir: str | None, overrides: tuple[str, ...], seed: int | None, progress: bool | None) -> None:
    """Run the scenario FILE; write summary.json, rounds.csv, vcpus.csv, events.jsonl, convergence.png."""
    from .report.files import write_run
    from .sim import run as simulate

    scenario = _load(file, overrides, seed)
    out = Path(outdir or scenario.outputs.dir or f"out/{scenario.name}")
    result = simulate(scenario, progress=progress)
    summary = write_run(result, out)
    _print_summary(summary, out)
    lost = summary["dirtysim"]["lost-pages"]
    wrong = scenario.dirty_tracking.wrong_semantics()
    if lost and wrong:
        click.echo(f"                  (expected: deliberately wrong {', '.join(wrong)})")
    sys.exit(EXIT_SIM_ERROR if result.error or (lost and not wrong) else EXIT_OK)


def _print_summary(s: dict, out: Path) -> None:
    d, ram = s["dirtysim"], s["ram"]
    mib = 1 << 20
    lines = [
        f"status            {s['status']} (stop reason: {d['stop-reason']})",
        f"total-time        {s['total-time']} ms   setup-time {s.get('setup-time', '-')} ms   "
        f"downtime {s.get('downtime', '-')} ms",
        f"transferred       {ram['transferred'] / mib:.1f} MiB of {ram['total'] / mib:.0f} MiB RAM   "
        f"(normal {ram['normal']} pages, duplicate {ram['duplicate']} zero pages)",
        f"dirty-sync-count  {ram['dirty-sync-count']}   mbps {ram['mbps']}",
        f"lost-pages        {d['lost-pages']}",
        f"simulation        seed {d['seed']}, fingerprint {d['fingerprint']}, {d['wall-time-s']} s wall "
        f"(+{d['compile-time-s']} s kernel load), {d['sim-speed']} sim-s per wall-s",
    ]
    if s.get("error-desc"):
        lines.insert(1, f"error             {s['error-desc']}")
    click.echo("\n".join(lines))
    files = ", ".join(p.name for p in sorted(out.iterdir()) if not p.name.startswith("."))
    click.echo(f"outputs           {out}/  ({files})")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE")
def validate(file: str, overrides: tuple[str, ...]) -> None:
    """Check FILE against the schema; print the resolved scenario as YAML (itself a valid scenario)."""
    scenario = _load(file, overrides)
    click.echo(scenario_yaml(scenario), nl=False)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--trace", is_flag=True, help="also apply the timeline's map actions and print every hook call")
def listeners(file: str, trace: bool) -> None:
    """Print the memory listeners FILE's machine registers (name, address space, priority), in order."""
    import numpy as np
    import simpy

    from .events import schema as ev
    from .events.log import Recorder
    from .machine import Machine
    from .timeline import apply_action

    scenario = _load(file)
    env = simpy.Environment()
    rec = Recorder(lambda: env.now)
    machine = Machine(env, scenario, rec, np.random.SeedSequence(scenario.seed))
    for e in rec.events:
        if isinstance(e, ev.ListenerRegistered):
            click.echo(f"{e.listener:<14} {e.address_space:<16} priority {e.priority}")
    if not trace:
        return
    shown = 0

    def hook_calls():
        nonlocal shown
        for e in rec.events[shown:]:
            if isinstance(e, ev.ListenerCall):
                masks = f" log {e.old_mask:#x}->{e.new_mask:#x}" if e.hook in ("log_start", "log_stop") else ""
                where = f" {e.section or '-'} @{e.offset:#x}+{e.size:#x}" if e.section is not None or e.size else ""
                click.echo(f"  {e.listener:<14} {e.hook:<16}{where}{masks}")
            elif isinstance(e, ev.TimelineAction):
                click.echo(f"  -> {e.action} {e.target}: {e.result}")
        shown = len(rec.events)

    click.echo("\n# machine creation")
    hook_calls()
    for entry in sorted(scenario.timeline, key=lambda e: e.at):
        kind, act = entry.action
        click.echo(f"\n# at {entry.at / 1e9:g}s: {kind} {act.model_dump(mode='json')}")
        apply_action(entry, scenario, machine, False, rec)
        hook_calls()


@main.command()
def schema() -> None:
    """Print the JSON Schema of scenario files."""
    click.echo(json.dumps(scenario_json_schema(), indent=2))


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("variants_file", metavar="VARIANTS", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False), help="output directory")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="override for every variant")
def sweep(file: str, variants_file: str, outdir: str | None, overrides: tuple[str, ...]) -> None:
    """Run FILE once per variant of VARIANTS (name -> overrides) and print a comparison table."""
    from .sweep import load_variants, markdown, run_variants

    try:
        variants = load_variants(variants_file)
        out = Path(outdir or f"out/{Path(file).stem}-sweep")
        rows = run_variants(file, variants, out, overrides)
    except ScenarioError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(markdown(rows))
    click.echo(f"\noutputs: {out}/<variant>/ and {out}/comparison.csv")


@main.command()
@click.argument("events", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False), required=True)
def replay(events: str, outdir: str) -> None:
    """Recompute rounds.csv, summary.json and the plot from a saved events.jsonl."""
    from .events.log import fingerprint, read_events
    from .report.files import write_projections

    log = read_events(events)
    scenario = log[0].scenario if log else {}
    info = {"fingerprint": fingerprint(log), "wall-time-s": None, "compile-time-s": None, "sim-speed": None,
            "scenario": scenario}
    summary = write_projections(log, Path(outdir), info, plots=scenario.get("outputs", {}).get("plots", True))
    click.echo(f"replayed {len(log)} events -> {outdir}/ (status {summary['status']}, "
               f"fingerprint {info['fingerprint']})")


if __name__ == "__main__":
    main()
