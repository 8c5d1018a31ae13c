"""A real calibration on real good parts, then evaluation through ONNX Runtime."""
import json

import numpy as np
import pytest

from calibration.datasets import open_category
from calibration.evaluate import evaluate_scored, score_category
from engines.bundle import open_bundle
from tests.conftest import METAL_PLATE, SMALL_SIZE, require


def test_bundle_records_the_calibration(small_bundle):
    bundle, report = small_bundle
    m = bundle.manifest
    assert m.encoder.name == "efficientnet-lite0"
    assert m.encoder.weights_sha256.startswith("57934424")
    assert tuple(m.input_size) == SMALL_SIZE
    assert m.encoder.tap_channels == (40, 80, 320)  # stride 16 from stage 4 (engines/efficientnet_lite.py)
    assert m.flow.coupling_blocks == 8 and m.flow.condition_channels == 128 and m.flow.clamp == 1.9
    assert m.thresholds.good_parts == report.holdout_images == 11
    assert m.thresholds.pixel <= m.thresholds.image
    assert "Gumbel" in m.thresholds.method  # 11 parts cannot resolve a 1% quantile empirically
    # The nearest-patch term is kept or vetoed on synthetic defects; the bundle says which, consistently.
    kept = m.scoring.nearest_patch is not None
    assert set(report.nearest_patch_scores) == {"with", "without"} and (report.nearest_patch_bank > 0) == kept
    patch_files = {"nearest_patch.pt"} if kept else set()
    assert set(m.files) == {"encoder.onnx", "flows.onnx", "flows.pt", "encoder_fp16.onnx", "flows_fp16.onnx", "part_appearance.pt"} | patch_files
    # The coarsest flow is kept or left out on synthetic defects; the bundle says which,
    # consistently, and its stage stays tapped for the whole-part model.
    scores, left_out = report.coarsest_weight_scores, report.flow_stride_left_out
    assert set(scores) == {"1", "0.25", "0"} and left_out in (0, 32)
    assert (left_out == 32) == (scores["0"] > max(scores["1"], scores["0.25"]))
    assert m.flow_strides == ((8, 16) if left_out else (8, 16, 32)) and m.encoder.tap_strides == (8, 16, 32)
    assert len(m.scoring.log_likelihood_reference) == len(m.flow_strides)
    assert m.scoring.part_score is not None and m.scoring.part_score[0] > 0
    assert 0.0 < report.part_appearance_shrinkage <= 1.0
    # The held-out good parts pass at the calibrated threshold.
    assert report.holdout_false_reject_rate <= 0.1
    reopened = open_bundle(bundle.path)
    assert reopened.bundle_id == bundle.bundle_id


@pytest.fixture(scope="module")
def scored(small_bundle):
    bundle, _ = small_bundle
    return score_category(bundle, open_category(require(METAL_PLATE)), "onnxruntime")


def test_evaluation_separates_defects(small_bundle, scored):
    bundle, _ = small_bundle
    result = evaluate_scored(bundle, scored)
    overall = result["overall"]
    assert overall["images"] == 97 and overall["defective"] == 71
    # Even a tiny, briefly trained model must find most MPDD plate defects.
    assert overall["image_auroc"] > 0.8
    assert overall["pixel_auroc"] > 0.8
    assert 0.0 <= overall["pro"] <= 1.0
    assert 0.0 <= overall["false_reject_rate"] <= 1.0 and 0.0 <= overall["miss_rate"] <= 1.0
    assert set(result["per_type"]) == {"defective"}
    # The part appearance model alone must separate them too (a wrong whitening or statistic
    # would leave it near 0.5); at 64x64 from 43 plates it is weaker than the map (0.91 / 0.98).
    assert result["image_auroc_of"]["part_appearance"] > 0.85
    json.dumps(result)  # the report must serialise


def test_onnxruntime_matches_torch(small_bundle, scored):
    """The exported graphs are the model: same maps, same decisions as the torch reference."""
    bundle, _ = small_bundle
    from engines.backends import open_backend
    from engines.inspector import Inspector

    backend = open_backend("torch", bundle)
    inspector = Inspector(bundle, backend)
    maps, scores = inspector.inspect_batch(scored.images)
    assert np.abs(maps - scored.maps).max() < 1e-2
    distances = backend.infer(scored.images).part_distances
    assert np.abs(distances - scored.part_distances).max() < 1e-3 * distances.max()
    threshold = bundle.manifest.thresholds.image
    assert np.array_equal(scores > threshold, scored.scores > threshold)


def test_scores_do_not_depend_on_batch_composition(small_bundle, scored):
    bundle, _ = small_bundle
    from engines.backends import open_backend
    from engines.inspector import Inspector

    inspector = Inspector(bundle, open_backend("onnxruntime", bundle))
    alone = [inspector.inspect_batch(scored.images[i : i + 1])[1][0] for i in (0, 40, 90)]
    assert np.allclose(alone, scored.scores[[0, 40, 90]], atol=1e-4)
    # Next to parts that are nothing like them (noise, a blank frame), the scores stay the same:
    # no normalisation over the batch, as the paper's test-set maximum would be.
    rng = np.random.default_rng(3)
    strangers = np.concatenate([rng.integers(0, 256, (3, *scored.images.shape[1:]), dtype=np.uint8), np.zeros((1, *scored.images.shape[1:]), np.uint8)])
    mixed = np.concatenate([scored.images[[0, 40, 90]], strangers])
    maps, scores = inspector.inspect_batch(mixed)
    assert np.allclose(scores[:3], alone, atol=1e-4)
    assert np.abs(maps[:3] - scored.maps[[0, 40, 90]]).max() < 1e-3
    assert scores[3:].min() > max(alone), "noise should score above real parts, or this test shows nothing"


def _no_cuda() -> str | None:
    import torch

    return None if torch.cuda.is_available() else f"no CUDA device for torch {torch.__version__}"


@pytest.mark.skipif(_no_cuda() is not None, reason=f"training on the GPU needs an NVIDIA GPU: {_no_cuda() or ''}")
def test_a_bundle_trained_on_the_gpu_scores_like_one_trained_on_the_cpu(small_bundle, tmp_path):
    """Same seed, same fiber draws: the GPU's bundle separates defects like the CPU's, and its
    exported graphs (checked against its torch model as every bundle's are) run on ONNX Runtime."""
    from calibration.calibrate import CalibrationSettings, calibrate
    from calibration.train import TrainConfig

    cpu_bundle, _ = small_bundle
    good = require(METAL_PLATE) / "train" / "good"
    train = TrainConfig(epochs=2.0, min_steps_per_scale=60, max_steps_per_scale=60, fiber_batch=512)
    gpu_bundle, report = calibrate(good, tmp_path / "gpu", CalibrationSettings(input_size=SMALL_SIZE, train=train, device="cuda"), log=lambda m: None)
    assert gpu_bundle.manifest.training["device"].startswith("cuda")
    category = open_category(require(METAL_PLATE))
    cpu_auroc = evaluate_scored(cpu_bundle, score_category(cpu_bundle, category, "onnxruntime"))["overall"]["image_auroc"]
    gpu_auroc = evaluate_scored(gpu_bundle, score_category(gpu_bundle, category, "onnxruntime"))["overall"]["image_auroc"]
    assert gpu_auroc > 0.8 and abs(gpu_auroc - cpu_auroc) < 0.05, (cpu_auroc, gpu_auroc)
