"""The systemd watchdog against the real daemon process and a real notify socket: pinged while a
camera merely waits, withheld once an engine call hangs, so systemd restarts the service."""
from __future__ import annotations

from tests.conftest import run_scenario
from tests.scenarios import stuck_inference


def test_watchdog_pings_while_waiting_and_stops_when_inference_hangs(small_bundle, tmp_path):
    bundle, _ = small_bundle
    report = run_scenario(stuck_inference, bundle, tmp_path, waiting_s=8.0, watchdog_s=2.0)
    d = report.details
    assert d["ready"], "the daemon never said READY"
    # An empty folder for 8 s: the camera is waiting, not dead, and the watchdog keeps going.
    # Pings every 1 s are due: a few missing on a loaded machine is fine, none at all is the bug.
    assert d["pings_while_waiting"] >= 3, f"only {d['pings_while_waiting']} watchdog pings in 8 s of waiting for parts"
    assert d["pings_after_hang_plus_7s"] == 0, "the watchdog was still fed long after inference hung"
    assert d["daemon_still_running"], "the daemon exited by itself; systemd is the one to kill it"
    assert d["log_named_the_stage"], report.log[-3000:]
