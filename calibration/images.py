"""Reading folders of part images, with errors that name the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engines.preprocess import FrameError, to_model_input

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ImageFolderError(ValueError):
    """A folder or file that cannot be used; the message names it and says what to do."""


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFolderError(f"{folder}: not a folder")
    # Hidden files are never parts: "._000.png" is the metadata macOS writes beside each file it
    # copies to a FAT or exFAT stick, and would stop a calibration as an unreadable image.
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def read_image(path: Path) -> np.ndarray:
    """Read an image as OpenCV stores it (BGR, gray or BGRA; 8 or 16 bit)."""
    if path.stat().st_size == 0:
        raise ImageFolderError(f"{path}: empty file")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageFolderError(f"{path}: not a readable image (corrupt or unsupported format)")
    return image


def is_grayscale(image: np.ndarray) -> bool:
    if image.ndim == 2 or image.shape[2] == 1:
        return True
    colour = image[:, :, :3]
    return bool(np.array_equal(colour[:, :, 0], colour[:, :, 1]) and np.array_equal(colour[:, :, 1], colour[:, :, 2]))


@dataclass
class LoadedImages:
    paths: list[Path]
    images: np.ndarray  # uint8 (N, H, W, 3) RGB at the model input size
    grayscale: bool  # every source image was grayscale
    aspects: list[float] = field(default_factory=list)  # each source image's width / height, before resizing


def load_images(paths: list[Path], input_size: tuple[int, int], colour: str | None = None) -> LoadedImages:
    """Read and resize every image. colour None means: 'gray' if all images are grayscale, else 'rgb'.

    One full-size image is held at a time: a teach-in folder of a thousand 5-megapixel parts
    would need gigabytes as decoded frames, and only the model-size copies are kept. Where the
    colour must be found first, the files are read twice (decoding costs far less than training).
    All files are checked and every bad one is reported at once, so a user fixes a folder in one go.
    """
    problems: list[str] = []
    flags: list[bool] = []
    if colour is None:
        for path in paths:
            try:
                flags.append(is_grayscale(read_image(path)))
            except (ImageFolderError, OSError) as error:
                problems.append(str(error))
        if problems:
            raise ImageFolderError(f"{len(problems)} unreadable image(s):\n  " + "\n  ".join(problems))
    mode = colour or ("gray" if all(flags) else "rgb")
    out = np.empty((len(paths), input_size[0], input_size[1], 3), dtype=np.uint8)
    aspects: list[float] = []
    for i, path in enumerate(paths):
        try:
            image = read_image(path)
            aspects.append(image.shape[1] / max(1, image.shape[0]))
            if colour is not None:
                flags.append(is_grayscale(image))
            out[i] = to_model_input(image, input_size, mode)
        except (ImageFolderError, OSError) as error:
            problems.append(str(error))
        except FrameError as error:
            problems.append(f"{path}: {error}")
    if problems:
        raise ImageFolderError(f"{len(problems)} unreadable or unusable image(s):\n  " + "\n  ".join(problems))
    return LoadedImages(list(paths), out, all(flags), aspects)
