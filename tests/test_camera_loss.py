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


def test_slow_cameras_keep_the_watchdog_fed(small_bundle, broker, tmp_path):
    """A folder polled every 8 s and a video paced at one frame in 10 s are valid settings: the
    capture loop must still come round often enough for its heartbeat (5 s). It slept the whole
    interval, the watchdog ping was withheld, and systemd would restart the daemon in a loop."""
    import signal
    import time

    from tests.scenarios import parts_video
    from tests.test_daemon_e2e import finish, start_daemon, write_config

    bundle, _ = small_bundle
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    video = parts_video(tmp_path / "slow.avi", 3, bundle.manifest.input_size)
    camera = (
        f"  - station: polled\n    source: {{type: folder, path: {inbox}, poll_interval_s: 8}}\n"
        f"  - station: paced\n    source: {{type: file, path: {video}, loop: true, fps: 0.1}}\n"
    )
    process = start_daemon(write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera))
    time.sleep(9)  # past the heartbeat's 5 s and the folder's first 8 s poll
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=60)
    assert "inspecting: polled, paced" in output, output[-3000:]
    assert "stages not alive" not in output and "withholding the watchdog" not in output, output[-3000:]
