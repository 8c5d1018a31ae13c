"""Bad inputs to the offline commands: each refused before any long work, with exit code 2 and a
line that names the file or option, never a traceback."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from tests.conftest import METAL_PLATE, require


def call(main, argv: list[str]) -> int:
    """main()'s return code; argparse's refusals exit instead of returning."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1


def tree(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")}


def no_write_access(monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if mode & os.W_OK else real(path, mode, **kw))


def read_only_filesystem(monkeypatch):
    def refuse(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", dir)

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)


def without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here: --device cuda is valid (tests/test_calibrate.py trains on it)")


def a_file(path: Path) -> Path:
    path.write_text("not a folder")
    return path


def a_folder(path: Path, *files: str) -> Path:
    path.mkdir()
    for name in files:
        (path / name).write_text("x")
    return path


def with_strip(folder: Path) -> Path:
    """The good folder with one real plate cropped to a 2000x40 strip beside the 512x512 ones."""
    import cv2

    plate = cv2.imread(str(sorted(folder.iterdir())[0]))
    cv2.imwrite(str(folder / "strip.png"), cv2.resize(plate, (2000, 40)))
    return folder


def a_mask(path: Path, shape: tuple[int, int]) -> Path:
    """A marked mask of this (height, width), whatever its image's size."""
    import cv2
    import numpy as np

    mask = np.zeros(shape, np.uint8)
    mask[shape[0] // 3 : shape[0] // 2, shape[1] // 3 : shape[1] // 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mask)
    return path


def masks_of_another_shape(folder: Path, images: Path) -> Path:
    """A 33x47 mask for every image of `images` (real parts of 512x512)."""
    for image in sorted(images.iterdir()):
        a_mask(folder / f"{image.stem}_mask.png", (47, 33))
    return folder


def category_with_a_mask_of_another_shape(root: Path) -> Path:
    """A real MVTec-layout category of one good and one defective metal plate, whose mask is
    33x47 while its image is 512x512."""
    import shutil

    source = require(METAL_PLATE)
    defect = sorted((source / "test" / "defective").iterdir())[0]
    for folder, image in (("train/good", sorted((source / "train" / "good").iterdir())[0]), ("test/good", sorted((source / "test" / "good").iterdir())[0]), ("test/defective", defect)):
        (root / folder).mkdir(parents=True)
        shutil.copy(image, root / folder / image.name)
    a_mask(root / "ground_truth" / "defective" / f"{defect.stem}_mask.png", (47, 33))
    return root


def with_broken_image(folder: Path) -> Path:
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


# id, argv from (tmp, good, monkeypatch), what the message must name. tmp/out is free; tmp/good
# holds 20 real good images.
CALIBRATE_CASES = [
    ("good-missing", lambda t, g, m: [t / "nope", "-o", t / "out"], ["nope", "not a folder"]),
    ("sign-key-missing", lambda t, g, m: [g, "-o", t / "out", "--sign-key", t / "none.pem"], ["--sign-key", "none.pem"]),
    ("sign-key-not-a-key", lambda t, g, m: [g, "-o", t / "out", "--sign-key", a_file(t / "key.pem")], ["--sign-key", "key.pem", "PEM"]),
    ("good-is-a-file", lambda t, g, m: [a_file(t / "good.png"), "-o", t / "out"], ["good.png", "not a folder"]),
    ("good-empty", lambda t, g, m: [a_folder(t / "empty"), "-o", t / "out"], ["empty", "no images"]),
    ("good-no-images", lambda t, g, m: [a_folder(t / "notes", "a.txt", "b.csv"), "-o", t / "out"], ["notes", "no images"]),
    ("good-unreadable-image", lambda t, g, m: [with_broken_image(g), "-o", t / "out"], ["broken.png"]),
    # A stray 2000x40 strip among square plates was stretched to the square and trained as good.
    ("good-image-of-another-shape", lambda t, g, m: [with_strip(g), "-o", t / "out"], ["strip.png (50.00)", "median 1.00", "width/height"]),
    ("holdout-missing", lambda t, g, m: [g, "-o", t / "out", "--holdout", t / "gone"], ["--holdout", "gone"]),
    ("holdout-is-good", lambda t, g, m: [g, "-o", t / "out", "--holdout", g], ["--holdout", "GOOD folder"]),
    ("defects-missing", lambda t, g, m: [g, "-o", t / "out", "--defects", t / "rejects"], ["--defects", "rejects"]),
    ("defects-empty", lambda t, g, m: [g, "-o", t / "out", "--defects", a_folder(t / "rejects")], ["--defects", "no images"]),
    ("masks-missing", lambda t, g, m: [g, "-o", t / "out", "--choose-strides", "--defects", g, "--masks", t / "masks"], ["--masks", "masks"]),
    (
        "masks-of-another-shape",
        lambda t, g, m: [g, "-o", t / "out", "--choose-strides", "--defects", g, "--masks", masks_of_another_shape(t / "masks", g)],
        ["_mask.png", "33x47", "its image 512x512"],
    ),
    ("output-exists", lambda t, g, m: [g, "-o", a_folder(t / "out"), "--max-steps", "1"], ["out", "already exists", "--force"]),
    ("output-is-a-file", lambda t, g, m: [g, "-o", a_file(t / "out"), "--force"], ["out", "is a file"]),
    ("output-not-a-bundle", lambda t, g, m: [g, "-o", a_folder(t / "out", "keep.txt"), "--force"], ["out", "not a bundle"]),
    ("output-inside-a-file", lambda t, g, m: [g, "-o", a_file(t / "file.txt") / "bundle"], ["file.txt", "is a file"]),
    ("output-deep-inside-a-file", lambda t, g, m: [g, "-o", a_file(t / "file.txt") / "a" / "b"], ["file.txt", "is a file"]),
    ("output-not-writable", lambda t, g, m: no_write_access(m) or [g, "-o", t / "new" / "out"], ["-o/--output", "out", "cannot write"]),
    ("output-read-only-fs", lambda t, g, m: read_only_filesystem(m) or [g, "-o", t / "out"], ["-o/--output", "Read-only file system"]),
    ("epochs-zero", lambda t, g, m: [g, "-o", t / "out", "--epochs", "0"], ["--epochs"]),
    ("epochs-nan", lambda t, g, m: [g, "-o", t / "out", "--epochs", "nan"], ["--epochs"]),
    ("max-steps-zero", lambda t, g, m: [g, "-o", t / "out", "--max-steps", "0"], ["--max-steps"]),
    ("max-steps-not-a-number", lambda t, g, m: [g, "-o", t / "out", "--max-steps", "many"], ["--max-steps"]),
    ("augment-negative", lambda t, g, m: [g, "-o", t / "out", "--augment", "-1"], ["--augment"]),
    ("threads-negative", lambda t, g, m: [g, "-o", t / "out", "--threads", "-1"], ["--threads"]),
    # Past these the run crashed (OpenCV's thread pool: a segfault) or grew past 6 GB in seconds.
    ("threads-beyond-any-machine", lambda t, g, m: [g, "-o", t / "out", "--threads", "100000"], ["--threads", "at most 256"]),
    ("augment-beyond-memory", lambda t, g, m: [g, "-o", t / "out", "--augment", "100000"], ["--augment", "at most 32"]),
    ("coupling-blocks-beyond-memory", lambda t, g, m: [g, "-o", t / "out", "--coupling-blocks", "100000"], ["--coupling-blocks", "at most 64"]),
    ("holdout-fraction-above-1", lambda t, g, m: [g, "-o", t / "out", "--holdout-fraction", "1.5"], ["--holdout-fraction"]),
    ("target-frr-zero", lambda t, g, m: [g, "-o", t / "out", "--target-frr", "0"], ["--target-frr"]),
    ("coupling-blocks-zero", lambda t, g, m: [g, "-o", t / "out", "--coupling-blocks", "0"], ["--coupling-blocks"]),
    ("seed-negative", lambda t, g, m: [g, "-o", t / "out", "--seed", "-1"], ["--seed"]),
    ("input-size-not-32", lambda t, g, m: [g, "-o", t / "out", "--input-size", "100"], ["--input-size"]),
    ("device-unknown", lambda t, g, m: [g, "-o", t / "out", "--device", "tpu"], ["--device"]),
    ("device-cuda-without-a-gpu", lambda t, g, m: without_cuda() or [g, "-o", t / "out", "--device", "cuda"], ["--device cuda", "--device cpu"]),
]


@pytest.mark.parametrize("argv, named", [pytest.param(a, n, id=i) for i, a, n in CALIBRATE_CASES])
def test_calibrate_refuses_bad_input_before_training(argv, named, good_folder, tmp_path, monkeypatch, capsys):
    from calibration.cli import main

    args = argv(tmp_path, good_folder, monkeypatch)
    before = tree(tmp_path)
    code = call(main, args)
    out, err = capsys.readouterr()
    assert code == 2, err
    for text in named:
        assert text in err, err
    assert "Traceback" not in out + err
    assert len(err.splitlines()) == 1 or "image(s):" in err  # that one lists every bad file, one a line
    # Refused before training: no bundle, no temporary folder beside it, no parent made.
    assert tree(tmp_path) == before


def test_calibrate_interrupted_is_exit_1(good_folder, tmp_path, monkeypatch, capsys):
    import calibration.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(calibration.cli, "calibrate", interrupted)
    assert call(calibration.cli.main, [good_folder, "-o", tmp_path / "out"]) == 1
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_calibrate_disk_error_while_writing_names_the_file(good_folder, tmp_path, monkeypatch, capsys):
    import calibration.cli

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".out.x" / "flows.pt"))

    monkeypatch.setattr(calibration.cli, "calibrate", disk_full)
    assert call(calibration.cli.main, [good_folder, "-o", tmp_path / "out"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "flows.pt: No space left on device" in err


# id, argv from (tmp, bundle, category, monkeypatch), what the message must name.
EVALUATE_CASES = [
    ("bundle-missing", lambda t, b, c, m: [t / "station3", c], ["station3", "not a folder"]),
    ("bundle-is-a-file", lambda t, b, c, m: [a_file(t / "station3"), c], ["station3", "not a folder"]),
    ("bundle-not-a-bundle", lambda t, b, c, m: [a_folder(t / "station3"), c], ["station3", "manifest.json"]),
    ("category-missing", lambda t, b, c, m: [b, t / "metal_plate"], ["metal_plate", "not a folder"]),
    ("category-wrong-layout", lambda t, b, c, m: [b, a_folder(t / "metal_plate", "a.png")], ["metal_plate", "train/good"]),
    ("output-is-a-file", lambda t, b, c, m: [b, c, "-o", a_file(t / "report")], ["report", "is a file"]),
    ("output-inside-a-file", lambda t, b, c, m: [b, c, "-o", a_file(t / "report") / "eval"], ["report", "is a file"]),
    ("output-inside-the-bundle", lambda t, b, c, m: [b, c, "-o", b / "evaluation"], ["evaluation", "inside the bundle"]),
    ("output-not-writable", lambda t, b, c, m: no_write_access(m) or [b, c, "-o", t / "eval"], ["eval", "cannot write"]),
    ("threads-negative", lambda t, b, c, m: [b, c, "--threads", "-1"], ["--threads"]),
    ("threads-beyond-any-machine", lambda t, b, c, m: [b, c, "--threads", "100000"], ["--threads", "at most 256"]),
    # A mask of another shape was stretched over its part: PRO 0.35 instead of 0.83, silently.
    ("mask-of-another-shape", lambda t, b, c, m: [b, category_with_a_mask_of_another_shape(t / "plates"), "-o", t / "eval"], ["_mask.png", "33x47", "width/height 1.000"]),
]


@pytest.mark.parametrize("argv, named", [pytest.param(a, n, id=i) for i, a, n in EVALUATE_CASES])
def test_evaluate_refuses_bad_input_before_scoring(argv, named, small_bundle, tmp_path, monkeypatch, capsys):
    from calibration.evaluate_cli import main

    bundle = small_bundle[0].path
    args = argv(tmp_path, bundle, require(METAL_PLATE), monkeypatch)
    before = tree(tmp_path), tree(bundle.parent)
    code = call(main, args)
    out, err = capsys.readouterr()
    assert code == 2, err
    for text in named:
        assert text in err, err
    assert "Traceback" not in out + err and len(err.splitlines()) == 1
    assert (tree(tmp_path), tree(bundle.parent)) == before


def test_evaluate_writes_beside_the_bundle_by_default():
    from calibration.evaluate_cli import default_output

    assert default_output(Path("/x/station3")) == Path("/x/station3.evaluation")
    assert default_output(Path("/x/station3/")) == Path("/x/station3.evaluation")


@pytest.mark.parametrize("make_bundle", [lambda t: t / "station3", lambda t: a_folder(t / "station3", "flows.pt")], ids=["missing", "not-a-bundle"])
def test_engines_refuses_a_path_that_is_not_a_bundle(make_bundle, tmp_path, capsys):
    from engines.cli import main

    path = make_bundle(tmp_path)
    assert call(main, ["check", path]) == 2
    out, err = capsys.readouterr()
    assert str(path) in err and "Traceback" not in out + err


@pytest.mark.parametrize(
    "module, prog",
    [("calibration.cli", "edge-calibrate"), ("calibration.evaluate_cli", "edge-evaluate"), ("engines.cli", "edge-engines"), ("edge.cli", "edge-inspect")],
)
def test_version(module, prog, capsys):
    import importlib

    # edge-inspect answers without its required --config: argparse's version action exits first.
    assert call(importlib.import_module(module).main, ["--version"]) == 0
    line = capsys.readouterr().out.strip()
    assert prog in line and "bundle format" in line and "\n" not in line
