"""A sweep's results: one row per run, as a Parquet file with a fixed, documented schema (``dirtysim.load_sweep``).

The columns of ``COLUMNS`` come first, in this order and with these types, in
every sweep; then one column per swept key (its values as the sweep file writes
them: bool, int64, float64 or, when mixed, with units or beyond int64, string). The Parquet
metadata ``dirtysim.axes`` holds each swept key with its values in the file's order
(``"10Gbit/s"`` sorts after ``"1Gbit/s"`` only by that order) and ``dirtysim.variants``
the variant names, ``dirtysim.dims`` the keys the plots span (``sweepplan.Plan.dims``). README "Sweeps" documents the same table; a test holds them equal.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

# name, Parquet type, meaning (README's table of the sweep schema)
COLUMNS: list[tuple[str, str, str]] = [
    ("key", "string", "the run's key: a hash of the resolved scenario (seed included) and the dirtysim version"),
    ("variant", "string", "the variant's name (null without variants)"),
    ("seed", "int64", "the run's seed"),
    ("status", "string", "query-migrate's status: completed, failed (an error), cancelled (timeout)"),
    ("stop-reason", "string", "completed, timeout, error (null when the worker was lost)"),
    ("converged", "bool", "the migration completed"),
    ("total-time-ms", "int64", "total-time, ms"),
    ("downtime-ms", "int64", "downtime, ms (null unless completed)"),
    ("transferred", "int64", "bytes sent"),
    ("dirty-sync-count", "int64", "bitmap syncs"),
    ("max-cpu-throttle-percentage", "int64", "highest auto-converge throttle"),
    ("guest-run-fraction", "double", "the guest's run fraction during the migration"),
    ("resent-pages", "int64", "pages sent more than once"),
    ("lost-pages", "int64", "pages whose last write the destination never got"),
    ("wrong-semantics", "string", "the deliberately wrong semantics asked for (their losses are expected)"),
    ("write-rate", "int64", "the guest's write rate, bytes/s: every vCPU's workload rate (null with a trace or phases)"),
    ("bandwidth", "int64", "bytes/s migration may use: the link, or max-bandwidth when lower"),
    ("wall-time-s", "double", "wall-clock seconds of the simulation"),
    ("sim-speed", "double", "simulated seconds per wall-clock second"),
    ("fingerprint", "string", "the event log's fingerprint (same scenario and seed, same fingerprint)"),
    ("error", "string", "why the run failed or its worker was lost (null otherwise)"),
    ("failed", "bool", "an error, or pages lost under correct semantics: counted by the exit status"),
    ("version", "string", "the dirtysim version that ran it"),
]
NAMES = [name for name, _, _ in COLUMNS]


def summary_row(summary: dict) -> dict:
    """The columns a run's summary gives."""
    d, ram = summary["dirtysim"], summary["ram"]
    return {
        "status": summary["status"], "stop-reason": d["stop-reason"], "converged": summary["status"] == "completed",
        "total-time-ms": summary["total-time"], "downtime-ms": summary.get("downtime"),
        "transferred": ram["transferred"], "dirty-sync-count": ram["dirty-sync-count"],
        "max-cpu-throttle-percentage": d["max-cpu-throttle-percentage"],
        "guest-run-fraction": d["guest-slowdown"]["run-fraction"], "resent-pages": d["resent-pages"],
        "lost-pages": d["lost-pages"],
    }


def is_failed(row: dict) -> bool:
    """Not run as its scenario intends: an error (or a lost worker), or pages lost under correct semantics."""
    return row["error"] is not None or bool(row["lost-pages"] and not row["wrong-semantics"])


INT64 = range(-(1 << 63), 1 << 63)


def _param_type(values: list) -> str:
    """A swept key's column type; an int beyond int64 (a key without an upper bound) makes it a string."""
    given = [v for v in values if v is not None]
    kinds = {type(v) for v in given}
    if kinds == {bool}:
        return "bool"
    if not kinds or not kinds <= {int, float} or any(type(v) is int and v not in INT64 for v in given):
        return "string"
    return "int64" if kinds == {int} else "double"


def _cell(value: Any, kind: str) -> Any:
    if value is None or kind != "string":
        return value
    return value if isinstance(value, str) else json.dumps(value)


def as_column(values: list) -> list:
    """A swept key's values (``Plan.axes``, ``dirtysim.axes``) as its column holds them (a string column: JSON)."""
    kind = _param_type(values)
    return [_cell(v, kind) for v in values]


def parquet_bytes(rows: list[dict], axes: dict[str, list], variants: list[str], dims: list[str]) -> bytes:
    """The rows as one Parquet file: ``COLUMNS``, then the swept keys (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    params = {key: _param_type(values) for key, values in axes.items()}
    types = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64(), "bool": pa.bool_()}
    fields = [pa.field(name, types[kind]) for name, kind, _ in COLUMNS]
    fields += [pa.field(key, types[kind]) for key, kind in params.items()]
    meta = {"dirtysim.schema-version": str(SCHEMA_VERSION), "dirtysim.axes": json.dumps(axes),
            "dirtysim.variants": json.dumps(variants), "dirtysim.dims": json.dumps(dims)}
    schema = pa.schema(fields, metadata=meta)
    columns = {name: [r.get(name) for r in rows] for name in NAMES}
    columns.update({key: [_cell(r["params"].get(key), kind) for r in rows] for key, kind in params.items()})
    table = pa.Table.from_pydict(columns, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def load(directory: str | Path):
    """``DIR/results.parquet`` as a DataFrame; ``.attrs["axes"]``, ``["variants"]`` and ``["dims"]`` from its
    metadata."""
    try:
        import pandas as pd  # noqa: F401 - pyarrow's to_pandas needs it
    except ImportError:
        raise ImportError("dirtysim.load_sweep needs pandas: pip install 'dirtysim[pandas]'") from None
    import pyarrow.parquet as pq

    table = pq.read_table(Path(directory) / "results.parquet")
    meta = table.schema.metadata or {}
    frame = table.to_pandas()
    frame.attrs["axes"] = json.loads(meta.get(b"dirtysim.axes", b"{}"))
    frame.attrs["variants"] = json.loads(meta.get(b"dirtysim.variants", b"[]"))
    frame.attrs["dims"] = json.loads(meta.get(b"dirtysim.dims", b"[]"))
    return frame
