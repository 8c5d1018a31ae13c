"""edge-calibrate's work: good images in, a verified bundle out."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import engines
from calibration.augment import augmented_copies, nuisance_copies
from calibration.device import resolve_device
from calibration.images import ImageFolderError, list_images, load_images
from calibration.progress import Progress
from calibration.scale_weights import COARSEST_WEIGHT_CANDIDATES, choose_coarsest_weight, choose_nearest_patch
from calibration.synthetic_defects import synthetic_defects
from calibration.thresholds import choose_thresholds, fit_scoring_constants, with_nearest_patch, with_part_score
from calibration.train import TrainConfig, encode_features, log_likelihoods, train_decoders
from engines.bundle import (
    ENCODER_FP16_ONNX,
    ENCODER_ONNX,
    FLOW_WEIGHTS,
    FLOWS_FP16_ONNX,
    FLOWS_ONNX,
    NEAREST_PATCH_WEIGHTS,
    PART_APPEARANCE_WEIGHTS,
    Bundle,
    EncoderRecord,
    FlowRecord,
    Manifest,
    flow_tap_indices,
    format_version_for,
    write_bundle,
)
from engines.cflow import CflowDecoders, FeatureShape, PreprocessedEncoder, feature_shapes
from engines.encoders import TAP_STRIDES, load_encoder
from engines.export import export_encoder, export_flows, export_half_graphs
from engines.flow import FlowConfig
from engines.nearest_patch import PATCH_STRIDES, NearestPatch, fit_nearest_patch, nearest_distances, patch_taps
from engines.part_appearance import fit_part_appearance, part_statistics
from engines.preprocess import PART_ASPECT_TOLERANCE
from engines.scoring import anomaly_maps, image_scores

MIN_FIT_IMAGES = 10
MIN_HOLDOUT_IMAGES = 5


@dataclass(frozen=True)
class AugmentConfig:
    copies: int = 0  # 0: parts are fixtured, no augmentation
    max_shift: float = 0.03  # fraction of the image size
    max_degrees: float = 3.0


@dataclass(frozen=True)
class CalibrationSettings:
    encoder: str = "efficientnet-lite0"
    input_size: tuple[int, int] = (256, 256)
    # The feature scales with a flow: the paper's three by default. A station's choice otherwise:
    # 8,16 (mvtec3d/tire 0.72 -> 0.81 image AUROC) or 4,8,16,32 (metal_plate PRO 0.924 -> 0.953);
    # both cost magnetic_tile's large, faint defects (bench/README.md). The whole-part model
    # pools strides 8, 16 and 32 whichever scales have flows.
    flow_strides: tuple[int, ...] = TAP_STRIDES
    colour: str | None = None  # None: gray when every good image is gray, else rgb
    flow: FlowConfig = field(default_factory=FlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    holdout_fraction: float = 0.2
    target_false_reject_rate: float = 0.01
    target_pixel_false_positive_rate: float = 0.005
    feature_pooling: int = 1  # 1: none (the paper); 3 or 5 for large, faint defects (bench/README.md)
    part_appearance: bool = True  # also score each part as a whole (engines/part_appearance.py)
    # Put each position's distance to its nearest good patch beside the flows in the map
    # (engines/nearest_patch.py): sharper outlines for one matmul per frame (issue 22).
    nearest_patch: bool = True
    # Pixels at the input size; 4 gave the best PRO on MPDD metal_plate (0, 2, 4 tried). On synthetic
    # defects made from held-out good parts 2 scored 0.002-0.003 higher, within their noise (issue 22).
    blur_sigma: float = 4.0
    # Synthetic defects made from the held-out good parts on which the coarsest scale's weight in
    # the map is chosen (calibration/scale_weights.py); 0: equal weights, as before issue 22.
    synthetic_defects: int = 120
    # Where the synthetic defects score best with the coarsest flow's weight at 0, leave that
    # flow out of the bundle (its share of every frame's arithmetic saved), if the whole-part
    # model still pools its stage. False where the flows were chosen explicitly (--strides,
    # --choose-strides): those are kept as asked.
    may_drop_coarsest_flow: bool = True
    threads: int = 0
    device: str = "cpu"  # where the good parts are encoded and the flows train (calibration/device.py)


@dataclass
class CalibrationReport:
    fit_images: int
    holdout_images: int
    seconds: dict[str, float]
    train_steps: list[int]
    final_nll_per_channel: list[float]
    holdout_false_reject_rate: float
    part_appearance_shrinkage: float | None = None  # Ledoit-Wolf; None: no part appearance model
    part_appearance_statistics: int = 0
    defect_images: int = 0
    defect_miss_rate: float | None = None
    # Selection score on synthetic defects per candidate weight of the coarsest scale (the best is
    # in the manifest's scoring.scale_weights; calibration/scale_weights.py).
    coarsest_weight_scores: dict[str, float] = field(default_factory=dict)
    synthetic_defects: int = 0
    flow_stride_left_out: int = 0  # the coarsest flow's stride where synthetic defects left it out; 0: none
    nearest_patch_bank: int = 0  # patches in the bank; 0: no nearest-patch term
    # Selection score on the synthetic defects with and without that term (calibration/scale_weights.py).
    nearest_patch_scores: dict[str, float] = field(default_factory=dict)


def part_aspect(aspects: list[float]) -> dict[str, float]:
    """The range of the good parts' width / height."""
    return {"min": round(min(aspects), 4), "max": round(max(aspects), 4)}


def refuse_odd_shapes(paths: list[Path], aspects: list[float]) -> None:
    """A good image far from the others' width / height (a stray strip or a picture from another
    camera) would be stretched to the model's square as a good part, and widen the range of
    shapes the station accepts (training.part_aspect): refused, naming each, by the daemon's own
    tolerance."""
    if len(aspects) < 3:
        return
    median = float(np.median(aspects))
    odd = [f"{path} ({aspect:.2f})" for path, aspect in zip(paths, aspects) if not median / PART_ASPECT_TOLERANCE <= aspect <= median * PART_ASPECT_TOLERANCE]
    if odd:
        raise ImageFolderError(
            f"{len(odd)} odd-shaped good image(s): {', '.join(odd[:5])}{' ...' if len(odd) > 5 else ''}, far from the others' width/height "
            f"(median {median:.2f}); crop them like the rest, or leave them out"
        )


def split_good(paths: list[Path], holdout: list[Path] | None, fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Fit and held-out lists; every 1/fraction-th image (in a seeded shuffle) is held out."""
    if holdout is not None:
        fit, held = list(paths), list(holdout)
    else:
        order = np.random.default_rng(seed).permutation(len(paths))
        count = max(MIN_HOLDOUT_IMAGES, int(round(fraction * len(paths))))
        held = [paths[i] for i in sorted(order[:count])]
        fit = [paths[i] for i in sorted(order[count:])]
    if len(fit) < MIN_FIT_IMAGES or len(held) < MIN_HOLDOUT_IMAGES:
        need = f"at least {MIN_FIT_IMAGES} to train and {MIN_HOLDOUT_IMAGES} held out"
        if holdout is None:
            need += f" ({MIN_FIT_IMAGES + MIN_HOLDOUT_IMAGES} in one folder; a few hundred give a reliable threshold)"
        raise ImageFolderError(f"too few good images: {len(fit)} to train and {len(held)} held out; need {need}")
    return fit, held


def channels_first(features: list[torch.Tensor]) -> list[torch.Tensor]:
    """The cached (N, positions, channels) fibers as the (N, channels, positions) maps that the
    part appearance model pools, as in the graph."""
    return [f.transpose(1, 2) for f in features]


def tap_maps(features: list[torch.Tensor], shapes: list[FeatureShape]) -> list[torch.Tensor]:
    """The cached fibers as the (N, channels, height, width) maps the nearest patch reads."""
    return [m.reshape(len(m), s.channels, s.height, s.width) for m, s in zip(channels_first(features), shapes)]


def patch_distances_of(model: NearestPatch, features: list[torch.Tensor], shapes: list[FeatureShape]) -> np.ndarray:
    """Each cached part's (N, h, w) distances to the nearest bank patch."""
    return nearest_distances(model, tap_maps(features, shapes))


@torch.inference_mode()
def encode_part_statistics(encoder: PreprocessedEncoder, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """The whole-part statistics of images that only that model needs (their feature maps are
    not kept)."""
    progress = Progress("encoding part-model copies", len(images))
    out = []
    for start in range(0, len(images), batch_size):
        out.append(part_statistics(encoder(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])))).numpy())
        progress.update(min(start + batch_size, len(images)))
    return np.concatenate(out)


def encoder_taps(settings: CalibrationSettings) -> tuple[int, ...]:
    """The strides the encoder outputs: the flows', for the whole-part model 8, 16 and 32, and
    for the nearest patch 8 and 16.
    Dropping a scale's flow (its likelihoods are noisy on a station) need not drop the stage
    from the part score: on mvtec3d/tire, flows at 8,16 with the part model over all three
    stages give image AUROC 0.81, against 0.76 with the part model over two (bench/README.md)."""
    taps = set(settings.flow_strides)
    if settings.part_appearance:
        taps |= set(TAP_STRIDES)
    if settings.nearest_patch:
        taps |= set(PATCH_STRIDES)
    return tuple(sorted(taps))


def without_coarsest_flow(decoders: CflowDecoders) -> CflowDecoders:
    """The same trained flows but the coarsest (the last): its weights dropped, the others' kept
    exactly, so their log-likelihoods and the constants fitted on them stay valid."""
    last = len(decoders.shapes) - 1
    kept = CflowDecoders(decoders.shapes[:last], decoders.config)
    kept.load_state_dict({key: value for key, value in decoders.state_dict().items() if not key.startswith(f"flows.{last}.")}, strict=True)
    return kept.eval()


def flow_inputs(features: list[torch.Tensor], flow_taps: tuple[int, ...]) -> list[torch.Tensor]:
    return [features[i] for i in flow_taps]


def part_distances(model, features: list[torch.Tensor], batch_size: int = 64) -> np.ndarray:
    maps = channels_first(features)
    with torch.inference_mode():
        return np.concatenate([model([m[start : start + batch_size] for m in maps]).numpy() for start in range(0, len(maps[0]), batch_size)])


def calibrate(
    good_dir: Path,
    output: Path,
    settings: CalibrationSettings,
    holdout_dir: Path | None = None,
    defect_dir: Path | None = None,
    force: bool = False,
    log=print,
) -> tuple[Bundle, CalibrationReport]:
    if output.exists() and not force:
        # Checked first so an hour of training is never thrown away at the end.
        raise FileExistsError(f"{output} already exists; choose another output path or pass --force to replace it")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    seconds: dict[str, float] = {}
    started = time.monotonic()

    good = list_images(good_dir)
    if not good:
        raise ImageFolderError(f"{good_dir}: no images (.png, .jpg, .bmp, .tif) found")
    held_paths = list_images(holdout_dir) if holdout_dir else None
    fit_paths, held_paths = split_good(good, held_paths, settings.holdout_fraction, settings.train.seed)
    defect_paths = list_images(defect_dir) if defect_dir else []

    log(f"reading {len(fit_paths)} good images to train, {len(held_paths)} held out, {len(defect_paths)} defective")
    fit = load_images(fit_paths, settings.input_size, settings.colour)
    colour = settings.colour or ("gray" if fit.grayscale else "rgb")
    held = load_images(held_paths, settings.input_size, colour)
    refuse_odd_shapes(fit.paths + held.paths, fit.aspects + held.aspects)
    defects = load_images(defect_paths, settings.input_size, colour) if defect_paths else None
    seconds["read"] = time.monotonic() - started

    encoder_module, info = load_encoder(settings.encoder, tap_strides=encoder_taps(settings))
    encoder = PreprocessedEncoder(encoder_module, info.mean, info.std, settings.feature_pooling).eval()
    tap_shapes = feature_shapes(info.tap_channels, info.tap_strides, settings.input_size)
    flow_strides = tuple(settings.flow_strides)
    flow_taps = flow_tap_indices(info.tap_strides, flow_strides)
    shapes = [tap_shapes[i] for i in flow_taps]
    train_images = fit.images
    if settings.augment.copies:
        a = settings.augment
        train_images = augmented_copies(fit.images, a.copies, a.max_shift, a.max_degrees, settings.train.seed)
    mark = time.monotonic()
    device = resolve_device(settings.device)
    log(f"encoding and training on {device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    fit_features = encode_features(encoder, train_images, label="encoding good parts", device=device)
    held_features = encode_features(encoder, held.images, label="encoding held-out parts", device=device)
    seconds["encode"] = time.monotonic() - mark

    mark = time.monotonic()
    torch.manual_seed(settings.train.seed)
    decoders = CflowDecoders(shapes, settings.flow)
    training = train_decoders(decoders, flow_inputs(fit_features, flow_taps), settings.train, settings.flow_strides, device)
    seconds["train"] = time.monotonic() - mark

    mark = time.monotonic()
    part_appearance, shrinkage, held_distances = None, None, None
    if settings.part_appearance:
        statistics = [
            part_statistics(channels_first(fit_features)).numpy(),
            encode_part_statistics(encoder, nuisance_copies(fit.images, settings.train.seed)),
        ]
        part_appearance, shrinkage = fit_part_appearance(np.concatenate(statistics))
        held_distances = part_distances(part_appearance, held_features)
        seconds["part_model"] = time.monotonic() - mark
        mark = time.monotonic()
    nearest_patch, held_patch, patch_scores = None, None, {}
    if settings.nearest_patch:
        log("choosing the bank of good patches")
        taps = patch_taps(info.tap_strides)
        assert taps is not None, "encoder_taps() always taps strides 8 and 16 for the nearest patch"
        nearest_patch = fit_nearest_patch(tap_maps(fit_features, tap_shapes), taps, settings.train.seed)
        held_patch = patch_distances_of(nearest_patch, held_features, tap_shapes)
        seconds["nearest_patch"] = time.monotonic() - mark
        mark = time.monotonic()
    held_ll = log_likelihoods(decoders, flow_inputs(held_features, flow_taps), shapes)
    constants = fit_scoring_constants(held_ll, settings.blur_sigma)
    weight_choice, synthetic_patch, stride_left_out = None, None, 0
    if settings.synthetic_defects and len(shapes) > 1:
        synthetic = synthetic_defects(held.images, settings.synthetic_defects, settings.train.seed)
        synthetic_features = encode_features(encoder, synthetic.images, label="encoding synthetic defects")
        synthetic_ll = log_likelihoods(decoders, flow_inputs(synthetic_features, flow_taps), shapes)
        if nearest_patch is not None:
            synthetic_patch = patch_distances_of(nearest_patch, synthetic_features, tap_shapes)
        # Only with the whole-part model: it keeps the coarsest stage in the score when its flow goes.
        may_drop = settings.may_drop_coarsest_flow and settings.part_appearance
        candidates = tuple(w for w in COARSEST_WEIGHT_CANDIDATES if w > 0 or may_drop)
        weight_choice = choose_coarsest_weight(constants, held_ll, synthetic_ll, synthetic.masks, settings.input_size, candidates)
        constants = replace(constants, scale_weights=weight_choice.weights)
        log(f"coarsest scale's weight in the map, by synthetic-defect score: {weight_choice.scores}")
        if weight_choice.drops_coarsest:
            # Weight 0 adds nothing to the map: leave the flow out of the bundle and save its
            # share of every frame (its stage stays tapped for the whole-part model).
            log(f"the stride-{flow_strides[-1]} flow is left out of the bundle: flows at strides {','.join(map(str, flow_strides[:-1]))}")
            decoders = without_coarsest_flow(decoders)
            stride_left_out = flow_strides[-1]
            flow_strides, flow_taps, shapes = flow_strides[:-1], flow_taps[:-1], shapes[:-1]
            held_ll, synthetic_ll = held_ll[:-1], synthetic_ll[:-1]
            constants = replace(constants.subset(tuple(range(len(shapes)))), scale_weights=None)
    if held_patch is not None:  # set with the bank, so: where there is one
        constants = with_nearest_patch(constants, held_patch)
        if synthetic_patch is not None:
            patch_choice = choose_nearest_patch(constants, held_ll, synthetic_ll, held_patch, synthetic_patch, synthetic.masks, settings.input_size)
            patch_scores = patch_choice.scores
            log(f"nearest good patch in the map, by synthetic-defect score: {patch_scores} ({'kept' if patch_choice.keep else 'left out'})")
            if not patch_choice.keep:
                nearest_patch, held_patch, constants = None, None, replace(constants, nearest_patch=None)
    held_maps, held_map_maxima = anomaly_maps(held_ll, constants, settings.input_size, patch_distances=held_patch)
    if held_distances is not None:  # set with the part model, so: where there is one
        constants = with_part_score(constants, held_map_maxima, held_distances)
    held_scores = image_scores(held_map_maxima, constants, held_distances)
    thresholds = choose_thresholds(held_scores, held_maps, settings.target_false_reject_rate, settings.target_pixel_false_positive_rate)
    seconds["thresholds"] = time.monotonic() - mark
    report = CalibrationReport(
        fit_images=len(fit_paths),
        holdout_images=len(held_paths),
        seconds=seconds,
        train_steps=training.steps,
        final_nll_per_channel=training.final_nll,
        holdout_false_reject_rate=float(np.mean(held_scores > thresholds.image)),
        part_appearance_shrinkage=shrinkage,
        part_appearance_statistics=part_appearance.dimensions if part_appearance is not None else 0,
        coarsest_weight_scores=weight_choice.scores if weight_choice is not None else {},
        synthetic_defects=weight_choice.synthetic_defects if weight_choice is not None else 0,
        flow_stride_left_out=stride_left_out,
        nearest_patch_bank=len(nearest_patch.bank) if nearest_patch is not None else 0,
        nearest_patch_scores=patch_scores,
    )
    if defects is not None:
        defect_features = encode_features(encoder, defects.images, label="encoding defective parts")
        defect_distances = part_distances(part_appearance, defect_features) if part_appearance is not None else None
        defect_ll = log_likelihoods(decoders, flow_inputs(defect_features, flow_taps), shapes)
        defect_patch = patch_distances_of(nearest_patch, defect_features, tap_shapes) if nearest_patch is not None else None
        _, defect_scores = anomaly_maps(defect_ll, constants, settings.input_size, defect_distances, defect_patch)
        report.defect_images = len(defect_scores)
        report.defect_miss_rate = float(np.mean(defect_scores <= thresholds.image))

    flow_record = FlowRecord(**asdict(settings.flow), strides=None if flow_strides == info.tap_strides else flow_strides)
    manifest = Manifest(
        format_version=format_version_for(flow_record),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        project_version=engines.__version__,
        encoder=EncoderRecord(info.name, info.weights_sha256, info.tap_channels, info.tap_strides, info.mean, info.std, settings.feature_pooling),
        input_size=(settings.input_size[0], settings.input_size[1]),
        colour=colour,
        flow=flow_record,
        scoring=constants,
        thresholds=thresholds,
        training={
            "good_folder": str(good_dir),
            "holdout_folder": str(holdout_dir) if holdout_dir else None,
            # The good parts' shapes as read, before resizing: the daemon refuses a part far
            # outside them (a camera reset to another resolution squashes every part).
            "part_aspect": part_aspect(fit.aspects + held.aspects),
            "train": asdict(settings.train),
            "augment": asdict(settings.augment),
            "report": asdict(report),
            "host": os.uname().nodename,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        },
        files={},
    )

    def write_files(directory: Path) -> None:
        torch.save(decoders.state_dict(), directory / FLOW_WEIGHTS)
        if part_appearance is not None:
            torch.save(part_appearance.state_dict(), directory / PART_APPEARANCE_WEIGHTS)
        if nearest_patch is not None:
            torch.save(nearest_patch.saved_state(), directory / NEAREST_PATCH_WEIGHTS)
        export_encoder(encoder, settings.input_size, directory / ENCODER_ONNX, len(tap_shapes))
        export_flows(decoders, directory / FLOWS_ONNX, part_appearance=part_appearance, tap_shapes=tap_shapes, flow_taps=flow_taps, nearest_patch=nearest_patch)
        export_half_graphs(
            encoder,
            decoders,
            settings.input_size,
            directory / ENCODER_FP16_ONNX,
            directory / FLOWS_FP16_ONNX,
            part_appearance,
            tap_shapes,
            flow_taps,
            nearest_patch,
        )

    mark = time.monotonic()
    bundle = write_bundle(output, manifest, write_files, force=force)
    seconds["export"] = time.monotonic() - mark
    seconds["total"] = time.monotonic() - started
    return bundle, report
