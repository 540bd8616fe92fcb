"""The error a broken invariant of the model raises instead of spinning forever.

QEMU's loops that wait for a count to reach zero (``ram_find_and_save_block``
until ``migration_dirty_pages`` is 0, ``migration_thread`` until it completes)
trust the count and the bitmap to agree. Here a disagreement (a bug in a rule)
ends the run with this error: ``sim.run`` records it as the run's error, the
summary carries it as ``error-desc`` and the command line exits 1.
"""

from __future__ import annotations


class BrokenInvariant(RuntimeError):
    """The model reached a state QEMU's invariants exclude; the run stops with this message."""


def dirty_count_mismatch(dirty_pages: int) -> BrokenInvariant:
    """A whole pass over the RAMBlocks found no dirty page although ``migration_dirty_pages`` is not 0."""
    return BrokenInvariant(f"migration_dirty_pages is {dirty_pages} but a whole pass over the RAMBlocks found no "
                           "dirty page: the dirty count and the bitmaps disagree")
