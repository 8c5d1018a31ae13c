"""The paper's test-set-max normalisation, for evaluation only.

CFLOW-AD's reference code turns each scale's log-likelihood into exp(ll - max over the whole
test set), sums the upsampled scales and subtracts from the maximum. A part's score then depends
on every other test image, so this can never run on a line; it is computed here only to show
that the calibrated scoring is not worse.
"""

from __future__ import annotations

import cv2
import numpy as np


def test_set_max_maps(log_likelihoods: list[np.ndarray], output_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    height, width = output_size
    batch = log_likelihoods[0].shape[0]
    probability = np.zeros((batch, height, width), dtype=np.float32)
    for ll in log_likelihoods:
        scaled = np.exp(ll - ll.max()).astype(np.float32)
        for b in range(batch):
            probability[b] += cv2.resize(scaled[b], (width, height), interpolation=cv2.INTER_LINEAR)
    maps = probability.max() - probability
    return maps, maps.reshape(batch, -1).max(axis=1)
