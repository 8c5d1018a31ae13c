"""Frame to anomaly map and image score with one bundle and one backend; shared by the daemon
and the offline evaluation so both score every part identically."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.backends import InferenceBackend, ModelOutput
from engines.bundle import NEAREST_PATCH_WEIGHTS, PART_APPEARANCE_WEIGHTS, PART_DISTANCE, PATCH_DISTANCE, Bundle, BundleError
from engines.preprocess import to_model_input
from engines.scoring import ScoredFrames, score_frames


@dataclass(frozen=True)
class Inspection:
    anomaly_map: np.ndarray  # float32 (H, W) at the bundle's input size
    score: float


class Inspector:
    def __init__(self, bundle: Bundle, backend: InferenceBackend):
        self.bundle = bundle
        self.backend = backend
        self.input_size = bundle.manifest.input_size
        self.colour = bundle.manifest.colour

    def model_input(self, frame: np.ndarray) -> np.ndarray:
        return to_model_input(frame, self.input_size, self.colour)

    def inspect_batch(self, model_inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB (B, H, W, 3) -> maps (B, H, W), scores (B,)."""
        return self.score(self.backend.infer(model_inputs))

    def inspect_frames(self, model_inputs: np.ndarray) -> ScoredFrames:
        """uint8 RGB (B, H, W, 3) -> maps, their map halves of the score, and the scores."""
        return self.scored_frames(self.backend.infer(model_inputs))

    def score(self, output: ModelOutput) -> tuple[np.ndarray, np.ndarray]:
        scored = self.scored_frames(output)
        return scored.maps, scored.scores

    def scored_frames(self, output: ModelOutput) -> ScoredFrames:
        scoring = self.bundle.manifest.scoring
        # The threshold was calibrated on scores that include every term the manifest names;
        # without one, every part would be judged on less than it was calibrated for.
        for what, needed, given, output_name, torch_file in (
            ("part appearance", scoring.part_score, output.part_distances, PART_DISTANCE, PART_APPEARANCE_WEIGHTS),
            ("the nearest good patch", scoring.nearest_patch, output.patch_distances, PATCH_DISTANCE, NEAREST_PATCH_WEIGHTS),
        ):
            if needed is not None and given is None:
                raise BundleError(
                    f"{self.bundle.path}: the manifest scores {what} but the backend gave no {output_name} "
                    f"(no {output_name} output in the flows graph, or no {torch_file} for the torch backend); re-calibrate"
                )
        return score_frames(output.log_likelihoods, scoring, self.input_size, output.part_distances, output.patch_distances)

    def inspect(self, frame: np.ndarray) -> Inspection:
        maps, scores = self.inspect_batch(self.model_input(frame)[None])
        return Inspection(maps[0], float(scores[0]))
