"""The calibrated bundle: a directory that carries everything inspection needs.

Written atomically (temp dir, fsync, rename) and verified on open: format version, then the
sha256 of every file listed in the manifest, before any of them is parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from engines.atomic_file import write_atomically
from engines.scoring import ScoringConstants, ScoringJson

# 2: the image score may include the whole-part appearance score (scoring.part_score and a
# part_distance output of the flows graph). A daemon that reads only version 1 would ignore it
# and judge parts against a threshold calibrated for more than it computes, so it must refuse.
# 3: the flows may model fewer scales than the encoder taps (flow.strides); the whole-part model
# still pools every tap.
# 4: the manifest carries a digest of its own content (`integrity`), a `history` of the
# supported changes made to it since calibration, and the held-out good parts' scores
# (thresholds.good_scores) that a threshold can be re-chosen from. Bundles before it cannot be
# told from hand-edited ones, so they are refused; `edge-bundle reseal` carries one over.
# 5: the map may weigh the flows' scales unequally (scoring.scale_weights) and include each
# position's distance to its nearest good patch (scoring.nearest_patch, nearest_patch.pt and a
# patch_distance output of the flows graph). A version-4 reader would refuse the new keys as
# unknown; the version says why. Version 4 bundles are read as they are.
# 6: nearest_patch.pt may carry a projection onto the training patches' principal directions,
# and its bank is then in those directions. A version-5 torch backend would compare unprojected
# patches with a projected bank, so it must refuse. Version 5 bundles are read as they are.
# 7: scoring.nearest_patch.in_image_score: false, the image score's map half reads the flows'
# terms alone (engines/scoring.py). A version-6 reader would refuse the key; format 5 and 6
# manifests leave it out and are scored as calibrated (the patch term in the image score).
FORMAT_VERSION = 7
READABLE_FORMAT_VERSIONS = (4, 5, 6, 7)
UNSEALED_FORMAT_VERSIONS = (1, 2, 3)  # what `edge-bundle reseal` reads
MANIFEST = "manifest.json"
# Ed25519 signature of manifest.json's bytes, for plants that sign their bundles (engines/signing.py).
SIGNATURE = "manifest.sig"
# TensorRT plans built on the target machine (engines/tensorrt_plans.py): the only folder a bundle may hold.
PLANS_DIRECTORY = "engines"
INTEGRITY = "integrity"
ENCODER_ONNX = "encoder.onnx"
FLOWS_ONNX = "flows.onnx"
# Mixed-precision graphs (half convolutions, float32 reductions) that GPU engines are built from.
ENCODER_FP16_ONNX = "encoder_fp16.onnx"
FLOWS_FP16_ONNX = "flows_fp16.onnx"
FLOW_WEIGHTS = "flows.pt"
# The whole-part appearance model's Gaussian (engines/part_appearance.py); bundles before it have none.
PART_APPEARANCE_WEIGHTS = "part_appearance.pt"
# The flows graph's outputs: a log-likelihood map per flow (log_likelihood_0, ...), then the
# part's distance where the bundle has a part appearance model, then each stride-8 position's
# distance to its nearest good patch where it has a patch bank.
LOG_LIKELIHOOD_PREFIX = "log_likelihood_"
PART_DISTANCE = "part_distance"
PATCH_DISTANCE = "patch_distance"
# The nearest good patch's bank (engines/nearest_patch.py); bundles before format 5 have none.
NEAREST_PATCH_WEIGHTS = "nearest_patch.pt"


class BundleError(RuntimeError):
    """A bundle that cannot be used; the message names the file and says what to do."""


# How pydantic reads the manifest's records, in JSON mode: a key this version does not know is
# refused (the format version says what a reader must understand), and a number is a JSON
# number, not text. The records stay plain frozen dataclasses (calibration and tests build and
# replace() them); pydantic validates them as they are, with this config. No number in a manifest
# may be NaN or infinite: `score > NaN` is never true, so a NaN threshold would pass every part.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


@dataclass(frozen=True)
class EncoderRecord:
    __pydantic_config__ = _STRICT
    name: str
    weights_sha256: str
    tap_channels: tuple[int, ...]
    tap_strides: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_pooling: int = 1  # k x k average over each feature map; 1: none (bundles before it had none)


@dataclass(frozen=True)
class FlowRecord:
    __pydantic_config__ = _STRICT
    coupling_blocks: int
    condition_channels: int
    clamp: float
    hidden_ratio: float
    # The scales with a flow, recorded only where fewer than the encoder's taps (format 3);
    # None: every tap has one.
    strides: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Thresholds:
    """Decision levels on the anomaly map, with how they were chosen (for audit)."""

    __pydantic_config__ = _STRICT

    image: float
    pixel: float
    target_false_reject_rate: float
    target_pixel_false_positive_rate: float
    method: str
    good_parts: int
    good_score_quantiles: dict[str, float] = field(default_factory=dict)
    # The held-out good parts' image scores, sorted: a new target false-reject rate is chosen
    # from them without the images (edge-bundle retune). Empty in bundles resealed from format 3.
    good_scores: tuple[float, ...] = ()


@dataclass(frozen=True)
class Manifest:
    format_version: int
    created: str
    project_version: str
    encoder: EncoderRecord
    input_size: tuple[int, int]  # (height, width)
    colour: str  # "rgb" or "gray": how frames are converted before the encoder
    flow: FlowRecord
    scoring: ScoringConstants
    thresholds: Thresholds
    training: dict
    files: dict[str, str]  # file name -> sha256
    # Supported changes since calibration (edge-bundle), oldest first: time, who, why, what.
    history: tuple[dict, ...] = ()

    def to_json(self) -> dict:
        """The manifest's content, without its digest (seal() adds it)."""
        data = asdict(self)
        data["scoring"] = self.scoring.to_json()
        data["history"] = list(self.history)
        if data["flow"]["strides"] is None:
            del data["flow"]["strides"]  # every tap has a flow: nothing to say
        return data

    @property
    def flow_strides(self) -> tuple[int, ...]:
        return self.flow.strides or self.encoder.tap_strides

    @property
    def flow_taps(self) -> tuple[int, ...]:
        """Which encoder outputs (features_i) the flows read, in order."""
        return flow_tap_indices(self.encoder.tap_strides, self.flow_strides)

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        """Raises pydantic's ValidationError (a ValueError) naming the bad key."""
        manifest = _ManifestJson.model_validate_json(json.dumps(data))
        fields = {name: getattr(manifest, name) for name in _ManifestJson.model_fields}
        return cls(**{**fields, "flow": replace(manifest.flow, strides=manifest.flow.strides or None), "scoring": manifest.scoring.constants()})


# The manifest as written, read strictly (see _STRICT).


class _ManifestJson(BaseModel):
    model_config = _STRICT
    format_version: int
    created: str
    project_version: str
    encoder: EncoderRecord
    input_size: tuple[int, int]
    colour: str
    flow: FlowRecord
    scoring: ScoringJson
    thresholds: Thresholds
    training: dict[str, Any] = {}  # how the bundle was made: free-form
    files: dict[str, str]
    history: tuple[dict[str, Any], ...] = ()


def _first_problem(error: ValidationError) -> str:
    """A manifest validation error as `dotted.key: what is wrong`."""
    first = error.errors(include_url=False)[0]
    key = ""
    for part in first["loc"]:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    # pydantic's words, except where they would name this module's classes
    plain = {"extra_forbidden": "unknown key", "unexpected_keyword_argument": "unknown key", "missing": "missing", "model_type": "expected an object", "dict_type": "expected an object"}
    message = plain.get(first["type"], first["msg"])
    return f"{key or 'top level'}: {message}"


def flow_tap_indices(tap_strides: tuple[int, ...], flow_strides: tuple[int, ...]) -> tuple[int, ...]:
    """The positions among the encoder's taps of the strides that have a flow."""
    if not set(flow_strides) <= set(tap_strides):
        raise ValueError(f"flow.strides {list(flow_strides)} are not all among encoder.tap_strides {list(tap_strides)}")
    return tuple(tap_strides.index(s) for s in flow_strides)


def format_version_for(flow: FlowRecord) -> int:
    """The format a new bundle is written in (every new bundle carries its digest)."""
    return FORMAT_VERSION


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seal(content: dict) -> dict:
    """The manifest content with its digest: over the whole canonical content, and per top-level
    section so that a refusal can say which section was edited. Tamper evidence against hand
    edits, not a security boundary: that is what signing is for (engines/signing.py)."""
    body = {key: value for key, value in content.items() if key != INTEGRITY}
    sections = {key: _sha256(_canonical(value)) for key, value in body.items()}
    return {**body, INTEGRITY: {"manifest_sha256": _sha256(_canonical(body)), "sections": sections}}


def manifest_bytes(manifest: Manifest) -> bytes:
    """manifest.json as written: sealed, indented, keys sorted."""
    return (json.dumps(seal(manifest.to_json()), indent=2, sort_keys=True) + "\n").encode()


def check_seal(data: dict, manifest_path: Path) -> dict:
    """The manifest content without its digest, if the digest matches; else BundleError naming
    the sections that were changed and the supported way to change them."""
    integrity = data.get(INTEGRITY)
    body = {key: value for key, value in data.items() if key != INTEGRITY}
    if not isinstance(integrity, dict) or not isinstance(integrity.get("sections"), dict):
        raise BundleError(f"{manifest_path}: the manifest carries no digest (`{INTEGRITY}` is missing or malformed), so hand edits cannot be ruled out; {_SUPPORTED_WAY}")
    if integrity.get("manifest_sha256") == _sha256(_canonical(body)):
        return body
    recorded = integrity["sections"]
    changed = sorted(key for key in set(body) | set(recorded) if recorded.get(key) != (_sha256(_canonical(body[key])) if key in body else None))
    what = ", ".join(changed) if changed else "the digest itself"
    raise BundleError(f"{manifest_path}: edited after it was written ({what} changed); a bundle's manifest is never edited by hand. {_SUPPORTED_WAY}")


_SUPPORTED_WAY = (
    "To change the threshold, write a new bundle: `edge-bundle retune BUNDLE -o NEW --threshold X --why '...'` "
    "(or --target-frr F instead of --threshold); it records who, why and when. For anything else, re-run edge-calibrate"
)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    bundle_id: str  # short hash of the manifest: names this calibration in every message

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return name in self.manifest.files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replaceable_by_bundle(path: Path) -> bool:
    """What --force may replace: an earlier bundle or an empty folder, never a folder of other
    things (nor a file)."""
    return path.is_dir() and ((path / MANIFEST).is_file() or not any(path.iterdir()))


def write_bundle(destination: Path, manifest_without_files: Manifest, write_files, force: bool = False) -> Bundle:
    """Create a bundle directory atomically.

    `write_files(tmp_dir)` writes the payload files; their checksums go into the manifest,
    which is written last. An existing destination is refused unless force, and even then it is
    only replaced once the new bundle is complete on disk.
    """
    destination = Path(destination)
    if destination.exists() and not force:
        raise BundleError(f"{destination} already exists; choose another output path or pass --force to replace it")
    if destination.exists() and not replaceable_by_bundle(destination):
        raise BundleError(f"{destination}: exists and is not a bundle (no {MANIFEST}); --force replaces only a bundle, choose another path")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the service user must read it
    try:
        write_files(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = Manifest(**{**manifest_without_files.__dict__, "files": files})
        (tmp / MANIFEST).write_bytes(manifest_bytes(manifest))
        _fsync_tree(tmp)
        move_into_place(tmp, destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_bundle(destination)


def move_into_place(source: Path, destination: Path) -> None:
    """Put a complete bundle directory at `destination` (same filesystem), replacing any bundle
    there only once the new one is complete: a reader sees the old bundle or the new one."""
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(destination, old)
        os.rename(source, destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(source, destination)
    _fsync_dir(destination.parent)


def amend_training(bundle: Bundle, key: str, value) -> None:
    """Add a record to a written bundle's manifest `training` section (how it was made; nothing
    any backend reads). The manifest is replaced atomically; the payload files stay as they are,
    so the bundle still verifies. Its id changes: open it again to use it."""
    manifest = replace(bundle.manifest, training={**bundle.manifest.training, key: value})
    write_atomically(bundle.path / MANIFEST, manifest_bytes(manifest))
    _fsync_dir(bundle.path)


def open_bundle(path: str | os.PathLike, public_key: str | os.PathLike | None = None, unsealed: bool = False) -> Bundle:
    """Read and verify a bundle; raises BundleError naming what is wrong.

    Verified before anything is parsed: the signature (when a public key is given), the
    manifest's digest, the format version, then every listed file's checksum, and that the
    folder holds nothing else. `unsealed` reads a bundle from before manifests had a digest
    (format 1 to 3): only `edge-bundle reseal` does that, on purpose, and records it."""
    try:
        return _open_bundle(Path(path), public_key, unsealed)
    except OSError as error:
        # A file the service user may not read (chmod 600 by another user), or a disk error.
        where = error.filename or path
        raise BundleError(f"{where}: cannot read ({error.strerror or error}); the user the daemon runs as needs read access to every file of the bundle") from None


def _open_bundle(path: Path, public_key: str | os.PathLike | None, unsealed: bool) -> Bundle:
    manifest_path = path / MANIFEST
    if not path.exists():
        raise BundleError(f"{path}: not found; give the bundle directory edge-calibrate wrote")
    if not path.is_dir():
        raise BundleError(f"{path}: a file, not a bundle directory; give the directory edge-calibrate wrote")
    if not manifest_path.is_file():
        raise BundleError(f"{path}: no {MANIFEST}; is this a bundle written by edge-calibrate?")
    raw = manifest_path.read_bytes()
    if public_key is not None:
        from engines.signing import verify_manifest

        verify_manifest(path, raw, Path(public_key))
    data = _read_json(raw, manifest_path)
    version = data.get("format_version")
    if unsealed and version in UNSEALED_FORMAT_VERSIONS:
        body = data
    elif INTEGRITY not in data and version in UNSEALED_FORMAT_VERSIONS:
        raise BundleError(
            f"{manifest_path}: bundle format {version}, written before manifests carried a digest; this software reads format "
            f"{FORMAT_VERSION}. Carry it over with `edge-bundle reseal {path} -o NEW --why '...'`, or re-calibrate"
        )
    else:
        body = check_seal(data, manifest_path)
        if version not in READABLE_FORMAT_VERSIONS:
            readable = " and ".join(str(v) for v in READABLE_FORMAT_VERSIONS)
            raise BundleError(f"{manifest_path}: bundle format version {version!r}, this software reads versions {readable}; re-calibrate with this version's edge-calibrate")
    manifest = _parse_manifest(body, manifest_path)
    if version == 4 and manifest.scoring.nearest_patch is not None:
        # A version-4 reader would refuse the key; a manifest that says 4 and has it was not written by edge-calibrate.
        raise BundleError(f"{manifest_path}: scoring.nearest_patch needs bundle format 5, the manifest says 4; re-run edge-calibrate")
    patch = manifest.scoring.nearest_patch
    if version in (5, 6) and patch is not None and not patch.in_image_score:
        # As above: a version-5 or -6 reader would refuse the key, so edge-calibrate never wrote it there.
        raise BundleError(f"{manifest_path}: scoring.nearest_patch.in_image_score needs bundle format 7, the manifest says {version}; re-run edge-calibrate")
    _verify_files(path, manifest)
    return Bundle(path, manifest, hashlib.sha256(raw).hexdigest()[:12])


def _read_json(raw: bytes, manifest_path: Path) -> dict:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{manifest_path}: not valid JSON ({error}); re-run edge-calibrate") from None
    if not isinstance(data, dict):
        raise BundleError(f"{manifest_path}: not a manifest (a JSON object is expected); re-run edge-calibrate")
    return data


def _parse_manifest(body: dict, manifest_path: Path) -> Manifest:
    try:
        manifest = Manifest.from_json(body)
        _ = manifest.flow_taps  # flow strides that the encoder does not tap raise ValueError
    except ValidationError as error:
        raise BundleError(f"{manifest_path}: malformed manifest: {_first_problem(error)}; re-run edge-calibrate") from None
    except ValueError as error:
        raise BundleError(f"{manifest_path}: missing or malformed field ({error}); re-run edge-calibrate") from None
    for required in (ENCODER_ONNX, FLOWS_ONNX, FLOW_WEIGHTS):
        if required not in manifest.files:
            raise BundleError(f"{manifest_path}: the manifest lists no {required}; re-run edge-calibrate")
    return manifest


def _verify_files(path: Path, manifest: Manifest) -> None:
    """Every listed file present with its checksum, and nothing else: a bundle is a closed set
    (a stray library or graph beside the listed ones is refused, not ignored)."""
    for name, expected in manifest.files.items():
        file_path = path / name
        if "/" in name or name in (MANIFEST, SIGNATURE) or not file_path.is_file():
            raise BundleError(f"{file_path}: listed in the manifest but missing; copy the whole bundle directory again")
        if sha256_file(file_path) != expected:
            raise BundleError(f"{file_path}: checksum mismatch (corrupt or modified); copy the bundle again or re-calibrate")
    for entry in sorted(path.iterdir()):
        if entry.name in manifest.files or entry.name in (MANIFEST, SIGNATURE):
            continue
        if entry.name == PLANS_DIRECTORY and entry.is_dir():
            continue
        raise BundleError(
            f"{entry}: not part of the bundle (the manifest does not list it); a bundle is a closed set of files: remove it, or copy the bundle directory again from where edge-calibrate wrote it"
        )
