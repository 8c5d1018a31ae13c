"""MVTec-AD layout categories: train/good, test/<type>, ground_truth/<type>/<stem>_mask.png."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from calibration.images import ImageFolderError, list_images, read_image


@dataclass(frozen=True)
class TestImage:
    path: Path
    defect_type: str  # "good" for defect-free parts
    mask_path: Path | None  # None for good parts (an all-zero mask)

    @property
    def is_defective(self) -> bool:
        return self.defect_type != "good"


@dataclass(frozen=True)
class Category:
    root: Path
    train_good: list[Path]
    test: list[TestImage]

    @property
    def name(self) -> str:
        return f"{self.root.parent.name}/{self.root.name}"

    @property
    def defect_types(self) -> list[str]:
        return sorted({t.defect_type for t in self.test if t.is_defective})


def open_category(root: str | Path) -> Category:
    """Index a category folder; a wrong layout is an ImageFolderError that says what is missing."""
    root = Path(root)
    expected = "expected train/good, test/<type>/ and ground_truth/<type>/<stem>_mask.png"
    for needed in ("train/good", "test"):
        if not (root / needed).is_dir():
            raise ImageFolderError(f"{root}: no {needed}/ folder; {expected}")
    test = []
    for type_dir in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        for path in list_images(type_dir):
            if type_dir.name == "good":
                test.append(TestImage(path, "good", None))
                continue
            mask = root / "ground_truth" / type_dir.name / f"{path.stem}_mask.png"
            if not mask.is_file():
                raise ImageFolderError(f"{path}: no mask at {mask}; {expected}")
            test.append(TestImage(path, type_dir.name, mask))
    if not any(t.is_defective for t in test):
        raise ImageFolderError(f"{root}: test/ holds no defect type folder; {expected}")
    return Category(root, list_images(root / "train" / "good"), test)


def read_mask(item: TestImage, size: tuple[int, int], image_aspect: float | None = None) -> np.ndarray:
    """bool (H, W) at the model input size; all False for a good part. `image_aspect`: the
    image's width / height, which the mask must share (see read_mask_file)."""
    if item.mask_path is None:
        return np.zeros(size, dtype=bool)
    return read_mask_file(item.mask_path, size, image_aspect)


# A mask is its image's size (MVTec layout); one in another shape would be stretched over the part
# and score outlines that are not there (a 33x47 mask on 1024x1024 images gave PRO 0.35 instead of
# 0.83, silently). 2 %: a rounding of either side, not another picture.
MASK_ASPECT_TOLERANCE = 0.02


def read_mask_file(path: Path, size: tuple[int, int], image_aspect: float | None = None) -> np.ndarray:
    """A mask image (defect pixels non-zero) as bool (H, W) at the model input size; nearest
    neighbour keeps it binary. Given its image's width / height, a mask of another shape is an
    ImageFolderError naming it."""
    mask = read_image(path)
    if image_aspect is not None:
        check_mask_shape(path, mask.shape[:2], image_aspect)
    if mask.ndim == 3:
        mask = mask[:, :, 0]
    mask = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return mask > 0


def check_mask_shape(path: Path, mask_shape: tuple[int, ...], image_aspect: float, image_size: tuple[int, int] | None = None) -> None:
    """Refuse a mask whose width / height is not its image's."""
    height, width = mask_shape[0], mask_shape[1]
    aspect = width / max(1, height)
    if abs(aspect / image_aspect - 1.0) > MASK_ASPECT_TOLERANCE:
        image = f"{image_size[1]}x{image_size[0]}" if image_size else f"width/height {image_aspect:.3f}"
        raise ImageFolderError(f"{path}: the mask is {width}x{height} pixels, its image {image}; a mask must be its image's size (defect pixels non-zero)")
