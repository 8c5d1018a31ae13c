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


def test_synthetic_defects_of_non_square_parts_keep_their_shape():
    """--input-size 64x96: another part's texture is turned half a turn, never a quarter (which
    would swap its height and width), so every kind of defect can be made."""
    rng = np.random.default_rng(0)
    good = rng.integers(100, 140, size=(6, 64, 96, 3), dtype=np.uint8)
    made = synthetic_defects(good, 60, seed=3)
    assert made.images.shape == (60, 64, 96, 3) and made.masks.shape == (60, 64, 96)
    assert {"perlin", "cutpaste", "scar"} <= set(made.kinds)
    assert made.masks.reshape(len(made.masks), -1).any(axis=1).all()  # every defect has its region


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


def test_a_coarsest_flow_that_only_adds_noise_is_left_out_where_two_flows_remain():
    rng = np.random.default_rng(2)
    masks = np.zeros((20, 32, 32), bool)
    masks[:, 8:16, 8:16] = True

    def three_scales(count):
        fine, middle = _log_likelihoods(rng, count, coarse_noise=0.1)
        return [fine, middle, rng.normal(0, 3.0, size=(count, 2, 2)).astype(np.float32)]

    good, defects = three_scales(20), three_scales(20)
    defects[0][:, 4:8, 4:8] -= 3.0  # the fine scale sees the defects, the coarsest is noise
    choice = choose_coarsest_weight(fit_scoring_constants(good, 0.0), good, defects, masks, (32, 32))
    assert set(choice.scores) == {"1", "0.25", "0"}
    assert choice.drops_coarsest and choice.weights == (1.0, 1.0, 0.0)
    assert choice.scores["0"] > max(choice.scores["1"], choice.scores["0.25"])
    # Without the candidate (flows asked for by name), the same data keeps the flow at a quarter.
    kept = choose_coarsest_weight(fit_scoring_constants(good, 0.0), good, defects, masks, (32, 32), (1.0, 0.25))
    assert not kept.drops_coarsest and kept.weights == (1.0, 1.0, 0.25)


def test_leaving_out_the_coarsest_flow_keeps_the_others_exactly():
    import torch

    from calibration.calibrate import without_coarsest_flow
    from engines.cflow import CflowDecoders, FeatureShape
    from engines.flow import FlowConfig

    shapes = [FeatureShape(8, 8, 8), FeatureShape(16, 4, 4), FeatureShape(32, 2, 2)]
    decoders = CflowDecoders(shapes, FlowConfig(coupling_blocks=2, condition_channels=16)).eval()
    with torch.no_grad():  # trained flows are not at their initial values: move every weight
        for parameter in decoders.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    features = [torch.randn(3, s.channels, s.height, s.width) for s in shapes]
    kept = without_coarsest_flow(decoders)
    assert kept.shapes == shapes[:2] and len(kept.flows) == 2
    with torch.inference_mode():
        before, after = decoders.log_likelihood_maps(features), kept.log_likelihood_maps(features[:2])
    assert len(after) == 2
    for a, b in zip(before[:2], after):
        assert torch.equal(a, b)
