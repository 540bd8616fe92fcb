"""Several finished runs side by side: one table row each and one overlay figure (``dirtysim compare``, ``sweep``).

Everything here is a function of each run's events and summary, so the table
and the figure are projections like the per-run files. A run is reduced to
its row and, when the overlay is drawn, its curves (``plots.run_curves``) as
soon as it ends: a long comparison does not keep every event log in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from . import tables

COMPARE_FILES = ("compare.csv", "compare.png")
FIELDS = ["name", "status", "stop-reason", "total-time-ms", "downtime-ms", "transferred", "dirty-sync-count",
          "max-cpu-throttle-percentage", "guest-run-fraction", "migration-thread-busy", "multifd-busy", "lost-pages"]


def row(name: str, summary: dict) -> dict:
    """One run's line of compare.csv, from its summary (``guest-run-fraction``: during the migration)."""
    d = summary["dirtysim"]
    return {
        "name": name,
        "status": summary["status"],
        "stop-reason": d["stop-reason"],
        "total-time-ms": summary["total-time"],
        "downtime-ms": summary.get("downtime"),
        "transferred": summary["ram"]["transferred"],
        "dirty-sync-count": summary["ram"]["dirty-sync-count"],
        "max-cpu-throttle-percentage": d["max-cpu-throttle-percentage"],
        "guest-run-fraction": d["guest-slowdown"]["run-fraction"],
        "migration-thread-busy": d.get("migration-thread-busy"),  # absent from summaries before the sending costs
        "multifd-busy": d.get("multifd-busy"),
        "lost-pages": d["lost-pages"],
    }


def duplicate_names(named: Iterable[tuple[str, str]]) -> str | None:
    """The error for two runs of one name ((source, name) pairs), or None: each run is written to DIR/<name>/."""
    seen: dict[str, str] = {}
    for source, name in named:
        if name in seen:
            return (f"{seen[name]} and {source} are both named {name!r}: each run is written to <output>/<name>/, "
                    "so give each scenario its own name (name: ... in the file, or --set name=...)")
        seen[name] = source
    return None


def markdown(rows: list[dict], fields: list[str]) -> str:
    """Rows as a Markdown table (None as '-'), for the terminal and notebooks."""
    head = "| " + " | ".join(fields) + " |"
    sep = "|" + "---|" * len(fields)
    body = ["| " + " | ".join("-" if r[k] is None else str(r[k]) for k in fields) + " |" for r in rows]
    return "\n".join([head, sep, *body])


@dataclass
class Comparison:
    """The rows, and the overlay curves if ``plots``, of the runs added so far (in order)."""

    plots: bool
    rows: list[dict] = field(default_factory=list)
    curves: dict[str, dict] = field(default_factory=dict)

    def add(self, name: str, events: list, summary: dict) -> None:
        """Keep what the table and the figure need of one finished run."""
        self.rows.append(row(name, summary))
        if self.plots:
            from .plots import run_curves

            self.curves[name] = run_curves(events)

    def files(self) -> dict[str, bytes]:
        """compare.csv and, if ``plots``, compare.png (the four overlay panels)."""
        out = {"compare.csv": tables.csv_bytes(self.rows, FIELDS)}
        if self.plots:
            from .plots import compare_figure, figure_png

            out["compare.png"] = figure_png(compare_figure(self.curves))
        return out
