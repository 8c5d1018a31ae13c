"""The camera goes away and comes back: a network camera (a real MJPEG-over-HTTP server read by
OpenCV's FFmpeg) switched off and then with its cable pulled, and a looping video file removed,
each for 4 s. The daemon says so on its stats topic, is back within 5 s of the camera's return,
and the watchdog is fed throughout. The folder case is in test_faults.py."""
from __future__ import annotations

from tests.conftest import run_scenario
from tests.scenarios import camera_losses


def test_stream_camera_switched_off_and_cable_pulled(small_bundle, tmp_path):
    bundle, _ = small_bundle
    report = run_scenario(camera_losses, bundle, tmp_path, source="stream", losses=["stop", "stall"], down_s=4.0)
    d = report.details
    for loss in d["losses"]:
        assert loss["status_said_lost"], f"{loss['kind']}: the stats never said the camera was lost"
        assert loss["recovered"], f"{loss['kind']}: no frame inspected after the camera came back\n{report.log[-3000:]}"
        assert loss["recovery_s"] <= 5.0, f"{loss['kind']}: back after {loss['recovery_s']} s"
    assert d["daemon_alive_throughout"] and d["exit_code"] == 0, report.log[-3000:]
    # The watchdog period in this test is 2 s: a silence that long would have had systemd
    # restart a daemon that was only waiting for its camera.
    assert d["max_watchdog_ping_gap_s"] < d["watchdog_s"], f"watchdog silent for {d['max_watchdog_ping_gap_s']} s"
    assert "camera lost" in report.log and "is back" in report.log
    assert "Traceback" not in report.log


def test_looping_video_file_removed_and_put_back(small_bundle, tmp_path):
    bundle, _ = small_bundle
    report = run_scenario(camera_losses, bundle, tmp_path, source="file", losses=["remove"], down_s=4.0)
    (loss,) = report.details["losses"]
    assert loss["status_said_lost"], "the stats never said the video file was gone"
    assert loss["recovered"] and loss["recovery_s"] <= 5.0, f"{loss}\n{report.log[-3000:]}"
    assert report.details["max_watchdog_ping_gap_s"] < report.details["watchdog_s"]
    assert "disappeared" in report.log and "is back" in report.log
