"""guest.csv's source: each vCPU's time in the guest and page writes, sampled at a fixed interval.

guestperf's "memory update speed" view: what throttling, faults, ring-full exits
and memslot updates cost the guest, over time and after the last sync too.
"""

from __future__ import annotations

import numpy as np

from ..events import schema as ev


class GuestSampler:
    """Emits a ``GuestSample`` every ``interval_ns`` of simulated time while the VM runs, and one at the end.

    A sample covers the guest quanta applied since the previous one; a vCPU
    ran for that time less what it served outside the guest (all it was charged
    minus what it still owes), so ``ran_ns <= interval_ns`` holds exactly. The
    sleeps too are counted as served, not as charged: a 2 s dirty-limit sleep
    spreads over the 20 samples it lasts.
    """

    def __init__(self, env, guest, recorder, interval_ns: int):
        self.env, self.guest, self.rec, self.interval_ns = env, guest, recorder, interval_ns
        self._last = self._read()

    def _read(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        g = self.guest
        return (g.next_t, g.out_of_guest_ns(), g.totals("writes"), g.slept_ns("throttle_ns"), g.slept_ns("dirtylimit_ns"))

    def run(self, sleep):
        """The sampling process (``sleep`` is ``Machine.sleep``, which brings the guest up to date)."""
        while self.guest.running:
            yield from sleep(self.interval_ns)
            self.sample()

    def sample(self) -> None:
        """One sample of what happened since the previous one (none if no guest quantum ran since)."""
        now = self._read()
        t0, out0, w0, th0, dl0 = self._last
        t1, out1, w1, th1, dl1 = now
        if t1 == t0:
            return
        self._last = now
        self.rec.emit(ev.GuestSample, interval_ns=t1 - t0, ran_ns=((t1 - t0) - (out1 - out0)).tolist(),
                      writes=(w1 - w0).tolist(), throttle_ns=(th1 - th0).tolist(), dirtylimit_ns=(dl1 - dl0).tolist())
