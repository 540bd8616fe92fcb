"""dirtysim: an event-sourced simulator of QEMU/KVM dirty-page tracking during live migration."""

from __future__ import annotations

__version__ = "0.1.0"


def load(directory):
    """The tables of a run directory as pandas DataFrames (needs the ``[pandas]`` extra): see ``report.frames``."""
    from .report.frames import load as _load

    return _load(directory)


def load_sweep(directory):
    """A sweep's ``results.parquet`` as a pandas DataFrame (needs the ``[pandas]`` extra): see ``report.sweepdata``."""
    from .report.sweepdata import load as _load

    return _load(directory)
