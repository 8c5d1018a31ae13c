"""edge-inspect: the daemon. Loads and verifies bundles, warms the engines, runs every station,
keeps systemd's watchdog fed only while every stage is alive, drains on SIGTERM and reloads
bundles on SIGHUP without dropping the MQTT sessions."""
from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.audit import AuditLog
from edge.config import Config
from edge.frame_numbers import FrameNumbers
from edge.outbox import Outbox
from edge.publisher import StationPublisher
from edge.sdnotify import SystemdNotifier
from edge.station import FLUSH_GRACE_S, Station
from edge.stats import StationStats
from engines.backends import open_backend, resolve_backend_name
from engines.bundle import Bundle, open_bundle
from engines.inspector import Inspector

log = logging.getLogger("edge.daemon")
HEARTBEAT_MAX_AGE_S = 5.0
DRAIN_TIMEOUT_S = 20.0
# After the drain, how long rejects still in the outbox may wait for the broker (a reconnect
# included) before the daemon leaves them on disk for its next start. Drain, the rejects for
# parts a timed-out drain left (2 x FLUSH_GRACE_S) and this stay inside the unit's
# TimeoutStopSec (45 s).
OUTBOX_GRACE_S = 10.0
# A replaced engine may still be running the batch it was handed just before a reload; it is
# closed (GPU memory freed) only once that batch has surely finished.
RETIRE_AFTER_S = 10.0
# At a stop during a reload, how long to wait for the loading bundles so they can be closed;
# 20 + 5 + 10 + 5 s stays inside TimeoutStopSec=45.
RELOAD_JOIN_S = 5.0
FIRST_CONNECT_WAIT_S = 5.0


@dataclass(frozen=True)
class StationEngine:
    bundle: Bundle
    inspectors: tuple[Inspector, ...]  # one per inference worker; stations on this bundle share them

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


# Left at 0, `workers` grows with the cores only this far: each worker holds its own sessions
# (about 70 MiB at Lite0 256), and a reload opens them all while the watchdog waits.
MAX_AUTO_WORKERS = 8


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


def load_engines(config: Config, plan: InferencePlan, notifier: SystemdNotifier | None = None) -> dict[str, StationEngine]:
    """One engine per distinct bundle path, opened, verified and warmed up (the first call of an
    ONNX Runtime or TensorRT session is far slower than the rest)."""
    engines: dict[str, StationEngine] = {}
    for camera in config.cameras:
        path = str(Path(camera.bundle or config.bundle).resolve())
        if path in engines:
            continue
        bundle = open_bundle(path)
        height, width = bundle.manifest.input_size
        inspectors = []
        for _ in range(plan.workers):
            backend = open_backend(plan.backend, bundle, threads=plan.threads_per_worker, state_dir=Path(config.state_dir), notifier=notifier)
            inspector = Inspector(bundle, backend)
            inspector.inspect_batch(np.zeros((1, height, width, 3), np.uint8))
            inspectors.append(inspector)
        engines[path] = StationEngine(bundle, tuple(inspectors))
        log.info(
            "bundle %s (%s) on %s: %s, %dx%d, %d worker(s) x %s thread(s)",
            bundle.bundle_id, path, plan.backend, bundle.manifest.encoder.name, width, height,
            plan.workers, plan.threads_per_worker or "all",
        )
    return engines


def first_unused_frame_number(audit: AuditLog, outbox: Outbox) -> int:
    """One past the highest frame number this station's audit log and outbox still hold: where
    numbering starts for a station that has state from before frame numbers were kept."""
    used = [audit.last_frame_id()] + [m.payload.get("frame_id") for m in outbox.pending()]
    return max((f for f in used if isinstance(f, int)), default=-1) + 1


class Daemon:
    def __init__(self, config: Config, notifier: SystemdNotifier | None = None):
        self.config = config
        self.notifier = notifier or SystemdNotifier()
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.stations: list[Station] = []
        self.publishers: list[StationPublisher] = []
        self.retired: list[tuple[float, StationEngine]] = []  # (close after, engine) from reloads
        # Bundles load on their own thread (a TensorRT plan build takes minutes) so the main loop
        # keeps the watchdog fed and answers a stop meanwhile; the stations inspect with the old ones.
        self.reloader: threading.Thread | None = None
        self.reloaded: dict[str, StationEngine] | Exception | None = None
        self.plan: InferencePlan | None = None  # chosen once: the stations' workers are fixed

    def _bundle_key(self, camera) -> str:
        return str(Path(camera.bundle or self.config.bundle).resolve())

    def build(self) -> None:
        self.notifier.status("loading bundles")
        c = self.config
        self.plan = plan_inference(resolve_backend_name(c.backend), c.threads, c.workers, usable_cores(), len(c.cameras))
        if c.workers > 1 and self.plan.workers == 1:
            log.warning("workers: %d asked for, but the %s backend runs one frame at a time; using 1", c.workers, self.plan.backend)
        engines = load_engines(c, self.plan, notifier=self.notifier)
        state = Path(self.config.state_dir)
        for camera in self.config.cameras:
            engine = engines[self._bundle_key(camera)]
            audit = AuditLog(state / "audit" / f"{camera.station}.jsonl", self.config.audit_max_bytes, self.config.audit_backups)
            # On a full disk the oldest audit records make room for undelivered rejects.
            outbox = Outbox(state / "outbox" / camera.station, make_room=audit.free_space)
            stats = StationStats(engine.bundle.manifest.thresholds.good_score_quantiles)
            publisher = StationPublisher(self.config.mqtt, camera.station, outbox)
            frame_numbers = FrameNumbers(state / "frame_numbers" / camera.station, first_if_new=lambda a=audit, o=outbox: first_unused_frame_number(a, o))
            station = Station(camera, engine, publisher, audit, stats, self.config.publish, self.config.queue_size, frame_numbers)
            publisher.on_trigger = station.on_trigger
            self.publishers.append(publisher)
            self.stations.append(station)

    def start_reload(self) -> None:
        """Load re-calibrated bundles in the background; finish_reload swaps them in."""
        self.notifier.reloading()
        log.info("reloading bundles; inspecting with the current ones meanwhile")

        def load() -> None:
            try:
                self.reloaded = load_engines(self.config, self.plan, notifier=self.notifier)
            except Exception as error:  # keep inspecting with what works
                self.reloaded = error

        self.reloaded = None
        self.reloader = threading.Thread(target=load, name="reload", daemon=True)
        self.reloader.start()

    def finish_reload(self) -> None:
        """Swap in what the reload loaded; a bundle that failed to load leaves the old one running."""
        engines, self.reloader, self.reloaded = self.reloaded, None, None
        if not isinstance(engines, dict):
            log.error("reload failed, keeping the current bundles: %s", engines)
        else:
            replaced = {id(station.engine): station.engine for station in self.stations}
            for station in self.stations:
                station.engine = engines[self._bundle_key(station.camera)]
                station.stats.calibration = station.engine.bundle.manifest.thresholds.good_score_quantiles
            close_after = time.monotonic() + RETIRE_AFTER_S
            self.retired.extend((close_after, engine) for engine in replaced.values())
            log.info("reloaded bundles: %s", ", ".join(e.bundle.bundle_id for e in engines.values()))
        self.notifier.ready("inspecting")

    def close_retired(self, now: float) -> None:
        due = [engine for close_after, engine in self.retired if close_after <= now]
        self.retired = [(close_after, engine) for close_after, engine in self.retired if close_after > now]
        for engine in due:
            engine.close()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop_requested.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_requested.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def run(self) -> int:
        self.build()
        for publisher in self.publishers:
            publisher.start()
        # Results are not queued while the broker is away (rejects are); give the sessions a
        # moment so the first parts of a run are not published into the void.
        deadline = time.monotonic() + FIRST_CONNECT_WAIT_S
        for publisher in self.publishers:
            if not publisher.connected.wait(max(0.0, deadline - time.monotonic())):
                log.warning("%s: broker not reachable yet; inspecting anyway (rejects wait in the outbox)", publisher.topics.base)
        for station in self.stations:
            station.start()
        self.notifier.ready(f"inspecting {len(self.stations)} station(s)")
        log.info("inspecting: %s", ", ".join(s.camera.station for s in self.stations))
        watchdog_every = self.notifier.watchdog_interval_s() or 1.0
        next_stats = next_watchdog = time.monotonic()
        while not self.stop_requested.is_set():
            if self.reloader is not None and not self.reloader.is_alive():
                self.finish_reload()
            if self.reload_requested.is_set() and self.reloader is None:
                self.reload_requested.clear()  # a SIGHUP during a reload runs another one after it
                self.start_reload()
            now = time.monotonic()
            self.close_retired(now)
            if now >= next_watchdog:
                next_watchdog = now + watchdog_every
                stale = [f"{s.camera.station}/{stage}" for s in self.stations for stage in s.stale_stages(HEARTBEAT_MAX_AGE_S)]
                if stale:
                    # A hung stage must end in a restart: withholding the ping lets systemd do it.
                    log.error("stages not alive: %s; withholding the watchdog ping", ", ".join(stale))
                else:
                    self.notifier.watchdog()
            if now >= next_stats:
                next_stats = now + self.config.publish.stats_interval_s
                self.publish_stats()
            if self.stations and all(s.finished for s in self.stations):
                log.info("every source has ended")
                break
            self.stop_requested.wait(0.2)
        return self.shutdown()

    def publish_stats(self) -> None:
        for station, publisher in zip(self.stations, self.publishers):
            undelivered = publisher.undelivered()
            snapshot = station.stats.snapshot()
            snapshot.update(
                station=station.camera.station,
                camera=station.camera_state,
                bundle_id=station.engine.bundle.bundle_id,
                outbox_pending=undelivered,
                audit_write_errors=station.audit.errors,
                audit_files_dropped=station.audit.dropped_files,
                rejects_not_saved=publisher.counters.rejects_not_saved,
                results_dropped=publisher.counters.results_dropped,
                disk_full=station.audit.recently_full(),
                broker_error=publisher.counters.last_error or None,
            )
            publisher.publish_stats(snapshot)

    def shutdown(self) -> int:
        self.notifier.stopping()
        log.info("stopping: draining in-flight parts")
        for station in self.stations:
            station.request_stop()  # every camera stops now, not after the one before has drained
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        drained = all([station.join(max(0.0, deadline - time.monotonic())) for station in self.stations])
        if not drained:
            log.error("drain timed out after %.0f s; parts not inspected by now are rejected", DRAIN_TIMEOUT_S)
            for station in self.stations:
                station.abandon()
            deadline = time.monotonic() + 2 * FLUSH_GRACE_S
            for station in self.stations:
                if not station.publish_done.wait(max(0.0, deadline - time.monotonic())):
                    log.error("%s: the publisher did not finish; parts it had not answered for are in neither the outbox nor the audit log", station.camera.station)
        deadline = time.monotonic() + OUTBOX_GRACE_S
        for publisher in self.publishers:
            # A broker that is away at shutdown is often just restarting: wait for it (paho keeps
            # reconnecting, and the outbox is flushed on connect) rather than leave rejects behind.
            while publisher.undelivered() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.publish_stats()  # the last word, after the outbox had its chance
        for publisher in self.publishers:
            left = publisher.undelivered()
            if left:
                lost = publisher.save_unsaved()
                if left > lost:
                    log.warning("%s: %d rejects not acknowledged by the broker; they stay in the outbox and are sent on the next start", publisher.topics.base, left - lost)
                if lost:
                    log.error("%s: %d rejects could not be saved (disk full) and are lost with this exit; see the audit log", publisher.topics.base, lost)
            publisher.stop()
        for station in self.stations:
            station.audit.close()
        for engine in {id(station.engine): station.engine for station in self.stations}.values():
            engine.close()
        self.close_retired(float("inf"))
        self._close_unfinished_reload()
        self.notifier.close()
        return 0 if drained else 1

    def _close_unfinished_reload(self) -> None:
        """A stop during a reload: engines it has loaded are closed, not left to interpreter exit
        (which may tear down TensorRT while it is still inside native code)."""
        if self.reloader is None:
            return
        self.reloader.join(RELOAD_JOIN_S)
        if self.reloader.is_alive():
            log.warning("a bundle reload was still loading at stop; abandoned")
        elif isinstance(self.reloaded, dict):
            for engine in self.reloaded.values():
                engine.close()
