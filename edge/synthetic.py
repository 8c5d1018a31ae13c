"""Synthetic fixtured parts for the demo: brushed-metal plates with holes and a printed ring.

Good parts differ only by texture noise, +-5 % lighting and <= 1 px jitter, so ~60 of them are
enough for CFLOW-AD to learn "normal". Defects are painted after the good part is rendered and
only where the mask is set, so the mask is exactly the changed pixels. Pixel sizes quoted here are
for size=256 and scale with size. No torch: this runs on the line PC for the demo.
"""

from __future__ import annotations

import argparse
import json
import math
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

DEFECT_KINDS = ("scratch", "dent", "stain")
_LIGHT = (-0.6, -0.8)  # (x, y) towards the light: top-left, so edges and dents get a lit side
_BACKGROUND = np.array([38.0, 40.0, 44.0], np.float32)  # BGR, a matte dark fixture plate
_TINT = np.array([1.0, 0.985, 0.96], np.float32)  # slightly cool, reads as steel rather than grey
_SS = 4  # supersampling for the fixed geometry: anti-aliased edges without cv2's integer radii


@lru_cache(maxsize=4)
def _template(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The noise-free part (HxWx3 float), its alpha and the surface defects may go on."""
    big, c = size * _SS, size * _SS / 2
    body = np.zeros((big, big), np.uint8)
    m, r = int(0.12 * big), int(0.12 * big)
    cv2.rectangle(body, (m + r, m), (big - m - r, big - m), 255, -1)
    cv2.rectangle(body, (m, m + r), (big - m, big - m - r), 255, -1)
    for x in (m + r, big - m - r):
        for y in (m + r, big - m - r):
            cv2.circle(body, (x, y), r, 255, -1)
            cv2.circle(body, (x, y), int(0.045 * big), 0, -1)  # mounting holes
    ink = np.zeros_like(body)
    cv2.circle(ink, (int(c), int(c)), int(0.2 * big), 255, int(0.014 * big))
    cv2.rectangle(ink, (int(c - 0.12 * big), int(0.74 * big)), (int(c + 0.12 * big), int(0.77 * big)), 255, -1)
    alpha: np.ndarray = cv2.resize(body, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    ink_alpha = cv2.resize(ink, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    # Fixed low-frequency shading: a lit side and a soft specular lobe, as under a dome light.
    shade = 1 + 0.12 * (xx * _LIGHT[0] + yy * _LIGHT[1]) + 0.08 * np.exp(-((xx + 0.12) ** 2 + (yy + 0.15) ** 2) / 0.05)
    gray = 150 * shade * (1 - 0.5 * ink_alpha)
    # Bevel: surfaces facing the light are brighter; this also darkens the lit side of each hole.
    soft = cv2.GaussianBlur(alpha, (0, 0), 1.2 * size / 256)
    gx, gy = cv2.Sobel(soft, cv2.CV_32F, 1, 0), cv2.Sobel(soft, cv2.CV_32F, 0, 1)
    gray = gray - 35 * (gx * _LIGHT[0] + gy * _LIGHT[1])
    color = _BACKGROUND * (1 - alpha[..., None]) + (gray * alpha)[..., None] * _TINT
    # Keep defects off edges and hole rims: a margin wider than jitter plus anti-aliasing.
    margin = max(3, round(0.03 * size))
    surface = cv2.erode((alpha > 0.99).astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
    return color, alpha, surface


def part_region(size: int = 256) -> np.ndarray:
    """Bool mask of the part surface where defects are placed (fixed: parts are fixtured)."""
    return _template(size)[2].copy()


def _scratch(rng, size, s, center, img):
    pts, heading = [np.array(center, np.float64)], rng.uniform(0, 2 * math.pi)
    segments, length = int(rng.integers(1, 4)), rng.uniform(20, 80) * s
    for _ in range(segments):  # a polyline: scratches from handling wander a little
        heading += rng.uniform(-0.5, 0.5)
        pts.append(pts[-1] + length / segments * np.array([math.cos(heading), math.sin(heading)]))
    layer = np.zeros((size, size), np.float32)
    poly = np.round(np.array(pts) * 16).astype(np.int32)  # shift=4: sub-pixel vertices
    cv2.polylines(layer, [poly], False, 1.0, max(1, round(rng.uniform(1, 3.4) * s)), cv2.LINE_AA, 4)
    sign = 1 if rng.random() < 0.5 else -1  # bright = burnished groove, dark = cut with debris
    return layer, (sign * rng.uniform(55, 85) * layer)[..., None] * np.ones(3, np.float32)


def _dent(rng, size, s, center, img):
    a = rng.uniform(4, 12.5) * s  # semi-axes: 8-25 px across
    b, theta = a * rng.uniform(0.55, 0.9), rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx - center[0]) * math.cos(theta) + (yy - center[1]) * math.sin(theta)
    v = -(xx - center[0]) * math.sin(theta) + (yy - center[1]) * math.cos(theta)
    bowl = np.clip(1 - (u / a) ** 2 - (v / b) ** 2, 0, None)
    depth = -(bowl**2)
    gy, gx = np.gradient(depth)
    # Lambertian tilt: the rim nearest the light faces away from it (dark crescent), the far rim
    # faces it (highlight); a little ambient darkening keeps the centre inside the mask visible.
    shading = -(gx * _LIGHT[0] + gy * _LIGHT[1])
    shading = shading / (np.abs(shading).max() + 1e-6) + 0.3 * depth
    return bowl, (rng.uniform(50, 75) * shading)[..., None] * np.ones(3, np.float32)


def _stain(rng, size, s, center, img):
    radius = rng.uniform(5, 17.5) * s
    layer: np.ndarray = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(3, 6))):  # overlapping drops make an irregular outline
        x, y = np.array(center) + np.clip(rng.normal(0, 0.2 * radius, 2), -0.3 * radius, 0.3 * radius)
        drop = round(rng.uniform(0.35, 0.55) * radius * 16)  # shift=4: sub-pixel centre and radius
        cv2.circle(layer, (round(x * 16), round(y * 16)), drop, 1.0, -1, cv2.LINE_AA, 4)
    layer = np.asarray(cv2.GaussianBlur(layer, (0, 0), max(1.0, 0.15 * radius)), np.float32)
    blotch = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32), (0, 0), 2 * s)
    layer *= 0.65 + (blotch - blotch.min()) / (np.ptp(blotch) + 1e-6) * 0.35
    layer /= layer.max()
    # Oil/coolant residue: pulls blue down most, so the stain reads brownish on grey steel.
    tint = rng.uniform(0.65, 0.9) * np.array([0.6, 0.38, 0.15], np.float32)
    return layer, -img * layer[..., None] * tint


_DEFECTS = {"scratch": _scratch, "dent": _dent, "stain": _stain}


def make_part(rng: np.random.Generator, size: int = 256, defect: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One part as (BGR uint8 image, uint8 mask: 255 on defect pixels)."""
    if defect is not None and defect not in _DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; expected one of {DEFECT_KINDS}")
    if size < 64:
        raise ValueError("size must be at least 64 for the part's features to be resolved")
    color, alpha, surface = _template(size)
    s = size / 256
    grain = cv2.GaussianBlur(rng.standard_normal((size, size), dtype=np.float32), (0, 0), sigmaX=10 * s, sigmaY=0.5)
    fine = cv2.GaussianBlur(rng.standard_normal((size, size), dtype=np.float32), (0, 0), sigmaX=2 * s, sigmaY=0.4)
    texture = 5 * grain / grain.std() + 2.5 * fine / fine.std()
    img = color + (texture * alpha)[..., None]
    angle, shift = rng.uniform(0, 2 * math.pi), rng.uniform(0, 1)  # |jitter| <= 1 px
    warp = np.array([[1, 0, shift * math.cos(angle)], [0, 1, shift * math.sin(angle)]], np.float32)
    img = cv2.warpAffine(img, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    img = img * rng.uniform(0.95, 1.05) + np.asarray(rng.normal(0, 1.5, img.shape), np.float32)  # lighting, sensor
    mask = np.zeros((size, size), np.uint8)
    if defect is not None:
        ys, xs = np.nonzero(surface)
        for _ in range(200):  # rejection: the whole defect must land on the surface
            i = rng.integers(len(xs))
            footprint, effect = _DEFECTS[defect](rng, size, s, (float(xs[i]), float(ys[i])), img)
            on = footprint > 0.1
            if on.any() and not (on & ~surface).any():
                break
        else:
            raise RuntimeError(f"could not place a {defect} on the part")
        img = img + effect * on[..., None]
        mask[on] = 255
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), mask


def _pattern(rng: np.random.Generator, count: int, defect_every: int) -> list[str | None]:
    """One defect at a random position in each block of defect_every frames: about 1 in N, not periodic."""
    kinds: list[str | None] = [None] * count
    for start in range(0, count, defect_every) if defect_every > 0 else ():
        i = start + int(rng.integers(defect_every))
        if i < count:
            kinds[i] = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
    return kinds


def write_good_folder(folder, count: int, seed: int, size: int = 256, like_stream: bool = True) -> list[Path]:
    """Good parts for calibration. like_stream: pass them through the same MJPG codec as
    write_stream, as a teach-in run recorded with the line camera would. The flows learn the
    fine texture exactly, so PNG-clean good parts against JPEG-compressed stream frames score
    every part as a reject (measured: held-out PNG goods ~0.7, the same parts from MJPG ~90)."""
    (folder := Path(folder)).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    parts = [make_part(rng, size)[0] for _ in range(count)]
    if like_stream:
        parts = _mjpg_roundtrip(parts, folder / ".roundtrip.avi")
    paths = [folder / f"good_{i:04d}.png" for i in range(count)]
    for path, part in zip(paths, parts):
        cv2.imwrite(str(path), part)
    return paths


def _mjpg_roundtrip(frames: list[np.ndarray], scratch: Path) -> list[np.ndarray]:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(scratch), cv2.VideoWriter.fourcc(*"MJPG"), 10, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    capture, decoded = cv2.VideoCapture(str(scratch)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(frame)
    capture.release()
    scratch.unlink()
    if len(decoded) != len(frames):
        raise RuntimeError(f"{scratch}: wrote {len(frames)} frames but read back {len(decoded)}")
    return decoded


def write_stream(video_path, count: int, defect_every: int, seed: int, size: int = 256, fps: float = 10) -> list[dict]:
    """An MJPG .avi (opencv-python-headless writes and reads it without extra codecs) plus its truth."""
    (video_path := Path(video_path)).parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds = _pattern(rng, count, defect_every)
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (size, size))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a video writer for {video_path}")
    for kind in kinds:
        writer.write(make_part(rng, size, kind)[0])
    writer.release()
    capture, read = cv2.VideoCapture(str(video_path)), 0
    while capture.read()[0]:  # count by decoding: CAP_PROP_FRAME_COUNT is only the header's claim
        read += 1
    capture.release()
    if read != count:
        raise RuntimeError(f"{video_path}: wrote {count} frames but read back {read}")
    return [{"frame": i, "defect": kind} for i, kind in enumerate(kinds)]


def write_part_folder(folder, count: int, defect_every: int, seed: int, size: int = 256) -> list[dict]:
    """Parts as a watched-folder camera would drop them; part_id is the file stem."""
    (folder := Path(folder)).mkdir(parents=True, exist_ok=True)
    rng, truth = np.random.default_rng(seed), []
    for i, kind in enumerate(_pattern(rng, count, defect_every)):
        cv2.imwrite(str(folder / f"part_{i:05d}.png"), make_part(rng, size, kind)[0])
        truth.append({"frame": i, "part_id": f"part_{i:05d}", "defect": kind})
    return truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edge.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--good", type=int, default=60, help="good parts for calibration")
    parser.add_argument("--stream", type=int, default=200, help="frames in stream.avi")
    parser.add_argument("--defect-every", type=int, default=8, help="about 1 defective frame in N (0: none)")
    parser.add_argument("--parts", type=int, default=0, help="also write N parts into parts/ (watched folder)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # Distinct seeds per output: the calibration set must not repeat the stream's parts.
    goods = write_good_folder(args.out_dir / "good", args.good, args.seed, args.size)
    print(f"wrote {len(goods)} good parts to {args.out_dir / 'good'}")
    if args.stream:
        truth = write_stream(args.out_dir / "stream.avi", args.stream, args.defect_every, args.seed + 1, args.size)
        (args.out_dir / "stream.json").write_text(json.dumps(truth, indent=1))
        bad = sum(t["defect"] is not None for t in truth)
        print(f"wrote {args.out_dir / 'stream.avi'} ({len(truth)} frames, {bad} defective) and stream.json")
    if args.parts:
        truth = write_part_folder(args.out_dir / "parts", args.parts, args.defect_every, args.seed + 2, args.size)
        (args.out_dir / "parts.json").write_text(json.dumps(truth, indent=1))
        print(f"wrote {len(truth)} parts to {args.out_dir / 'parts'} and parts.json")


if __name__ == "__main__":
    main()
