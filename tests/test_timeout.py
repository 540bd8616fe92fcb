"""``migration.timeout`` is a deadline: the thread is cancelled at start + timeout, whatever it waits on.

guestperf cancels the migration at ``max_time``; a wait that would end later
(a slow link carrying one header, a rate-limit sleep) is cut at the deadline.
"""

from __future__ import annotations

import pytest

from builders import NO_COSTS, of, simulate
from dirtysim.events import schema as ev

pytestmark = pytest.mark.rules

GUEST = {"memory": {"size": "64MiB", "zero_fraction": 0.0},
         "vcpus": [{"count": 1, "workload": {"kind": "hotset", "rate": "16MiB/s", "hot": "8MiB", "hot_share": 0.5}}]}


@pytest.mark.parametrize("bandwidth,max_bandwidth", [("1B/s", "1GiB/s"), ("10Gbit/s", "8MiB/s")])
def test_the_run_is_cancelled_at_the_deadline(bandwidth, max_bandwidth):
    result = simulate(machine=GUEST, costs=NO_COSTS, network={"bandwidth": bandwidth},
                      migration={"max_bandwidth": max_bandwidth, "start_at": "100ms", "timeout": "2s"})
    status = of(result.events, ev.MigrationStatus)
    assert result.stop_reason == "timeout" and status[-1].status == "cancelled"
    assert status[-1].t_ns == 2_100_000_000  # start_at + timeout, not the end of the wait it fell into


def test_a_one_byte_per_second_link_sends_nothing_before_the_deadline():
    """The setup header alone (31 bytes) takes 31 s at 1 B/s: it is never counted as transferred."""
    result = simulate(machine=GUEST, costs=NO_COSTS, network={"bandwidth": "1B/s"},
                      migration={"start_at": "100ms", "timeout": "5s"})
    assert of(result.events, ev.Transfer) == [] and result.stop_reason == "timeout"


def test_a_wait_that_ends_exactly_at_the_deadline_completes():
    """The setup (61 bytes: ram_save_setup's 31-byte header, the file header and the "ram" section's START header
    and footer) at 1 B/s ends at start + 61 s: with a 61 s timeout it is sent, then cancelled."""
    result = simulate(machine=GUEST, costs=NO_COSTS, network={"bandwidth": "1B/s"},
                      migration={"start_at": "100ms", "timeout": "61s"})
    (header,) = of(result.events, ev.Transfer)
    assert (header.kind, header.bytes, header.t_ns) == ("setup", 61, 61_100_000_000)
    assert result.stop_reason == "timeout" and of(result.events, ev.MigrationStatus)[-1].t_ns == 61_100_000_000
