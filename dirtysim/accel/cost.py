"""Time spent inside listener hooks (ioctls), charged to whichever thread called them."""


class CostMeter:
    """Listeners add the simulated cost of what they did; the calling thread drains it and waits."""

    def __init__(self):
        self._ns = 0

    def add(self, ns: int) -> None:
        self._ns += int(ns)

    def idle(self) -> bool:
        """Nothing charged since the last drain."""
        return self._ns == 0

    def drain(self) -> int:
        ns, self._ns = self._ns, 0
        return ns
