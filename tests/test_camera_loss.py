"""The camera goes away and comes back: a network camera (a real MJPEG-over-HTTP server read by
OpenCV's FFmpeg) switched off and then with its cable pulled, and a looping video file removed,
each for 4 s. The daemon says so on its stats topic, inspects again once the camera is back (how
fast is bench/faults.py's to measure, not asserted here), and the watchdog is fed throughout. The
folder case is in test_faults.py."""
from __future__ import annotations

from tests.conftest import run_scenario
from tests.scenarios import camera_losses

# Shorter than the 4 s loss: a daemon that withheld its pings while the camera was away would leave
# a silence this long, and systemd would restart a daemon that was only waiting for its camera.
WATCHDOG_S = 3.0


def _assert_watchdog_fed(report) -> None:
    assert "withholding the watchdog ping" not in report.log, report.log[-3000:]
    gap = report.details["max_watchdog_ping_gap_s"]
    assert gap < report.details["watchdog_s"], f"watchdog silent for {gap} s"


def test_stream_camera_switched_off_and_cable_pulled(small_bundle, tmp_path):
    bundle, _ = small_bundle
    report = run_scenario(camera_losses, bundle, tmp_path, source="stream", losses=["stop", "stall"], down_s=4.0, watchdog_s=WATCHDOG_S)
    d = report.details
    for loss in d["losses"]:
        assert loss["status_said_lost"], f"{loss['kind']}: the stats never said the camera was lost"
        assert loss["recovered"], f"{loss['kind']}: no frame inspected after the camera came back\n{report.log[-3000:]}"
    assert d["daemon_alive_throughout"] and d["exit_code"] == 0, report.log[-3000:]
    _assert_watchdog_fed(report)
    assert "camera lost" in report.log and "is back" in report.log
    assert "Traceback" not in report.log


def test_looping_video_file_removed_and_put_back(small_bundle, tmp_path):
    bundle, _ = small_bundle
    report = run_scenario(camera_losses, bundle, tmp_path, source="file", losses=["remove"], down_s=4.0, watchdog_s=WATCHDOG_S)
    (loss,) = report.details["losses"]
    assert loss["status_said_lost"], "the stats never said the video file was gone"
    assert loss["recovered"], f"no frame inspected after the file came back: {loss}\n{report.log[-3000:]}"
    _assert_watchdog_fed(report)
    assert "disappeared" in report.log and "is back" in report.log
