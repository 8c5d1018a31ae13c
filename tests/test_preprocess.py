import numpy as np
import pytest

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
