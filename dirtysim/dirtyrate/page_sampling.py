"""``calc-dirty-rate`` in page-sampling mode (``calculate_dirtyrate_sample_vm``), with QEMU's arithmetic.

Per migratable RAMBlock of at least 128 KiB, ``used_length * sample_pages >> 30``
page indexes drawn uniformly from ``[0, pages - 1)`` (duplicates possible, the
last page never), each hashed before and after the wait; a sample is dirty when
its hash changed. The hash is of the page's *content*: a page written only with
the bytes it already held, or written twice, counts as one page or none, never
as a write. dirtysim's hash is perfect (QEMU's 32-bit xxHash collides with
probability 2^-32 per sample, ignored), and it reads the oracle's record of
content changes, which is what comparing two hashes of a page tells QEMU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..scenario.schema import PAGE_SIZE

MIN_RAMBLOCK_SIZE = 128  # dirtyrate.h; compared as used_length < MIN_RAMBLOCK_SIZE << 10 (bytes: 128 KiB)
PAGES_PER_MIB_SHIFT = 20 - 12  # qemu_target_pages_to_MiB with 4 KiB pages


def skip_sample_ramblock(used_length: int) -> bool:
    """``skip_sample_ramblock``: blocks under 128 KiB are not sampled."""
    return used_length < (MIN_RAMBLOCK_SIZE << 10)


def sample_pages_count(used_length: int, sample_pages_per_gigabytes: int) -> int:
    """``get_ramblock_dirty_info``: samples of a block, truncated to ``unsigned int`` as QEMU stores it."""
    return ((used_length * sample_pages_per_gigabytes) >> 30) & 0xFFFFFFFF


def choose_samples(rng: np.random.Generator, ramblock_pages: int, count: int) -> np.ndarray:
    """``save_ramblock_hash``: ``g_rand_int_range(rand, 0, pages - 1)`` per sample."""
    if ramblock_pages < 2 or count == 0:  # ramblock_pages - 1 == 0: QEMU's range is empty
        return np.zeros(0, dtype=np.int64)
    return rng.integers(0, ramblock_pages - 1, size=count, dtype=np.int64)


def update_dirtyrate(total_dirty_samples: int, total_block_mem_mb: int, total_sample_count: int, msec: int) -> int:
    """``update_dirtyrate``: MiB/s in uint64 arithmetic (multiply first, one division)."""
    return (total_dirty_samples * total_block_mem_mb * 1000) // (total_sample_count * msec)


@dataclass
class BlockSamples:
    """``struct RamblockDirtyInfo`` for one block: which RAM pages were hashed."""

    idstr: str
    first_page: int  # ram_addr page of the block's page 0
    ramblock_pages: int
    vfn: np.ndarray  # sampled page indexes in the block

    def dirty_count(self, modified: np.ndarray) -> int:
        """``calc_page_dirty_rate``: samples whose content changed (a duplicate index counts each time)."""
        r = self.first_page + self.vfn
        return int(((modified[r >> 6] >> (r & 63).astype(np.uint64)) & np.uint64(1)).sum())


def record_samples(blocks, sample_pages_per_gigabytes: int, rng: np.random.Generator) -> list[BlockSamples]:
    """``record_ramblock_hash_info``: pick the samples of every block that is not skipped."""
    out = []
    for block in blocks:
        if skip_sample_ramblock(block.used_length):
            continue
        pages = block.used_length // PAGE_SIZE
        count = sample_pages_count(block.used_length, sample_pages_per_gigabytes)
        out.append(BlockSamples(block.idstr, block.first_page, pages, choose_samples(rng, pages, count)))
    return out


def compare(samples: list[BlockSamples], modified: np.ndarray) -> tuple[int, int, int]:
    """``compare_page_hash_info``: (dirty samples, samples, MiB of the sampled blocks) over all blocks."""
    dirty = sum(s.dirty_count(modified) for s in samples)
    count = sum(len(s.vfn) for s in samples)
    mem_mb = sum(s.ramblock_pages >> PAGES_PER_MIB_SHIFT for s in samples)
    return dirty, count, mem_mb
