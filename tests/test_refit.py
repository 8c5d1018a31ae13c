"""edge-bundle refit: the scoring constants and threshold fitted again on good parts as the camera
sees them after a lighting change, without retraining (real bundle, real images)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np

from calibration.bundle_cli import main as edge_bundle
from engines.backends import open_backend
from engines.bundle import open_bundle
from engines.inspector import Inspector
from tests.conftest import METAL_PLATE, require


def _brightened(sources, folder):
    folder.mkdir()
    for path in sources:
        image = cv2.imread(str(path)).astype(np.float32)
        cv2.imwrite(str(folder / path.name), np.clip(image * 1.25 + 25, 0, 255).astype(np.uint8))
    return folder


def _scores(bundle, folder) -> np.ndarray:
    inspector = Inspector(bundle, open_backend("onnxruntime", bundle))
    images = np.stack([inspector.model_input(cv2.imread(str(p))) for p in sorted(folder.iterdir())])
    return inspector.inspect_batch(images)[1]


def test_a_refit_bundle_takes_the_new_lighting_and_still_catches_defects(small_bundle, tmp_path, capsys):
    bundle, _ = small_bundle
    root = require(METAL_PLATE)
    good = sorted((root / "train" / "good").glob("*.png"))
    defects = sorted(p for p in (root / "test").glob("*/*.png") if p.parent.name != "good")[:20]
    refit_good = _brightened(good[-60:-20], tmp_path / "brighter-good")  # the review folder
    unseen_good = _brightened(good[-20:], tmp_path / "brighter-unseen")
    brighter_defects = _brightened(defects, tmp_path / "brighter-defects")
    plain_defects = tmp_path / "defects"
    plain_defects.mkdir()
    for path in defects:
        shutil.copy(path, plain_defects / path.name)

    before = np.mean(_scores(bundle, unseen_good) > bundle.manifest.thresholds.image)
    missed_before = np.mean(_scores(bundle, plain_defects) <= bundle.manifest.thresholds.image)
    new_path = tmp_path / "refit"
    argv = ["refit", str(bundle.path), str(refit_good), "-o", str(new_path), "--why", "new lamp", "--defects", str(brighter_defects)]
    assert edge_bundle(argv) == 0
    out = capsys.readouterr().out
    assert "false-reject rate" in out and "miss rate" in out
    refit = open_bundle(new_path)
    assert refit.manifest.history[-1]["action"] == "refit" and refit.manifest.files == bundle.manifest.files  # same flows
    after = np.mean(_scores(refit, unseen_good) > refit.manifest.thresholds.image)
    missed_after = np.mean(_scores(refit, brighter_defects) <= refit.manifest.thresholds.image)
    assert before >= 0.2 and after < before, (before, after)  # the shift made good parts fail; the refit takes it
    assert missed_after <= missed_before + 0.2, (missed_before, missed_after)
    # Bad input: a folder too small, a missing folder; exit 2, the folder named.
    for argv, said in (
        (["refit", str(bundle.path), str(tmp_path / "none"), "-o", str(tmp_path / "x"), "--why", "x"], "none"),
        (["refit", str(bundle.path), str(_brightened(good[:3], tmp_path / "few")), "-o", str(tmp_path / "y"), "--why", "x"], "at least 10"),
    ):
        assert edge_bundle(argv) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, err
