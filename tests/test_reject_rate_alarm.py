"""A station that rejects nearly every part raises the reject_rate alarm; one that passes its
good parts does not (real daemon, real Mosquitto, real image folders). Score drift watches
passing parts only, so without this alarm a picture changed so much that nothing passes (a
camera's compression, lighting) would be silent."""

from __future__ import annotations

import json
import signal
import time

import cv2
import numpy as np

from edge.stats import StationStats
from tests.conftest import METAL_PLATE, require
from tests.mqtt_helpers import Subscriber
from tests.test_daemon_e2e import finish, start_daemon, write_config

PARTS = 16


def test_the_recent_window_counts_the_last_parts_only():
    stats = StationStats({}, recent_parts=10)
    for i in range(25):
        stats.record(5.0, 1.0, reject=i < 15, bundle_id="b")  # 15 rejects, then 10 passes
    snapshot = stats.snapshot()
    assert snapshot["recent"] == {"parts": 10, "rejects": 0, "uninspected": 0}
    assert snapshot["rejects"] == 15 and snapshot["parts"] == 25


def test_parts_answered_without_an_inspection_count_as_the_rejects_they_are():
    """Unreadable files, triggers without a frame, parts of an unknown recipe: the PLC kicks them,
    so the reject rate and the alarm's window count them (the console read 0 % while a station
    rejected every part as an error)."""
    stats = StationStats({}, recent_parts=10)
    for _ in range(6):
        stats.record(5.0, 1.0, reject=False, bundle_id="b")
    for _ in range(4):
        stats.record_uninspected()
    snapshot = stats.snapshot()
    assert snapshot["parts"] == 6 and snapshot["rejects"] == 0 and snapshot["uninspected"] == 4
    assert snapshot["reject_rate"] == 0.4
    assert snapshot["recent"] == {"parts": 10, "rejects": 4, "uninspected": 4}


def test_the_reject_rate_alarm_does_not_blame_the_calibration_for_parts_nobody_inspected():
    from edge.daemon import reject_rate_message

    model = reject_rate_message({"parts": 50, "rejects": 40, "uninspected": 2}, 0.5)
    uninspected = reject_rate_message({"parts": 50, "rejects": 40, "uninspected": 38}, 0.5)
    assert "re-calibrate" in model and "without an inspection" not in model
    assert "38 of them without an inspection" in uninspected and "re-calibrate" not in uninspected


def test_a_station_rejecting_nearly_everything_raises_the_reject_rate_alarm(small_bundle, broker, tmp_path):
    bundle, _ = small_bundle
    good_paths = sorted((require(METAL_PLATE) / "train" / "good").glob("*.png"))[:PARTS]
    good, noise = tmp_path / "good", tmp_path / "noise"
    good.mkdir()
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i, path in enumerate(good_paths):
        image = cv2.imread(str(path))
        cv2.imwrite(str(good / f"G-{i:02d}.png"), image)
        cv2.imwrite(str(noise / f"N-{i:02d}.png"), rng.integers(0, 256, size=image.shape, dtype=np.uint8))
    cameras = "".join(
        f"  - station: {name}\n    source: {{type: folder, path: {folder}, poll_interval_s: 0.05}}\n" for name, folder in (("good", good), ("noise", noise))
    )
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, cameras, extra="alarms: {reject_rate: 0.5, reject_rate_parts: 10}\n")
    subscriber = Subscriber(broker.port)
    process = start_daemon(config)
    try:
        ok = subscriber.reached("result", 2 * PARTS, timeout=90) and _window_full_in_stats(subscriber, ("good", "noise"), timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=60)
    assert ok, output[-3000:]

    results = [json.loads(m.payload) for m in subscriber.on("result")]
    verdicts = {name: [r["verdict"] for r in results if r["station"] == name] for name in ("good", "noise")}
    assert verdicts["noise"].count("reject") == PARTS
    assert verdicts["good"].count("reject") <= PARTS // 4
    raised = {name: [a for m in subscriber.on("alarm") if m.topic == f"edge/{name}/alarm" for a in json.loads(m.payload)["active"]] for name in ("good", "noise")}
    reject_rate = [a for a in raised["noise"] if a["alarm"] == "reject_rate"]
    assert reject_rate and "of the last 10 parts rejected (limit 50%)" in reject_rate[-1]["message"]
    assert not [a for a in raised["good"] if a["alarm"] == "reject_rate"]
    stats = [json.loads(m.payload) for m in subscriber.on("stats")]
    assert [s["recent"] for s in stats if s["station"] == "noise"][-1] == {"parts": 10, "rejects": 10, "uninspected": 0}
    assert output.count("alarm reject_rate") == 1  # raised once, however many ticks see it
    subscriber.close()


def _window_full_in_stats(subscriber: Subscriber, stations: tuple[str, ...], timeout: float) -> bool:
    """Every station has published stats with a full window: the alarms of that tick were checked
    (and published) before those stats went out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        full = {s["station"] for s in map(lambda m: json.loads(m.payload), subscriber.on("stats")) if s["recent"]["parts"] == 10}
        if full >= set(stations):
            return True
        time.sleep(0.1)
    return False
