"""New bundles from old ones without retraining: a new threshold (retune), or an old bundle
carried over to the current format (reseal). Each writes a new bundle atomically, with the same
payload files, and records who, why, when and what in the manifest's history; the old bundle
stays as it was, so a station can be switched back."""

from __future__ import annotations

import getpass
import shutil
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from calibration.thresholds import image_threshold
from engines.bundle import FORMAT_VERSION, Bundle, BundleError, Manifest, write_bundle


def history_entry(bundle: Bundle, action: str, why: str, who: str | None, changes: dict) -> dict:
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "who": who or getpass.getuser(),
        "why": why,
        "action": action,
        "from_bundle": bundle.bundle_id,
        "changes": changes,
    }


def write_amended(bundle: Bundle, output: Path, manifest: Manifest, force: bool) -> Bundle:
    """A new bundle at `output` with `manifest` and the old bundle's payload files."""
    if Path(output).resolve() == bundle.path.resolve():
        raise BundleError(f"{output}: the new bundle must go to another path than the one it is made from (the old one is kept)")

    def copy_payload(directory: Path) -> None:
        for name in bundle.manifest.files:
            shutil.copy2(bundle.path / name, directory / name)

    return write_bundle(output, manifest, copy_payload, force=force)


def retune(bundle: Bundle, output: Path, why: str, threshold: float | None = None, target_frr: float | None = None, who: str | None = None, force: bool = False) -> Bundle:
    """The same bundle with another image threshold: given as a number, or chosen from the
    held-out good parts' scores recorded at calibration for a new target false-reject rate."""
    old = bundle.manifest.thresholds
    if (threshold is None) == (target_frr is None):
        raise BundleError("give either --threshold or --target-frr")
    if target_frr is not None:
        if not old.good_scores:
            raise BundleError(f"{bundle.path}: the manifest keeps no held-out scores (a resealed older bundle); give --threshold, or re-calibrate")
        image, method = image_threshold(np.asarray(old.good_scores), target_frr)
        new = replace(old, image=image, method=method, target_false_reject_rate=target_frr)
    else:
        assert threshold is not None
        method = f"set by hand to {threshold:g} (edge-bundle retune)"
        if old.good_scores:
            # What the hand-set level means on the good parts calibration held out: a threshold
            # above all of them passes every defect that scores like a good part, one below most
            # rejects the line's good parts; say which, instead of the target it replaced.
            scores = np.asarray(old.good_scores)
            method += f"; {int((scores > threshold).sum())} of the {len(scores)} held-out good parts score above it"
        new = replace(old, image=float(threshold), method=method)
    if new.pixel > new.image:
        new = replace(new, pixel=new.image)  # a region is never more sure than the part
    changes = {key: [getattr(old, key), getattr(new, key)] for key in ("image", "pixel", "target_false_reject_rate") if getattr(old, key) != getattr(new, key)}
    entry = history_entry(bundle, "retune", why, who, {f"thresholds.{k}": v for k, v in changes.items()})
    manifest = replace(bundle.manifest, thresholds=new, history=(*bundle.manifest.history, entry))
    return write_amended(bundle, output, manifest, force)


def reseal(bundle: Bundle, output: Path, why: str, who: str | None = None, force: bool = False) -> Bundle:
    """An older bundle (formats 1 to 3, no manifest digest) in the current format, unchanged
    otherwise. Only its files' checksums vouch for it: reseal bundles you know."""
    old_version = bundle.manifest.format_version
    if old_version == FORMAT_VERSION:
        raise BundleError(f"{bundle.path}: already bundle format {FORMAT_VERSION}, sealed; nothing to reseal (edge-bundle retune or refit change a current bundle)")
    entry = history_entry(bundle, "reseal", why, who, {"format_version": [old_version, FORMAT_VERSION]})
    manifest = replace(bundle.manifest, format_version=FORMAT_VERSION, history=(*bundle.manifest.history, entry))
    return write_amended(bundle, output, manifest, force)
