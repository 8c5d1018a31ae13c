"""edge-calibrate --choose-strides: every candidate calibrated, the best kept, its choice recorded."""
import shutil

import numpy as np
import pytest

from tests.conftest import METAL_PLATE, require
from tests.test_cli import run

SMALL = ["--input-size", "64", "--max-steps", "5", "--threads", "2"]


@pytest.fixture
def marked_defects(tmp_path):
    """Four defective plates and their masks, as a line engineer would hand them over."""
    root = require(METAL_PLATE)
    images, masks = tmp_path / "defects", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for path in sorted((root / "test" / "defective").iterdir())[:4]:
        shutil.copy(path, images / path.name)
        shutil.copy(root / "ground_truth" / "defective" / f"{path.stem}_mask.png", masks / f"{path.stem}_mask.png")
    return images, masks


def test_choose_strides_keeps_the_best_candidate_and_records_why(good_folder, marked_defects, tmp_path):
    from calibration.calibrate import split_good
    from calibration.choose_strides import judge
    from calibration.datasets import read_mask_file
    from calibration.images import list_images, load_images
    from engines.bundle import open_bundle

    defects, masks = marked_defects
    out = tmp_path / "station"
    result = run("calibration.cli", str(good_folder), "-o", str(out), *SMALL, "--json",
                 "--choose-strides", "8,16,32", "8,16", "--defects", str(defects), "--masks", str(masks))
    assert result.returncode == 0, result.stderr
    assert "candidate 1/2: strides 8,16,32" in result.stderr and "candidate 2/2: strides 8,16" in result.stderr
    assert "chose strides" in result.stderr and '"stride_choice"' in result.stdout

    bundle = open_bundle(out)  # verified: the amended manifest still matches every file
    choice = bundle.manifest.training["stride_choice"]
    assert choice["criterion"] == "mean of image AUROC, pixel AUROC and PRO"
    assert [tuple(c["strides"]) for c in choice["candidates"]] == [(8, 16, 32), (8, 16)]
    assert choice["held_out_good"] == 5 and choice["defect_samples"] == 4
    criteria = [c["criterion"] for c in choice["candidates"]]
    for c in choice["candidates"]:
        assert all(0.0 <= c[k] <= 1.0 for k in ("image_auroc", "pixel_auroc", "pro"))
        assert c["criterion"] == pytest.approx(np.mean([c["image_auroc"], c["pixel_auroc"], c["pro"]]))
    best = choice["candidates"][int(np.argmax(criteria))]  # argmax takes the first of equals, as the choice does
    assert tuple(choice["chosen"]) == tuple(best["strides"]) == bundle.manifest.flow_strides

    # The recorded numbers are the written bundle's own: judged again, they come out the same.
    size, colour = tuple(bundle.manifest.input_size), bundle.manifest.colour
    _, held = split_good(list_images(good_folder), None, 0.2, bundle.manifest.training["train"]["seed"])
    defect_paths = list_images(defects)
    again = judge(bundle, load_images(held, size, colour).images, load_images(defect_paths, size, colour).images,
                  np.stack([read_mask_file(p, size) for p in sorted(masks.iterdir())]))
    assert again == pytest.approx((best["image_auroc"], best["pixel_auroc"], best["pro"]), abs=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["defects", "good", "masks", "station"], "a candidate was left behind"


def test_choose_strides_refuses_bad_input_and_writes_nothing(good_folder, marked_defects, tmp_path):
    defects, masks = marked_defects
    out = tmp_path / "station"
    (masks / "001_mask.png").unlink()
    missing = run("calibration.cli", str(good_folder), "-o", str(out), *SMALL, "--choose-strides", "--defects", str(defects), "--masks", str(masks))
    assert missing.returncode == 2 and "001.png: no mask (001_mask.png or 001.png" in missing.stderr
    assert "Traceback" not in missing.stderr

    no_defects = run("calibration.cli", str(good_folder), "-o", str(out), "--choose-strides")
    assert no_defects.returncode == 2 and "--choose-strides needs --defects" in no_defects.stderr
    both = run("calibration.cli", str(good_folder), "-o", str(out), "--strides", "8,16", "--choose-strides", "--defects", str(defects))
    assert both.returncode == 2 and "either --strides or --choose-strides" in both.stderr
    for path in sorted(defects.iterdir())[2:]:
        path.unlink()
    too_few = run("calibration.cli", str(good_folder), "-o", str(out), "--choose-strides", "--defects", str(defects))
    assert too_few.returncode == 2 and "2 defective images; choosing scales needs at least 3" in too_few.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["defects", "good", "masks"]
