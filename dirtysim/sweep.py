"""Run one scenario under named variants (each a set of ``--set`` overrides) and compare them.

Like guestperf's comparisons: the same guest and workload, one knob changed per
variant, one row per variant with the figures a QEMU engineer compares. Runs are
local and sequential (``dirtysim sweep SCENARIO VARIANTS``); a SWEEP.yaml with
axes, seeds and parallel or Dask runs is ``sweepplan`` and ``sweeprun``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import yaml

from .report import compare
from .report.files import OutputError, child, write_atomic, write_run
from .report.tables import csv_bytes
from .scenario.load import ScenarioError, load_scenario, read_yaml
from .sim import run

MIB = 1 << 20
COMPARE_FIELDS = [
    "variant", "status", "total-time", "downtime", "dirty-sync-count", "transferred-mib", "resent-pages",
    "write-not-dirty-pages", "vcpu-faults", "vcpu-lost-ms", "ring-full-exits", "vhost-logged-pages",
    "thread-ioctl-ms", "migration-thread-busy", "multifd-busy", "lost-pages", "first-lost-ms", "wrong-semantics",
]


class Variants(dict):
    """name -> overrides, where each variant is written (``FILE:LINE``) for the errors that name it, and its
    ``mapping`` {key.path: value} as the file gives it (what ``sweepplan`` takes, not the texts parsed back)."""

    def __init__(self, items: dict[str, list[str]], where: dict[str, str], mapping: dict[str, dict]):
        super().__init__(items)
        self.where = where
        self.mapping = mapping


def load_variants(path: str | Path) -> Variants:
    """``variants: {name: {key.path: value, ...}}`` -> {name: ["key.path=value", ...]}."""
    data, lines = read_yaml(path)  # bounded, UTF-8 only, as scenario files
    data = data or {}
    variants = data.get("variants") if isinstance(data, dict) else None
    if not isinstance(variants, dict) or not variants:
        raise ScenarioError([f"{path}:1: variants: expected a mapping of variant names to overrides"])
    out = {}
    for name, over in variants.items():
        try:
            child(Path("out"), str(name), "variant")  # each variant's files go to OUT/<variant>/
        except OutputError as exc:
            raise ScenarioError([f"{path}: variants.{name}: {exc}"]) from None
        if not isinstance(over, dict):
            raise ScenarioError([f"{path}: variants.{name}: expected a mapping of key.path: value (got {over!r})"])
        out[str(name)] = [f"{k}={yaml_value(v)}" for k, v in over.items()]
    where = {str(name): f"{path}:{lines.get(('variants', name), 1)}" for name in variants}
    return Variants(out, where, {str(name): over for name, over in variants.items()})


def yaml_value(value) -> str:
    """A value as a ``--set`` takes it (YAML flow style)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def comparison_row(name: str, summary: dict, wrong: list[str] = ()) -> dict:
    """One variant's line; ``wrong``: the deliberately wrong semantics it asks for (its losses are expected)."""
    d, ram = summary["dirtysim"], summary["ram"]
    return {
        "variant": name,
        "status": summary["status"],
        "total-time": summary["total-time"],
        "downtime": summary.get("downtime"),
        "dirty-sync-count": ram["dirty-sync-count"],
        "transferred-mib": round(ram["transferred"] / MIB, 1),
        "resent-pages": d["resent-pages"],
        "write-not-dirty-pages": d["write-not-dirty-pages"],
        "vcpu-faults": d["vcpu-faults"],
        # what tracking costs the vCPUs: write-protect faults, ring-full and PML-full exits, BQL waits
        "vcpu-lost-ms": round(d["vcpu-fault-ms"] + d["vcpu-ring-full-ms"] + d["vcpu-pml-full-ms"]
                              + d["vcpu-bql-wait-ms"], 1),
        "ring-full-exits": d["ring-full-exits"],
        "vhost-logged-pages": d["vhost-logged-pages"],
        "thread-ioctl-ms": d["thread-ioctl-ms"],
        "migration-thread-busy": d["migration-thread-busy"],
        "multifd-busy": d["multifd-busy"],
        "lost-pages": d["lost-pages"],
        "first-lost-ms": d["first-lost-ms"],
        "wrong-semantics": ", ".join(wrong),
    }


def failures(rows: list[dict]) -> list[str]:
    """Variants that did not run as their scenario intends: an error, or pages lost under correct semantics."""
    return [r["variant"] for r in rows
            if r["status"] == "failed" or (r["lost-pages"] and not r["wrong-semantics"])]


def run_variants(scenario_file: str | Path, variants: dict[str, list[str]], outdir: Path | None = None,
                 common: Iterable[str] = ()) -> list[dict]:
    """Validate every variant first (bad input fails before anything runs), then run them in order.

    With ``outdir``: also comparison.csv (these rows) and ``dirtysim compare``'s
    compare.csv and compare.png across the variants (the figure if any variant
    draws plots). Each variant's own figure is titled "<scenario> / <variant>".
    """
    scenarios = {name: _load_variant(scenario_file, variants, name, common) for name in variants}
    rows = []
    overlay = compare.Comparison(plots=outdir is not None and any(s.outputs.plots for s in scenarios.values()))
    for name, scenario in scenarios.items():
        result = run(scenario, progress=False)
        out = child(outdir or Path("out") / f"{scenario.name}-sweep", name, "variant")
        summary = write_run(result, out, title=f"{scenario.name} / {name}")
        rows.append(comparison_row(name, summary, scenario.dirty_tracking.wrong_semantics()))
        overlay.add(name, result.events, summary)
        if result.stop_reason == "interrupted":  # Ctrl-C stops the sweep, not only this variant
            raise KeyboardInterrupt
    if outdir is not None:
        write_atomic(outdir / "comparison.csv", csv_bytes(rows, COMPARE_FIELDS))
        files = overlay.files()
        for file_name in compare.COMPARE_FILES:  # an earlier sweep's figure goes when this one draws none
            if file_name in files:
                write_atomic(outdir / file_name, files[file_name])
            else:
                (outdir / file_name).unlink(missing_ok=True)
    return rows


def _load_variant(scenario_file: str | Path, variants: dict[str, list[str]], name: str, common: Iterable[str]):
    """The variant's scenario; a bad value is reported with the variant and where it is written."""
    try:
        return load_scenario(scenario_file, [*common, *variants[name]])
    except ScenarioError as exc:
        where = getattr(variants, "where", {}).get(name)
        prefix = f"{where}: variants.{name}: " if where else f"variants.{name}: "
        raise ScenarioError([prefix + line for line in exc.lines]) from None


def markdown(rows: list[dict]) -> str:
    """The sweep's comparison rows as a Markdown table."""
    return compare.markdown(rows, COMPARE_FIELDS)
