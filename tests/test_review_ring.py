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


def _part(part_id: str, reject: bool, shade: int) -> Answer:
    image = np.full((32, 32, 3), shade, np.uint8)
    verdict = Verdict(reject, 3.0 if reject else 1.0, 2.0, ())
    return Answer.of_inspection("s", Frame(image, 0, time.time(), part_id=part_id), verdict, "b", Inspected(np.zeros((32, 32), np.float32), image, (0, 0, 32, 32)))


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
