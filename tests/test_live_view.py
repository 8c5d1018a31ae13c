"""What the line console is fed by a real daemon: the throttled live view, heatmaps that say
which part they show, stats with the calibration's quantiles, and retained alarms raised and
cleared (real Mosquitto, real video)."""

from __future__ import annotations

import json
import signal
import struct
import time

import cv2
import numpy as np

from tests.mqtt_helpers import Broker, Subscriber
from tests.test_daemon_e2e import finish, start_daemon, write_config


def jpeg_comment(jpeg: bytes) -> dict | None:
    """The JSON in the COM segment right after SOI, as the console reads it."""
    if jpeg[:4] != b"\xff\xd8\xff\xfe":
        return None
    (length,) = struct.unpack(">H", jpeg[4:6])
    return json.loads(jpeg[6 : 4 + length])


def noise_video(path, frames: int, size: int = 64) -> None:
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30, (size, size))
    for i in range(frames):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8) if i % 2 else np.full((size, size, 3), 120, np.uint8)
        writer.write(image)
    writer.release()


def test_the_live_view_is_throttled_and_every_picture_names_its_part(small_bundle, broker, tmp_path):
    bundle, _ = small_bundle
    video = tmp_path / "line.avi"
    noise_video(video, 120)
    subscriber = Subscriber(broker.port)
    camera = f"  - station: live\n    source: {{type: file, path: {video}, fps: 30}}\n"
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera, publish="{stats_interval_s: 1, preview_hz: 2, heatmaps: rejects}")
    started = time.monotonic()
    finish(start_daemon(config))
    seconds = time.monotonic() - started
    time.sleep(0.5)
    results = {json.loads(m.payload)["part_id"]: json.loads(m.payload) for m in subscriber.on("result")}
    assert len(results) == 120
    previews = subscriber.on("preview")
    # At most 2 a second over the run (4 s of video, plus the start), at least one a second.
    assert 3 <= len(previews) <= 2 * seconds + 1, (len(previews), seconds)
    for message in previews:
        meta = jpeg_comment(message.payload)
        assert meta is not None and meta["station"] == "live" and meta["part_id"] in results
        assert cv2.imdecode(np.frombuffer(message.payload, np.uint8), cv2.IMREAD_COLOR) is not None  # still a plain JPEG
    heatmaps = [jpeg_comment(m.payload) for m in subscriber.on("heatmap")]
    rejected = {p for p, r in results.items() if r["verdict"] == "reject"}
    assert heatmaps and {h["part_id"] for h in heatmaps} == rejected
    assert all(h["verdict"] == "reject" and h["score"] > h["threshold"] for h in heatmaps)
    stats = json.loads(subscriber.on("stats")[-1].payload)
    assert stats["threshold"] == bundle.manifest.thresholds.image
    assert stats["calibration_quantiles"] == bundle.manifest.thresholds.good_score_quantiles
    subscriber.close()


def test_an_outbox_backlog_raises_a_retained_alarm_that_clears_once_delivered(small_bundle, tmp_path):
    bundle, _ = small_bundle
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")
    video = tmp_path / "line.avi"
    noise_video(video, 40)
    camera = f"  - station: away\n    source: {{type: file, path: {video}, fps: 20, loop: true}}\n"
    # Every noise part is a reject, so the reject-rate alarm is turned off (1.0): this is about the outbox.
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera, extra="alarms: {outbox_backlog: 3, reject_rate: 1.0}\n", publish="{stats_interval_s: 0.5}")
    process = start_daemon(config)
    try:
        time.sleep(9)  # the broker is away: rejects pile up in the outbox
        broker.start()
        subscriber = Subscriber(broker.port, topic="edge/away/alarm")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alarms = [json.loads(m.payload) for m in subscriber.messages]
            if alarms and not alarms[-1]["active"] and any(a["active"] for a in alarms):
                break
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=60)
    broker.stop()
    alarms = [json.loads(m.payload) for m in subscriber.messages]
    raised = [a for a in alarms if [x["alarm"] for x in a["active"]] == ["outbox_backlog"]]
    assert raised and "rejects wait for the broker" in raised[0]["active"][0]["message"], alarms
    assert alarms[-1]["active"] == [], alarms  # cleared once the PLC has them
    assert "alarm outbox_backlog" in output and "alarm outbox_backlog cleared" in output
    subscriber.close()
