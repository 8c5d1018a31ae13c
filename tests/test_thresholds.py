import numpy as np
import pytest

from calibration.thresholds import choose_thresholds, gumbel_quantile


def test_empirical_quantile_with_enough_parts():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=2000)
    maps = rng.normal(size=(10, 8, 8)).astype(np.float32)
    t = choose_thresholds(scores, maps, target_frr=0.01, target_pixel_fpr=0.01)
    assert "empirical" in t.method and t.good_parts == 2000
    assert np.mean(scores > t.image) == pytest.approx(0.01, abs=0.002)
    assert np.mean(maps > t.pixel) == pytest.approx(0.01, abs=0.01)


def test_gumbel_extrapolates_beyond_few_parts():
    rng = np.random.default_rng(1)
    large = rng.gumbel(loc=3.0, scale=0.5, size=200_000)
    few = large[:40]
    t = choose_thresholds(few, np.zeros((1, 4, 4)), target_frr=0.01, target_pixel_fpr=0.01)
    assert "Gumbel" in t.method
    assert t.image >= np.quantile(few, 0.99), "the threshold must never sit below the empirical quantile"
    # The extrapolated level gives close to the target rate on the full population.
    assert np.mean(large > t.image) == pytest.approx(0.01, abs=0.01)


def test_gumbel_quantile_of_known_law():
    rng = np.random.default_rng(2)
    sample = rng.gumbel(loc=1.0, scale=2.0, size=100_000)
    expected = 1.0 - 2.0 * np.log(-np.log(0.99))
    assert gumbel_quantile(sample, 0.99) == pytest.approx(expected, rel=0.02)
