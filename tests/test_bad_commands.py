"""Bad part ids and bad folder contents at the line: refused or kept apart, counted and said
once, never acted on blindly; and an ROI that does not fit the camera raises a retained alarm
while its parts are rejected (real daemon, real Mosquitto, real image folders)."""

from __future__ import annotations

import json
import os
import signal
import time

import cv2
import numpy as np
import pytest

from edge.triggers import MAX_PART_ID, PendingTriggers, Trigger, parse_trigger
from tests.conftest import METAL_PLATE, require
from tests.mqtt_helpers import Subscriber
from tests.test_daemon_e2e import finish, start_daemon, write_config

BAD_TRIGGERS = [
    ("empty", b""),
    ("blank", b"   "),
    ("terminal escape", b"P-1\x1b[2J"),
    ("escape in JSON", b'{"part_id": "P-1\\u001b[31m"}'),
    ("NUL", b"P\x001"),
    ("newline", b"P-1\nP-2"),
    ("bidi override", "P-\u202e1".encode()),
    ("zero-width joiner", "P\u200d1".encode()),
    ("too long", b"P" * (MAX_PART_ID + 1)),
    ("huge payload", b"P" * 100_000),
    ("not UTF-8", b"\xff\xfe\xfd"),
    ("broken JSON", b'{"part_id": '),
    ("JSON list", b'["P-1"]'),
    ("JSON null id", b'{"part_id": null}'),
    ("JSON boolean", b"true"),
    ("JSON object id", b'{"part_id": {"a": 1}}'),
    ("JSON without part_id", b'{"recipe": "A"}'),
    ("nested past the recursion limit", b"[" * 2000 + b"]" * 2000),
]


@pytest.mark.parametrize("what, payload", BAD_TRIGGERS, ids=[b[0] for b in BAD_TRIGGERS])
def test_a_bad_trigger_is_refused(what, payload):
    assert parse_trigger(payload) is None, what


# A serial that reads as a JSON number comes back as the PLC wrote it, or it cannot match the answer.
NUMBERS = [(b"1.50", "1.50"), (b"1E5", "1E5"), (b"NaN", "NaN"), (b"-Infinity", "-Infinity"), (b"1e400", "1e400"), (b'{"part_id": 1e308}', "1e308"), (b'{"part_id": 007.0}', None)]


@pytest.mark.parametrize("payload, part_id", [(b"P-1", "P-1"), (b' {"part_id": " A 7 "} ', "A 7"), (b"42", "42"), ("Teil-\u00e4".encode(), "Teil-\u00e4"), (b"P" * MAX_PART_ID, "P" * MAX_PART_ID)] + NUMBERS)
def test_a_good_trigger_gives_its_part_id(payload, part_id):
    assert parse_trigger(payload) == (Trigger(part_id) if part_id is not None else None)


def test_a_plc_far_ahead_of_the_camera_gets_every_part_answered():
    """Over capacity the oldest waiting trigger is handed back to be answered (not_inspected),
    never forgotten; the rest keep their order."""
    pending = PendingTriggers(timeout_s=60, capacity=3)
    for n in range(5):
        pending.add(Trigger(f"P-{n}"))
    assert pending.overflowed() == [Trigger("P-0"), Trigger("P-1")] and pending.overflowed() == []
    assert [pending.next_part() for _ in range(4)] == [Trigger("P-2"), Trigger("P-3"), Trigger("P-4"), None]


def test_a_recipe_payload_that_is_no_name_never_reads_as_the_default():
    """An empty payload means the configured default; no other payload may (300 spaces did)."""
    from edge.config import valid_recipe_name
    from edge.recipes import parse_recipe, refused_recipe_name

    for payload in (b" " * 300, b"B 200", b"A" * 500, b"\xff\xfe", "\u00e9t\u00e9".encode()):
        if parse_recipe(payload) is None:
            name = refused_recipe_name(payload)
            assert name and not valid_recipe_name(name), (payload[:20], name)
    assert parse_recipe(b"") == "" and parse_recipe(b"  ") == ""


def test_a_trigger_may_name_its_recipe_and_a_bad_recipe_or_key_is_its_problem():
    """A trigger with a usable part id is always that part's: a bad recipe field or a misspelt key
    makes it a part answered not_inspected (with the reason), never one inspected as the current
    product, and never one left unanswered."""
    assert parse_trigger(b'{"part_id": "P-9", "recipe": "B-2"}') == Trigger("P-9", "B-2")
    assert parse_trigger(b'{"part_id": "P-9", "recipe": null}') == Trigger("P-9")
    for recipe, said in (('""', "not a recipe name"), ('"a b"', "not a recipe name"), ('"../x"', "not a recipe name"), ("7", "not 7"), ('"' + "R" * 65 + '"', "not a recipe name"), ("[1]", "JSON string")):
        trigger = parse_trigger(f'{{"part_id": "P-9", "recipe": {recipe}}}'.encode())
        assert trigger is not None and trigger.part_id == "P-9" and trigger.recipe is None and said in (trigger.problem or ""), (recipe, trigger)
    for payload, key in ((b'{"part_id": "P-9", "Recipe": "B-2"}', "'Recipe'"), (b'{"part_id": "P-9", "recipe_name": "B-2", "recipe": "B-2"}', "'recipe_name'")):
        trigger = parse_trigger(payload)
        assert trigger is not None and trigger.recipe is None and f"key(s) {key}" in (trigger.problem or ""), trigger


def _part(path, image) -> None:
    cv2.imwrite(str(path), image)
    stamp = time.time() - 100 + len(os.listdir(path.parent))  # oldest first, in the order written
    os.utime(path, (stamp, stamp))


def test_folder_names_are_kept_apart_and_an_roi_outside_the_frame_raises_an_alarm(small_bundle, broker, tmp_path):
    bundle, _ = small_bundle
    good = cv2.imread(str(sorted((require(METAL_PLATE) / "train" / "good").glob("*.png"))[0]))
    inbox, done, small = tmp_path / "inbox", tmp_path / "done", tmp_path / "small"
    for folder in (inbox, small):
        folder.mkdir()
    _part(inbox / "A-1.png", good)
    (inbox / "notes.txt").write_text("the camera's log, not a part")
    _part(inbox / "B\x1b[31m.png", good)  # a file name with a terminal escape in it
    _part(small / "S-1.png", cv2.resize(good, (64, 64)))  # smaller than the ROI below
    subscriber = Subscriber(broker.port)
    cameras = (
        f"  - station: drop\n    source: {{type: folder, path: {inbox}, done_dir: {done}, poll_interval_s: 0.05}}\n"
        f"  - station: tight\n    roi: [0, 0, 128, 128]\n    source: {{type: folder, path: {small}, poll_interval_s: 0.05}}\n"
    )
    process = start_daemon(write_config(tmp_path / "config.yaml", bundle.path, broker.port, cameras))
    try:
        ok = subscriber.reached("result", 3, timeout=60) and _appears(done / "A-1.png", timeout=20)
        if ok:
            _part(inbox / "A-1.png", good)  # the same name again: a second part, not an overwrite
            _part(small / "S-2.png", cv2.resize(good, (64, 64)))
            ok = subscriber.reached("result", 5, timeout=60)
            time.sleep(1.5)  # a stats message after the last part
    finally:
        process.send_signal(signal.SIGTERM)
    output = finish(process, timeout=60)
    assert ok, f"parts missing: {[json.loads(m.payload)['part_id'] for m in subscriber.on('result')]}, done: {sorted(p.name for p in done.iterdir())}\n{output[-3000:]}"

    results = [json.loads(m.payload) for m in subscriber.on("result")]
    drop = [r for r in results if r["station"] == "drop"]
    assert [r["part_id"] for r in drop] == ["A-1", "B\\x1b[31m", "A-1"]  # the escape is written out, never sent as is
    assert sorted(p.name for p in done.iterdir()) == sorted(["A-1.png", "A-1.1.png", "B\x1b[31m.png"])
    assert "kept both" in output and "A-1.1.png" in output
    assert "ignoring notes.txt: not an image" in output and output.count("ignoring notes.txt") == 1
    assert "\x1b" not in output  # the journal shows the escape, it does not run it
    assert "part id A-1 was inspected before" in output
    stats = [json.loads(m.payload) for m in subscriber.on("stats") if json.loads(m.payload)["station"] == "drop"]
    assert stats[-1]["repeated_part_ids"] == 1
    # The ROI does not fit the 64x64 parts: one alarm, retained, and every part rejected, never passed.
    tight = [r for r in results if r["station"] == "tight"]
    assert [r["verdict"] for r in tight] == ["error", "error"] and "reaches outside the 64x64 frames" in tight[0]["error"]
    alarms = [m for m in subscriber.on("alarm") if m.topic == "edge/tight/alarm"]
    assert alarms and alarms[-1].retain or _retained(broker.port, "edge/tight/alarm")
    active = json.loads(alarms[-1].payload)["active"]
    assert [a["alarm"] for a in active] == ["roi_outside_frame"]
    assert output.count("alarm roi_outside_frame") == 1
    subscriber.close()


def _appears(path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not path.exists():
        time.sleep(0.05)
    return path.exists()


def _retained(port: int, topic: str) -> bool:
    later = Subscriber(port, topic=topic)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not later.messages:
            time.sleep(0.05)
        return bool(later.messages) and later.messages[0].retain
    finally:
        later.close()


def test_a_bundle_its_runtime_cannot_run_stops_the_start_with_its_name(small_bundle, tmp_path):
    """A manifest whose digest was made to match an input size the graphs do not take (what only a
    forger or a bug produces): the daemon refuses to start with the bundle named, exit 2, no
    traceback, instead of dying inside ONNX Runtime."""
    import shutil

    from engines.bundle import seal

    bundle, _ = small_bundle
    forged = tmp_path / "forged"
    shutil.copytree(bundle.path, forged)
    data = json.loads((forged / "manifest.json").read_text())
    data["input_size"] = [96, 96]
    (forged / "manifest.json").write_text(json.dumps(seal(data)))
    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 10, (64, 64))
    writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    config = write_config(tmp_path / "config.yaml", forged, 1, f"  - station: s\n    source: {{type: file, path: {video}}}\n")
    process = start_daemon(config)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 2, output
    assert "forged" in output and "cannot run this bundle" in output and "Traceback" not in output, output


def test_a_part_far_out_of_the_calibrated_shape_is_refused_with_an_alarm(small_bundle, broker, tmp_path):
    """A camera reset to another resolution (here a 4:1 picture of a square part): resized to the
    model's square, the part would be squashed and scored as if nothing were wrong (it passed).
    It is answered as an error with an alarm, until parts of the learned shape come again."""
    bundle, _ = small_bundle
    assert bundle.manifest.training["part_aspect"] == {"min": 1.0, "max": 1.0}  # MPDD's plates are square
    good = cv2.imread(str(sorted((require(METAL_PLATE) / "train" / "good").glob("*.png"))[0]))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _part(inbox / "W-1.png", cv2.resize(good, (512, 128)))
    _part(inbox / "N-1.png", cv2.resize(good, (320, 240)))  # 4:3 of a square part: a crop a little off, still inspected
    _part(inbox / "N-2.png", good)
    subscriber = Subscriber(broker.port)
    camera = f"  - station: cam\n    source: {{type: folder, path: {inbox}, poll_interval_s: 0.05}}\n"
    process = start_daemon(write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera))
    try:
        ok = subscriber.reached("result", 3, timeout=60)
    finally:
        process.send_signal(signal.SIGTERM)
    finish(process, timeout=60)
    assert ok
    verdicts = {p["part_id"]: p for p in (json.loads(m.payload) for m in subscriber.on("result"))}
    assert verdicts["W-1"]["verdict"] == "error" and "512x128 pixels (width/height 4.00)" in verdicts["W-1"]["error"]
    assert verdicts["N-1"]["verdict"] in ("pass", "reject") and verdicts["N-2"]["verdict"] in ("pass", "reject")
    alarms = [json.loads(m.payload)["active"] for m in subscriber.on("alarm")]
    assert any(a["alarm"] == "part_shape" for active in alarms for a in active) and alarms[-1] == []
