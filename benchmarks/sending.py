"""Where one migration thread saturates and what multifd channels buy: scenarios/multifd.yaml over link speeds.

Not a test: deterministic simulations (the same command gives the same table),
written to benchmarks/sending/multifd.csv and multifd.md; README quotes the table.
Run: .venv/bin/python benchmarks/sending.py [--output DIR]
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, table, write_text  # noqa: E402
from dirtysim.report.tables import summary  # noqa: E402
from dirtysim.scenario.load import load_scenario  # noqa: E402
from dirtysim.sim import run  # noqa: E402

SCENARIO = ROOT / "scenarios" / "multifd.yaml"
LINKS = ("10Gbit/s", "25Gbit/s", "100Gbit/s")
SENDERS = {"one thread": ["migration.capabilities.multifd=false"],
           **{f"multifd x{n}": [f"migration.multifd_channels={n}"] for n in (1, 2, 4, 8)}}
FIELDS = ["link", "sender", "status", "total-time-ms", "downtime-ms", "mbps", "migration-thread-busy",
          "multifd-busy", "transferred-mib", "lost-pages"]


def measure() -> list[dict]:
    rows = []
    for link in LINKS:
        for sender, over in SENDERS.items():
            res = run(load_scenario(SCENARIO, [f"network.bandwidth={link}", *over]), progress=False)
            if res.error:
                raise RuntimeError(f"{link} {sender}: {res.error}")
            s = summary(res.events)
            d = s["dirtysim"]
            rows.append({"link": link, "sender": sender, "status": s["status"], "total-time-ms": s["total-time"],
                         "downtime-ms": s.get("downtime"), "mbps": round(s["ram"]["mbps"]),
                         "migration-thread-busy": d["migration-thread-busy"], "multifd-busy": d["multifd-busy"],
                         "transferred-mib": round(s["ram"]["transferred"] / (1 << 20), 1),
                         "lost-pages": d["lost-pages"]})
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "sending")
    args = ap.parse_args(argv)
    rows = measure()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    args.output.mkdir(parents=True, exist_ok=True)
    write_text(args.output, "multifd.csv", buf.getvalue())
    md = table(FIELDS, [[r[k] for k in FIELDS] for r in rows])
    write_text(args.output, "multifd.md", md + "\n")
    print(md)


if __name__ == "__main__":
    main()
