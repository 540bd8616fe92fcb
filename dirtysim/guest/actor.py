"""Actors that act once per quantum of simulated time until the VM stops."""

from __future__ import annotations

from abc import ABC, abstractmethod

import simpy


class QuantumActor(ABC):
    """A SimPy process calling ``step(quantum_ns)`` every quantum while ``running``."""

    def __init__(self, env: simpy.Environment, quantum_ns: int):
        self.env, self.quantum_ns = env, quantum_ns
        self.running = True

    def stop(self) -> None:
        """The VM stops (``vm_stop``): this actor does nothing from now on."""
        self.running = False

    def run(self):
        while self.running:
            self.step(self.quantum_ns)
            yield self.env.timeout(self.quantum_ns)

    @abstractmethod
    def step(self, quantum_ns: int) -> None:
        """Everything the actor does in the next ``quantum_ns``."""
