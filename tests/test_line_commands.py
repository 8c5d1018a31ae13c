"""The line's commands on a real daemon and a real Mosquitto: recipes switched by the PLC at a
part boundary, teach-in from the running camera, operator labels filed with the right image, and
bad commands counted, never acted on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np

from calibration.bundle_cli import main as edge_bundle
from calibration.images import list_images
from edge.teach import CHANGE_LEVEL, thumbnail
from engines.bundle import open_bundle
from tests.conftest import METAL_PLATE, require
from tests.mqtt_helpers import Subscriber
from tests.test_daemon_e2e import ROOT, finish, start_daemon, write_config


def _parts(count: int, size: int = 128) -> list[np.ndarray]:
    paths = sorted((require(METAL_PLATE) / "train" / "good").glob("*.png"))[:count]
    return [cv2.resize(cv2.imread(str(p)), (size, size)) for p in paths]


def _video(path, frames: list[np.ndarray], fps: int = 20):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def _stats(subscriber: Subscriber) -> dict:
    return json.loads(subscriber.on("stats")[-1].payload)


def _wait_stats(subscriber: Subscriber, check, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subscriber.on("stats") and check(_stats(subscriber)):
            return _stats(subscriber)
        time.sleep(0.1)
    raise AssertionError(f"stats never showed it: {_stats(subscriber) if subscriber.on('stats') else None}")


def test_a_recipe_switch_applies_to_exactly_the_parts_after_it(small_bundle, broker, tmp_path):
    bundle_a, _ = small_bundle
    path_b = tmp_path / "recipe-b"
    assert edge_bundle(["retune", str(bundle_a.path), "-o", str(path_b), "--why", "product B", "--threshold", "0.000001"]) == 0
    bundle_b = open_bundle(path_b)
    video = _video(tmp_path / "line.avi", _parts(4))
    subscriber = Subscriber(broker.port)
    camera = (
        f"  - station: rec\n    mode: triggered\n    recipes: {{A: {bundle_a.path}, B: {path_b}}}\n    recipe: A\n"
        f"    source: {{type: file, path: {video}, loop: true, fps: 30}}\n"
    )
    process = start_daemon(write_config(tmp_path / "config.yaml", bundle_a.path, broker.port, camera))
    assert subscriber.reached("status", 1, timeout=30)
    time.sleep(0.5)
    asked = []  # (part id, the recipe it was asked under)

    def trigger(part_id, recipe, payload=None):
        subscriber.publish("edge/rec/trigger", payload or part_id)
        asked.append((part_id, recipe))

    def select(recipe):
        subscriber.client.publish("edge/rec/recipe", recipe, qos=1, retain=True).wait_for_publish(5)

    for i in range(4):
        trigger(f"A-{i}", "A")
    select("B")
    for i in range(4):
        trigger(f"B-{i}", "B")
    trigger("X-1", "A", json.dumps({"part_id": "X-1", "recipe": "A"}))  # the trigger's own recipe wins
    trigger("B-4", "B")
    select("Z")  # not configured: refused loudly, its parts rejected
    trigger("Z-1", "Z")
    trigger("Z-2", "Z")
    trigger("X-2", "A", json.dumps({"part_id": "X-2", "recipe": "A"}))  # known, but the topic's Z still stands
    trigger("Z-3", "Z")
    select("B 200")  # no recipe name at all: as refused as an unknown one, never "keep the last product"
    trigger("I-1", "B 200")
    # A trigger's own recipe that is no name, or a misspelt key: that part is answered
    # not_inspected and takes its frame, so the parts after it keep theirs.
    trigger("K-1", "B 200", json.dumps({"part_id": "K-1", "Recipe": "A"}))
    trigger("K-2", "B 200", json.dumps({"part_id": "K-2", "recipe": "B 200"}))
    select("")  # the retained recipe cleared: back to the configured default
    trigger("D-1", "A")
    results = subscriber.wait_for("result", len(asked), timeout=60)
    stats = _wait_stats(subscriber, lambda s: s["recipe"] == "A")
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=60)

    by_part = {p["part_id"]: p for p in (json.loads(m.payload) for m in results)}
    assert sorted(by_part) == sorted(part for part, _ in asked)
    bundle_ids = {"A": bundle_a.bundle_id, "B": bundle_b.bundle_id, "Z": "", "B 200": ""}
    refused = {"K-1": "key(s) 'Recipe'", "K-2": "recipe 'B 200' is not a recipe name"}
    for part, recipe in asked:
        payload = by_part[part]
        assert payload["recipe"] == recipe and payload["bundle_id"] == bundle_ids[recipe], (part, payload)
        if part in refused:
            assert payload["verdict"] == "not_inspected" and refused[part] in payload["error"], payload
        elif recipe in ("Z", "B 200"):
            assert payload["verdict"] == "not_inspected" and f"recipe {recipe!r}" in payload["error"], payload
        else:
            assert payload["verdict"] in ("pass", "reject") and payload["threshold"] == round(open_bundle(bundle_a.path if recipe == "A" else path_b).manifest.thresholds.image, 5)
    assert all(by_part[f"B-{i}"]["verdict"] == "reject" for i in range(5))  # B's threshold rejects every part
    rejects = {json.loads(m.payload)["part_id"] for m in subscriber.on("reject")}
    assert {"Z-1", "Z-2"} <= rejects
    alarms = [json.loads(m.payload) for m in subscriber.on("alarm")]
    assert any(a["alarm"] == "unknown_recipe" and "'Z'" in a["message"] for message in alarms for a in message["active"])
    raised = [i for i, message in enumerate(alarms) if any(a["alarm"] == "unknown_recipe" for a in message["active"])]
    assert any("'B 200'" in a["message"] for a in alarms[raised[-1]]["active"])  # restated for the new name
    # Not cleared by X-2's known recipe while the topic's Z rejected every other part; cleared
    # once the topic is back to a known recipe.
    assert all(alarms[i]["active"] for i in range(raised[0], raised[-1] + 1)) and alarms[-1]["active"] == []
    assert stats["recipes"] == ["A", "B"] and stats["bundle_id"] == bundle_a.bundle_id
    assert "recipe 'Z'" in output
    assert (tmp_path / "state" / "recipe" / "rec").read_text().strip() == "A"  # a restart resumes the PLC's choice
    subscriber.close()


def test_teach_in_keeps_each_new_part_once_as_the_model_sees_it(small_bundle, broker, tmp_path):
    bundle, _ = small_bundle
    parts = _parts(6)
    video = _video(tmp_path / "line.avi", [part for part in parts for _ in range(5)])  # each part sits still for 5 frames
    decoded = []
    capture = cv2.VideoCapture(str(video))
    while (frame := capture.read()[1]) is not None:
        decoded.append(frame[16:112, 8:120])
    subscriber = Subscriber(broker.port)
    camera = f"  - station: teach\n    roi: [8, 16, 112, 96]\n    source: {{type: file, path: {video}, loop: true, fps: 25}}\n"
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera)
    process = start_daemon(config)
    assert subscriber.reached("stats", 1, timeout=30)
    # The station's rules for a name and a count are said at once, not as a confirmation that never comes.
    for flag, value, said in (("--name", "../x", "--name '../x': 1-64 letters"), ("--count", "10001", "--count 10001: must be 1 to 10000")):
        refused = subprocess.run(
            [sys.executable, "-m", "edge.cli", "teach", "--config", str(config), "start", flag, value],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 2 and said in refused.stderr and len(refused.stderr.splitlines()) == 1, refused.stderr
    teach = subprocess.run(
        [sys.executable, "-m", "edge.cli", "teach", "--config", str(config), "start", "--name", "product-c", "--count", "6", "--wait"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert teach.returncode == 0, teach.stderr
    assert "6 of 6 parts" in teach.stdout
    process.send_signal(signal.SIGTERM)
    finish(process, timeout=60)

    folder = tmp_path / "state" / "teach" / "teach" / "product-c"
    saved = [cv2.imread(str(p)) for p in sorted(folder.glob("*.png"))]
    assert len(saved) == 6
    assert all(image.shape == (96, 112, 3) for image in saved)  # the ROI, full resolution
    # Each is exactly one decoded frame's crop, and no two show the same part.
    matches = [min(range(len(decoded)), key=lambda i: float(np.abs(decoded[i].astype(int) - image).mean())) for image in saved]
    assert all(np.array_equal(decoded[i], image) for i, image in zip(matches, saved))
    assert len({i // 5 for i in matches}) == 6
    for a in range(6):
        for b in range(a + 1, 6):
            assert float(np.mean(np.abs(thumbnail(saved[a]) - thumbnail(saved[b])))) >= CHANGE_LEVEL
    assert len(list_images(folder)) == 6  # what edge-calibrate takes: the manifest is not an image
    manifest = json.loads((folder / "teach.json").read_text())
    assert manifest["station"] == "teach" and manifest["roi"] == [8, 16, 112, 96] and manifest["count"] == 6 and "stopped" in manifest
    subscriber.close()


def test_labels_file_the_right_image_and_bad_commands_are_counted_not_acted_on(small_bundle, broker, tmp_path):
    bundle, _ = small_bundle
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    subscriber = Subscriber(broker.port)
    camera = f"  - station: lab\n    roi: [8, 8, 112, 112]\n    source: {{type: folder, path: {inbox}}}\n"
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera, extra="review: {keep_parts: 10}\n")
    process = start_daemon(config)
    assert subscriber.reached("status", 1, timeout=30)
    defects = sorted(p for p in (require(METAL_PLATE) / "test").glob("*/*.png") if p.parent.name != "good")[:4]
    parts = _parts(14) + [cv2.resize(cv2.imread(str(p)), (128, 128)) for p in defects]
    for i, part in enumerate(parts):
        cv2.imwrite(str(inbox / f"P-{i:02d}.png"), part)
        time.sleep(0.05)
    results = [json.loads(m.payload) for m in subscriber.wait_for("result", len(parts), timeout=60)]
    assert len(results) == len(parts)
    verdicts = {r["part_id"]: r["verdict"] for r in results}
    passes, rejects = [p for p, v in verdicts.items() if v == "pass"], [p for p, v in verdicts.items() if v == "reject"]
    assert len(passes) > 10 and rejects, verdicts  # more passes than the ring keeps, and a reject to label
    time.sleep(1.0)  # the ring's writer is behind the results by a PNG or two

    def label(part_id, label, defect_type=None):
        command = {"part_id": part_id, "label": label, **({"defect_type": defect_type} if defect_type else {})}
        subscriber.publish("edge/lab/feedback", json.dumps(command))

    false_reject, miss = rejects[-1], passes[-1]  # a reject's image is on disk, a pass's in memory
    label(false_reject, "good")
    label(miss, "defect", "scratch")
    bad_feedback = [
        json.dumps({"part_id": passes[0], "label": "good"}),  # pushed out of the 10-part ring
        json.dumps({"part_id": "P-99", "label": "good"}),  # never inspected
        '{"part_id": "P-11", "label":',  # broken JSON
        json.dumps({"part_id": "P-11", "label": "meh"}),
        json.dumps({"part_id": "P-11", "label": "defect", "defect_type": "../../etc"}),
        json.dumps({"part_id": "P-11", "label": "good", "x": "P" * 200_000}),  # huge
        "[" * 2000 + "]" * 2000,  # nested past Python's JSON recursion limit, under the size cap
    ]
    for payload in bad_feedback:
        subscriber.publish("edge/lab/feedback", payload)
    for payload in ('{"action": "start", "name": "../escape"}', '{"action": "go"}', "[]"):
        subscriber.publish("edge/lab/teach", payload)
    subscriber.client.publish("edge/lab/recipe", "no such/recipe", qos=1, retain=True).wait_for_publish(5)
    stats = _wait_stats(subscriber, lambda s: s["bad_commands"]["feedback"] >= len(bad_feedback) and s["bad_commands"]["teach"] >= 3)
    process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=60)

    review = tmp_path / "state" / "review" / "lab"
    good, scratch = list((review / "good").glob("*.png")), list((review / "defect" / "scratch").glob("*.png"))
    assert len(good) == 1 and len(scratch) == 1
    index = {part_id: int(part_id[2:]) for part_id in verdicts}
    assert np.array_equal(cv2.imread(str(good[0])), parts[index[false_reject]][8:120, 8:120])  # that part's ROI, nothing else
    assert np.array_equal(cv2.imread(str(scratch[0])), parts[index[miss]][8:120, 8:120])
    recent = list((review / "recent").glob("*.png"))
    assert len(recent) == len(rejects) - 1 and all("-r-" in p.name for p in recent)  # rejects on disk until labelled; passes never written
    assert not list((review / "defect").glob("*/*/*")) and not (tmp_path / "state" / "teach").exists()  # no bad command acted on
    labels = [json.loads(line) for line in (review / "labels.jsonl").read_text().splitlines()]
    assert sorted((r["part_id"], r["label"], r["defect_type"], r["verdict"]) for r in labels) == sorted(
        [(false_reject, "good", None, "reject"), (miss, "defect", "scratch", "pass")]
    )
    assert stats["labels"] == {"false_rejects": 1, "misses": 1, "confirmed_rejects": 0, "confirmed_good": 0}
    assert stats["bad_commands"] == {"recipe": 1, "feedback": len(bad_feedback), "teach": 3}
    # No recipe name, so no product this station has: the next parts would be refused, not
    # inspected as the previous product; the alarm says so.
    assert stats["recipe"] == "no such/recipe"
    assert "alarm unknown_recipe: the recipe topic asked for recipe 'no such/recipe'" in output
    assert f"ignored feedback for part {passes[0]}" in output and "ignored teach command" in output
    assert "Traceback" not in output
    subscriber.close()
