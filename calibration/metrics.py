"""Evaluation metrics for anomaly detection: image AUROC, pixel AUROC, PRO-AUC, operating-point rates.

numpy + cv2 only (no scipy / scikit-learn), so evaluation runs on the same hosts as calibration.

Conventions shared by every function:

* higher score = more anomalous;
* labels / masks: any nonzero value is anomalous (so 0/1, bool and 0/255 PNG masks all work);
* NaN scores raise ValueError: they have no place in a ranking and would silently skew it.

Speed: all curve metrics sort the normal-class and the anomalous-class scores *separately* with
``np.sort`` (SIMD-accelerated, ~0.6 s for 40M float32 on one core) and join them with
``np.searchsorted``; a single ``np.argsort`` over all pixels is ~10x slower. ``pro_auc`` argsorts
only the defect pixels (usually a few percent), which carry per-region weights. The result is
identical to the textbook "one sort, cumulative sums, collapse ties" formulation (O(n log n)).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["auroc", "pixel_auroc", "pro_auc", "rates_at_threshold"]


def _split(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (normal scores, anomalous scores), both flattened, sorted ascending, NaN-checked."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores shape {scores.shape} != labels shape {labels.shape}")
    s = scores.ravel()
    pos_mask = labels.ravel() != 0
    neg = s[~pos_mask]
    pos = s[pos_mask]
    del pos_mask
    neg.sort()
    pos.sort()
    # NaN sorts last, so checking the final element is a free full-array NaN check.
    for arr in (neg, pos):
        if arr.size and np.isnan(arr[-1]):
            raise ValueError("scores contain NaN")
    return neg, pos


def _auroc_sorted(neg: np.ndarray, pos: np.ndarray) -> float:
    """Mann-Whitney AUROC from sorted class scores; ties between classes count 1/2."""
    n_neg, n_pos = neg.size, pos.size
    if n_neg == 0 or n_pos == 0:
        which = "anomalous" if n_pos == 0 else "normal"
        raise ValueError(f"AUROC is undefined: no {which} samples (only one class present)")
    # left + right = 2 * #(neg < p) + #(neg == p): exactly twice the average-rank statistic,
    # kept in int64 so it is exact (max 2 * n_pos * n_neg ~ 3e15 for 40M pixels).
    # Sorted keys let searchsorted reuse the previous bound, which makes it cache-friendly.
    twice_u = int(np.searchsorted(neg, pos, side="left").sum(dtype=np.int64))
    twice_u += int(np.searchsorted(neg, pos, side="right").sum(dtype=np.int64))
    return twice_u / (2.0 * n_pos * n_neg)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve, tie-aware (equals sklearn ``roc_auc_score``).

    ``scores`` and ``labels`` may have any (equal) shape; they are flattened.
    Raises ValueError if only one class is present.
    """
    neg, pos = _split(scores, labels)
    return _auroc_sorted(neg, pos)


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel-level AUROC over all pixels of all images.

    ``maps``: float anomaly maps (N, H, W); ``masks``: ground truth (N, H, W), nonzero = defect.
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {maps.shape}")
    return auroc(maps, masks)


def _defect_regions(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores of all defect pixels and their per-pixel weight 1/region_size; plus region count."""
    scores_parts: list[np.ndarray] = []
    weight_parts: list[np.ndarray] = []
    n_regions = 0
    for i in range(masks.shape[0]):
        m = masks[i] != 0
        if not m.any():
            continue
        n_lab, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        sizes = np.bincount(lab.ravel(), minlength=n_lab).astype(np.float64)
        lab_in = lab[m]
        scores_parts.append(maps[i][m])
        weight_parts.append(1.0 / sizes[lab_in])
        n_regions += n_lab - 1
    if n_regions == 0:
        raise ValueError("PRO is undefined: the masks contain no defect regions")
    return np.concatenate(scores_parts), np.concatenate(weight_parts), n_regions


def pro_auc(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO-vs-FPR curve up to ``fpr_limit`` (MVTec AD protocol).

    Regions are the 8-connected components of each mask. At threshold t (reject if score >= t):
    PRO = mean over all regions of the fraction of the region's pixels with score >= t;
    FPR = fraction of all non-defect pixels (every image, defect images included) with score >= t.
    Tied scores form one threshold step. The curve is integrated with the trapezoid rule from
    FPR 0 to exactly ``fpr_limit`` (linear interpolation) and divided by ``fpr_limit``, so a
    perfect map scores 1.0 and a random one about ``fpr_limit / 2``.
    Raises ValueError if there are no defect regions or no background pixels.
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(f"maps and masks must both be (N, H, W); got {maps.shape} and {masks.shape}")
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")

    d_scores, d_weights, n_regions = _defect_regions(maps, masks)
    order = np.argsort(d_scores, kind="stable")
    d_scores = d_scores[order]
    d_weights = d_weights[order]
    del order
    if np.isnan(d_scores[-1]):
        raise ValueError("maps contain NaN")
    # tail[k] = PRO contributed by defect pixels d_scores[k:]; a reverse cumsum avoids the
    # cancellation of "total - prefix" near PRO = 1.
    tail = np.zeros(d_scores.size + 1, dtype=np.float64)
    tail[:-1] = np.cumsum(d_weights[::-1])[::-1] / n_regions
    del d_weights

    bg = maps[masks == 0]
    n_bg = bg.size
    if n_bg == 0:
        raise ValueError("PRO is undefined: there are no background pixels")
    bg.sort()
    if np.isnan(bg[-1]):
        raise ValueError("maps contain NaN")

    # Only the top fpr_limit fraction of background pixels can lie on the integrated part of the
    # curve, so the rest is never examined (+1: margin against rounding in fpr_limit * n_bg).
    n_keep = min(n_bg, int(np.ceil(fpr_limit * n_bg)) + 1)
    top = bg[n_bg - n_keep :]
    # Distinct kept background values v_j (ascending) and G_j = #background >= v_j.
    is_first = np.empty(n_keep, dtype=bool)
    is_first[0] = True
    np.not_equal(top[1:], top[:-1], out=is_first[1:])
    first = np.flatnonzero(is_first)
    del is_first
    values = top[first]
    count_ge = n_keep - first
    del first
    # The lowest kept value may have ties below the cut; count those too. Its FPR is then
    # > fpr_limit (or exactly 1), so the curve always reaches fpr_limit.
    count_ge[0] = n_bg - int(np.searchsorted(bg, values[0], side="left"))
    del bg, top

    # Lowering the threshold onto v_j moves the curve (G_{j+1}, PRO(> v_j)) -> (G_j, PRO(>= v_j))
    # in (count, PRO) space, G_V = 0: one segment per background value, diagonal when defects
    # tie at v_j. Defect-only thresholds in between only move PRO up at constant FPR, which
    # adds no area, so these segments are the whole curve as far as the integral goes.
    pro_gt = tail[np.searchsorted(d_scores, values, side="right")]
    pro_ge = tail[np.searchsorted(d_scores, values, side="left")]
    del values, tail
    limit_count = fpr_limit * n_bg
    # Segments j >= j0 lie entirely at FPR <= fpr_limit; segment j0 - 1 crosses it.
    j0 = int(np.searchsorted(-count_ge, -limit_count, side="left"))
    count_next = np.empty_like(count_ge)  # G_{j+1}
    count_next[:-1] = count_ge[1:]
    count_next[-1] = 0
    width = count_ge[j0:] - count_next[j0:]
    area = float(np.dot(width, pro_gt[j0:] + pro_ge[j0:]))
    if j0 > 0:
        j = j0 - 1
        x0, x1 = count_next[j], count_ge[j]  # x0 <= limit_count < x1
        y_lim = pro_gt[j] + (pro_ge[j] - pro_gt[j]) * (limit_count - x0) / (x1 - x0)
        area += (limit_count - x0) * (pro_gt[j] + y_lim)
    # Halve for the trapezoid rule, counts -> FPR, normalise by the range.
    return area / (2.0 * n_bg * fpr_limit)


def rates_at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(false_reject_rate, miss_rate) at ``threshold``.

    A part is rejected iff ``score > threshold`` (strictly greater: a score equal to the
    threshold passes). false_reject_rate = rejected normals / normals; miss_rate = passed
    anomalies / anomalies. A rate whose class is empty is NaN.
    """
    s = np.asarray(scores).ravel()
    lab = np.asarray(labels).ravel()
    if s.shape != lab.shape:
        raise ValueError(f"scores size {s.size} != labels size {lab.size}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    pos = lab != 0
    reject = s > threshold
    n_pos = int(pos.sum())
    n_neg = s.size - n_pos
    frr = float(np.count_nonzero(reject & ~pos)) / n_neg if n_neg else float("nan")
    miss = float(np.count_nonzero(~reject & pos)) / n_pos if n_pos else float("nan")
    return frr, miss
