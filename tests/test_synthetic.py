"""The demo's synthetic parts: deterministic, exact masks, learnable good parts, readable video."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge.synthetic import DEFECT_KINDS, main, make_part, part_region, write_part_folder, write_stream

KINDS = (None,) + DEFECT_KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_part(kind):
    image_a, mask_a = make_part(np.random.default_rng(7), 128, kind)
    image_b, mask_b = make_part(np.random.default_rng(7), 128, kind)
    assert image_a.shape == (128, 128, 3) and image_a.dtype == np.uint8
    assert mask_a.shape == (128, 128) and mask_a.dtype == np.uint8
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    other, _ = make_part(np.random.default_rng(8), 128, kind)
    assert not np.array_equal(image_a, other)


@pytest.mark.parametrize("kind", KINDS)
def test_mask_set_exactly_for_defects_and_on_the_part(kind):
    surface = part_region(256)
    for seed in range(6):
        _, mask = make_part(np.random.default_rng(seed), 256, kind)
        assert set(np.unique(mask)) <= {0, 255}
        if kind is None:
            assert not mask.any()
            continue
        on = mask > 0
        assert on.sum() >= 20, f"{kind} seed {seed}: defect too small to see"
        assert not (on & ~surface).any(), f"{kind} seed {seed}: defect off the part surface"
        ys, xs = np.nonzero(on)
        assert max(np.ptp(ys), np.ptp(xs)) + 1 <= 85, f"{kind} seed {seed}: defect trivially large"


def test_mask_is_exactly_the_changed_pixels():
    # Defects are drawn after every draw of the good part, so the same seed gives its good twin.
    for kind in DEFECT_KINDS:
        good, _ = make_part(np.random.default_rng(5), 256, None)
        bad, mask = make_part(np.random.default_rng(5), 256, kind)
        changed = np.abs(bad.astype(np.int16) - good).max(axis=2) > 0
        assert not (changed & (mask == 0)).any(), f"{kind}: pixels changed outside the mask"
        assert changed[mask > 0].mean() > 0.8, f"{kind}: mask covers pixels the defect left alone"


def test_good_parts_alike_and_defects_stand_out():
    rng = np.random.default_rng(0)
    goods = [make_part(rng, 256)[0].astype(np.float32) for _ in range(5)]
    surface = part_region(256)
    pairs = [np.abs(a - b)[surface].mean() for i, a in enumerate(goods) for b in goods[:i]]
    good_diff = float(np.mean(pairs))
    assert max(pairs) < 15, "good parts must look alike for the detector to learn them from ~60 images"
    for kind in DEFECT_KINDS:
        for seed in range(8):
            image, mask = make_part(np.random.default_rng(100 + seed), 256, kind)
            defect_diff = np.abs(image.astype(np.float32) - goods[0])[mask > 0].mean()
            assert defect_diff > 1.5 * good_diff, f"{kind} seed {seed}: {defect_diff:.1f} vs {good_diff:.1f}"


def test_stream_video_reads_back(tmp_path):
    path = tmp_path / "stream.avi"
    truth = write_stream(path, 16, 4, seed=3, size=128)
    assert [t["frame"] for t in truth] == list(range(16))
    assert sum(t["defect"] is not None for t in truth) == 4  # one per block of defect_every
    assert {t["defect"] for t in truth} <= set(KINDS)
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 16
    assert all(frame.shape == (128, 128, 3) for frame in frames)
    assert write_stream(tmp_path / "again.avi", 16, 4, seed=3, size=128) == truth


def test_part_folder_and_cli(tmp_path, capsys):
    truth = write_part_folder(tmp_path / "parts", 6, 3, seed=1, size=128)
    assert [t["part_id"] for t in truth] == [f"part_{i:05d}" for i in range(6)]
    assert sorted(p.stem for p in (tmp_path / "parts").glob("*.png")) == [t["part_id"] for t in truth]

    main([str(tmp_path / "demo"), "--good", "3", "--stream", "5", "--defect-every", "2", "--size", "128"])
    assert sorted(p.name for p in (tmp_path / "demo" / "good").iterdir()) == [f"good_{i:04d}.png" for i in range(3)]
    assert cv2.imread(str(tmp_path / "demo" / "good" / "good_0000.png")).shape == (128, 128, 3)
    assert len(json.loads((tmp_path / "demo" / "stream.json").read_text())) == 5
    assert (tmp_path / "demo" / "stream.avi").stat().st_size > 0
    assert "stream.avi" in capsys.readouterr().out
