"""edge-inspect: the daemon. Loads and verifies bundles, warms the engines, runs every station,
keeps systemd's watchdog fed only while every stage is alive, drains on SIGTERM and reloads
bundles on SIGHUP without dropping the MQTT sessions."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from edge.alarms import DISK_FULL, OUTBOX_BACKLOG, REJECT_RATE, SCORE_DRIFT
from edge.audit import AuditLog
from edge.config import AlarmsConfig, CameraConfig, Config
from edge.frame_numbers import FrameNumbers
from edge.outbox import Outbox
from edge.publisher import StationPublisher
from edge.recipes import StationRecipes
from edge.review import ReviewRing
from edge.sdnotify import SystemdNotifier
from edge.station import Station
from edge.station_engine import InferencePlan, StationEngine, load_engines, plan_inference, recipe_engines, usable_cores
from edge.stats import StationStats
from edge.stop_budget import STOP_BUDGET
from edge.teach import TeachIn
from engines.backends import resolve_backend_name

log = logging.getLogger("edge.daemon")
HEARTBEAT_MAX_AGE_S = 5.0
ALARM_CHECK_S = 1.0  # how often the stats' alarm conditions are checked, published or not
# A replaced engine may still be running the batch it was handed just before a reload; it is
# closed (GPU memory freed) only once that batch has surely finished.
RETIRE_AFTER_S = 10.0
FIRST_CONNECT_WAIT_S = 5.0


def first_unused_frame_number(audit: AuditLog, outbox: Outbox) -> int:
    """One past the highest frame number this station's audit log and outbox still hold: where
    numbering starts for a station that has state from before frame numbers were kept."""
    used = [audit.last_frame_id()] + [m.payload.get("frame_id") for m in outbox.pending()]
    return max((f for f in used if isinstance(f, int)), default=-1) + 1


def calibrations(engines: dict[str, StationEngine]) -> dict[str, dict[str, float]]:
    """Bundle id -> its good parts' score quantiles, for the drift window."""
    return {e.bundle.bundle_id: e.bundle.manifest.thresholds.good_score_quantiles for e in engines.values()}


def build_station(config: Config, camera: CameraConfig, engines: dict[str, StationEngine]) -> Station:
    """One station with its own audit log, outbox, MQTT session, frame numbers, review ring and
    teach-in folder under state_dir; `engines` is every loaded bundle by path."""
    state = Path(config.state_dir)
    name = camera.station
    audit = AuditLog(state / "audit" / f"{camera.station}.jsonl", config.audit_max_bytes, config.audit_backups)
    review = ReviewRing(name, state / "review" / name, camera, config.review, per_recipe=len(config.recipes_of(camera)) > 1)
    # On a full disk review images, then the oldest audit records, make room for undelivered rejects.
    outbox = Outbox(state / "outbox" / camera.station, make_room=lambda: review.free_space() or audit.free_space())
    by_recipe = recipe_engines(config, camera, engines)
    recipes = StationRecipes(name, by_recipe, camera.default_recipe, state / "recipe" / name)
    stats = StationStats(calibrations(by_recipe), recent_parts=config.alarms.reject_rate_parts)
    publisher = StationPublisher(config.mqtt, name, outbox)
    frame_numbers = FrameNumbers(state / "frame_numbers" / name, first_if_new=lambda: first_unused_frame_number(audit, outbox))
    teach = TeachIn(name, state / "teach" / name, camera, every_frame_is_a_part=camera.mode == "triggered" or camera.source.type == "folder", min_free_bytes=int(config.review.min_free_mb * 1_000_000))
    station = Station(camera, recipes, publisher, audit, stats, config.publish, config.queue_size, frame_numbers, teach, review)
    publisher.commands = station.commands.handlers()
    return station


def stats_message(station: Station) -> dict:
    """The retained `stats` message of one station."""
    publisher, audit = station.publisher, station.audit
    snapshot = station.stats.snapshot()
    recipe = station.recipes.current()
    engine = station.recipes.engine(recipe)
    thresholds = engine.bundle.manifest.thresholds if engine is not None else None
    snapshot.update(
        station=station.name,
        camera=station.camera_state,
        recipe=recipe,
        recipes=station.recipes.names,
        bundle_id=engine.bundle.bundle_id if engine is not None else None,
        outbox_pending=publisher.undelivered(),
        audit_write_errors=audit.errors,
        audit_files_dropped=audit.dropped_files,
        rejects_not_saved=publisher.counters.rejects_not_saved.value,
        results_dropped=publisher.counters.results_dropped.value,
        disk_full=audit.recently_full(),
        broker_error=publisher.counters.last_error or None,
        threshold=thresholds.image if thresholds is not None else None,
        calibration_quantiles=thresholds.good_score_quantiles if thresholds is not None else None,
        teach=station.teach.status(),
        labels=station.review.labels.snapshot(),
        review_images_not_kept=station.review.not_kept.value,
    )
    return snapshot


def reject_rate_message(recent: dict, limit: float) -> str:
    said = f"{recent['rejects']} of the last {recent['parts']} parts rejected (limit {limit:.0%})"
    uninspected = recent.get("uninspected", 0)
    if uninspected * 2 >= recent["rejects"] > 0:
        # Mostly parts nobody inspected: a trigger, file, recipe or ROI problem, not the model's.
        return f"{said}, {uninspected} of them without an inspection: fix what their results' error names (triggers, files, recipe, camera shape); the calibration is not the cause"
    return f"{said}: if they are good parts, the picture has changed since calibration (camera compression, lighting, focus, product); fix that, or re-calibrate from this camera (edge-inspect teach)"


def check_alarms(station: Station, limits: AlarmsConfig, stats: dict) -> None:
    """The conditions the stats show, raised and cleared at each stats tick."""
    drift = (stats.get("drift") or {}).get("median_shift_in_spreads")
    station.alarms.set(
        SCORE_DRIFT,
        drift is not None and abs(drift) > limits.drift_spreads,
        f"passing parts' median score is {drift:+.1f} calibration spreads from the good parts' (limit {limits.drift_spreads:g}): check lighting, lens and product; re-calibrate if the change is meant"
        if drift is not None
        else "",
    )
    recent = stats["recent"]
    station.alarms.set(
        REJECT_RATE,
        recent["parts"] >= limits.reject_rate_parts and recent["rejects"] > limits.reject_rate * recent["parts"],
        reject_rate_message(recent, limits.reject_rate),
    )
    station.alarms.set(DISK_FULL, bool(stats["disk_full"]), "the state directory is full: the oldest audit records are being deleted to keep the outbox")
    backlog = stats["outbox_pending"]
    station.alarms.set(OUTBOX_BACKLOG, backlog > limits.outbox_backlog, f"{backlog} rejects wait for the broker (limit {limits.outbox_backlog}): the PLC is not getting them")


class Daemon:
    def __init__(self, config: Config, notifier: SystemdNotifier | None = None):
        self.config = config
        self.notifier = notifier or SystemdNotifier()
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.stations: list[Station] = []
        self.retired: list[tuple[float, StationEngine]] = []  # (close after, engine) from reloads
        # Bundles load on their own thread (a TensorRT plan build takes minutes) so the main loop
        # keeps the watchdog fed and answers a stop meanwhile; the stations inspect with the old ones.
        self.reloader: threading.Thread | None = None
        self.reloaded: dict[str, StationEngine] | Exception | None = None
        self.plan: InferencePlan | None = None  # chosen once: the stations' workers are fixed

    def build(self) -> None:
        self.notifier.status("loading bundles")
        c = self.config
        self.plan = plan_inference(resolve_backend_name(c.backend), c.threads, c.workers, usable_cores(), len(c.cameras))
        if c.workers > 1 and self.plan.workers == 1:
            log.warning("workers: %d asked for, but the %s backend runs one frame at a time; using 1", c.workers, self.plan.backend)
        engines = load_engines(c, self.plan, notifier=self.notifier)
        self.stations = [build_station(c, camera, engines) for camera in c.cameras]

    # -- reload -------------------------------------------------------------------------------
    def start_reload(self) -> None:
        """Load re-calibrated bundles in the background; finish_reload swaps them in."""
        self.notifier.reloading()
        log.info("reloading bundles; inspecting with the current ones meanwhile")
        plan = self.plan
        assert plan is not None, "build() first"

        def load() -> None:
            try:
                self.reloaded = load_engines(self.config, plan, notifier=self.notifier)
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
            replaced = {id(e): e for station in self.stations for e in station.recipes.engines.values()}
            for station in self.stations:
                by_recipe = recipe_engines(self.config, station.camera, engines)
                station.stats.calibrations = calibrations(by_recipe)
                station.recipes.engines = by_recipe
            close_after = time.monotonic() + RETIRE_AFTER_S
            self.retired.extend((close_after, engine) for engine in replaced.values())
            log.info("reloaded bundles: %s", ", ".join(e.bundle.bundle_id for e in engines.values()))
        self.notifier.ready("inspecting")

    def close_retired(self, now: float) -> None:
        due = [engine for close_after, engine in self.retired if close_after <= now]
        self.retired = [(close_after, engine) for close_after, engine in self.retired if close_after > now]
        for engine in due:
            engine.close()

    # -- running ------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop_requested.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_requested.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def run(self) -> int:
        self.build()
        self._connect()
        for station in self.stations:
            station.start()
        self.notifier.ready(f"inspecting {len(self.stations)} station(s)")
        log.info("inspecting: %s", ", ".join(s.name for s in self.stations))
        watchdog_every = self.notifier.watchdog_interval_s() or 1.0
        next_stats = next_watchdog = next_alarms = time.monotonic()
        while not self.stop_requested.is_set():
            self._step_reload()
            now = time.monotonic()
            self.close_retired(now)
            if now >= next_watchdog:
                next_watchdog = now + watchdog_every
                self._feed_watchdog()
            publish = now >= next_stats
            if publish or now >= next_alarms:
                # Alarms at least every second, whatever the stats interval: an hourly stats
                # topic must not hold a full disk or an outbox backlog back for an hour.
                next_alarms = now + ALARM_CHECK_S
                if publish:
                    next_stats = now + self.config.publish.stats_interval_s
                self.publish_stats(publish)
            if self.stations and all(s.finished for s in self.stations):
                log.info("every source has ended")
                break
            self.stop_requested.wait(0.2)
        status = self.shutdown()
        crashed = [f"{s.name}/{stage}" for s in self.stations for stage in s.heartbeats.crashed]
        if crashed:
            # A crashed loop can end a station as quietly as its source ending; exit 0 would
            # tell systemd (Restart=on-failure) all is well and leave the line uninspected.
            log.error("exiting with failure: %s crashed (see the traceback above)", ", ".join(crashed))
            return 1
        return status

    def _connect(self) -> None:
        """Results are not queued while the broker is away (rejects are); give the sessions a
        moment so the first parts of a run are not published into the void."""
        for station in self.stations:
            station.publisher.start()
        deadline = time.monotonic() + FIRST_CONNECT_WAIT_S
        for station in self.stations:
            if not station.publisher.connected.wait(max(0.0, deadline - time.monotonic())):
                log.warning("%s: broker not reachable yet; inspecting anyway (rejects wait in the outbox)", station.publisher.topics.base)

    def _step_reload(self) -> None:
        if self.reloader is not None and not self.reloader.is_alive():
            self.finish_reload()
        if self.reload_requested.is_set() and self.reloader is None:
            self.reload_requested.clear()  # a SIGHUP during a reload runs another one after it
            self.start_reload()

    def _feed_watchdog(self) -> None:
        stale = [f"{s.name}/{stage}" for s in self.stations for stage in s.stale_stages(HEARTBEAT_MAX_AGE_S)]
        if stale:
            # A hung stage must end in a restart: withholding the ping lets systemd do it.
            log.error("stages not alive: %s; withholding the watchdog ping", ", ".join(stale))
        else:
            self.notifier.watchdog()

    def publish_stats(self, publish: bool = True) -> None:
        """Check the alarms the stats show; publish the stats too where `publish`."""
        for station in self.stations:
            stats = stats_message(station)
            check_alarms(station, self.config.alarms, stats)
            if publish:
                station.publisher.publish_stats(stats)

    # -- stopping (everything here fits STOP_BUDGET, which the unit's TimeoutStopSec covers) ----
    def shutdown(self) -> int:
        self.notifier.stopping()
        drained = self._drain()
        self._deliver_outboxes()
        deadline = time.monotonic() + STOP_BUDGET.goodbye_s
        for station in self.stations:
            station.publisher.stop(max(0.1, deadline - time.monotonic()))
            station.audit.close()
            station.teach.stop("ended by the stop")
        deadline = time.monotonic() + STOP_BUDGET.review_s
        for station in self.stations:
            station.review.close(max(0.0, deadline - time.monotonic()))
        for engine in {id(e): e for station in self.stations for e in station.recipes.engines.values()}.values():
            engine.close()
        self.close_retired(float("inf"))
        self._close_unfinished_reload()
        self.notifier.close()
        return 0 if drained else 1

    def _drain(self) -> bool:
        """Every captured part inspected and published, or, past the budget, answered as not inspected."""
        log.info("stopping: draining in-flight parts")
        for station in self.stations:
            station.request_stop()  # every camera stops now, not after the one before has drained
        deadline = time.monotonic() + STOP_BUDGET.drain_s
        if all([station.join(max(0.0, deadline - time.monotonic())) for station in self.stations]):
            return True
        log.error("drain timed out after %.0f s; parts not inspected by now are rejected", STOP_BUDGET.drain_s)
        for station in self.stations:
            station.abandon()
        deadline = time.monotonic() + 2 * STOP_BUDGET.flush_grace_s
        for station in self.stations:
            if not station.publish_done.wait(max(0.0, deadline - time.monotonic())):
                log.error("%s: the publisher did not finish; parts it had not answered for are in neither the outbox nor the audit log", station.name)
        return False

    def _deliver_outboxes(self) -> None:
        """A broker that is away at shutdown is often just restarting: wait for it (paho keeps
        reconnecting, and the outbox is flushed on connect) rather than leave rejects behind."""
        deadline = time.monotonic() + STOP_BUDGET.outbox_s
        for station in self.stations:
            station.publisher.wait_delivered(max(0.0, deadline - time.monotonic()))
        self.publish_stats()  # the last word, after the outbox had its chance
        for station in self.stations:
            publisher = station.publisher
            left = publisher.undelivered()
            if not left:
                continue
            lost = publisher.save_unsaved()
            if left > lost:
                log.warning("%s: %d rejects not acknowledged by the broker; they stay in the outbox and are sent on the next start", publisher.topics.base, left - lost)
            if lost:
                log.error("%s: %d rejects could not be saved (disk full) and are lost with this exit; see the audit log", publisher.topics.base, lost)

    def _close_unfinished_reload(self) -> None:
        """A stop during a reload: engines it has loaded are closed, not left to interpreter exit
        (which may tear down TensorRT while it is still inside native code)."""
        if self.reloader is None:
            return
        self.reloader.join(STOP_BUDGET.reload_join_s)
        if self.reloader.is_alive():
            log.warning("a bundle reload was still loading at stop; abandoned")
        elif isinstance(self.reloaded, dict):
            for engine in self.reloaded.values():
                engine.close()
