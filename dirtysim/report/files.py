"""Write a run's outputs atomically (temp file + rename), so a reader never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..events.log import encode_lines
from ..scenario.load import resolved_to_file
from . import tables


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def write_projections(events: list, outdir: Path, run_info: dict, plots: bool) -> dict:
    """rounds.csv, vcpus.csv, summary.json (with ``run_info`` merged into ``dirtysim``) and the plot."""
    summary = tables.summary(events)
    summary["dirtysim"].update(run_info, scenario=resolved_to_file(run_info.get("scenario", {})))
    write_atomic(outdir / "rounds.csv", tables.csv_bytes(tables.rounds(events)))
    write_atomic(outdir / "vcpus.csv", tables.csv_bytes(tables.vcpu_rounds(events), tables.VCPU_FIELDS))
    write_atomic(outdir / "summary.json", json_bytes(summary))
    if plots:
        from .plots import convergence_figure, save_figure

        save_figure(convergence_figure(events), outdir / "convergence.png")
    return summary


def write_run(result, outdir: Path) -> dict:
    """Every file of a run. Called for failed runs too: the summary then carries the error."""
    write_atomic(outdir / "events.jsonl", encode_lines(result.events))
    info = {
        "fingerprint": result.fingerprint,
        "wall-time-s": round(result.wall_time_s, 3),
        "compile-time-s": round(result.compile_time_s, 3),
        "sim-speed": round(result.sim_speed, 3),
        "scenario": result.scenario.model_dump(mode="json"),
    }
    plots = result.scenario.outputs.plots and result.error is None
    return write_projections(result.events, outdir, info, plots)
