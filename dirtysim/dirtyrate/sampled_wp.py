"""Two estimators beyond QEMU's, built on KVM_CLEAR_DIRTY_LOG's mask: write-protect only a sample of pages.

``x-sampled-wp``: after the dirty-rate flag's first sync, CLEAR (re-protect)
one page in ``2^shift`` of each 64-page word group, chosen at random, instead
of all of them; at the end, GET and count the sampled pages written. The
estimate is that count times ``2^shift``: the distinct pages written in the
window, the quantity dirty-bitmap measures, for ``2^-shift`` of its
write-protect faults. Unlike page-sampling it sees rewrites of identical bytes,
which migration has to send again, and its error is the sample's (stratified,
so below a binomial's).

``x-wss-curve``: the same sample, read by a GET at T/8, T/4, T/2 and T (a GET
in manual-protect mode re-protects nothing), gives the curve W(t) of distinct
pages written within t, which is what precopy convergence depends on: each
pass re-sends what was dirtied while the previous one was sent. The last two
points fit the uniform-writer model W(t) = N (1 - exp(-r t / N)) in closed form
(a working set of N pages written at r pages per second), to extrapolate W to
any pass length.

Both need manual dirty-log protection with KVM_DIRTY_LOG_INITIALLY_SET, so
that starting to log protects nothing by itself (otherwise every page faults
once, as in dirty-bitmap).
"""

from __future__ import annotations

import math

import numpy as np

CHECKPOINTS = (8, 4, 2, 1)  # x-wss-curve reads at T/8, T/4, T/2, T


def sample_mask(rng: np.random.Generator, words: int, shift: int) -> np.ndarray:
    """One page at random in every group of ``2^shift`` pages (0 <= shift <= 6): a ram-indexed word mask.

    A word holds ``64 >> shift`` groups; the page of each group is drawn
    independently, so every page is sampled with probability ``2^-shift``.
    """
    group = 1 << shift
    per_word = 64 // group
    picks = rng.integers(0, group, size=(words, per_word), dtype=np.uint64)
    bits = np.uint64(1) << (picks + np.arange(per_word, dtype=np.uint64) * np.uint64(group))
    return np.bitwise_or.reduce(bits, axis=1) if per_word > 1 else bits[:, 0].copy()


def count_sampled(dirty: np.ndarray, mask: np.ndarray) -> int:
    """Sampled pages whose KVM dirty bit is set (what a GET shows of the sample)."""
    return int(np.bitwise_count(dirty & mask).sum())


def fit_uniform(t1: float, w1: float, t2: float, w2: float) -> tuple[float, float]:
    """(N, r) of W(t) = N (1 - exp(-r t / N)) through two points with t2 = 2 t1; N = inf when W grows linearly.

    With a = 1 - exp(-r t1 / N): W1 = N a and W2 = N a (2 - a), so a = 2 - W2/W1.
    """
    if w1 <= 0:
        return 0.0, 0.0
    a = 2.0 - w2 / w1
    if a <= 0.0:  # no saturation seen (or noise): a straight line at the mean rate
        return math.inf, w2 / t2
    if a >= 1.0:  # everything written already by t1
        return w1, math.inf
    n = w1 / a
    return n, -n * math.log1p(-a) / t1


def curve_at(n: float, r: float, t: float) -> float:
    """W(t) of the fitted model."""
    if n <= 0:  # nothing written at the first checkpoint
        return 0.0
    if math.isinf(n):
        return r * t
    if math.isinf(r):
        return n
    return n * -math.expm1(-r * t / n)
