"""Choose a station's feature scales from a few defective samples.

Which scales suit a station depends on its defects: stride 4 sharpens the outlines of small
ones (MPDD metal_plate PRO 0.924 -> 0.953), 8,16 suits small, sharp ones on a busy texture
(tire), and large, faint ones need 32 (bench/README.md). A line engineer rarely knows in
advance. So `edge-calibrate --choose-strides` calibrates every candidate on the same good parts
(same split, same seed) and keeps the one that best separates the held-out good parts from the
station's defective samples: by image AUROC, or, where the samples' defect regions are marked
(`--masks`), by the mean of image AUROC, pixel AUROC and PRO, so outlines count too.
Ties go to the earlier candidate, the paper's 8,16,32 first.

Measured without peeking (bench/station_choice.py): with 10 marked samples the choice picked
4,8,16,32 for metal_plate in every draw and met all its targets on the unseen test parts.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from calibration.calibrate import CalibrationReport, CalibrationSettings, calibrate, split_good
from calibration.datasets import check_mask_shape, read_mask_file
from calibration.images import IMAGE_SUFFIXES, ImageFolderError, list_images, load_images, read_image
from calibration.metrics import auroc, pixel_auroc, pro_auc
from engines.bundle import Bundle, amend_training, move_into_place, open_bundle
from engines.encoders import TAP_STRIDES, check_tap_strides

DEFAULT_CANDIDATES = (TAP_STRIDES, (8, 16), (4, 8, 16, 32))
MIN_DEFECT_SAMPLES = 3


@dataclass(frozen=True)
class DefectSamples:
    paths: list[Path]
    mask_paths: list[Path] | None  # one per image; None: not marked


@dataclass(frozen=True)
class CandidateResult:
    strides: tuple[int, ...]
    image_auroc: float
    pixel_auroc: float | None
    pro: float | None
    criterion: float
    calibration_seconds: float


@dataclass(frozen=True)
class StrideChoice:
    chosen: tuple[int, ...]
    criterion: str
    held_out_good: int
    defect_samples: int
    candidates: list[CandidateResult]
    seconds: float  # every candidate, calibrated and judged

    def to_json(self) -> dict:
        return asdict(self)


def find_defect_samples(defect_dir: Path, mask_dir: Path | None) -> DefectSamples:
    """The defective images and, where a mask folder is given, each one's mask: `<stem>_mask.<ext>`
    (the MVTec naming) or `<stem>.<ext>`. Every missing or blank mask is named at once."""
    paths = list_images(defect_dir)
    if len(paths) < MIN_DEFECT_SAMPLES:
        raise ImageFolderError(f"{defect_dir}: {len(paths)} defective images; choosing scales needs at least {MIN_DEFECT_SAMPLES} (10 or more give a steadier choice)")
    if mask_dir is None:
        return DefectSamples(paths, None)
    if not Path(mask_dir).is_dir():
        raise ImageFolderError(f"{mask_dir}: not a folder")
    masks, problems = [], []
    for path in paths:
        found = [mask_dir / f"{path.stem}{tail}{ext}" for tail in ("_mask", "") for ext in IMAGE_SUFFIXES]
        found = [p for p in found if p.is_file()]
        if not found:
            problems.append(f"{path.name}: no mask ({path.stem}_mask.png or {path.stem}.png in {mask_dir})")
            continue
        try:
            mask, image = read_image(found[0]), read_image(path)
            check_mask_shape(found[0], mask.shape, image.shape[1] / max(1, image.shape[0]), image.shape[:2])
            marked = mask.max() > 0
        except ImageFolderError as error:
            problems.append(str(error))
            continue
        if not marked:
            problems.append(f"{found[0]}: marks no pixel; mark the defect, or leave {path.name} out")
        masks.append(found[0])
    if problems:
        raise ImageFolderError("defect masks: " + "; ".join(problems))
    return DefectSamples(paths, masks)


def judge(bundle: Bundle, held: np.ndarray, defects: np.ndarray, masks: np.ndarray | None) -> tuple[float, float | None, float | None]:
    """Image AUROC (held-out good against defective), and with masks pixel AUROC and PRO, of a
    written bundle, through ONNX Runtime as a line PC scores."""
    from engines.backends import open_backend
    from engines.inspector import Inspector

    inspector = Inspector(bundle, open_backend("onnxruntime", bundle))
    try:
        held_maps, held_scores = inspector.inspect_batch(held)
        defect_maps, defect_scores = inspector.inspect_batch(defects)
    finally:
        inspector.backend.close()
    return separation(held_maps, held_scores, defect_maps, defect_scores, masks)


def separation(held_maps: np.ndarray, held_scores: np.ndarray, defect_maps: np.ndarray, defect_scores: np.ndarray, masks: np.ndarray | None) -> tuple[float, float | None, float | None]:
    """How well the scores tell held-out good parts from defective ones (image AUROC) and, where
    the defects are marked, how well the maps outline them (pixel AUROC, PRO)."""
    labels = np.r_[np.zeros(len(held_scores), bool), np.ones(len(defect_scores), bool)]
    image = auroc(np.r_[held_scores, defect_scores], labels)
    if masks is None:
        return image, None, None
    maps = np.concatenate([held_maps, defect_maps])
    truth = np.concatenate([np.zeros_like(held_maps, dtype=bool), masks])
    return image, pixel_auroc(maps, truth), pro_auc(maps, truth, fpr_limit=0.3)


def criterion(image: float, pixel: float | None, pro: float | None) -> float:
    """What the choice maximises: image AUROC, or with marked defects the mean of all three."""
    return float(np.mean([image, pixel, pro])) if pixel is not None else image


def choose_strides(
    good_dir: Path,
    output: Path,
    settings: CalibrationSettings,
    defect_dir: Path,
    mask_dir: Path | None = None,
    candidates: tuple[tuple[int, ...], ...] = DEFAULT_CANDIDATES,
    holdout_dir: Path | None = None,
    force: bool = False,
    log=print,
) -> tuple[Bundle, CalibrationReport, StrideChoice]:
    started = time.monotonic()
    if output.exists() and not force:
        raise FileExistsError(f"{output} already exists; choose another output path or pass --force to replace it")
    candidates = tuple(dict.fromkeys(check_tap_strides(tuple(c)) for c in candidates))  # in order, once each
    samples = find_defect_samples(defect_dir, mask_dir)
    good = list_images(good_dir)
    _, held_paths = split_good(good, list_images(holdout_dir) if holdout_dir else None, settings.holdout_fraction, settings.train.seed)
    rule = "mean of image AUROC, pixel AUROC and PRO" if samples.mask_paths else "image AUROC"
    log(f"choosing scales among {len(candidates)} candidates by {rule} on {len(held_paths)} held-out good and {len(samples.paths)} defective parts")

    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.candidates.", dir=output.parent))
    try:
        results, written = [], []
        images = None
        for number, strides in enumerate(candidates, 1):
            label = ",".join(map(str, strides))
            log(f"candidate {number}/{len(candidates)}: strides {label}")
            bundle, report = calibrate(
                good_dir,
                work / f"strides-{'-'.join(map(str, strides))}",
                replace(settings, flow_strides=strides, may_drop_coarsest_flow=False),
                holdout_dir,
                defect_dir,
                force=False,
                log=lambda message, label=label: log(f"  [{label}] {message}"),
            )
            if images is None:  # every candidate reads the parts at the same size and colour
                (height, width), colour = bundle.manifest.input_size, bundle.manifest.colour
                size = (height, width)
                images = (
                    load_images(held_paths, size, colour).images,
                    load_images(samples.paths, size, colour).images,
                    np.stack([read_mask_file(p, size) for p in samples.mask_paths]) if samples.mask_paths else None,
                )
            image, pixel, pro = judge(bundle, *images)
            results.append(CandidateResult(strides, image, pixel, pro, criterion(image, pixel, pro), report.seconds["total"]))
            written.append((bundle, report))
            shown = f"image AUROC {image:.3f}" + (f", pixel AUROC {pixel:.3f}, PRO {pro:.3f}" if pixel is not None else "")
            log(f"candidate {number}/{len(candidates)}: strides {label}: {shown} ({report.seconds['total']:.0f} s)")
        best = max(range(len(results)), key=lambda i: (results[i].criterion, -i))  # ties: the earlier one
        choice = StrideChoice(candidates[best], rule, len(held_paths), len(samples.paths), results, time.monotonic() - started)
        chosen, report = written[best]
        # Recorded before the move, so the bundle at `output` carries its choice from the start.
        amend_training(chosen, "stride_choice", choice.to_json())
        move_into_place(chosen.path, output)
        bundle = open_bundle(output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return bundle, report, choice
