import cv2
import numpy as np
import pytest

from calibration.images import ImageFolderError, list_images, load_images
from engines.preprocess import FrameError, to_model_input


def test_colour_conversions_and_resize():
    bgr = np.zeros((40, 60, 3), np.uint8)
    bgr[:, :, 0] = 200  # blue in OpenCV order
    rgb = to_model_input(bgr, (32, 48), "rgb")
    assert rgb.shape == (32, 48, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 2] == 200 and rgb[0, 0, 0] == 0
    gray = to_model_input(bgr, (32, 32), "gray")
    assert (gray[..., 0] == gray[..., 1]).all()
    bgra = np.dstack([bgr, np.full((40, 60), 255, np.uint8)])
    assert np.array_equal(to_model_input(bgra, (32, 48), "rgb"), rgb)


def test_sixteen_bit_keeps_top_byte():
    frame = np.full((20, 20), 0x8000, np.uint16)
    out = to_model_input(frame, (16, 16), "rgb")
    assert out.dtype == np.uint8 and (out == 128).all()


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.zeros((0, 0, 3), np.uint8), "empty"),
        (np.zeros((20, 20, 2), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.uint8), "too small"),
        (np.zeros((20, 20, 3), np.int32), "pixel type"),
    ],
)
def test_bad_frames_are_refused_with_a_reason(frame, message):
    with pytest.raises(FrameError, match=message):
        to_model_input(frame, (16, 16), "rgb")


def test_an_image_folder_as_a_stick_from_a_mac_brings_it(tmp_path):
    """Hidden files ("._a.png", macOS metadata) are not parts; colour is found over every image,
    and every bad file is named at once."""
    gray, colour = np.full((40, 60), 90, np.uint8), np.zeros((40, 60, 3), np.uint8)
    colour[..., 2] = 200  # red in OpenCV order
    cv2.imwrite(str(tmp_path / "a.png"), gray)
    cv2.imwrite(str(tmp_path / "b.png"), cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 Mac OS X metadata")
    paths = list_images(tmp_path)
    assert [p.name for p in paths] == ["a.png", "b.png"]
    loaded = load_images(paths, (32, 32))
    assert loaded.grayscale and loaded.images.shape == (2, 32, 32, 3) and (loaded.images == 90).all()
    cv2.imwrite(str(tmp_path / "c.png"), colour)
    mixed = load_images(list_images(tmp_path), (32, 32))
    assert not mixed.grayscale and tuple(mixed.images[2, 0, 0]) == (200, 0, 0)  # RGB: every image in colour
    (tmp_path / "d.png").write_bytes(b"not a png")
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageFolderError) as refused:
        load_images(list_images(tmp_path), (32, 32))
    assert "2 unreadable image(s)" in str(refused.value) and "d.png" in str(refused.value) and "e.png" in str(refused.value)
    with pytest.raises(ImageFolderError, match="2 unreadable or unusable"):
        load_images(list_images(tmp_path), (32, 32), "rgb")
