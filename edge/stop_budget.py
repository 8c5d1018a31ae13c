"""How long a stop may take, derived in one place.

systemd kills the daemon TimeoutStopSec after SIGTERM. Everything the stop waits for must fit
inside it, or a slow drain ends in SIGKILL with rejects neither published nor in the outbox.
tests/test_systemd.py reads the unit files and checks `total_s` against their TimeoutStopSec.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StopBudget:
    # Every captured part inspected and published.
    drain_s: float = 20.0
    # After a timed-out drain: how long the publisher waits for the capture thread's last part,
    # then for the answers of the parts the drain left (one grace each).
    flush_grace_s: float = 2.5
    # Rejects still in the outbox may wait this long for the broker (a reconnect included)
    # before they are left on disk for the next start.
    outbox_s: float = 10.0
    # A stop during a bundle reload waits this long for the loading bundles, to close them.
    reload_join_s: float = 5.0
    # The MQTT sessions say `offline` and close, all stations together.
    goodbye_s: float = 2.0
    # The review rings write the images still queued (all stations together); what is left then
    # is not kept (a part's answer is already out; only its review image is lost).
    review_s: float = 1.0

    @property
    def total_s(self) -> float:
        return self.drain_s + 2 * self.flush_grace_s + self.outbox_s + self.reload_join_s + self.goodbye_s + self.review_s


STOP_BUDGET = StopBudget()
