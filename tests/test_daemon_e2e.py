"""edge-inspect end to end: real Mosquitto, a separate subscriber, real video and image folders."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import METAL_PLATE, require
from tests.mqtt_helpers import Subscriber

ROOT = Path(__file__).resolve().parents[1]


def write_config(path: Path, bundle: Path, port: int, camera: str, extra: str = "", publish: str = "{stats_interval_s: 1}") -> Path:
    path.write_text(
        f"bundle: {bundle}\nstate_dir: {path.parent / 'state'}\nmqtt: {{host: 127.0.0.1, port: {port}}}\n"
        f"publish: {publish}\n{extra}cameras:\n{camera}"
    )
    return path


def start_daemon(config: Path, env: dict | None = None, launcher: str | None = None, log: Path | None = None) -> subprocess.Popen:
    """The real daemon in its own process; `launcher` is Python code run instead of `-m edge.cli`
    (to inject a fault into one part), `env` adds to the environment, `log` takes its output
    instead of a pipe (a long run would fill a pipe nobody reads and block the daemon)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    program = ["-c", launcher] if launcher else ["-m", "edge.cli"]
    output = open(log, "a") if log else subprocess.PIPE
    process = subprocess.Popen([sys.executable, *program, "--config", str(config)], cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT, text=True)
    STARTED_DAEMONS.append(process)  # conftest kills it after the test if the test did not stop it
    return process


STARTED_DAEMONS: list[subprocess.Popen] = []


def finish(process: subprocess.Popen, timeout: float = 120) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"the daemon exited with {process.returncode}:\n{output[-5000:]}"
    return output


def offline_scores(bundle, images_bgr: list[np.ndarray]) -> np.ndarray:
    """The evaluation path: the same Inspector, fed the same pixels."""
    from engines.backends import open_backend
    from engines.inspector import Inspector

    inspector = Inspector(bundle, open_backend("onnxruntime", bundle))
    batch = np.stack([inspector.model_input(image) for image in images_bgr])
    return inspector.inspect_batch(batch)[1]


def test_video_file_gives_one_result_per_part_and_the_offline_rejects(small_bundle, broker, tmp_path):
    bundle, _ = small_bundle
    sources = sorted((require(METAL_PLATE) / "test").glob("*/*.png"))[::4][:24]
    video = tmp_path / "parts.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (256, 256))
    for path in sources:
        writer.write(cv2.resize(cv2.imread(str(path)), (256, 256)))
    writer.release()
    capture, frames = cv2.VideoCapture(str(video)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == len(sources)

    subscriber = Subscriber(broker.port)
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, f"  - station: cam1\n    source: {{type: file, path: {video}}}\n")
    finish(start_daemon(config))
    results = subscriber.wait_for("result", len(frames), timeout=30)
    payloads = [json.loads(m.payload) for m in results]
    assert sorted((p["part_id"] for p in payloads), key=int) == [str(i) for i in range(len(frames))]  # exactly one per part

    scores = offline_scores(bundle, frames)
    threshold = bundle.manifest.thresholds.image
    expected = {str(i) for i, s in enumerate(scores) if s > threshold}
    assert 0 < len(expected) < len(frames)  # the run exercises both verdicts
    rejects = {json.loads(m.payload)["part_id"] for m in subscriber.wait_for("reject", len(expected), timeout=10)}
    assert rejects == expected
    by_part = {p["part_id"]: p for p in payloads}
    for i, score in enumerate(scores):
        assert by_part[str(i)]["score"] == pytest.approx(float(score), abs=1e-3)
        assert by_part[str(i)]["bundle_id"] == bundle.bundle_id
    assert all(p["cause"] is None for p in payloads if p["verdict"] == "pass")
    for message in subscriber.on("reject"):
        payload = json.loads(message.payload)
        assert payload["late"] is False and payload["cause"] in ("defect region", "whole part"), payload
        if payload["cause"] == "defect region":
            assert payload["regions"] and set(payload["regions"][0]) == {"bbox", "area", "peak"}, payload
    heatmaps = subscriber.wait_for("heatmap", len(expected), timeout=10)
    assert len(heatmaps) == len(expected)
    for message in heatmaps:
        image = cv2.imdecode(np.frombuffer(message.payload, np.uint8), cv2.IMREAD_COLOR)
        # What the camera saw (256x256 here, not the 64x64 model input), plus the 48 px colour bar.
        assert image is not None and image.shape[:2] == (256, 256 + 48), image.shape
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit" / "cam1.jsonl").read_text().splitlines()]
    assert len(audit) == len(frames)
    subscriber.close()


def test_watched_folder_agrees_with_the_evaluation_part_for_part(small_bundle, broker, tmp_path):
    from calibration.datasets import open_category
    from calibration.evaluate import score_category

    bundle, _ = small_bundle
    category = open_category(require(METAL_PLATE))
    scored = score_category(bundle, category, "onnxruntime")
    chosen = list(range(0, len(category.test), 5))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    subscriber = Subscriber(broker.port)
    camera = f"  - station: line1\n    source: {{type: folder, path: {inbox}, poll_interval_s: 0.05}}\n"
    process = start_daemon(write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera))
    expected_rejects = set()
    for i in chosen:
        item = category.test[i]
        part_id = f"{item.defect_type}-{item.path.stem}"
        shutil.copy(item.path, inbox / f"{part_id}.png")
        if scored.scores[i] > bundle.manifest.thresholds.image:
            expected_rejects.add(part_id)
    (inbox / "garbage.png").write_bytes(b"this is not an image")  # logged and rejected, never fatal
    results = subscriber.wait_for("result", len(chosen) + 1, timeout=60)
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=60)
    assert len(results) == len(chosen) + 1
    rejects = {json.loads(m.payload)["part_id"]: json.loads(m.payload) for m in subscriber.on("reject")}
    assert set(rejects) == expected_rejects | {"garbage"}  # a part that cannot be inspected must not pass
    assert rejects["garbage"]["verdict"] == "error" and "not a readable image" in rejects["garbage"]["error"]
    assert "garbage.png" in output and "not a readable image" in output
    subscriber.close()


def test_triggered_run_answers_every_trigger(small_bundle, broker, tmp_path):
    bundle, _ = small_bundle
    video = tmp_path / "loop.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 128))
    for path in sorted((require(METAL_PLATE) / "train" / "good").glob("*.png"))[:5]:
        writer.write(cv2.resize(cv2.imread(str(path)), (128, 128)))
    writer.release()
    subscriber = Subscriber(broker.port)
    camera = f"  - station: trig\n    mode: triggered\n    source: {{type: file, path: {video}, loop: true, fps: 30}}\n"
    process = start_daemon(write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera))
    assert subscriber.reached("status", 1, timeout=30)
    time.sleep(0.5)
    sent = ["A-1", "A-2", '{"part_id": "A-3"}', '"A-4"', "{not json"]
    for payload in sent:
        subscriber.publish("edge/trig/trigger", payload)
        time.sleep(0.2)
    results = subscriber.wait_for("result", 4, timeout=30)
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=60)
    assert sorted(json.loads(m.payload)["part_id"] for m in results) == ["A-1", "A-2", "A-3", "A-4"]
    assert "malformed trigger" in output
    subscriber.close()


def _station_on_an_empty_folder(bundle, broker, tmp_path, mode_lines: str = ""):
    """A daemon whose one station watches a folder nobody drops a file into: a camera that
    delivers nothing."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    subscriber = Subscriber(broker.port)
    camera = f"  - station: {'trig' if mode_lines else 'st'}\n{mode_lines}    source: {{type: folder, path: {inbox}}}\n"
    return subscriber, start_daemon(write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera))


def test_a_trigger_that_gets_no_frame_is_rejected(small_bundle, broker, tmp_path):
    """A triggered part whose camera delivers nothing within the timeout was never inspected:
    it is rejected (verdict no_frame), not left for the PLC to guess."""
    subscriber, process = _station_on_an_empty_folder(small_bundle[0], broker, tmp_path, "    mode: triggered\n    trigger_timeout_s: 0.5\n")
    assert subscriber.reached("status", 1, timeout=30)
    subscriber.publish("edge/trig/trigger", "B-1")
    rejects = subscriber.wait_for("reject", 1, timeout=20)
    results = subscriber.wait_for("result", 1, timeout=5)
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=60)
    reject = json.loads(rejects[0].payload)
    assert reject["part_id"] == "B-1" and reject["verdict"] == "no_frame" and reject["score"] is None
    assert json.loads(results[0].payload)["verdict"] == "no_frame"
    assert "trigger for part B-1 got no frame" in output
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit" / "trig.jsonl").read_text().splitlines()]
    assert [(r["part_id"], r["verdict"]) for r in audit] == [("B-1", "no_frame")]
    subscriber.close()


def test_a_flood_of_triggers_gets_every_part_answered(small_bundle, broker, tmp_path):
    """A PLC 1005 parts ahead of a camera that delivers nothing: the 5 oldest are answered at once
    as not inspected (the station holds 1000 waiting triggers), the rest when the daemon stops;
    none is forgotten."""
    from edge.triggers import WAITING_TRIGGERS

    subscriber, process = _station_on_an_empty_folder(small_bundle[0], broker, tmp_path, "    mode: triggered\n    trigger_timeout_s: 600\n")
    assert subscriber.reached("status", 1, timeout=30)
    sent = [f"F-{n}" for n in range(WAITING_TRIGGERS + 5)]
    for part_id in sent:
        subscriber.publish("edge/trig/trigger", part_id)
    rejects = subscriber.wait_for("reject", 5, timeout=30)
    assert [json.loads(m.payload)["part_id"] for m in rejects[:5]] == sent[:5]
    assert all(json.loads(m.payload)["verdict"] == "not_inspected" for m in rejects[:5])
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=120)
    assert "more than 1000 triggers waited for a frame; part F-0 is answered without one" in output
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit" / "trig.jsonl").read_text().splitlines()]
    assert sorted(r["part_id"] for r in audit) == sorted(sent)  # every part asked about, once
    assert [r["verdict"] for r in audit].count("not_inspected") == 5
    subscriber.close()


def test_status_online_then_offline_when_killed(small_bundle, broker, tmp_path):
    subscriber, process = _station_on_an_empty_folder(small_bundle[0], broker, tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(m.payload == b"online" for m in subscriber.on("status")):
        time.sleep(0.05)
    assert [m.payload for m in subscriber.on("status")][-1] == b"online"
    process.kill()
    process.wait(10)
    # The broker notices the dead connection (keepalive * 1.5) and sends the retained will.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and subscriber.on("status")[-1].payload != b"offline":
        time.sleep(0.1)
    assert subscriber.on("status")[-1].payload == b"offline"
    # A late subscriber sees the retained state.
    late = Subscriber(broker.port, topic="edge/st/status")
    assert late.wait_for("status", 1, timeout=10)[0].payload == b"offline"
    late.close()
    subscriber.close()
