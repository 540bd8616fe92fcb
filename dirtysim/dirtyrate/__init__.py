"""Dirty-rate measurement: QEMU's ``calc-dirty-rate`` (``migration/dirtyrate.c``) and its ground truth."""
