"""RAMBlocks and the dirty-state layers QEMU keeps in userspace (reference §1).

All bitmaps here are indexed by ``ram_addr`` page (QEMU's RAM address space,
in which every RAMBlock occupies ``[offset, offset + max_length)``):

* ``dirty_memory``: ``ram_list.dirty_memory[DIRTY_MEMORY_MIGRATION]`` (L2). QEMU
  splits it into 8 GiB ``DIRTY_MEMORY_BLOCK_SIZE`` blocks for RCU resizing; one
  array is equivalent for the simulation. The VGA and CODE clients are not kept.
* per RAMBlock, ``bmap`` (L3, the migration bitmap) and ``clear_bmap`` (L3', one
  flag per 2^clear_bmap_shift pages) are owned by the migration code.

The page oracle lives here too: ``src_gen`` is the write generation of each
source page (0 = never written and zero), ``dst_gen`` what the destination holds
(``UNSENT`` until the page is first received).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..dirty.kernels import UNSENT
from ..scenario.schema import PAGE_SIZE

WORD_PAGES = 64
BLOCK_ALIGN_PAGES = 64  # blocks start on a bitmap word so the sync takes the fast path


@dataclass(eq=False)
class RAMBlock:
    idstr: str
    offset: int  # ram_addr of the first byte
    used_length: int
    mr: object = None  # the MemoryRegion that owns it
    bmap: np.ndarray = field(default=None, repr=False)  # L3, words over the block's pages
    clear_bmap: np.ndarray = field(default=None, repr=False)  # L3', uint8 flag per chunk
    clear_bmap_shift: int = 0

    @property
    def pages(self) -> int:
        return self.used_length // PAGE_SIZE

    @property
    def first_page(self) -> int:
        return self.offset // PAGE_SIZE

    @property
    def words(self) -> slice:
        """The block's slice of any ram_addr-indexed word bitmap."""
        first = self.first_page // WORD_PAGES
        return slice(first, first + -(-self.pages // WORD_PAGES))


class RAMList:
    """``ram_list``: the blocks, global dirty memory (L2) and the page oracle."""

    def __init__(self):
        self.blocks: list[RAMBlock] = []
        self.version = 0  # bumped on every block-list change (ram_state_reset on mismatch)
        self.total_pages = 0
        self.dirty_memory = np.zeros(0, dtype=np.uint64)
        self.src_gen = np.zeros(0, dtype=np.uint32)
        self.dst_gen = np.zeros(0, dtype=np.uint32)

    def ram_block_add(self, idstr: str, size: int, initial_gen: np.ndarray | None = None) -> RAMBlock:
        """``qemu_ram_alloc`` + ``ram_block_add``: new RAM is marked dirty for every client."""
        if size % (BLOCK_ALIGN_PAGES * PAGE_SIZE):
            raise ValueError(f"RAMBlock {idstr!r}: size must be a multiple of {BLOCK_ALIGN_PAGES * PAGE_SIZE} bytes")
        if any(b.idstr == idstr for b in self.blocks):
            raise ValueError(f"RAMBlock {idstr!r} already exists")
        block = RAMBlock(idstr, self.total_pages * PAGE_SIZE, size)
        self._grow(self.total_pages + block.pages)
        self.dirty_memory[block.words] = ~np.uint64(0)
        if initial_gen is not None:
            self.src_gen[block.first_page : block.first_page + block.pages] = initial_gen
        self.blocks.append(block)
        self.version += 1
        return block

    def ram_block_remove(self, block: RAMBlock) -> None:
        """``qemu_ram_free``: the block leaves the list; its ram_addr range is not reused.

        Its pages no longer exist, so the oracle stops comparing them.
        """
        self.blocks.remove(block)
        self.version += 1
        pages = slice(block.first_page, block.first_page + block.pages)
        self.src_gen[pages] = 0
        self.dst_gen[pages] = 0
        self.dirty_memory[block.words] = 0

    def _grow(self, pages: int) -> None:
        words = -(-pages // WORD_PAGES)
        self.dirty_memory = grown(self.dirty_memory, words)
        self.src_gen = grown(self.src_gen, pages)
        self.dst_gen = grown(self.dst_gen, pages, UNSENT)
        self.total_pages = pages

    def ram_bytes_total(self) -> int:
        """``ram_bytes_total``: sum of used_length of the (migratable) blocks."""
        return sum(b.used_length for b in self.blocks)


def grown(array: np.ndarray, n: int, fill=0) -> np.ndarray:
    """``array`` extended to ``n`` entries with ``fill`` (unchanged if it is already that long)."""
    if array.shape[0] >= n:
        return array
    out = np.full(n, fill, dtype=array.dtype)
    out[: array.shape[0]] = array
    return out
