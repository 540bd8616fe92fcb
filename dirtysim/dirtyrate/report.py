"""``query-dirty-rate`` and the ground truth beside it, folded from a run's events."""

from __future__ import annotations

from ..events import schema as ev
from ..scenario.schema import PAGE_SIZE
from .config import convert_time_unit

MIB = 1 << 20


def _pairs(events: list) -> list[tuple]:
    """Each measurement: its dirty-rate-started event and its dirty-rate-measured event (None while measuring)."""
    out = []
    for e in events:
        if isinstance(e, ev.DirtyRateStarted):
            out.append((e, None))
        elif isinstance(e, ev.DirtyRateMeasured) and out:
            out[-1] = (out[-1][0], e)
    return out


def query_dirty_rate(events: list, calc_time_unit: str = "second") -> dict:
    """``query_dirty_rate_info`` for the last measurement in ``events`` (status unstarted if there is none)."""
    pairs = _pairs(events)
    return _info(*pairs[-1], calc_time_unit) if pairs else {"status": "unstarted"}


def _info(s: ev.DirtyRateStarted, done: ev.DirtyRateMeasured | None, calc_time_unit: str) -> dict:
    calc_ms = done.calc_time_ms if done else s.calc_time_ms
    info = {"status": "measured" if done else "measuring",
            "start-time": done.start_time if done else s.t_ns // 10**9,
            "calc-time": convert_time_unit(calc_ms, "millisecond", calc_time_unit),
            "calc-time-unit": calc_time_unit, "sample-pages": s.sample_pages, "mode": s.mode}
    if done:
        info["dirty-rate"] = done.dirty_rate
        if s.mode != "page-sampling":
            info["sample-pages"] = 0
        if s.mode == "dirty-ring":
            info["vcpu-dirty-rate"] = [{"id": i, "dirty-rate": r} for i, r in enumerate(done.vcpu_dirty_rate)]
        if s.mode.startswith("x-"):  # dirtysim's estimators: what they add to QEMU's answer
            info["x-sample-shift"] = done.sample_shift
            info["x-curve"] = [{"ms": t, "pages": est} for t, est, _ in done.curve]
            if s.mode == "x-wss-curve":
                info["x-wss-pages"], info["x-wss-pages-per-s"] = done.wss_pages, done.wss_rate
    return info


def ground_truth(events: list) -> dict:
    """What the page oracle saw in the last finished measurement's window (``truth``)."""
    done = [m for _, m in _pairs(events) if m is not None]
    return truth(done[-1]) if done else {}


def truth(m: ev.DirtyRateMeasured) -> dict:
    """The window's truth as rates in MiB/s over its calc-time, and what the measurement cost.

    ``written``: distinct pages written (a page written twice counts once,
    identical bytes count). ``content-changed``: distinct pages whose content
    changed, what a perfect page-sampling converges to. ``write``: every page
    write of the vCPUs, repeats included (devices not counted).
    """
    seconds = m.calc_time_ms / 1000

    def rate(pages: int) -> float:
        return round(pages * PAGE_SIZE / MIB / seconds, 3)

    return {"written-pages": m.written_pages, "content-changed-pages": m.modified_pages,
            "guest-writes": m.guest_writes, "written-rate": rate(m.written_pages),
            "content-changed-rate": rate(m.modified_pages), "write-rate": rate(m.guest_writes),
            "dirty-samples": m.dirty_samples, "sample-count": m.sample_count, "dirty-pages": m.dirty_pages,
            "thread-ms": m.thread_ns / 1e6, "guest-faults": m.guest_faults, "guest-fault-ms": m.guest_fault_ns / 1e6,
            **({"curve": [{"ms": t, "written-pages": true} for t, _, true in m.curve]} if m.curve else {})}


def migration_rate(events: list, start_ns: int, end_ns: int) -> float | None:
    """What a running migration saw over a window: the mean ``dirty-pages-rate`` (MiB/s) of the sync periods
    that closed inside it (``migration_update_rates``), or None when no migration closed a period there."""
    rates = [e.dirty_pages_rate for e in events if isinstance(e, ev.BitmapSync) and e.period_closed
             and start_ns <= e.t_ns <= end_ns]
    return round(sum(rates) / len(rates) * PAGE_SIZE / MIB, 3) if rates else None


def measurements(events: list) -> list[dict]:
    """Every measurement of a run: ``query-dirty-rate`` as QEMU would answer it, and the truth beside it.

    During a migration the truth also holds the rate the migration itself saw in the window.
    """
    out = []
    for s, m in _pairs(events):
        t = truth(m) if m else None
        if t is not None:
            t["migration-rate"] = migration_rate(events, s.t_ns, m.t_ns)
        out.append({"at-ms": s.t_ns / 1e6, "query-dirty-rate": _info(s, m, "second"), "truth": t})
    return out
