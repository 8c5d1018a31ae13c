"""The nearest good patch beside the flows: its distances on real encoder features, the coreset
it keeps, how it enters the map, and that every backend and the bundle carry it."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from calibration.images import list_images, load_images
from engines.backends import ModelOutput, open_backend
from engines.bundle import FORMAT_VERSION, NEAREST_PATCH_WEIGHTS, PATCH_DISTANCE, BundleError, open_bundle, seal
from engines.cflow import PreprocessedEncoder
from engines.encoders import load_encoder
from engines.inspector import Inspector
from engines.nearest_patch import PRINCIPAL_COMPONENTS, NearestPatch, fit_nearest_patch, greedy_coreset, load_nearest_patch, patch_features, patch_taps, principal_directions
from engines.scoring import NearestPatchScoring, ScoringConstants, anomaly_maps, score_frames
from tests.conftest import METAL_PLATE, SMALL_SIZE, require


@pytest.fixture(scope="module")
def patch_bundle(tmp_path_factory):
    """A real short calibration at 64x64 that keeps the term: without synthetic defects there is
    nothing to veto it (the session's small bundle may have it vetoed)."""
    from calibration.calibrate import CalibrationSettings, calibrate
    from calibration.train import TrainConfig

    settings = CalibrationSettings(
        input_size=SMALL_SIZE, synthetic_defects=0, train=TrainConfig(epochs=2.0, min_steps_per_scale=30, max_steps_per_scale=30, fiber_batch=512)
    )
    return calibrate(require(METAL_PLATE) / "train" / "good", tmp_path_factory.mktemp("patch") / "bundle", settings, log=lambda message: None)


@pytest.fixture(scope="module")
def plate_taps():
    """Lite0's stride-8 and stride-16 maps of 12 real good plates at 64x64."""
    paths = list_images(require(METAL_PLATE) / "train" / "good")[:12]
    images = load_images(paths, SMALL_SIZE, "rgb").images
    module, info = load_encoder("efficientnet-lite0", tap_strides=(8, 16))
    encoder = PreprocessedEncoder(module, info.mean, info.std).eval()
    with torch.inference_mode():
        return list(encoder(torch.from_numpy(images)))


def test_distances_are_each_positions_squared_distance_to_its_nearest_bank_patch(plate_taps):
    patches = patch_features(*plate_taps)  # (N, C, 8, 8)
    flat = patches.flatten(2).transpose(1, 2).reshape(-1, patches.shape[1]).numpy().astype(np.float64)
    bank = flat[::7]
    model = NearestPatch(torch.from_numpy(bank).float(), (0, 1)).eval()
    with torch.inference_mode():
        got = model(plate_taps).numpy()
    expected = ((flat[:, None, :] - bank[None, :, :]) ** 2).sum(axis=2).min(axis=1).reshape(got.shape)
    assert got.shape == (len(plate_taps[0]), 8, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-2 * float(expected.mean()))
    # Positions whose own patch is in the bank are at distance zero (up to float32 cancellation).
    assert got.reshape(-1)[::7].max() < 1e-3 * float(expected.mean())


def test_the_coreset_keeps_a_rare_appearance_that_a_random_sample_would_miss(plate_taps):
    patches = patch_features(*plate_taps)
    flat = patches.flatten(2).transpose(1, 2).reshape(-1, patches.shape[1])
    odd = flat[0] + 40.0 * flat.std(dim=0)  # a patch unlike any other: a rare good appearance
    pool = torch.cat([flat, odd[None]])
    bank = greedy_coreset(pool, 64, seed=0)
    assert bank.shape == (64, pool.shape[1])
    assert torch.isclose(bank, odd).all(dim=1).any(), "the far patch was left out of the bank"
    # One patch in 769: a random bank of 64 would hold it one time in twelve.
    # Every patch of the pool lies closer to the bank than the bank's own patches lie to each other at most.
    spacing = torch.cdist(bank, bank).fill_diagonal_(float("inf")).min(dim=1).values.max()
    assert torch.cdist(pool, bank).min(dim=1).values.max() <= spacing * 1.5


def test_the_patch_term_is_one_more_term_of_the_average():
    rng = np.random.default_rng(0)
    log_likelihoods = [rng.normal(-1.0, 0.2, size=(2, 8, 8))]
    distances = rng.uniform(0.0, 2.0, size=(2, 8, 8))
    distances[1, 3, 3] = 200.0  # one far position in the second part
    patch = NearestPatchScoring(spread=1.0, reference=-1.0, weight=1.0)
    flows_only = ScoringConstants((-0.5,), 0.0)
    both = dataclasses.replace(flows_only, nearest_patch=patch)
    maps, scores = anomaly_maps(log_likelihoods, both, (8, 8), patch_distances=distances)
    flow_relative = np.exp(np.minimum(log_likelihoods[0] - -0.5, 0))
    patch_relative = np.exp(np.minimum(-distances / 2.0 - -1.0, 0))
    np.testing.assert_allclose(maps, -np.log((flow_relative + patch_relative) / 2), rtol=1e-5)
    assert maps[1].argmax() == 3 * 8 + 3 and scores[1] > scores[0] + 0.5
    # Weighted zero, the term does not move the map.
    silent = dataclasses.replace(flows_only, nearest_patch=dataclasses.replace(patch, weight=0.0))
    np.testing.assert_allclose(anomaly_maps(log_likelihoods, silent, (8, 8), patch_distances=distances)[0], anomaly_maps(log_likelihoods, flows_only, (8, 8))[0], rtol=1e-6)
    with pytest.raises(ValueError, match="patch distances"):
        anomaly_maps(log_likelihoods, both, (8, 8))


def test_every_backend_returns_the_same_patch_distances_and_scores(patch_bundle):
    bundle, report = patch_bundle
    scoring = bundle.manifest.scoring
    assert report.nearest_patch_bank > 0 and scoring.nearest_patch is not None and scoring.nearest_patch.spread > 0
    assert bundle.manifest.format_version == FORMAT_VERSION and bundle.has(NEAREST_PATCH_WEIGHTS)
    # The torch backend must project the queries as the graph does, or the distances below differ.
    assert set(torch.load(bundle.file(NEAREST_PATCH_WEIGHTS), weights_only=True)) == {"bank", "projection"}
    paths = list_images(require(METAL_PLATE) / "test" / "good")[:3] + list_images(require(METAL_PLATE) / "test" / "defective")[:3]
    images = load_images(paths, SMALL_SIZE, "rgb").images
    outputs = {}
    for name in ("onnxruntime", "torch"):
        backend = open_backend(name, bundle)
        outputs[name] = (backend.infer(images), Inspector(bundle, backend).score(backend.infer(images))[1])
        backend.close()
    onnx, torch_out = outputs["onnxruntime"][0], outputs["torch"][0]
    assert onnx.patch_distances.shape == (6, 8, 8)
    np.testing.assert_allclose(onnx.patch_distances, torch_out.patch_distances, rtol=1e-3, atol=1e-3 * float(onnx.patch_distances.mean()))
    np.testing.assert_allclose(outputs["onnxruntime"][1], outputs["torch"][1], rtol=1e-3)
    # A frame's score is its own: alone or in a batch with others, the same.
    backend = open_backend("onnxruntime", bundle)
    inspector = Inspector(bundle, backend)
    alone = inspector.score(backend.infer(images[4:5]))[1][0]
    assert alone == pytest.approx(outputs["onnxruntime"][1][4], rel=1e-5)


def test_a_backend_without_the_patch_distance_is_refused_not_scored_without_it(patch_bundle):
    bundle, _ = patch_bundle
    images = load_images(list_images(require(METAL_PLATE) / "test" / "good")[:1], SMALL_SIZE, "rgb").images
    backend = open_backend("onnxruntime", bundle)
    output = backend.infer(images)
    without = ModelOutput(output.log_likelihoods, output.part_distances, None)
    with pytest.raises(BundleError, match=PATCH_DISTANCE):
        Inspector(bundle, backend).score(without)


def test_a_bad_patch_section_is_refused_by_key(patch_bundle, tmp_path):
    bundle, _ = patch_bundle
    for value, said in ((-1.0, "nearest_patch"), ("wide", "scoring.nearest_patch.spread")):
        copy = tmp_path / f"bundle_{said}"
        shutil.copytree(bundle.path, copy)
        data = json.loads((copy / "manifest.json").read_text())
        data.pop("integrity")
        data["scoring"]["nearest_patch"]["spread"] = value
        (copy / "manifest.json").write_text(json.dumps(seal(data)))
        with pytest.raises(BundleError, match=said.replace(".", r"\.")):
            open_bundle(copy)


def _copy_as_format(bundle, directory, version: int, as_written: bool = True):
    """The bundle copied with its manifest's format version changed and the digest made again;
    as_written: without the keys that version's edge-calibrate did not write."""
    copy = directory / "bundle"
    shutil.copytree(bundle.path, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data.pop("integrity")
    data["format_version"] = version
    if as_written and version < 7:
        data["scoring"]["nearest_patch"].pop("in_image_score")
    (copy / "manifest.json").write_text(json.dumps(seal(data)))
    return copy


def test_a_format_4_manifest_cannot_carry_the_patch_term(patch_bundle, tmp_path):
    with pytest.raises(BundleError, match="format 5"):
        open_bundle(_copy_as_format(patch_bundle[0], tmp_path, 4))


def test_format_5_bundles_are_still_read(patch_bundle, tmp_path):
    """Format 5 differs only in nearest_patch.pt having no projection, which the loader takes."""
    assert open_bundle(_copy_as_format(patch_bundle[0], tmp_path, 5)).manifest.format_version == 5


def test_new_bundles_score_parts_by_the_flows_map_and_older_ones_as_calibrated(patch_bundle, tmp_path):
    """Format 7 keeps the patch term out of the image score: the map half is the maximum of the
    flows' own map, while the published map keeps the term. A format-6 bundle (no key) is
    scored as it was calibrated, by the maximum of the whole map."""
    bundle, _ = patch_bundle
    scoring = bundle.manifest.scoring
    assert bundle.manifest.format_version == 7 and scoring.nearest_patch is not None and not scoring.nearest_patch.in_image_score
    paths = list_images(require(METAL_PLATE) / "test" / "good")[:4] + list_images(require(METAL_PLATE) / "test" / "defective")[:4]
    images = load_images(paths, SMALL_SIZE, "rgb").images
    backend = open_backend("onnxruntime", bundle)
    output = backend.infer(images)
    backend.close()
    scored = Inspector(bundle, backend).scored_frames(output)
    flows_maps, _ = anomaly_maps(output.log_likelihoods, scoring.subset(tuple(range(len(output.log_likelihoods)))), SMALL_SIZE)
    # subset() weighs the flows as the bundle does, without the patch term: the map the score reads.
    np.testing.assert_allclose(scored.map_scores, flows_maps.reshape(8, -1).max(axis=1), rtol=1e-5)
    with_patch = scored.maps.reshape(8, -1).max(axis=1)
    assert np.abs(scored.map_scores - with_patch).max() > 1e-3, "the patch term still moves the image score"
    np.testing.assert_allclose(scored.scores, np.maximum(scored.map_scores, scoring.part_scores(output.part_distances)), rtol=1e-6)
    older = open_bundle(_copy_as_format(bundle, tmp_path, 6))
    assert older.manifest.scoring.nearest_patch.in_image_score
    old = Inspector(older, backend).scored_frames(output)
    np.testing.assert_allclose(old.maps, scored.maps, rtol=1e-5)
    np.testing.assert_array_equal(old.map_scores, old.maps.reshape(8, -1).max(axis=1))
    np.testing.assert_allclose(old.map_scores, with_patch, rtol=1e-5)


def test_a_format_6_manifest_cannot_leave_the_patch_out_of_the_image_score(patch_bundle, tmp_path):
    with pytest.raises(BundleError, match=r"in_image_score needs bundle format 7"):
        open_bundle(_copy_as_format(patch_bundle[0], tmp_path, 6, as_written=False))


def test_patch_taps_need_strides_8_and_16():
    assert patch_taps((8, 16, 32)) == (0, 1) and patch_taps((4, 8, 16, 32)) == (1, 2)
    assert patch_taps((16, 32)) is None


def test_fit_keeps_at_most_the_bank_size(plate_taps):
    channels = plate_taps[0].shape[1] + plate_taps[1].shape[1]
    model = fit_nearest_patch(plate_taps, (0, 1), seed=0, size=100)
    assert model.bank.shape == (100, PRINCIPAL_COMPONENTS) and model.channels == channels
    small = fit_nearest_patch([t[:1] for t in plate_taps], (0, 1), seed=0, size=100)
    # One 8x8 part has fewer patches than the bank holds: all kept, and too few to find 64
    # principal directions in, so they are compared in all channels.
    assert small.bank.shape == (64, channels) and small.projection is None


def test_distances_in_the_principal_directions_are_those_of_the_projected_patches(plate_taps):
    patches = patch_features(*plate_taps)
    flat = patches.flatten(2).transpose(1, 2).reshape(-1, patches.shape[1]).double()
    model = fit_nearest_patch(plate_taps, (0, 1), seed=0, size=200)
    projection = model.projection
    assert projection is not None and projection.shape == (flat.shape[1], PRINCIPAL_COMPONENTS)
    # Orthonormal directions, the first the one of most variance.
    np.testing.assert_allclose((projection.t() @ projection).numpy(), np.eye(PRINCIPAL_COMPONENTS), atol=1e-5)
    variance = ((flat - flat.mean(dim=0)) @ projection.double()).var(dim=0)
    assert variance[0] == variance.max() and variance[0] > variance[-1]
    with torch.inference_mode():
        got = model(plate_taps).numpy().reshape(-1)
    projected, bank = flat @ projection.double(), model.bank.double()
    expected = torch.cdist(projected, bank).pow(2).min(dim=1).values.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * float(expected.mean()))
    # 96 of 120 directions keep nearly all of the distance: against
    # the same coreset in all channels, never farther and at the median within 10 %.
    full = torch.cdist(flat, greedy_coreset(flat.float(), 200, seed=0).double()).pow(2).min(dim=1).values.numpy()
    away = full > 1e-3 * full.mean()  # not the bank's own patches
    assert np.all(got <= full * (1 + 1e-3) + 1e-3 * full.mean()) and np.median(got[away] / full[away]) > 0.9


def test_principal_directions_need_more_channels_and_patches_than_they_keep():
    rng = torch.Generator().manual_seed(0)
    assert principal_directions(torch.randn(500, 64, generator=rng)) is None
    assert principal_directions(torch.randn(50, 120, generator=rng)) is None
    assert principal_directions(torch.randn(500, 120, generator=rng)).shape == (120, PRINCIPAL_COMPONENTS)


def test_a_bad_patch_file_is_refused_with_its_name(plate_taps):
    model = fit_nearest_patch(plate_taps, (0, 1), seed=0, size=100)
    channels = model.channels
    assert load_nearest_patch(model.saved_state(), (0, 1), channels, "nearest_patch.pt").projection is not None
    unprojected = load_nearest_patch({"bank": torch.zeros(10, channels)}, (0, 1), channels, "nearest_patch.pt")
    assert unprojected.projection is None and unprojected.channels == channels  # format 5
    bad = (
        ([1, 2], "expected a bank"),
        ({"bank": model.bank, "extra": model.bank}, "expected a bank"),
        ({"bank": torch.zeros(10)}, r"the bank has shape \(10,\), expected \(patches, channels\)"),
        ({"bank": model.bank, "projection": torch.zeros(channels, 3)}, "does not map patches"),
        ({"bank": torch.zeros(10, 7)}, f"patches of 7 channels.*give {channels}"),
    )
    for state, said in bad:
        with pytest.raises(ValueError, match=f"nearest_patch.pt: .*{said}"):
            load_nearest_patch(state, (0, 1), channels, "nearest_patch.pt")


def test_synthetic_defects_veto_a_patch_term_that_hides_them_and_keep_one_that_marks_them():
    from calibration.scale_weights import choose_nearest_patch

    rng = np.random.default_rng(5)
    good_ll = [rng.normal(-1.0, 0.1, size=(20, 8, 8))]
    defect_ll = [rng.normal(-1.0, 0.1, size=(20, 8, 8))]
    masks = np.zeros((20, 32, 32), bool)
    for i in range(20):
        y, x = rng.integers(0, 6, size=2)
        defect_ll[0][i, y : y + 2, x : x + 2] -= 4.0  # the flows see every defect
        masks[i, 4 * y : 4 * y + 8, 4 * x : 4 * x + 8] = True
    constants = ScoringConstants((-0.8,), 1.0, nearest_patch=NearestPatchScoring(spread=1.0, reference=-1.0, weight=1.0))
    good_patch = rng.uniform(0.0, 2.0, size=(20, 8, 8))
    # A term that lights random spots of good and defective parts alike, never the defects.
    noisy_good, noisy = (rng.uniform(0.0, 2.0, size=(20, 8, 8)) + 40.0 * (rng.uniform(size=(20, 8, 8)) < 0.1) for _ in range(2))
    choice = choose_nearest_patch(constants, good_ll, defect_ll, noisy_good, noisy * ~masks[:, ::4, ::4], masks, (32, 32))
    assert not choice.keep and choice.scores["with"] < choice.scores["without"] - 0.01
    marking = rng.uniform(0.0, 2.0, size=(20, 8, 8))
    marking[masks[:, ::4, ::4]] += 20.0  # the term agrees with the flows
    kept = choose_nearest_patch(constants, good_ll, defect_ll, good_patch, marking, masks, (32, 32))
    assert kept.keep


def test_a_patch_term_that_is_not_a_number_leaves_no_score_that_could_pass():
    """The image score reads the flows' terms only (format 7), but a NaN in the patch term still
    spreads over the published map: the score must be NaN too, so decide() rejects the part."""
    rng = np.random.default_rng(2)
    log_likelihoods = [rng.normal(-1.0, 0.2, size=(2, 8, 8)), rng.normal(-1.0, 0.2, size=(2, 4, 4))]
    distances = rng.uniform(0.0, 2.0, size=(2, 8, 8))
    distances[1, 2, 2] = np.nan
    outlines_only = ScoringConstants((-0.5, -0.5), 2.0, nearest_patch=NearestPatchScoring(spread=1.0, reference=-1.0, weight=1.0, in_image_score=False))
    scored = score_frames(log_likelihoods, outlines_only, (32, 32), patch_distances=distances)
    assert np.isfinite(scored.map_scores[0]) and np.isnan(scored.map_scores[1]) and np.isnan(scored.scores[1])
    assert np.isnan(scored.maps[1]).any() and np.isfinite(scored.maps[0]).all()
    # Flows far below the good parts (the float64 path) with a NaN patch: still NaN, not the float32 floor.
    far = [ll - 300.0 for ll in log_likelihoods]
    assert np.isnan(score_frames(far, outlines_only, (32, 32), patch_distances=distances).map_scores[1])
    # Without the NaN the float64 path gives the flows' depth, about 300 nats, on both parts.
    clean = np.nan_to_num(distances, nan=1.0)
    assert (score_frames(far, outlines_only, (32, 32), patch_distances=clean).map_scores > 250).all()
