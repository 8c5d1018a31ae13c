"""Scoring constants: per-scale weights in the anomaly map, and how the manifest carries them."""

import numpy as np
import pytest

from engines.scoring import ScoringConstants, anomaly_maps


def _maps(constants: ScoringConstants, log_likelihoods: list[np.ndarray]) -> np.ndarray:
    return anomaly_maps(log_likelihoods, constants, (16, 16))[0]


def test_a_scale_weighted_zero_does_not_move_the_map():
    rng = np.random.default_rng(0)
    fine, coarse = rng.normal(size=(1, 8, 8)).astype(np.float32), rng.normal(size=(1, 2, 2)).astype(np.float32)
    weighted = ScoringConstants((0.0, 0.0), 0.0, scale_weights=(1.0, 0.0))
    other_coarse = coarse - 5.0  # far less likely: would raise an equally weighted map
    assert np.allclose(_maps(weighted, [fine, coarse]), _maps(weighted, [fine, other_coarse]))
    equal = ScoringConstants((0.0, 0.0), 0.0)
    assert not np.allclose(_maps(equal, [fine, coarse]), _maps(equal, [fine, other_coarse]))


def test_equal_weights_score_as_bundles_without_weights():
    rng = np.random.default_rng(1)
    lls = [rng.normal(size=(2, 8, 8)).astype(np.float32), rng.normal(size=(2, 4, 4)).astype(np.float32)]
    plain = ScoringConstants((0.5, 0.2), 2.0)
    assert np.allclose(_maps(plain, lls), _maps(ScoringConstants((0.5, 0.2), 2.0, scale_weights=(3.0, 3.0)), lls), atol=1e-5)


def test_weights_travel_through_the_manifest_and_old_sections_read_as_equal():
    constants = ScoringConstants((-1.0, -2.0, -3.0), 2.0, part_score=(1.5, 0.5), scale_weights=(1.0, 1.0, 0.25))
    assert ScoringConstants.from_json(constants.to_json()) == constants
    assert "scale_weights" not in ScoringConstants((-1.0,), 4.0).to_json()  # bundles without weights read as before
    assert ScoringConstants.from_json({"log_likelihood_reference": [-1.0, -2.0], "blur_sigma": 4.0}).scale_weights is None
    assert ScoringConstants((-1.0, -2.0), 0.0, scale_weights=(1.0, 0.0)).subset((1,)).scale_weights == (0.0,)


@pytest.mark.parametrize("weights", [[1.0], [1.0, -1.0], [0.0, 0.0]])
def test_bad_weights_are_refused_by_key(weights):
    with pytest.raises(ValueError, match="scale_weights"):
        ScoringConstants.from_json({"log_likelihood_reference": [-1.0, -2.0], "blur_sigma": 4.0, "scale_weights": weights})


def _float64_map(log_likelihoods: list[np.ndarray], references: tuple[float, ...], size: int, sigma: float) -> np.ndarray:
    """The map as the scoring docstring defines it, every step in float64."""
    import cv2

    average = np.zeros((size, size))
    for ll, reference in zip(log_likelihoods, references):
        relative = np.exp(np.clip(ll[0].astype(np.float64) - reference, -700.0, 0.0))
        average += cv2.resize(relative, (size, size), interpolation=cv2.INTER_LINEAR) / len(references)
    return -np.log(cv2.GaussianBlur(average, (0, 0), sigma, borderType=cv2.BORDER_REFLECT))


@pytest.mark.parametrize("drop", [3.0, 60.0, 300.0])
def test_the_map_is_the_float64_map_however_unlikely_a_region_is(drop):
    """Ordinary frames are scored in float32 and frames with a far less likely region in float64;
    both must give the map of the definition, up to the last few digits, including far beyond
    the 87 nats float32's smallest number could carry."""
    rng = np.random.default_rng(2)
    fine, coarse = rng.normal(-1.0, 0.5, size=(1, 32, 32)), rng.normal(-1.0, 0.5, size=(1, 16, 16))
    fine[:, :, :16] -= drop  # the left half: wide enough that the blur cannot average it away
    coarse[:, :, :8] -= drop
    constants = ScoringConstants((-1.0, -1.2), 4.0)
    lls = [fine.astype(np.float32), coarse.astype(np.float32)]
    expected = _float64_map(lls, constants.log_likelihood_reference, 128, 4.0)

    got = anomaly_maps(lls, constants, (128, 128))[0][0]
    assert expected.max() > 0.3 * drop  # the region stands out about as far as it was dropped
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_frame_infinitely_unlikely_everywhere_scores_the_floor_of_700_nats():
    lls = [np.full((1, 8, 8), -np.inf, np.float32), np.full((1, 4, 4), -np.inf, np.float32)]
    maps, scores = anomaly_maps(lls, ScoringConstants((-1.0, -1.2), 4.0), (32, 32))
    np.testing.assert_allclose(maps, 700.0, rtol=1e-6)
    assert scores[0] == pytest.approx(700.0)
