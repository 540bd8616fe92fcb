"""Postcopy's destination statistics from the ``postcopy-fault`` events (``migration/postcopy-ram.c``).

``mark_postcopy_blocktime_begin`` / ``_end`` and
``fill_destination_postcopy_migration_info`` as of QEMU 10.1 ("Blocktime
tracking overhaul"), replayed over the faults' begin and end times. All times
are ns; QEMU reports blocktimes in ms (uint32) and latencies in ns.
"""

from __future__ import annotations

from collections import defaultdict

BLOCKTIME_LATENCY_BUCKET_N = 24  # bucket N counts faults resolved within [2^N, 2^(N+1)) us
NS_PER_MS, NS_PER_US = 10**6, 1000
LATENCY_FIELDS = ["bucket", "from-us", "to-us", "faults"]


def latency_bucket(ns: int) -> int:
    """``blocktime_latency_account``: floor(log2(us)), 0 for 0 us, the last bucket for anything longer."""
    us = ns // NS_PER_US
    return min(us.bit_length() - 1 if us else 0, BLOCKTIME_LATENCY_BUCKET_N - 1)


def destination_info(faults: list[tuple[int, int, int, int]], nvcpus: int) -> dict:
    """query-migrate on the destination with postcopy-blocktime: ``faults`` = (vcpu, page, fault ns, resolved ns).

    Begin: a vCPU's first outstanding fault counts it down and sets
    ``last_begin``. End (one placement wakes every fault on its page): each
    fault's wait goes to its latency bucket and, once its vCPU has no fault
    left, to that vCPU's blocktime; if every vCPU was down, the system
    blocktime grows by ``now - last_begin``: only time when all vCPUs are
    blocked counts. Ends sort before begins at the same time (the intervals
    are half-open: a vCPU woken at t is not blocked at t).
    """
    ends: dict[tuple[int, int], list] = defaultdict(list)  # one placement: (time, page) -> its faults
    count = [0] * nvcpus
    points = []
    for v, page, t0, t1 in faults:
        count[v] += 1
        ends[(t1, page)].append((v, t0))
        points.append((t0, 1, v))
        points.append((t1, 0, page))
    points.sort()
    current, vcpu_total = [0] * nvcpus, [0] * nvcpus
    buckets = [0] * BLOCKTIME_LATENCY_BUCKET_N
    down = last_begin = total = 0
    for t, begin, key in points:
        if begin:  # mark_postcopy_blocktime_begin
            current[key] += 1
            if current[key] == 1:
                down += 1
                last_begin = t
            continue
        group = ends.pop((t, key), None)  # mark_postcopy_blocktime_end, once per placement
        if group is None:
            continue
        affected = 0
        for cpu, start in group:  # blocktime_cpu_list_iter_fn
            buckets[latency_bucket(t - start)] += 1
            current[cpu] -= 1
            if current[cpu] == 0:
                vcpu_total[cpu] += t - start
                affected += 1
        if down == nvcpus and affected:
            total += t - last_begin
        down -= affected
    nfaults = sum(count)
    return {
        "postcopy-blocktime": total // NS_PER_MS % (1 << 32),
        "postcopy-vcpu-blocktime": [x // NS_PER_MS % (1 << 32) for x in vcpu_total],
        "postcopy-latency": sum(vcpu_total) // nfaults if nfaults else 0,
        "postcopy-vcpu-latency": [x // c if c else 0 for x, c in zip(vcpu_total, count)],
        "postcopy-latency-dist": buckets,
        "postcopy-non-vcpu-latency": 0,  # no non-vCPU faults are modelled
    }


def latency_rows(dist: list[int]) -> list[dict]:
    """postcopy-latency.csv: the latency distribution, one row per bucket [2^N, 2^(N+1)) us."""
    return [{"bucket": n, "from-us": 1 << n, "to-us": 1 << (n + 1), "faults": c} for n, c in enumerate(dist)]


def postcopy_latency_rows(f) -> list[dict] | None:
    """postcopy-latency.csv of a finished fold (``tables._Fold``), or None if the run never switched to postcopy.

    Written whether or not postcopy-blocktime is on: it is dirtysim's table; the
    summary shows QEMU's ``postcopy-latency-dist`` only with the capability.
    """
    if f.postcopy_ns is None:
        return None
    return latency_rows(destination_info([x[:4] for x in f.faults], f.nvcpus)["postcopy-latency-dist"])
