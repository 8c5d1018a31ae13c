"""Synthetic defects and the per-station choice of the coarsest scale's weight made on them."""

import numpy as np

from calibration.scale_weights import choose_coarsest_weight
from calibration.synthetic_defects import synthetic_defects
from calibration.thresholds import fit_scoring_constants


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
    constants = fit_scoring_constants(good, 0.0)
    assert choose_coarsest_weight(constants, good, defects, masks, (32, 32)).weights == (1.0, 0.25)
    # A quiet coarse scale that sees the defects (a large faint one): full weight is kept.
    good = _log_likelihoods(rng, 20, coarse_noise=0.1)
    defects = _log_likelihoods(rng, 20, coarse_noise=0.1)
    defects[0][:, 4:8, 4:8] -= 0.3
    defects[1][:, 1:2, 1:2] -= 3.0
    choice = choose_coarsest_weight(fit_scoring_constants(good, 0.0), good, defects, masks, (32, 32))
    assert choice.weights is None and set(choice.scores) == {"1", "0.25"}
