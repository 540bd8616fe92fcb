"""Every estimator on the same guest, each beside the truth of its own window: the rows of a comparison."""

from __future__ import annotations

from ..events import schema as ev
from ..scenario.schema import Scenario
from .config import DirtyRateConfig, tracking_flags
from .report import truth

TRUTHS = ("written-rate", "content-changed-rate", "write-rate")


def compare_estimators(scenario: Scenario, modes: list[str], calc_time_ms: int = 1000, start_ns: int = 10**9,
                       label: str = "") -> list[dict]:
    """One standalone measurement per mode (same scenario and seed, so the same guest), as table rows.

    Each row: the estimate (MiB/s), the three truths over its window, the
    estimate's relative error against each, and the guest's fault time.
    Modes the scenario cannot run (dirty-ring without a ring, ...) are skipped.
    """
    from ..sim import run_dirtyrate

    rows = []
    for mode in modes:
        try:
            config = DirtyRateConfig.from_qmp(calc_time_ms, "millisecond", mode=mode, **tracking_flags(scenario))
        except ValueError:
            continue
        result = run_dirtyrate(scenario, config, start_ns, progress=False)
        if result.error:
            raise RuntimeError(f"{label or scenario.name}, {mode}: {result.error}")
        (m,) = [e for e in result.events if isinstance(e, ev.DirtyRateMeasured)]
        t = truth(m)
        row = {"workload": label or scenario.name, "mode": mode, "estimate": m.dirty_rate,
               **{k: t[k] for k in TRUTHS}, "guest-fault-ms": t["guest-fault-ms"], "thread-ms": t["thread-ms"]}
        for k in TRUTHS:
            row[f"error-vs-{k.removesuffix('-rate')}"] = round((m.dirty_rate - t[k]) / t[k], 4) if t[k] else None
        if len(m.curve) > 1:  # x-wss-curve: the fitted working-set model
            row.update({"wss-pages": m.wss_pages, "wss-rate": m.wss_rate})
        rows.append(row)
    return rows
