"""Bundles opened for inspection: how many frames each station inspects at once, and one
engine (a bundle with an inspector per worker) per distinct bundle."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.config import CameraConfig, Config
from edge.sdnotify import SystemdNotifier
from engines.backends import BackendError, open_backend
from engines.bundle import Bundle, BundleError, open_bundle
from engines.inspector import Inspector

log = logging.getLogger("edge.station_engine")

# Left at 0, `workers` grows with the cores only this far: each worker holds its own sessions
# (about 70 MiB at Lite0 256), and a reload opens them all while the watchdog waits.
MAX_AUTO_WORKERS = 8


@dataclass(frozen=True)
class StationEngine:
    bundle: Bundle
    inspectors: tuple[Inspector, ...]  # one per inference worker; stations on this bundle share them
    # The good parts' width / height range (the manifest's training.part_aspect), read once;
    # None for a bundle calibrated before it was recorded.
    part_aspect: tuple[float, float] | None = None

    def close(self) -> None:
        for inspector in self.inspectors:
            try:
                inspector.backend.close()
            except Exception as error:  # the others must still be freed
                log.error("closing a %s backend of bundle %s failed: %s", inspector.backend.name, self.bundle.bundle_id, error)


@dataclass(frozen=True)
class InferencePlan:
    backend: str
    workers: int
    threads_per_worker: int


def plan_inference(backend: str, threads: int, workers: int, cores: int, stations: int = 1) -> InferencePlan:
    """How many frames each station inspects at once, and with how many threads each.

    On the CPU, whole frames in parallel beat one frame spread over the cores: ONNX Runtime's
    per-operator threading gains little on maps this small (each convolution is a few hundred
    microseconds of work, and the threads sleep between operators), while separate sessions need
    no synchronisation at all. Lite0 256 on 2 cores: one session with 2 threads ran 70-86
    frames/s, two single-threaded sessions 132-133 (bench/README.md). A worker keeps one frame's
    latency where a single thread puts it. TensorRT has one GPU stream, and torch's thread count
    is process-wide, so both run one worker. `threads` (or the cores) is shared by all stations.
    """
    if backend != "onnxruntime":
        return InferencePlan(backend, 1, threads)
    total = threads or cores
    count = workers or max(1, min(MAX_AUTO_WORKERS, total // stations))
    return InferencePlan(backend, count, max(1, total // (count * stations)))


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity (systemd's CPUAffinity=, cpusets), capped by
    a cgroup v2 CPU quota (systemd's CPUQuota=, docker --cpus) where one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    try:
        return cores_within_quota(cores, Path("/sys/fs/cgroup/cpu.max").read_text())
    except OSError:
        return cores  # cgroup v1 or no cgroup filesystem: the affinity is all there is


def cores_within_quota(cores: int, cpu_max: str) -> int:
    """`cores` capped by a cgroup v2 cpu.max ("QUOTA PERIOD" or "max PERIOD"), rounded up."""
    fields = cpu_max.split()
    if len(fields) < 2 or fields[0] == "max" or not (fields[0].isdigit() and fields[1].isdigit()) or int(fields[1]) == 0:
        return cores
    return min(cores, max(1, math.ceil(int(fields[0]) / int(fields[1]))))


def recipe_paths(config: Config, camera: CameraConfig) -> dict[str, str]:
    """Recipe name -> the resolved bundle directory a camera inspects that product with."""
    return {name: str(Path(path).resolve()) for name, path in config.recipes_of(camera).items()}


def recipe_engines(config: Config, camera: CameraConfig, engines: dict[str, StationEngine]) -> dict[str, StationEngine]:
    """A camera's recipes, each with its loaded engine (from load_engines)."""
    return {name: engines[path] for name, path in recipe_paths(config, camera).items()}


def load_engines(config: Config, plan: InferencePlan, notifier: SystemdNotifier | None = None) -> dict[str, StationEngine]:
    """One engine per distinct bundle path of every camera's every recipe, opened, verified and
    warmed up ahead (the first call of an ONNX Runtime or TensorRT session is far slower than the
    rest): a recipe switch then costs nothing."""
    engines: dict[str, StationEngine] = {}
    for camera in config.cameras:
        for recipe, path in recipe_paths(config, camera).items():
            if path not in engines:
                try:
                    engines[path] = _open_engine(path, config, plan, notifier)
                except BundleError as error:
                    # Which station and product: one bad recipe stops the whole daemon.
                    raise BundleError(f"station {camera.station}, recipe {recipe}: {error}") from None
    return engines


def _open_engine(path: str, config: Config, plan: InferencePlan, notifier: SystemdNotifier | None) -> StationEngine:
    bundle = open_bundle(path, public_key=config.bundle_public_key)
    height, width = bundle.manifest.input_size
    inspectors = []
    for _ in range(plan.workers):
        backend = open_backend(plan.backend, bundle, threads=plan.threads_per_worker, state_dir=Path(config.state_dir), notifier=notifier)
        inspector = Inspector(bundle, backend)
        try:
            inspector.inspect_batch(np.zeros((1, height, width, 3), np.uint8))
        except (BundleError, BackendError):
            raise
        except Exception as error:  # a graph the runtime cannot run: say which bundle, not a traceback
            backend.close()
            raise BundleError(f"{path}: the {plan.backend} backend cannot run this bundle's graphs ({error}); re-calibrate, or check the bundle was copied whole") from None
        inspectors.append(inspector)
    log.info(
        "bundle %s (%s) on %s: %s, %dx%d, %d worker(s) x %s thread(s)",
        bundle.bundle_id,
        path,
        plan.backend,
        bundle.manifest.encoder.name,
        width,
        height,
        plan.workers,
        plan.threads_per_worker or "all",
    )
    return StationEngine(bundle, tuple(inspectors), part_aspect(bundle.manifest.training))


def part_aspect(training: dict) -> tuple[float, float] | None:
    known = training.get("part_aspect")
    low, high = (known.get("min"), known.get("max")) if isinstance(known, dict) else (None, None)
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and 0 < low <= high < float("inf"):
        return float(low), float(high)
    return None
