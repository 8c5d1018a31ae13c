"""The whole-part appearance model: its statistics, its distance, and what it adds on real parts."""
import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch

from engines.part_appearance import fit_part_appearance, ledoit_wolf_shrinkage, part_statistics, sample_covariance
from engines.scoring import ScoringConstants, anomaly_maps
from tests.test_bad_bundles import make_unsealed


def test_statistics_are_every_channels_mean_then_deviation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    b = rng.normal(3.0, 2.0, size=(2, 2, 2, 2)).astype(np.float32)
    statistics = part_statistics([torch.from_numpy(a), torch.from_numpy(b).half()]).numpy()
    expected = np.concatenate([a.mean((2, 3)), b.mean((2, 3)), a.std((2, 3)), b.std((2, 3))], axis=1)
    assert statistics.dtype == np.float32
    np.testing.assert_allclose(statistics, expected, atol=2e-3)  # b went through float16


def test_distance_is_mahalanobis_under_the_shrunk_covariance():
    # Fewer parts than statistics, as with 43 plates and 880 statistics: the sample covariance
    # is singular and only the shrinkage makes the distance defined.
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(30, 30))
    data = rng.normal(size=(20, 30)) @ mixing
    model, shrinkage = fit_part_appearance(data)
    assert 0.0 < shrinkage < 1.0
    mean = data.mean(axis=0)
    covariance = (data - mean).T @ (data - mean) / len(data)
    shrunk = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / 30 * np.eye(30)
    parts = rng.normal(size=(5, 30)) @ mixing
    expected = np.sqrt(np.einsum("ij,jk,ik->i", parts - mean, np.linalg.inv(shrunk), parts - mean))
    got = model.distances(torch.from_numpy(parts).float()).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_shrinkage_follows_the_data():
    rng = np.random.default_rng(2)
    isotropic = rng.normal(size=(200, 40))
    correlated = rng.normal(size=(2000, 3)) @ rng.normal(size=(3, 40)) + 0.01 * rng.normal(size=(2000, 40))

    def shrinkage(data):
        centred = data - data.mean(0)
        return ledoit_wolf_shrinkage(centred, sample_covariance(centred))

    assert shrinkage(isotropic) > 0.8  # nothing to learn beyond the identity
    assert shrinkage(correlated) < 0.05  # plenty of parts, strong structure


def test_image_score_is_the_larger_of_map_and_part_score():
    rng = np.random.default_rng(3)
    log_likelihoods = [rng.normal(-2.0, 0.3, size=(3, 8, 8)), rng.normal(-2.0, 0.3, size=(3, 4, 4))]
    map_only = ScoringConstants((-1.5, -1.5), 1.0)
    with_part = ScoringConstants((-1.5, -1.5), 1.0, part_score=(2.0, -1.0))
    maps, map_scores = anomaly_maps(log_likelihoods, map_only, (32, 32))
    distances = np.array([0.0, 10.0, (float(map_scores[2]) + 0.5 + 1.0) / 2.0])
    maps_part, scores = anomaly_maps(log_likelihoods, with_part, (32, 32), distances)
    np.testing.assert_array_equal(maps_part, maps)  # the part score never touches the map
    assert scores[0] == pytest.approx(map_scores[0])  # part score -1: the map decides
    assert scores[1] == pytest.approx(19.0)  # 2 * 10 - 1: the part decides
    assert scores[2] == pytest.approx(map_scores[2] + 0.5, abs=1e-5)  # just above the map's
    assert ScoringConstants.from_json(with_part.to_json()) == with_part
    assert ScoringConstants.from_json(map_only.to_json()) == map_only


def test_a_shading_change_moves_the_part_distance(small_bundle):
    """Uneven illumination over the whole plate, the kind of change the part model is for: the
    shaded plates lie farther from the good parts than the good test plates do."""
    bundle, _ = small_bundle
    from calibration.datasets import open_category
    from calibration.metrics import auroc
    from engines.backends import open_backend
    from engines.preprocess import to_model_input
    from tests.conftest import METAL_PLATE, require

    good = [t.path for t in open_category(require(METAL_PLATE)).test if t.defect_type == "good"]
    size, colour = tuple(bundle.manifest.input_size), bundle.manifest.colour
    images = np.stack([to_model_input(cv2.imread(str(p)), size, colour) for p in good])
    ramp = np.linspace(0.4, 1.0, size[1], dtype=np.float32)[None, None, :, None]  # dark on the left
    shaded = np.clip(images.astype(np.float32) * ramp, 0, 255).astype(np.uint8)
    backend = open_backend("onnxruntime", bundle)
    good_distances, shaded_distances = backend.infer(images).part_distances, backend.infer(shaded).part_distances
    assert good_distances.shape == (len(good),)
    labels = np.r_[np.zeros(len(good), bool), np.ones(len(good), bool)]
    assert auroc(np.r_[good_distances, shaded_distances], labels) > 0.95
    assert np.median(shaded_distances) > good_distances.max()


def test_a_bundle_without_part_model_scores_by_the_map(tmp_path):
    from calibration.calibrate import CalibrationSettings, calibrate
    from calibration.train import TrainConfig
    from engines.backends import ModelOutput, open_backend
    from engines.bundle import Bundle, BundleError, open_bundle
    from engines.inspector import Inspector
    from tests.conftest import METAL_PLATE, SMALL_SIZE, require

    settings = CalibrationSettings(
        input_size=SMALL_SIZE, part_appearance=False, train=TrainConfig(min_steps_per_scale=5, max_steps_per_scale=5)
    )
    bundle, report = calibrate(require(METAL_PLATE) / "train" / "good", tmp_path / "b", settings, log=lambda m: None)
    assert bundle.manifest.scoring.part_score is None and "part_appearance.pt" not in bundle.manifest.files
    assert report.part_appearance_shrinkage is None
    images = np.zeros((2, *SMALL_SIZE, 3), np.uint8)
    output = open_backend("onnxruntime", bundle).infer(images)
    # All three flows: without the part model the coarsest flow is never left out (here the
    # synthetic defects of this calibration scored best without it when that was allowed).
    assert output.part_distances is None and len(output.log_likelihoods) == 3
    assert bundle.manifest.flow_strides == (8, 16, 32) and "0" not in report.coarsest_weight_scores
    scored = Inspector(bundle, open_backend("torch", bundle)).inspect_frames(images)
    # The map half alone: the maximum of the flows' map (the nearest patch shapes only the outlines).
    flows_maps, _ = anomaly_maps(output.log_likelihoods, bundle.manifest.scoring.subset((0, 1, 2)), SMALL_SIZE)
    np.testing.assert_allclose(scored.scores, flows_maps.reshape(2, -1).max(axis=1), rtol=1e-4)
    # A manifest that scores part appearance needs the distance from its graph; without it the
    # calibrated threshold would not mean what it says.
    # Bundles written before the part model (format version 1) are read as they were by
    # `edge-bundle reseal`, and score the same way.
    make_unsealed(bundle.path, 1)
    old = open_bundle(bundle.path, unsealed=True)
    _, old_scores = Inspector(old, open_backend("onnxruntime", old)).inspect_batch(images)
    np.testing.assert_allclose(old_scores, scored.scores, atol=1e-4)
    scoring = dataclasses.replace(bundle.manifest.scoring, part_score=(1.0, 0.0))
    claims_part = Bundle(bundle.path, dataclasses.replace(bundle.manifest, scoring=scoring), "edited")
    with pytest.raises(BundleError, match="part_distance"):
        Inspector(claims_part, None).score(ModelOutput(output.log_likelihoods, None))


def test_a_reject_says_whether_a_region_or_the_whole_part_decided():
    from edge.decision import CAUSE_REGION, CAUSE_WHOLE_PART, decide

    faint = np.full((16, 16), 0.5, np.float32)
    spot = faint.copy()
    spot[4:8, 4:8] = 3.0
    box = (0, 0, 64, 64)
    whole = decide(faint, 2.5, 2.0, 1.0, 1, box)  # the part score lifted it; the map stays low
    assert whole.reject and whole.cause == CAUSE_WHOLE_PART and whole.regions == ()
    region = decide(spot, 3.0, 2.0, 1.0, 1, box)
    assert region.reject and region.cause == CAUSE_REGION
    assert (region.regions[0].x, region.regions[0].y, region.regions[0].width) == (16, 16, 16)
    assert decide(faint, 0.5, 2.0, 1.0, 1, box).cause is None
    # Where the score reads the flows' map (format 7), a map half above the threshold is a
    # region's reject even though the published map, sharpened by the patch term, stays lower.
    flows_decided = decide(faint, 2.5, 2.0, 1.0, 1, box, map_score=2.5)
    assert flows_decided.cause == CAUSE_REGION and decide(faint, 2.5, 2.0, 1.0, 1, box, map_score=1.9).cause == CAUSE_WHOLE_PART
    # A part whose score is not a number was not judged; it must not pass.
    broken = decide(faint, float("nan"), 2.0, 1.0, 1, box)
    assert broken.reject and broken.cause == "score not finite"


def test_a_slightly_softer_or_turned_frame_does_not_reject_good_parts(small_bundle):
    """The part model is fitted with copies of the good parts as a camera sees them from frame
    to frame (sub-pixel shifts, a degree or two, a touch of defocus). Without them, a blur of
    half a pixel rejected every good tire whole at 256x256 (bench/README.md). In this small
    bundle the threshold sits far above good parts, so the test looks at how far the good
    parts' part scores move: fitted without the copies they moved up by 0.72 nats, a third of
    the way to the threshold; with them they stay put (-0.12)."""
    bundle, _ = small_bundle
    from calibration.augment import shift_rotate
    from calibration.datasets import open_category
    from engines.backends import open_backend
    from engines.preprocess import to_model_input
    from tests.conftest import METAL_PLATE, require

    good = [t.path for t in open_category(require(METAL_PLATE)).test if t.defect_type == "good"]
    size, colour = tuple(bundle.manifest.input_size), bundle.manifest.colour
    images = np.stack([to_model_input(cv2.imread(str(p)), size, colour) for p in good])
    softer = np.stack([cv2.GaussianBlur(shift_rotate(i, 0.5 / size[1], 0.0, 1.5), (0, 0), 0.5) for i in images])
    backend = open_backend("onnxruntime", bundle)
    scoring, threshold = bundle.manifest.scoring, bundle.manifest.thresholds.image
    clean = scoring.part_scores(backend.infer(images).part_distances)
    moved = scoring.part_scores(backend.infer(softer).part_distances)
    assert np.mean(clean > threshold) <= 0.1 and np.mean(moved > threshold) <= 0.1
    margin = threshold - np.median(clean)
    shift = np.median(moved) - np.median(clean)
    assert shift < 0.1 * margin, f"a slight blur moved good parts {shift:.2f} nats towards the threshold ({margin:.2f} away)"


def test_the_heatmap_colours_the_map_by_its_region_threshold_not_the_score_threshold():
    """A format-7 score reads the flows' map, so the image threshold sits above what the published
    map reaches; coloured by it, every region looked cold. Twice the region threshold is the
    top of the scale: a region's core at that level is red."""
    import cv2

    from edge.answer import Answer, Inspected
    from edge.capture import Frame
    from edge.decision import decide
    from edge.heatmap import render_heatmap

    image = np.full((256, 256, 3), 128, np.uint8)
    anomaly_map = np.zeros((256, 256), np.float32)
    anomaly_map[96:160, 96:160] = 2.0  # twice the region threshold, well below the image threshold
    verdict = decide(anomaly_map, 9.0, 6.0, 1.0, 1, (0, 0, 256, 256), map_score=9.0)
    assert verdict.reject and verdict.region_threshold == 1.0 and len(verdict.regions) == 1
    answer = Answer.of_inspection("s", Frame(image, 1, 0.0), verdict, "b", Inspected(anomaly_map, image, (0, 0, 256, 256)))
    picture = cv2.imdecode(np.frombuffer(render_heatmap(answer, 95), np.uint8), cv2.IMREAD_COLOR)
    blue, green, red = (int(c) for c in picture[128, 128])  # the region's centre (a 256 px crop is drawn at 256 px)
    assert red > blue + 40, (blue, green, red)  # scaled by 1.5 x the image threshold it was blue (0.22 of the scale)
    background_blue, _, background_red = (int(c) for c in picture[200, 30])
    assert background_blue > background_red  # the good part of the map stays at the cold end
