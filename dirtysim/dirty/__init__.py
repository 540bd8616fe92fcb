"""Dirty state (bitmaps over uint64 words, RAMBlocks) and the numba kernels that move it."""
