"""Per-module mutation score from ``mutmut results --all true``; writes benchmarks/mutation/results.txt.

Usage (from the repository root, after ``mutmut run``)::

    .venv/bin/python benchmarks/mutation/score.py            # runs ``mutmut results --all true`` itself
    .venv/bin/mutmut results --all true | python benchmarks/mutation/score.py -   # or reads it from stdin

score = killed / (mutants - no tests - not checked - skipped): a timeout (a hang), a
survivor or a suspicious result all count against the module. Survivors and
timeouts are listed under the table, each to be argued in README.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

OUT = Path(__file__).with_name("results.txt")
LINE = re.compile(r"^\s*(?P<name>\S+__mutmut_\d+): (?P<status>.+?)\s*$")
MODULE = re.compile(r"^(?P<module>.+?)\.x[ǁ_]")
UNCOUNTED = {"no tests", "not checked", "skipped"}
LISTED = ("survived", "timeout", "suspicious", "segfault")


def parse(text: str) -> dict[str, Counter]:
    """Mutant lines -> per module: a Counter of statuses, plus the survivor and timeout names."""
    modules: dict[str, Counter] = defaultdict(Counter)
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            module = MODULE.match(m["name"])["module"]
            modules[module][m["status"]] += 1
            if m["status"] in LISTED:
                modules[module]["names:" + m["status"] + ":" + m["name"]] += 1
    return modules


def report(modules: dict[str, Counter]) -> str:
    rows = [f"{'module':36} {'mutants':>7} {'killed':>6} {'survived':>8} {'timeout':>7} {'no tests':>8} "
            f"{'other':>5} {'score':>7}"]
    listed = []
    for module in sorted(modules):
        c = modules[module]
        statuses = {k: v for k, v in c.items() if not k.startswith("names:")}
        total = sum(statuses.values())
        counted = total - sum(statuses.get(s, 0) for s in UNCOUNTED)
        if counted == 0:
            continue  # not part of this run
        killed = statuses.get("killed", 0) + statuses.get("caught by type check", 0)
        other = counted - killed - statuses.get("survived", 0) - statuses.get("timeout", 0)
        rows.append(f"{module:36} {total:7} {killed:6} {statuses.get('survived', 0):8} "
                    f"{statuses.get('timeout', 0):7} {statuses.get('no tests', 0):8} {other:5} "
                    f"{100 * killed / counted:6.1f}%")
        listed += sorted(k.split(":", 2)[2] + f" ({k.split(':')[1]})" for k in c if k.startswith("names:"))
    return "\n".join(rows + ["", "Not killed (argued in README.md):"] + [f"  {n}" for n in listed]) + "\n"


def main(argv: list[str]) -> int:
    if argv[1:] == ["-"]:
        text = sys.stdin.read()
    else:
        mutmut = Path(sys.executable).with_name("mutmut")
        text = subprocess.run([str(mutmut), "results", "--all", "true"], check=True, capture_output=True,
                              text=True).stdout
    out = report(parse(text))
    OUT.write_text(out)
    print(out, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
