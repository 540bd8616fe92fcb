"""RAMBlocks and the dirty-state layers QEMU keeps in userspace (``include/exec/ramlist.h``, ``system/physmem.c``).

All bitmaps here are indexed by ``ram_addr`` page (QEMU's RAM address space,
in which every RAMBlock occupies ``[offset, offset + max_length)``):

* ``dirty_memory``: ``ram_list.dirty_memory[DIRTY_MEMORY_MIGRATION]`` (L2). QEMU
  splits it into 8 GiB ``DIRTY_MEMORY_BLOCK_SIZE`` blocks for RCU resizing; one
  array is equivalent for the simulation. The VGA and CODE clients are not kept.
* per RAMBlock, ``bmap`` (L3, the migration bitmap) and ``clear_bmap`` (L3', one
  flag per 2^clear_bmap_shift pages) are owned by the migration code.

The page oracle lives here too, as three bits per page (2 bytes per guest page
is the memory budget of a whole run): ``nonzero`` (the source page holds data:
written, or not zero at boot), ``stale`` (the destination's copy is out of date:
never received, or written since it was last sent) and ``received`` (the
destination got it at least once, to count re-sent pages). A write of new data
sets ``nonzero`` and ``stale``; a write of the bytes a page already holds sets
neither; a send clears ``stale`` and sets ``received``. While a dirty-rate
measurement runs, a write window adds two bits per page: written, and content
changed (the ground truth the estimators are judged against).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
    clear_bmap: np.ndarray = field(default=None, repr=False)  # L3', uint8 flag per 2^clear_bitmap_shift pages

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
        self.nonzero = np.zeros(0, dtype=np.uint64)
        self.stale = np.zeros(0, dtype=np.uint64)
        self.received = np.zeros(0, dtype=np.uint64)
        self.window = _CLOSED

    def oracle_args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The arrays every write kernel updates: ``nonzero``, ``stale`` and the write window."""
        return self.nonzero, self.stale, self.window

    def open_window(self) -> None:
        """Start recording pages written and pages whose content changed (ground truth for a measurement).

        Two bits per page while open, none otherwise: the window exists only
        while something measures, so a plain migration pays no memory for it.
        """
        if self.window.shape[1]:
            raise RuntimeError("a write window is already open (one measurement at a time)")
        self.window = np.zeros((2, self.dirty_memory.shape[0]), dtype=np.uint64)

    def close_window(self) -> np.ndarray:
        """Stop recording; the window's rows ``kernels.WIN_WRITTEN`` and ``WIN_MODIFIED``."""
        window, self.window = self.window, _CLOSED
        return window

    def ram_block_add(self, idstr: str, size: int, nonzero: np.ndarray | None = None) -> RAMBlock:
        """``qemu_ram_alloc`` + ``ram_block_add``: new RAM is marked dirty for every client.

        ``nonzero``: the block's initial contents as oracle words (default: all zero pages).
        The destination has none of it yet: every page is stale.
        """
        if size % (BLOCK_ALIGN_PAGES * PAGE_SIZE):
            raise ValueError(f"RAMBlock {idstr!r}: size must be a multiple of {BLOCK_ALIGN_PAGES * PAGE_SIZE} bytes")
        if any(b.idstr == idstr for b in self.blocks):
            raise ValueError(f"RAMBlock {idstr!r} already exists")
        block = RAMBlock(idstr, self.total_pages * PAGE_SIZE, size)
        self._grow(self.total_pages + block.pages)
        self.dirty_memory[block.words] = ~np.uint64(0)
        self.stale[block.words] = ~np.uint64(0)
        if nonzero is not None:
            self.nonzero[block.words] = nonzero
        self.blocks.append(block)
        self.version += 1
        return block

    def ram_block_remove(self, block: RAMBlock) -> None:
        """``qemu_ram_free``: the block leaves the list; its ram_addr range is not reused.

        Its pages no longer exist, so the oracle stops comparing them.
        """
        self.blocks.remove(block)
        self.version += 1
        for bitmap in (self.dirty_memory, self.nonzero, self.stale, self.received):
            bitmap[block.words] = 0

    def _grow(self, pages: int) -> None:
        words = -(-pages // WORD_PAGES)
        self.dirty_memory = grown(self.dirty_memory, words)
        self.nonzero = grown(self.nonzero, words)
        self.stale = grown(self.stale, words)
        self.received = grown(self.received, words)
        if self.window.shape[1]:
            self.window = np.stack([grown(row, words) for row in self.window])
        self.total_pages = pages

    def ram_bytes_total(self) -> int:
        """``ram_bytes_total``: sum of used_length of the (migratable) blocks."""
        return sum(b.used_length for b in self.blocks)


_CLOSED = np.zeros((2, 0), dtype=np.uint64)


def grown(array: np.ndarray, n: int) -> np.ndarray:
    """``array`` extended to ``n`` entries with zeros (unchanged if it is already that long)."""
    if array.shape[0] >= n:
        return array
    out = np.zeros(n, dtype=array.dtype)
    out[: array.shape[0]] = array
    return out
