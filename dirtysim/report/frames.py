"""A run's output directory as pandas DataFrames (``dirtysim.load``); pandas is the optional extra ``[pandas]``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RunTables:
    """The tables of one run: ``rounds``, ``vcpus`` and ``guest`` (the CSV files; ``guest`` is empty for a
    directory written before guest.csv existed), ``summary`` (one row, nested keys joined with dots, as
    ``ram.transferred``) and ``events`` (one row per event of the checked log, its payload fields as columns;
    ``type`` names the event)."""

    rounds: Any
    vcpus: Any
    guest: Any
    summary: Any
    events: Any


def load(directory: str | Path) -> RunTables:
    """Read the files ``dirtysim run`` wrote to ``directory``; the event log is checked as ``replay`` checks it."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("dirtysim.load needs pandas: pip install 'dirtysim[pandas]'") from None
    import msgspec

    from ..events.replay import read_log
    from .tables import GUEST_FIELDS

    d = Path(directory)
    _, events = read_log(d / "events.jsonl")
    summary = pd.json_normalize(json.loads((d / "summary.json").read_text()), max_level=1)
    rows = [{"type": e.__struct_config__.tag, **msgspec.structs.asdict(e)} for e in events]
    guest = pd.read_csv(d / "guest.csv") if (d / "guest.csv").exists() else pd.DataFrame(columns=GUEST_FIELDS)
    return RunTables(rounds=pd.read_csv(d / "rounds.csv"), vcpus=pd.read_csv(d / "vcpus.csv"), guest=guest,
                     summary=summary, events=pd.DataFrame(rows))
