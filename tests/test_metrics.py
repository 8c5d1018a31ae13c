"""Tests for calibration.metrics against brute-force reference implementations."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from calibration.metrics import auroc, pixel_auroc, pro_auc, rates_at_threshold


# ---------------------------------------------------------------- reference implementations


def brute_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    s = np.asarray(scores, dtype=np.float64).ravel()
    lab = np.asarray(labels).ravel() != 0
    pos, neg = s[lab], s[~lab]
    greater = (pos[:, None] > neg[None, :]).sum()
    equal = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * equal) / (pos.size * neg.size)


def brute_pro_curve(maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray):
    """(FPR, PRO) at each threshold (reject if score >= t), computed region by region."""
    regions = []  # boolean index arrays (image index, region mask)
    for i in range(masks.shape[0]):
        n, lab = cv2.connectedComponents((masks[i] != 0).astype(np.uint8), connectivity=8)
        for r in range(1, n):
            regions.append((i, lab == r))
    bg = maps[masks == 0]
    fpr, pro = [], []
    for t in thresholds:
        fpr.append(np.mean(bg >= t))
        pro.append(np.mean([np.mean(maps[i][r] >= t) for i, r in regions]))
    return np.array(fpr), np.array(pro)


def clipped_area(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Area under the polyline (x, y) for x in [0, limit], segment by segment."""
    area = 0.0
    for x0, x1, y0, y1 in zip(x[:-1], x[1:], y[:-1], y[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
    return area


def brute_pro_auc(maps, masks, limit=0.3, thresholds=None) -> float:
    """Reference PRO-AUC; exact when thresholds are all distinct score values (the default)."""
    if thresholds is None:
        thresholds = np.unique(maps)
    thresholds = np.sort(thresholds)[::-1]
    fpr, pro = brute_pro_curve(maps, masks, thresholds)
    x = np.r_[0.0, fpr]
    y = np.r_[0.0, pro]
    if x[-1] < 1.0:
        x, y = np.r_[x, 1.0], np.r_[y, 1.0]
    return clipped_area(x, y, limit) / limit


def one_sort_pro_auc(maps, masks, limit=0.3) -> float:
    """Textbook formulation: one descending sort of all pixels, cumulative sums, ties collapsed."""
    weights = np.zeros(maps.shape, dtype=np.float64)
    n_regions = 0
    for i in range(masks.shape[0]):
        n, lab = cv2.connectedComponents((masks[i] != 0).astype(np.uint8), connectivity=8)
        for r in range(1, n):
            region = lab == r
            weights[i][region] = 1.0 / region.sum()
        n_regions += n - 1
    is_bg = masks.ravel() == 0
    order = np.argsort(-maps.ravel(), kind="stable")
    s = maps.ravel()[order]
    pro = np.cumsum(weights.ravel()[order]) / n_regions
    fpr = np.cumsum(is_bg[order]) / is_bg.sum()
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    x = np.r_[0.0, fpr[last_of_tie]]
    y = np.r_[0.0, pro[last_of_tie]]
    return clipped_area(x, y, limit) / limit


def two_region_data(rng: np.random.Generator, levels: int | None = None):
    """4 images of 32x32: a 12x12 region, a 2x2 region, an empty-mask defect image, a good image."""
    masks = np.zeros((4, 32, 32), dtype=np.uint8)
    masks[0, 5:17, 8:20] = 1
    masks[1, 20:22, 3:5] = 1
    if levels is None:
        maps = rng.random((4, 32, 32)).astype(np.float32)
    else:
        maps = rng.integers(0, levels, size=(4, 32, 32)).astype(np.float32)
    return maps, masks


# ---------------------------------------------------------------- auroc


def test_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(5):
        n = 700
        labels = rng.random(n) < 0.3
        # Few distinct values -> many ties, both within and across classes.
        scores = rng.integers(0, 12, size=n).astype(np.float32) + labels * rng.integers(0, 3, size=n)
        assert auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)


def test_auroc_continuous_and_int_labels():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=500)
    scores = rng.normal(size=500) + labels
    assert auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)


def test_auroc_perfect_reversed_and_all_tied():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert auroc(scores, labels) == 1.0
    assert auroc(-scores, labels) == 0.0
    assert auroc(np.ones(5), labels) == 0.5


def test_auroc_single_class_raises():
    with pytest.raises(ValueError, match="one class"):
        auroc(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="one class"):
        auroc(np.array([0.1, 0.2]), np.array([1, 1]))


def test_auroc_nan_and_shape_mismatch_raise():
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]))
    with pytest.raises(ValueError):
        auroc(np.zeros(3), np.zeros(4))


# ---------------------------------------------------------------- pixel_auroc


def test_pixel_auroc_matches_brute_force():
    rng = np.random.default_rng(2)
    masks = rng.random((3, 12, 10)) < 0.2
    maps = (rng.integers(0, 6, size=masks.shape) + masks * 1.5).astype(np.float32)
    assert pixel_auroc(maps, masks) == pytest.approx(brute_auroc(maps, masks), abs=1e-12)
    # 0/255 PNG-style masks mean the same thing.
    masks255 = masks.astype(np.uint8) * 255
    assert pixel_auroc(maps, masks255) == pixel_auroc(maps, masks)


# ---------------------------------------------------------------- pro_auc


def test_pro_auc_perfect_map_is_one():
    rng = np.random.default_rng(3)
    maps, masks = two_region_data(rng)
    perfect = maps * 0.5 + (masks != 0)  # every defect pixel above every background pixel
    assert pro_auc(perfect, masks) == pytest.approx(1.0, abs=1e-6)
    assert pro_auc(perfect, masks, fpr_limit=1.0) == pytest.approx(1.0, abs=1e-6)


def test_pro_auc_constant_map_is_one_diagonal_step():
    rng = np.random.default_rng(8)
    _, masks = two_region_data(rng)
    maps = np.full(masks.shape, 0.7, dtype=np.float32)
    # All scores tied: a single threshold, the curve is the diagonal PRO = FPR.
    for limit in (0.1, 0.3, 1.0):
        assert pro_auc(maps, masks, fpr_limit=limit) == pytest.approx(limit / 2, abs=1e-12)
    assert pixel_auroc(maps, masks) == 0.5


def test_pro_auc_exact_match_with_ties():
    # Integer scores: all thresholds can be enumerated, so the reference is exact.
    rng = np.random.default_rng(4)
    for levels in (5, 50):
        maps, masks = two_region_data(rng, levels=levels)
        maps[0][masks[0] != 0] += 1  # a little signal in the large region only
        for limit in (0.05, 0.3, 1.0):
            got = pro_auc(maps, masks, fpr_limit=limit)
            want = brute_pro_auc(maps, masks, limit)
            assert got == pytest.approx(want, abs=1e-9), (levels, limit)


def test_pro_auc_matches_one_sort_formulation_on_blobs():
    rng = np.random.default_rng(9)
    masks = np.zeros((12, 48, 48), dtype=np.uint8)
    for i in range(8):  # 4 defect-free images
        for _ in range(rng.integers(1, 4)):
            center = tuple(int(v) for v in rng.integers(4, 44, 2))
            axes = tuple(int(v) for v in rng.integers(1, 10, 2))
            cv2.ellipse(masks[i], center, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
    maps = rng.random(masks.shape).astype(np.float32) + 0.4 * masks
    maps[:, ::7, :] = np.round(maps[:, ::7, :], 1)  # some ties across classes as well
    for limit in (0.01, 0.3, 1.0):
        got = pro_auc(maps, masks, fpr_limit=limit)
        assert got == pytest.approx(one_sort_pro_auc(maps, masks, limit), abs=1e-9), limit


def test_pro_auc_random_map_vs_200_threshold_reference():
    rng = np.random.default_rng(5)
    maps, masks = two_region_data(rng)
    bg = maps[masks == 0]
    thresholds = np.quantile(bg, np.linspace(1.0, 0.0, 201))
    want = brute_pro_auc(maps, masks, 0.3, thresholds=thresholds)
    got = pro_auc(maps, masks, fpr_limit=0.3)
    assert got == pytest.approx(want, abs=1e-2)
    # A random map scores about fpr_limit / 2 on the normalised scale.
    assert 0.05 < got < 0.3


def test_pro_auc_small_region_counts_as_much_as_large():
    rng = np.random.default_rng(6)
    maps, masks = two_region_data(rng)
    big, small = masks[0] != 0, masks[1] != 0
    assert big.sum() == 144 and small.sum() == 4
    maps[0][big] = -1.0  # large region never detected
    maps[1][small] = 2.0  # small region detected before any false positive
    # Region-averaged PRO is 0.5 over the whole FPR range (pixel-averaged would be 4/148).
    assert pro_auc(maps, masks) == pytest.approx(0.5, abs=1e-9)
    maps[0][big], maps[1][small] = 2.0, -1.0
    assert pro_auc(maps, masks) == pytest.approx(0.5, abs=1e-9)


def test_pro_auc_uses_8_connectivity():
    masks = np.zeros((1, 8, 8), dtype=np.uint8)
    masks[0, 1, 1] = masks[0, 2, 2] = 1  # diagonal pair: one region under 8-connectivity
    masks[0, 6, 6] = 1  # separate one-pixel region
    maps = np.zeros((1, 8, 8), dtype=np.float32)
    maps[0, 1, 1] = maps[0, 2, 2] = 5.0
    maps[0, 6, 6] = -5.0
    # Regions {diagonal: 1.0, single: 0.0} -> PRO 0.5 (4-connectivity would give 2/3).
    assert pro_auc(maps, masks) == pytest.approx(0.5, abs=1e-9)


def test_pro_auc_empty_mask_defect_image_counts_as_background():
    rng = np.random.default_rng(7)
    maps, masks = two_region_data(rng)
    maps = maps * 0.5 + (masks != 0)  # perfect on the annotated images
    assert pro_auc(maps, masks) == pytest.approx(1.0, abs=1e-6)
    # Image 2 has an empty mask; its pixels are background, so hot pixels there are false
    # positives that come before the defects and cost PRO at low FPR.
    maps[2, :4, :] = 10.0
    got = pro_auc(maps, masks)
    assert got == pytest.approx(brute_pro_auc(maps, masks, 0.3), abs=1e-9)
    assert got < 0.99


def test_pro_auc_errors():
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="no defect regions"):
        pro_auc(maps, np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_auc(maps, np.ones((2, 4, 4), dtype=np.uint8), fpr_limit=0.0)
    with pytest.raises(ValueError, match="background"):
        pro_auc(maps, np.ones((2, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        pro_auc(maps, np.zeros((2, 4, 5), dtype=np.uint8))


# ---------------------------------------------------------------- rates_at_threshold


def test_rates_at_threshold_hand_cases():
    scores = np.array([0.1, 0.5, 0.5, 0.9, 0.4, 0.5, 0.6, 0.7])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # Reject iff score > 0.5: goods at 0.5 pass (only 0.9 rejected); the bad one at 0.5 is missed.
    frr, miss = rates_at_threshold(scores, labels, 0.5)
    assert frr == pytest.approx(1 / 4)
    assert miss == pytest.approx(2 / 4)
    frr, miss = rates_at_threshold(scores, labels, 0.49)
    assert frr == pytest.approx(3 / 4)
    assert miss == pytest.approx(1 / 4)
    assert rates_at_threshold(scores, labels, 1.0) == (0.0, 1.0)
    assert rates_at_threshold(scores, labels, 0.0) == (1.0, 0.0)


def test_rates_at_threshold_empty_class_is_nan():
    frr, miss = rates_at_threshold(np.array([0.2, 0.8]), np.array([0, 0]), 0.5)
    assert frr == 0.5 and math.isnan(miss)
    frr, miss = rates_at_threshold(np.array([0.2, 0.8]), np.array([1, 1]), 0.5)
    assert math.isnan(frr) and miss == 0.5
