"""edge-calibrate and edge-evaluate as a user runs them: exit codes and messages."""
import subprocess
import sys

from tests.conftest import METAL_PLATE, require


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def first_images(folder, count=3, size=64):
    """The first good images as the model takes them: uint8 RGB at size x size."""
    import cv2
    import numpy as np

    return np.stack([cv2.resize(cv2.imread(str(p))[:, :, ::-1], (size, size)) for p in sorted(folder.iterdir())[:count]])


def inspect_with_both_backends(bundle, images):
    """(maps, scores) from ONNX Runtime, then from the torch model, for the same images."""
    from engines.backends import open_backend
    from engines.inspector import Inspector

    return tuple(Inspector(bundle, open_backend(name, bundle)).inspect_batch(images) for name in ("onnxruntime", "torch"))


def test_calibrate_end_to_end_and_refuses_overwrite(good_folder, tmp_path):
    out = tmp_path / "bundle"
    args = ["calibration.cli", str(good_folder), "-o", str(out), "--input-size", "64", "--max-steps", "5", "--threads", "2", "--json"]
    first = run(*args)
    assert first.returncode == 0, first.stderr
    assert '"holdout_images": 5' in first.stdout
    assert "ETA" in first.stderr  # progress is shown
    assert (out / "manifest.json").is_file()
    again = run(*args)
    assert again.returncode == 2
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.stderr
    forced = run(*args, "--force")
    assert forced.returncode == 0, forced.stderr


def test_too_few_images_says_how_many(tmp_path, good_folder):
    for path in sorted(good_folder.iterdir())[6:]:
        path.unlink()
    result = run("calibration.cli", str(good_folder), "-o", str(tmp_path / "b"))
    assert result.returncode == 2
    assert "too few good images" in result.stderr and "need at least 10" in result.stderr
    assert not (tmp_path / "b").exists()


def test_unreadable_files_are_named(tmp_path, good_folder):
    (good_folder / "broken.png").write_bytes(b"not a png at all")
    (good_folder / "empty.jpg").write_bytes(b"")
    result = run("calibration.cli", str(good_folder), "-o", str(tmp_path / "b"))
    assert result.returncode == 2
    assert "broken.png" in result.stderr and "empty.jpg" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".b.*"))  # no half-written bundle


def test_missing_folder(tmp_path):
    result = run("calibration.cli", str(tmp_path / "nope"), "-o", str(tmp_path / "b"))
    assert result.returncode == 2 and "not a folder" in result.stderr


def test_evaluate_rejects_wrong_layout_and_writes_report(small_bundle, tmp_path):
    bundle, _ = small_bundle
    bad = run("calibration.evaluate_cli", str(bundle.path), str(tmp_path))
    assert bad.returncode == 2 and "no train/good" in bad.stderr
    good = run("calibration.evaluate_cli", str(bundle.path), str(require(METAL_PLATE)), "-o", str(tmp_path / "eval"))
    assert good.returncode == 0, good.stderr
    assert "overall" in good.stdout and "test-set-max ref" in good.stdout
    import cv2

    sheet = cv2.imread(str(tmp_path / "eval" / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] >= 2 * 192  # a row for good and one per defect type


def test_evaluate_a_category_without_good_test_parts(small_bundle, tmp_path):
    """A line that kept only its rejects: the miss rate and the outlines, and a line saying why
    there is no image AUROC, not a traceback."""
    import json

    bundle, _ = small_bundle
    plate = require(METAL_PLATE)
    category = tmp_path / "rejects_only"
    (category / "train").mkdir(parents=True)
    (category / "test").mkdir()
    (category / "train" / "good").symlink_to(plate / "train" / "good")
    (category / "ground_truth").symlink_to(plate / "ground_truth")
    for kind in (d for d in (plate / "test").iterdir() if d.is_dir() and d.name != "good"):
        (category / "test" / kind.name).symlink_to(kind)
    result = run("calibration.evaluate_cli", str(bundle.path), str(category), "-o", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr
    assert "holds no good parts" in result.stdout and "Traceback" not in result.stderr
    overall = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["overall"]
    assert overall["image_auroc"] is None and overall["false_reject_rate"] is None
    assert 0.0 <= overall["miss_rate"] <= 1.0 and 0.5 < overall["pixel_auroc"] <= 1.0


def test_feature_pooling_is_in_the_bundle_and_its_encoder_graph(good_folder, tmp_path):
    """--feature-pooling 3: the bundle records it, the exported encoder averages each feature map
    over 3x3 neighbours (borders over what exists), and the torch backend agrees with the graph."""
    import numpy as np
    import onnx
    import onnxruntime
    import torch
    import torch.nn.functional as F

    from engines.bundle import ENCODER_ONNX, open_bundle
    from engines.cflow import PreprocessedEncoder
    from engines.encoders import load_encoder

    refused = run("calibration.cli", str(good_folder), "-o", str(tmp_path / "two"), "--feature-pooling", "2")
    assert refused.returncode == 2 and "--feature-pooling" in refused.stderr and "Traceback" not in refused.stderr
    out = tmp_path / "pooled"
    args = ["calibration.cli", str(good_folder), "-o", str(out), "--input-size", "64", "--max-steps", "5", "--threads", "2", "--feature-pooling", "3"]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    bundle = open_bundle(out)
    assert bundle.manifest.encoder.feature_pooling == 3
    graph = onnx.load(str(bundle.file(ENCODER_ONNX)))
    assert sum(node.op_type == "AveragePool" for node in graph.graph.node) == 3  # one per scale

    images = first_images(good_folder)
    session = onnxruntime.InferenceSession(str(bundle.file(ENCODER_ONNX)), providers=["CPUExecutionProvider"])
    pooled = session.run(None, {session.get_inputs()[0].name: images})
    module, info = load_encoder("efficientnet-lite0")
    with torch.no_grad():
        plain = PreprocessedEncoder(module, info.mean, info.std).eval()(torch.from_numpy(images))
    for graph_map, plain_map in zip(pooled, plain):
        expected = F.avg_pool2d(plain_map, 3, stride=1, padding=1, count_include_pad=False).numpy()
        assert np.abs(graph_map - expected).max() < 1e-3
        assert np.abs(graph_map - plain_map.numpy()).max() > 0.1  # pooling did change the features
        corner = plain_map[:, :, :2, :2].mean(dim=(2, 3)).numpy()  # a corner averages its 4 real neighbours
        assert np.abs(graph_map[:, :, 0, 0] - corner).max() < 1e-3

    (onnx_maps, _), (torch_maps, _) = inspect_with_both_backends(bundle, images)
    assert np.abs(onnx_maps - torch_maps).max() < 1e-2


def test_strides_drop_flows_but_the_part_model_keeps_every_stage(good_folder, tmp_path):
    """--strides 8,16: two flows; the encoder still taps stride 32 for the whole-part model, the
    bundle says so (format 3, flow.strides) and every backend scores it the same."""
    import json

    import numpy as np
    import onnx
    import pytest

    from engines.bundle import FLOWS_ONNX, FORMAT_VERSION, MANIFEST, BundleError, open_bundle, seal

    refused = run("calibration.cli", str(good_folder), "-o", str(tmp_path / "bad"), "--strides", "16,8")
    assert refused.returncode == 2 and "8,16,32" in refused.stderr and "Traceback" not in refused.stderr
    out = tmp_path / "two"
    args = ["calibration.cli", str(good_folder), "-o", str(out), "--input-size", "64", "--max-steps", "5", "--threads", "2", "--strides", "8,16", "--json"]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert '"part_appearance_statistics": 880' in result.stdout  # mean and deviation of 40 + 80 + 320 channels
    bundle = open_bundle(out)
    assert bundle.manifest.encoder.tap_strides == (8, 16, 32) and bundle.manifest.flow_strides == (8, 16)
    assert bundle.manifest.format_version == FORMAT_VERSION and len(bundle.manifest.scoring.log_likelihood_reference) == 2
    flows = onnx.load(str(bundle.file(FLOWS_ONNX))).graph
    assert [i.name for i in flows.input] == ["features_0", "features_1", "features_2"]
    patch = ["patch_distance"] if bundle.manifest.scoring.nearest_patch is not None else []
    assert [o.name for o in flows.output] == ["log_likelihood_0", "log_likelihood_1", "part_distance", *patch]
    images = first_images(good_folder)
    (onnx_maps, onnx_scores), (torch_maps, torch_scores) = inspect_with_both_backends(bundle, images)
    assert onnx_maps.shape == (3, 64, 64) and np.isfinite(onnx_scores).all()
    assert np.abs(onnx_maps - torch_maps).max() < 1e-2 and np.abs(onnx_scores - torch_scores).max() < 1e-2

    # A flow stride the encoder does not tap is a broken manifest, named as such (even with
    # the digest made to match: tests/test_bad_bundles.py has the hand edit).
    data = json.loads((out / MANIFEST).read_text())
    data["flow"]["strides"] = [8, 64]
    (out / MANIFEST).write_text(json.dumps(seal(data)))
    with pytest.raises(BundleError, match=r"malformed.*flow.strides \[8, 64\]"):
        open_bundle(out)


def test_strides_without_the_part_model_shorten_the_encoder(good_folder, tmp_path):
    """--strides 8,16 --no-part-appearance: nothing needs stride 32, so the encoder graph stops
    after stage 4 and gives exactly the full encoder's first two feature maps."""
    import numpy as np
    import onnx
    import onnxruntime
    import torch

    from engines.bundle import ENCODER_ONNX, FORMAT_VERSION, open_bundle
    from engines.cflow import PreprocessedEncoder
    from engines.encoders import load_encoder

    out = tmp_path / "short"
    args = ["calibration.cli", str(good_folder), "-o", str(out), "--input-size", "64", "--max-steps", "5", "--threads", "2",
            "--strides", "8,16", "--no-part-appearance"]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    bundle = open_bundle(out)
    assert bundle.manifest.encoder.tap_strides == (8, 16) and bundle.manifest.encoder.tap_channels == (40, 80)
    assert bundle.manifest.format_version == FORMAT_VERSION and bundle.manifest.flow.strides is None

    short, _ = load_encoder("efficientnet-lite0", tap_strides=(8, 16))
    full, info = load_encoder("efficientnet-lite0")
    assert len(short._blocks) < len(full._blocks)
    graph = onnx.load(str(bundle.file(ENCODER_ONNX)))
    assert len(graph.graph.output) == 2
    images = first_images(good_folder)
    session = onnxruntime.InferenceSession(str(bundle.file(ENCODER_ONNX)), providers=["CPUExecutionProvider"])
    features = session.run(None, {session.get_inputs()[0].name: images})
    with torch.no_grad():
        reference = PreprocessedEncoder(full, info.mean, info.std).eval()(torch.from_numpy(images))
    for graph_map, full_map in zip(features, reference[:2]):
        assert np.abs(graph_map - full_map.numpy()).max() < 1e-3
    (onnx_maps, _), (torch_maps, _) = inspect_with_both_backends(bundle, images)
    assert np.abs(onnx_maps - torch_maps).max() < 1e-2


def test_four_scales_calibrate_and_every_backend_agrees(good_folder, tmp_path):
    """--strides 4,8,16,32: a fourth, finer flow; both graphs and the torch model agree."""
    import numpy as np

    from engines.backends import open_backend
    from engines.bundle import open_bundle

    out = tmp_path / "four"
    args = ["calibration.cli", str(good_folder), "-o", str(out), "--input-size", "64", "--max-steps", "5", "--threads", "2", "--strides", "4,8,16,32"]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    bundle = open_bundle(out)
    assert bundle.manifest.encoder.tap_strides == (4, 8, 16, 32) and bundle.manifest.encoder.tap_channels == (24, 40, 80, 320)
    images = first_images(good_folder)
    output = open_backend("onnxruntime", bundle).infer(images)
    assert [ll.shape[1:] for ll in output.log_likelihoods] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    (onnx_maps, _), (torch_maps, _) = inspect_with_both_backends(bundle, images)
    assert np.abs(onnx_maps - torch_maps).max() < 1e-2
