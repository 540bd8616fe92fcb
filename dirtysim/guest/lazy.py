"""Actors that act once per quantum but run only when someone needs their effects (the guest, vhost backends).

A SimPy process per quantum costs a Python round trip per simulated
millisecond. Instead, every process that reads or changes what these actors
touch waits through ``Machine.sleep``, which brings them up to the time it wakes
at; their quanta then run in one numba call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class LazyActor(ABC):
    """An actor that acts once per quantum from time 0, applied only when someone needs its effects.

    ``next_t`` is the start of its next quantum. SimPy would order a quantum
    that starts exactly when another process wakes by scheduling order: the
    quantum goes first iff its event was already scheduled when that process
    went to sleep, i.e. iff ``next_t`` then equalled the wake-up time
    (``Machine.sleep`` takes that snapshot).
    """

    quantum_ns: int
    next_t: int = 0
    started: bool = False  # by Machine.start (tests may drive a machine that never starts)
    running: bool = True  # the VM runs (until vm_stop)

    def start(self) -> None:
        """Begin at time 0 with the first quantum (SimPy runs a new process before anything scheduled later)."""
        self.started = True
        self.advance(0, True)

    def stop(self) -> None:
        """The VM stops (``vm_stop``): no further quanta."""
        self.running = False

    def advance(self, until: int, include: bool) -> None:
        """Apply every quantum starting before ``until`` (and at ``until`` if ``include``)."""
        if not (self.started and self.running):
            return
        last = until if include else until - 1
        if self.next_t <= last:
            self.run_quanta((last - self.next_t) // self.quantum_ns + 1)

    @abstractmethod
    def run_quanta(self, n: int) -> None:
        """Apply the next ``n`` quanta (``next_t`` advances by ``n`` quanta)."""
