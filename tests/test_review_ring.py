"""The review ring on its own (no daemon): rejects survive a restart, the oldest go first when the
ring is full or they are too old, and a label files the image it meant (real PNG files)."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from edge.answer import Answer, Inspected
from edge.capture import Frame
from edge.commands import FeedbackCommand
from edge.config import CameraConfig, ReviewConfig
from edge.decision import Verdict
from edge.review import ReviewRing


def _camera(tmp_path) -> CameraConfig:
    return CameraConfig.model_validate({"station": "s", "source": {"type": "folder", "path": str(tmp_path)}})


def _part(part_id: str, reject: bool, shade: int, recipe: str | None = None) -> Answer:
    image = np.full((32, 32, 3), shade, np.uint8)
    verdict = Verdict(reject, 3.0 if reject else 1.0, 2.0, ())
    frame = Frame(image, 0, time.time(), part_id=part_id, recipe=recipe)
    return Answer.of_inspection("s", frame, verdict, "b", Inspected(np.zeros((32, 32), np.float32), image, (0, 0, 32, 32)))


def _keep(ring: ReviewRing, *answers: Answer) -> None:
    for answer in answers:
        ring.keep(answer, answer.payload())
    deadline = time.monotonic() + 10
    while ring.writes and time.monotonic() < deadline:  # the writer thread takes them
        time.sleep(0.01)
    time.sleep(0.05)


def test_rejects_outlive_a_restart_and_the_oldest_go_first(tmp_path):
    limits = ReviewConfig(keep_parts=10)
    ring = ReviewRing("s", tmp_path / "review", _camera(tmp_path), limits)
    _keep(ring, *[_part(f"R{i}", True, 10 * i) for i in range(12)], _part("P1", False, 200))
    ring.close()
    recent = {p.name.split("-r-")[1][: -len(".png")] for p in (tmp_path / "review" / "recent").iterdir()}
    assert recent == {f"R{i}" for i in range(2, 12)}  # R0 and R1 pushed out; the pass never written

    again = ReviewRing("s", tmp_path / "review", _camera(tmp_path), limits)
    assert list(again.on_disk.parts) == [f"R{i}" for i in range(2, 12)]  # in the order they were kept
    assert again.label(FeedbackCommand(part_id="P1", label="defect")) is not None  # passes lived in memory only
    assert again.label(FeedbackCommand(part_id="R5", label="good")) is None
    filed = list((tmp_path / "review" / "good").glob("*.png"))
    assert len(filed) == 1 and filed[0].name.endswith("-r-R5.png")
    record = json.loads((tmp_path / "review" / "labels.jsonl").read_text().splitlines()[-1])
    assert record["part_id"] == "R5" and record["label"] == "good"
    assert again.labels.snapshot()["false_rejects"] == 1

    # Rejects older than keep_rejects_hours go when the next one is written.
    for path in (tmp_path / "review" / "recent").iterdir():
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    again.close()
    short = ReviewRing("s", tmp_path / "review", _camera(tmp_path), ReviewConfig(keep_parts=10, keep_rejects_hours=1.0))
    _keep(short, _part("NEW", True, 99))
    short.close()
    assert list(short.on_disk.parts) == ["NEW"]
    assert [p.name.split("-r-")[1] for p in (tmp_path / "review" / "recent").iterdir()] == ["NEW.png"]


def test_free_space_gives_up_the_oldest_reject_first(tmp_path):
    ring = ReviewRing("s", tmp_path / "review", _camera(tmp_path), ReviewConfig())
    _keep(ring, _part("A", True, 1), _part("B", True, 2))
    assert ring.free_space() is True
    assert list(ring.on_disk.parts) == ["B"]
    assert ring.free_space() is True and ring.free_space() is False
    ring.close()
    assert not list((tmp_path / "review" / "recent").iterdir())


def _wait_filed(ring: ReviewRing, part_id: str) -> None:
    deadline = time.monotonic() + 10
    while (ring.writes or ring.filed[part_id].path is None) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_an_operator_can_correct_a_label_and_the_image_and_counts_follow(tmp_path):
    """Good, then defect (scratch), then defect (dent): the image moves each time, so refit never
    reads a part the operator took back; the counts and labels.jsonl say what happened. (The
    station kept the first label and refused every correction, while the console showed it.)"""
    root = tmp_path / "review"
    ring = ReviewRing("s", root, _camera(tmp_path), ReviewConfig())
    _keep(ring, _part("R1", True, 50), _part("P1", False, 60))
    assert ring.label(FeedbackCommand(part_id="R1", label="good")) is None
    assert ring.label(FeedbackCommand(part_id="R1", label="defect", defect_type="scratch")) is None
    assert ring.label(FeedbackCommand(part_id="P1", label="defect", defect_type="dent")) is None  # a miss, written by the ring's thread
    _wait_filed(ring, "P1")
    assert ring.label(FeedbackCommand(part_id="P1", label="good")) is None
    assert ring.label(FeedbackCommand(part_id="P1", label="good")) is None  # sent twice: nothing moves
    ring.close()
    assert not list((root / "defect" / "dent").glob("*.png"))
    assert [p.name.split("-")[-1] for p in (root / "good").glob("*.png")] == ["P1.png"]
    assert [p.name.split("-")[-1] for p in (root / "defect" / "scratch").glob("*.png")] == ["R1.png"]
    assert ring.labels.snapshot() == {"false_rejects": 0, "misses": 0, "confirmed_rejects": 1, "confirmed_good": 1}
    records = [json.loads(line) for line in (root / "labels.jsonl").read_text().splitlines()]
    assert [(r["part_id"], r["label"], r.get("corrects")) for r in records] == [
        ("R1", "good", None),
        ("R1", "defect", {"label": "good", "defect_type": None}),
        ("P1", "defect", None),
        ("P1", "good", {"label": "defect", "defect_type": "dent"}),
    ]


def test_a_repeated_part_id_is_labelled_as_its_newest_part(tmp_path):
    """A camera that reuses a file name: the pass of an hour ago and the reject of now are both
    kept; the operator labelling that id means the part in front of them, the newest."""
    ring = ReviewRing("s", tmp_path / "review", _camera(tmp_path), ReviewConfig())
    _keep(ring, _part("Y1", False, 10))
    _keep(ring, _part("Y1", True, 240))
    assert ring.label(FeedbackCommand(part_id="Y1", label="good")) is None
    ring.close()
    (filed,) = (tmp_path / "review" / "good").glob("*.png")
    assert "-r-" in filed.name  # the reject's image, not the older pass's
    assert ring.labels.snapshot()["false_rejects"] == 1


def test_a_station_with_several_recipes_files_each_products_labels_apart(tmp_path):
    """refit reads one folder of good parts: another product's in it would teach the wrong part."""
    root = tmp_path / "review"
    ring = ReviewRing("s", root, _camera(tmp_path), ReviewConfig(), per_recipe=True)
    _keep(ring, _part("A1", True, 30, recipe="plate-a"), _part("B1", True, 90, recipe="plate-b"))
    assert ring.label(FeedbackCommand(part_id="A1", label="good")) is None
    assert ring.label(FeedbackCommand(part_id="B1", label="good")) is None
    ring.close()
    assert [p.name.split("-")[-1] for p in (root / "plate-a" / "good").glob("*.png")] == ["A1.png"]
    assert [p.name.split("-")[-1] for p in (root / "plate-b" / "good").glob("*.png")] == ["B1.png"]
    assert not (root / "good").exists()
