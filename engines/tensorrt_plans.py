"""Where TensorRT plans live in a bundle, what they are named, and whether one may be loaded.

A plan is only valid for the TensorRT version, GPU architecture and ONNX graph it was built
from. Each is named by the first two and recorded with the third's sha256 in
`<bundle>/engines/manifest.json`, so a plan is never loaded blind. No TensorRT import here:
this logic is tested on every machine.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from engines.atomic_file import write_atomically
from engines.backends.base import BackendError
from engines.bundle import ENCODER_FP16_ONNX, ENCODER_ONNX, FLOWS_FP16_ONNX, FLOWS_ONNX, Bundle, sha256_file

PLAN_MANIFEST = "manifest.json"
PRECISIONS = ("fp16", "fp32")
GRAPHS = ("encoder", "flows")


class PlanMismatch(BackendError):
    """Plans exist for this machine's target but do not fit: refuse, say how to rebuild."""


class PlansMissing(BackendError):
    """No plans for this machine's target yet: they can be built here."""


@dataclass(frozen=True)
class EngineTarget:
    tensorrt_version: str  # e.g. "10.3.0"
    compute_capability: tuple[int, int]
    precision: str  # "fp16" or "fp32"

    @property
    def tag(self) -> str:
        major, minor = self.compute_capability
        return f"trt{self.tensorrt_version}-sm{major}{minor}-{self.precision}"

    def describe(self) -> str:
        major, minor = self.compute_capability
        return f"TensorRT {self.tensorrt_version} on sm_{major}{minor}, {self.precision}"


@dataclass(frozen=True)
class PlanRecord:
    graph: str  # "encoder" or "flows"
    plan: str  # file name under engines/
    plan_sha256: str
    onnx: str  # bundle file it was built from
    onnx_sha256: str
    tensorrt_version: str
    compute_capability: tuple[int, int]
    precision: str
    typing: str  # "strong" or "weak" (FP16 flag plus per-layer type constraints)
    max_batch: int
    gpu: str
    built: str

    @property
    def target(self) -> EngineTarget:
        # tuple(): a record built by hand may hold a list (JSON gives one); it is (major, minor)
        return EngineTarget(self.tensorrt_version, cast("tuple[int, int]", tuple(self.compute_capability)), self.precision)


def plan_name(graph: str, target: EngineTarget) -> str:
    return f"{graph}-{target.tag}.plan"


def timing_cache_name(target: EngineTarget) -> str:
    major, minor = target.compute_capability
    return f"timing-trt{target.tensorrt_version}-sm{major}{minor}.cache"


def source_graphs(precision: str) -> dict[str, str]:
    """Bundle ONNX file each plan is built from."""
    if precision == "fp16":
        return {"encoder": ENCODER_FP16_ONNX, "flows": FLOWS_FP16_ONNX}
    if precision == "fp32":
        return {"encoder": ENCODER_ONNX, "flows": FLOWS_ONNX}
    raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")


def rebuild_hint(bundle: Bundle, precision: str) -> str:
    return f"rebuild on this machine with: edge-engines build {bundle.path} --precision {precision}"


def read_plan_manifest(directory: Path) -> dict[str, PlanRecord]:
    """Plan file name -> record; an absent manifest is an empty one."""
    path = directory / PLAN_MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        records = [PlanRecord(**{**entry, "compute_capability": tuple(entry["compute_capability"])}) for entry in data["plans"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PlanMismatch(f"{path}: unreadable plan manifest ({error}); delete {directory} and run edge-engines build again") from None
    return {record.plan: record for record in records}


def write_plan_manifest(directory: Path, records: dict[str, PlanRecord]) -> None:
    data = {"plans": [asdict(record) for _, record in sorted(records.items())]}
    write_atomically(directory / PLAN_MANIFEST, (json.dumps(data, indent=2) + "\n").encode())


def select_plans(bundle: Bundle, target: EngineTarget, directory: Path) -> dict[str, Path]:
    """The encoder and flow plans for `target`, verified; raises PlansMissing or PlanMismatch."""
    records = read_plan_manifest(directory)
    graphs = source_graphs(target.precision)
    chosen: dict[str, Path] = {}
    for graph in GRAPHS:
        name = plan_name(graph, target)
        record = records.get(name)
        if record is None or not (directory / name).is_file():
            others = sorted({r.target.describe() for r in records.values()})
            found = f"; plans here are for: {', '.join(others)}" if others else ""
            raise PlansMissing(f"{directory}: no {graph} plan for {target.describe()}{found}")
        onnx = graphs[graph]
        if onnx not in bundle.manifest.files:
            raise PlanMismatch(f"{bundle.path}: the bundle has no {onnx} to check {name} against; re-calibrate with this version's edge-calibrate")
        if record.target != target:
            raise PlanMismatch(f"{directory / name}: its manifest says it was built for {record.target.describe()}, not {target.describe()}; {rebuild_hint(bundle, target.precision)}")
        if record.onnx != onnx or record.onnx_sha256 != bundle.manifest.files[onnx]:
            raise PlanMismatch(f"{directory / name} was built from a different {onnx} (the bundle was re-calibrated since); {rebuild_hint(bundle, target.precision)}")
        if sha256_file(directory / name) != record.plan_sha256:
            raise PlanMismatch(f"{directory / name}: checksum mismatch (corrupt or modified); {rebuild_hint(bundle, target.precision)}")
        chosen[graph] = directory / name
    return chosen


def plans_directory(bundle: Bundle, fallback_root: Path | None = None) -> Path | None:
    """Where plans for this bundle already are, looking where the daemon looks, in its order."""
    candidates = [bundle.path / "engines"]
    if fallback_root is not None:
        candidates.append(Path(fallback_root) / "engines" / bundle.bundle_id)
    return next((d for d in candidates if (d / PLAN_MANIFEST).is_file()), None)


def engines_directory(bundle: Bundle, fallback_root: Path | None = None) -> Path:
    """`<bundle>/engines`; where the bundle is read-only to the service user and holds no plans,
    `<fallback_root>/engines/<bundle id>` (the service's StateDirectory) instead."""
    preferred = bundle.path / "engines"
    writable = os.access(preferred if preferred.is_dir() else bundle.path, os.W_OK)
    if writable or fallback_root is None or (preferred / PLAN_MANIFEST).is_file():
        return preferred
    return Path(fallback_root) / "engines" / bundle.bundle_id
