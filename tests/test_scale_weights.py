"""Synthetic defects and the per-station choice of the map made on them: the coarsest scale's
weight, and whether an optional fine scale is kept."""

import numpy as np

from calibration.scale_weights import choose_map
from calibration.synthetic_defects import synthetic_defects


def test_synthetic_defects_change_the_part_where_their_mask_says():
    rng = np.random.default_rng(0)
    good = rng.integers(100, 140, size=(4, 64, 64, 3), dtype=np.uint8)
    made = synthetic_defects(good, 12, seed=0)
    assert made.images.shape == (12, 64, 64, 3) and made.masks.shape == (12, 64, 64) and len(made.kinds) == 12
    for image, mask, source in zip(made.images, made.masks, np.repeat(good, 3, axis=0)):
        assert mask.any() and mask.mean() < 0.5
        changed = np.abs(image.astype(int) - source.astype(int)).max(axis=2) > 0
        assert changed[mask].mean() > 0.5  # the defect is where its mask is
    again = synthetic_defects(good, 12, seed=0)
    assert np.array_equal(again.images, made.images)  # seeded: a calibration is repeatable


def _log_likelihoods(rng, count, coarse_noise):
    fine = rng.normal(0, 0.1, size=(count, 16, 16))
    coarse = rng.normal(0, coarse_noise, size=(count, 4, 4))
    return [fine.astype(np.float32), coarse.astype(np.float32)]


def test_a_noisy_coarse_scale_gets_less_weight_and_an_informative_one_keeps_it():
    rng = np.random.default_rng(1)
    masks = np.zeros((20, 32, 32), bool)
    masks[:, 8:16, 8:16] = True
    # A coarse scale that is pure noise on good parts and blind to the defects: down-weighting it helps.
    good = _log_likelihoods(rng, 20, coarse_noise=2.0)
    defects = _log_likelihoods(rng, 20, coarse_noise=2.0)
    defects[0][:, 4:8, 4:8] -= 3.0
    choice = choose_map((8, 32), (), 0.0, good, defects, masks, (32, 32))
    assert choice.kept == (0, 1) and choice.constants.scale_weights == (1.0, 0.25)
    # A quiet coarse scale that sees the defects (a large faint one): full weight is kept.
    good = _log_likelihoods(rng, 20, coarse_noise=0.1)
    defects = _log_likelihoods(rng, 20, coarse_noise=0.1)
    defects[0][:, 4:8, 4:8] -= 0.3
    defects[1][:, 1:2, 1:2] -= 3.0
    choice = choose_map((8, 32), (), 0.0, good, defects, masks, (32, 32))
    assert choice.constants.scale_weights is None and set(choice.scores) == {"8,32 x1", "8,32 x0.25"}


def _with_fine_scale(rng, count, sees_defects):
    fine = rng.normal(0, 0.1, size=(count, 32, 32)).astype(np.float32)
    if sees_defects:
        fine[:, 9:15, 9:15] -= 3.0  # the defect's outline, sharply
    return fine


def test_an_optional_fine_scale_is_kept_only_where_it_outlines_the_defects_better():
    rng = np.random.default_rng(2)
    masks = np.zeros((20, 32, 32), bool)
    masks[:, 9:15, 9:15] = True
    good = [_with_fine_scale(rng, 20, False), *_log_likelihoods(rng, 20, coarse_noise=0.1)]
    # The stride-8 map sees the defect only as a blurred blob one position too wide.
    defects = [_with_fine_scale(rng, 20, True), *_log_likelihoods(rng, 20, coarse_noise=0.1)]
    defects[1][:, 1:5, 1:5] -= 3.0
    choice = choose_map((4, 8, 32), (4,), 0.0, good, defects, masks, (32, 32))
    assert choice.kept == (0, 1, 2) and len(choice.constants.log_likelihood_reference) == 3
    # A fine scale that is blind to the defects is dropped, and the references are the other two's.
    defects[0] = _with_fine_scale(rng, 20, False)
    choice = choose_map((4, 8, 32), (4,), 0.0, good, defects, masks, (32, 32))
    assert choice.kept == (1, 2) and len(choice.constants.log_likelihood_reference) == 2
    assert {"8,32 x1", "4,8,32 x1"} <= set(choice.scores)
