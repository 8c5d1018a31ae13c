"""Maximum-likelihood training of the CFLOW decoders on cached features of good parts.

The encoder is frozen, so every image is encoded once and the flows then train on random
mini-batches of fibers (one feature vector and its position) drawn across all images and
positions; that is what makes calibration fit a line PC's minutes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from calibration.progress import Progress
from engines.cflow import CflowDecoders, PreprocessedEncoder
from engines.encoders import OPTIONAL_STRIDES, TAP_STRIDES


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 8.0  # passes over every (image, position) fiber of a scale
    fiber_batch: int = 1024
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0
    min_steps_per_scale: int = 600  # the deep scales have few fibers but the widest flows
    max_steps_per_scale: int = 4000
    # Fixed step counts for the scales at strides 4, 8, 16 and 32 replace the epochs rule when
    # given. Tuned on the three shared categories: the stride-32 flow overfits its few fibers
    # within ~200 steps and then loses image AUROC, while strides 8 and 16 keep gaining up to
    # ~1600. Stride 4 (an option) was only measured at 1600.
    steps_per_scale: tuple[int, ...] | None = (1600, 1600, 1600, 200)

    def steps_for(self, fibers_per_scale: list[int], strides: tuple[int, ...] = TAP_STRIDES) -> list[int]:
        """Optimiser steps for each modelled scale; `strides` names them (a station may model
        only some), so the stride-32 flow keeps its own count whichever scales come before."""
        if self.steps_per_scale is not None:
            counts = dict(zip(OPTIONAL_STRIDES, self.steps_per_scale))
            return [max(1, min(self.max_steps_per_scale, counts[s])) for s in strides]
        return [max(self.min_steps_per_scale, min(self.max_steps_per_scale, math.ceil(self.epochs * n / self.fiber_batch))) for n in fibers_per_scale]


@dataclass
class TrainReport:
    steps: list[int] = field(default_factory=list)
    final_nll: list[float] = field(default_factory=list)  # mean NLL per channel over the last steps
    seconds: float = 0.0


@torch.no_grad()
def encode_features(encoder: PreprocessedEncoder, images: np.ndarray, batch_size: int = 16, label: str = "encoding", device: torch.device | None = None) -> list[torch.Tensor]:
    """uint8 RGB (N, H, W, 3) -> per scale float32 (N, positions, channels), on the CPU; `device`
    runs the encoder there (it is moved back afterwards)."""
    device = device or torch.device("cpu")
    encoder.to(device)
    progress = Progress(label, len(images))
    chunks: list[list[torch.Tensor]] = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        maps = encoder(batch)
        chunks.append([m.flatten(2).transpose(1, 2).contiguous().cpu() for m in maps])
        progress.update(min(start + batch_size, len(images)))
    encoder.to("cpu")
    return [torch.cat([c[s] for c in chunks]) for s in range(len(chunks[0]))]


def fit_input_statistics(decoders: CflowDecoders, features: list[torch.Tensor]) -> None:
    for flow, fibers in zip(decoders.conditional_flows, features):
        flat = fibers.reshape(-1, fibers.shape[-1])
        flow.set_input_statistics(flat.mean(0), flat.std(0))


def train_decoders(
    decoders: CflowDecoders,
    features: list[torch.Tensor],
    config: TrainConfig,
    strides: tuple[int, ...] = TAP_STRIDES,
    device: torch.device | None = None,
) -> TrainReport:
    """Train every scale's flow (at `strides`) by maximum likelihood on `device` (the decoders
    end on the CPU either way); returns how it went. The fibers are drawn with a CPU generator,
    so a GPU run draws the same batches as a CPU run with the same seed."""
    device = device or torch.device("cpu")
    features = [f.to(device) for f in features]
    decoders.to(device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    fit_input_statistics(decoders, features)
    decoders.train()
    report = TrainReport()
    steps = config.steps_for([f.shape[0] * f.shape[1] for f in features], strides)
    report.steps = steps
    optimisers = [torch.optim.Adam(flow.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay) for flow in decoders.conditional_flows]
    total = max(steps)
    progress = Progress("training flows", total)
    recent: list[list[float]] = [[] for _ in features]
    start = time.monotonic()
    for step in range(total):
        for scale, (flow, fibers, optimiser) in enumerate(zip(decoders.conditional_flows, features, optimisers)):
            if step >= steps[scale]:
                continue
            # Cosine decay to zero over this scale's own step count.
            lr = 0.5 * config.learning_rate * (1.0 + math.cos(math.pi * step / steps[scale]))
            for group in optimiser.param_groups:
                group["lr"] = lr
            images, positions, channels = fibers.shape
            index = torch.randint(0, images * positions, (config.fiber_batch,), generator=generator)
            index = index.to(device)
            x = fibers.reshape(-1, channels)[index]
            position = index % positions
            encoding = decoders.position_encoding(scale)
            if positions < config.fiber_batch:
                terms = [term[position] for term in flow.cond_terms(encoding)]
            else:
                terms = flow.cond_terms(encoding[position])
            nll = -flow.log_likelihood_per_dim(x, terms).mean()
            optimiser.zero_grad(set_to_none=True)
            nll.backward()
            optimiser.step()
            recent[scale].append(float(nll.detach()))
            if len(recent[scale]) > 50:
                recent[scale].pop(0)
        progress.update(step + 1, "nll/ch " + " ".join(f"{np.mean(r):.3f}" for r in recent if r))
    decoders.eval()
    decoders.to("cpu")
    report.final_nll = [float(np.mean(r)) for r in recent]
    report.seconds = time.monotonic() - start
    return report


@torch.no_grad()
def log_likelihoods(decoders: CflowDecoders, features: list[torch.Tensor], shapes, batch_size: int = 32) -> list[np.ndarray]:
    """Cached features -> per scale (N, h, w) float32 log-likelihood per channel."""
    out: list[list[np.ndarray]] = [[] for _ in features]
    n = features[0].shape[0]
    for start in range(0, n, batch_size):
        maps = [f[start : start + batch_size].transpose(1, 2).reshape(-1, s.channels, s.height, s.width) for f, s in zip(features, shapes)]
        for scale, ll in enumerate(decoders.log_likelihood_maps(maps)):
            out[scale].append(ll.numpy())
    return [np.concatenate(o) for o in out]
