"""One camera station: capture -> inference -> publishing, each in its own thread(s), joined by
bounded queues. Live cameras drop the oldest waiting frame when inference falls behind (counted);
files and folders are not live, so they wait instead and no part is skipped.

Inference may run in several workers, each inspecting whole frames (see
edge.daemon.plan_inference); every frame taken from the queue gets a ticket, and the publisher
puts results back in ticket order, so parts are published in the order they were captured."""
from __future__ import annotations

import collections
import json
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import cv2
import numpy as np

from edge.capture import EndOfStream, Frame, NoFrameYet, SourceUnavailable, open_source
from edge.config import CameraConfig, PublishConfig
from edge.decision import CAUSE_WHOLE_PART, Verdict, decide
from edge.frame_numbers import FrameNumbers
from engines.overlay import colour_bar, label, overlay
from engines.preprocess import FrameError, to_model_input

log = logging.getLogger("edge.station")
LIVE_SOURCES = ("v4l2", "stream", "gstreamer")
NOT_INSPECTED_AT_STOP = "the daemon stopped before inspecting it (drain timed out)"
FLUSH_GRACE_S = 2.5  # how long a stop whose drain timed out waits on a stage before answering for its parts


class QueueClosed(Exception):
    """put() after close_and_take(): the station is stopping and nobody will inspect the item."""


class FrameQueue:
    """Bounded FIFO. put() on a full queue drops the oldest item (live cameras) or waits
    (blocking=True: files and folders). Every item leaves with a ticket, 0, 1, 2, ... in capture
    order, whether get() hands it out or put() drops it, so the publisher can answer for each in
    order. Items handed out or dropped are remembered until done(ticket), once their answer is
    with the publisher, so a stop can find every one."""

    def __init__(self, size: int):
        self.items: collections.deque = collections.deque()
        self.size = size
        self.condition = threading.Condition()
        self.tickets = 0
        self.taken: dict[int, object] = {}  # ticket -> item, handed out and not yet done
        self.closed = False

    def _ticket(self) -> int:
        ticket, self.tickets = self.tickets, self.tickets + 1
        return ticket

    def put(self, item, blocking: bool, stop: threading.Event) -> list[tuple[int, object]]:
        """-> the (ticket, item) pairs dropped to make room, oldest first. Raises QueueClosed
        after close_and_take()."""
        with self.condition:
            while blocking and len(self.items) >= self.size and not stop.is_set() and not self.closed:
                self.condition.wait(0.2)
            if self.closed:
                raise QueueClosed()
            dropped = []
            # A blocking put released by a stop appends past the bound: a file's part is not dropped.
            while not blocking and len(self.items) >= self.size:
                ticket = self._ticket()
                self.taken[ticket] = self.items.popleft()
                dropped.append((ticket, self.taken[ticket]))
            self.items.append(item)
            self.condition.notify_all()
            return dropped

    def get(self, timeout: float) -> tuple[int, object] | None:
        """(ticket, oldest item), or None after `timeout` seconds with nothing to take (at once
        once closed)."""
        with self.condition:
            if not self.items and not self.closed and timeout > 0:
                self.condition.wait(timeout)
            if not self.items or self.closed:
                return None
            item = self.items.popleft()
            ticket = self._ticket()
            self.taken[ticket] = item
            self.condition.notify_all()
            return ticket, item

    def done(self, ticket: int) -> None:
        with self.condition:
            self.taken.pop(ticket, None)

    def close_and_take(self) -> dict[int, object]:
        """Close the queue and return, by ticket, every item handed out and not done plus every
        item still queued (ticketed now). In one step under the lock, so no item is in between."""
        with self.condition:
            self.closed = True
            left = dict(self.taken)
            while self.items:
                left[self._ticket()] = self.items.popleft()
            self.condition.notify_all()
            return left

    def __len__(self) -> int:
        with self.condition:
            return len(self.items)


@dataclass
class InspectedPart:
    frame: Frame
    part_id: str
    verdict: Verdict
    anomaly_map: np.ndarray
    model_input: np.ndarray
    bundle_id: str
    error: str | None = None


def parse_trigger(payload: bytes) -> str | None:
    """A trigger is a JSON object with part_id, a JSON string, or the plain part id. Anything
    else is refused (None), never raised: a malformed message must not stop a line."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not text or len(text) > 256:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        if text[0] in "{[\"":
            return None  # broken JSON, not a part id that happens to start with a brace
        value = text
    if isinstance(value, dict):
        value = value.get("part_id")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\0\n\r"):
        return None
    return value.strip()


class Station:
    def __init__(self, camera: CameraConfig, engine, publisher, audit, stats, publish: PublishConfig, queue_size: int, frame_numbers: FrameNumbers):
        self.camera = camera
        self.engine = engine  # StationEngine; replaced whole on reload
        self.workers = len(engine.inspectors)
        self.bad_triggers = 0
        self.publisher = publisher
        self.audit = audit
        self.stats = stats
        self.publish_config = publish
        self.source = open_source(camera.source)
        self.live = camera.source.type in LIVE_SOURCES
        self.frames = FrameQueue(queue_size)
        # (ticket, outcome, frame): an InspectedPart, an uninspected record (dict) or None (frame skipped).
        self.results: queue.Queue[tuple[int, InspectedPart | dict | None, Frame]] = queue.Queue(maxsize=queue_size * 4)
        self.stop_capture = threading.Event()
        self.stop_all = threading.Event()
        self.capture_done = threading.Event()
        self.inference_done = threading.Event()
        self.publish_done = threading.Event()
        # Per stage, when its loop last came round; None once the loop has ended.
        stages = ["capture", *(f"inference-{i}" for i in range(self.workers)), "publish"]
        self.heartbeats: dict[str, float | None] = {stage: time.monotonic() for stage in stages}
        self.workers_running = self.workers
        self.workers_lock = threading.Lock()
        self.camera_state = "starting"
        self.triggers: collections.deque[tuple[str, float]] = collections.deque(maxlen=1000)
        self.trigger_lock = threading.Lock()
        self.frame_numbers = frame_numbers  # a free-run part id is its frame number: never reused
        self.threads = [
            threading.Thread(target=self._capture_loop, name=f"capture-{camera.station}", daemon=True),
            *(threading.Thread(target=self._inference_loop, args=(i,), name=f"inference-{camera.station}-{i}", daemon=True) for i in range(self.workers)),
            threading.Thread(target=self._publish_loop, name=f"publish-{camera.station}", daemon=True),
        ]

    # -- control ------------------------------------------------------------------------------
    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def on_trigger(self, payload: bytes) -> None:
        part_id = parse_trigger(payload)
        if part_id is None:
            self.bad_triggers += 1
            # A misbehaving publisher must not flood the journal: the first few, then every 100th.
            if self.bad_triggers <= 5 or self.bad_triggers % 100 == 0:
                log.warning("%s: ignored malformed trigger %r (%d so far)", self.camera.station, payload[:80], self.bad_triggers)
            self.stats.count("bad_triggers")
            return
        with self.trigger_lock:
            self.triggers.append((part_id, time.monotonic()))

    def request_stop(self) -> None:
        self.stop_capture.set()

    def join(self, timeout_s: float) -> bool:
        """Wait until every captured part is inspected and published (drain); False if that
        took longer than timeout_s (then call abandon())."""
        deadline = time.monotonic() + timeout_s
        self.stop_capture.set()
        return all(done.wait(max(0.0, deadline - time.monotonic())) for done in (self.capture_done, self.inference_done, self.publish_done))

    def abandon(self) -> None:
        """Stop waiting for inference: the publisher answers for every part left (see
        _publish_unfinished) and then ends; wait for that with publish_done."""
        self.stop_all.set()

    @property
    def finished(self) -> bool:
        return self.publish_done.is_set()

    def stale_stages(self, max_age_s: float) -> list[str]:
        now = time.monotonic()
        return [stage for stage, beat in self.heartbeats.items() if beat is not None and now - beat > max_age_s]

    # -- capture ------------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        backoff = 0.5
        ended = False
        try:
            while not self.stop_capture.is_set():
                self.heartbeats["capture"] = time.monotonic()
                self._expire_triggers()
                try:
                    if self.camera_state != "ok":
                        self.source.open()
                        if self.camera_state != "starting":
                            log.info("%s: %s is back", self.camera.station, self.source.description)
                        self.camera_state, backoff = "ok", 0.5
                    frame = self._read()
                except SourceUnavailable as error:
                    if self.camera_state != "lost":
                        log.error("%s: camera lost: %s; retrying with backoff", self.camera.station, error)
                    self.camera_state = "lost"
                    self.stop_capture.wait(backoff)
                    backoff = min(backoff * 2, 2.0)  # back within 5 s of the source's return
                    continue
                except NoFrameYet:
                    continue  # waiting for the next part: alive, and triggers get expired
                except EndOfStream:
                    log.info("%s: %s ended", self.camera.station, self.source.description)
                    break
                part_id = self._part_id_for(frame)
                if part_id is None:
                    self.source.finish(frame)
                    continue  # triggered mode and nobody asked for this frame
                frame.part_id = part_id
                try:
                    dropped = self.frames.put(frame, blocking=not self.live, stop=self.stop_all)
                except QueueClosed:
                    # The stop's flush has already answered for the queue; this part is answered here.
                    self._publish_outcome(self._answer_if_part(frame, "not_inspected", NOT_INSPECTED_AT_STOP), frame)
                    break
                if dropped:
                    self._dropped(dropped)
            ended = True
        finally:
            self._expire_triggers(all_pending=True)
            self.source.close()
            self._loop_exited("capture", ended)
            self.capture_done.set()

    def _is_part(self) -> bool:
        """Whether each frame is a part that must be answered: a triggered frame is one the PLC
        asked about, a file is one the line camera delivered. A free-running live camera's frames
        are views of the line: dropping the oldest is how it keeps up."""
        return self.camera.mode == "triggered" or not self.live

    def _answer_if_part(self, frame: Frame, verdict: str, error: str) -> dict | None:
        """The reject record for a frame that was not inspected, if it is a part (None if it is a
        live view, which needs no answer)."""
        return self._uninspected_record(frame.part_id, verdict, error, frame) if self._is_part() else None

    def _dropped(self, dropped: list[tuple[int, Frame]]) -> None:
        self.stats.count("dropped", len(dropped))
        log.warning("%s: inference behind, dropped %d oldest frame(s)", self.camera.station, len(dropped))
        for ticket, frame in dropped:
            # Through the publisher, so the answer keeps its place in capture order.
            record = self._answer_if_part(frame, "not_inspected", "inference fell behind the trigger rate; the frame was dropped")
            self.results.put((ticket, record, frame))
            self.frames.done(ticket)  # after put, as a worker does

    def _read(self) -> Frame:
        frame_id = self.frame_numbers.current()
        if self.camera.source.type == "folder":
            frame = self.source.read(frame_id, stop=self.stop_capture)
        else:
            frame = self.source.read(frame_id)
        self.frame_numbers.advance()  # only a frame that came uses a number
        return frame

    def _part_id_for(self, frame: Frame) -> str | None:
        if self.camera.mode == "free-run":
            return frame.part_id or str(frame.frame_id)
        with self.trigger_lock:
            if not self.triggers:
                return None
            part_id, _ = self.triggers.popleft()
            return part_id

    def _expire_triggers(self, all_pending: bool = False) -> None:
        if self.camera.mode != "triggered":
            return
        now = time.monotonic()
        with self.trigger_lock:
            expired = []
            while self.triggers and (all_pending or now - self.triggers[0][1] > self.camera.trigger_timeout_s):
                expired.append(self.triggers.popleft()[0])
        for part_id in expired:
            log.error("%s: trigger for part %s got no frame within %.1f s", self.camera.station, part_id, self.camera.trigger_timeout_s)
            self.stats.count("trigger_timeouts")
            error = f"no frame within {self.camera.trigger_timeout_s:g} s of the trigger"
            self._publish_uninspected(self._uninspected_record(part_id, "no_frame", error))

    # -- inference ----------------------------------------------------------------------------
    def _inference_loop(self, worker: int) -> None:
        stage = f"inference-{worker}"
        ended = False
        try:
            while not self.stop_all.is_set():
                self.heartbeats[stage] = time.monotonic()
                taken = self.frames.get(timeout=0.2)
                if taken is None:
                    if self.capture_done.is_set() and not len(self.frames):
                        break
                    continue
                ticket, frame = taken
                outcome: InspectedPart | dict | None = None
                failure = "inspection did not finish"
                try:
                    outcome = self._inspect(frame, worker)
                    failure = ""
                except Exception as error:  # one part's failure must not stop the line
                    failure = str(error) or type(error).__name__
                    self._log_inference_error(frame, error)
                finally:
                    # Every ticket reaches the publisher, whatever happened: it publishes in
                    # ticket order and would wait for a missing one forever.
                    if failure:
                        outcome = self._uninspected_record(frame.part_id, "error", f"inspection failed: {failure}", frame)
                    self.results.put((ticket, outcome, frame))
                    self.frames.done(ticket)  # after put: a stop's flush finds the part in one of the two
            ended = True
        finally:
            self._loop_exited(stage, ended)
            with self.workers_lock:
                self.workers_running -= 1
                if not self.workers_running:
                    self.inference_done.set()

    def _loop_exited(self, stage: str, ended: bool) -> None:
        """A loop that ended (source done, drained, stopped) is no longer watched. One that
        crashed keeps its last heartbeat, which goes stale: the watchdog ping is withheld and
        systemd restarts the daemon, instead of the crash passing for the end of the source."""
        if ended:
            self.heartbeats[stage] = None
        else:
            log.error("%s: the %s loop crashed; withholding the watchdog so systemd restarts the daemon", self.camera.station, stage)

    def _log_inference_error(self, frame: Frame, error: Exception) -> None:
        """The first few, then every 100th: a broken engine must not flood the journal."""
        self.stats.count("inference_errors")
        errors = self.stats.inference_errors
        if errors <= 5 or errors % 100 == 0:
            log.error("%s: inspecting part %s failed (%d so far): %s", self.camera.station, frame.part_id, errors, error, exc_info=errors == 1)

    def _uninspected_record(self, part_id: str, verdict: str, error: str, frame: Frame | None = None) -> dict:
        """What is published for a part that was not inspected: its trigger got no frame
        ("no_frame"), the inspection failed ("error"), or it never reached an inspection
        ("not_inspected": dropped because inference fell behind the triggers, or still waiting
        when a stop's drain timed out). It goes out as a reject: a part nobody looked at must
        not pass."""
        record = part_payload(self.camera.station, part_id, frame, verdict, None, None, self.engine.bundle.bundle_id, [])
        record["error"] = error
        record["time"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        return record

    def _inspect(self, frame: Frame, worker: int) -> InspectedPart | dict | None:
        """The inspected part; for a frame that cannot be inspected, an "error" record when it is
        a part (it must not pass), else None (a live view skipped)."""
        if frame.unreadable:
            return self._skipped(frame, frame.unreadable)
        engine = self.engine
        inspector = engine.inspectors[worker]  # the worker plan is fixed for the daemon's life
        image = frame.image
        height, width = image.shape[:2] if image is not None and image.ndim >= 2 else (0, 0)
        box = (0, 0, width, height)
        if self.camera.roi is not None:
            x, y, w, h = self.camera.roi
            if x + w > width or y + h > height:
                return self._skipped(frame, f"{width}x{height} is smaller than the ROI")
            image, box = image[y : y + h, x : x + w], (x, y, w, h)
        try:
            model_input = inspector.model_input(image)
        except FrameError as error:
            return self._skipped(frame, str(error))
        maps, scores = inspector.inspect_batch(model_input[None])
        thresholds = engine.bundle.manifest.thresholds
        verdict = decide(maps[0], float(scores[0]), thresholds.image, thresholds.pixel, self.camera.min_region_area, box)
        return InspectedPart(frame, frame.part_id, verdict, maps[0], model_input, engine.bundle.bundle_id)

    def _skipped(self, frame: Frame, why: str) -> dict | None:
        log.warning("%s: skipped %s: %s", self.camera.station, frame.source_name or f"frame {frame.frame_id}", why)
        self.stats.count("bad_frames")
        return self._answer_if_part(frame, "error", f"cannot be inspected: {why}")

    # -- publishing ---------------------------------------------------------------------------
    def _publish_loop(self) -> None:
        waiting: dict[int, tuple[InspectedPart | dict | None, Frame]] = {}  # finished before an earlier ticket
        next_ticket = 0
        ended = False
        try:
            while not self.stop_all.is_set():
                self.heartbeats["publish"] = time.monotonic()
                try:
                    ticket, outcome, frame = self.results.get(timeout=0.2)
                except queue.Empty:
                    if self.inference_done.is_set() and self.results.empty():
                        break
                    continue
                waiting[ticket] = outcome, frame
                while next_ticket in waiting:
                    outcome, frame = waiting.pop(next_ticket)
                    next_ticket += 1
                    self._publish_outcome(outcome, frame)
            ended = True
            if self.stop_all.is_set():
                self._publish_unfinished(waiting, next_ticket)
                waiting.clear()
        finally:
            if waiting or not self.results.empty():
                log.error("%s: %d inspected part(s) not published (the publisher stopped early)", self.camera.station, len(waiting) + self.results.qsize())
            self._loop_exited("publish", ended)
            self.publish_done.set()

    def _publish_outcome(self, outcome: InspectedPart | dict | None, frame: Frame) -> None:
        recorded = True
        if isinstance(outcome, InspectedPart):
            recorded = self._publish(outcome)
        elif outcome is not None:
            recorded = self._publish_uninspected(outcome)
        # Only now, with the answer in the outbox and the audit log (synced: a pass has no outbox
        # file), is a file source's part done: a power cut before this re-inspects it on restart.
        # A full disk that refused the answer keeps the file where it is, for the same reason.
        if self.source.moves_files:
            recorded = self.audit.sync() and recorded
            if not recorded:
                log.warning("%s: the answer for part %s is not on disk (state directory full); its file stays in the folder", self.camera.station, frame.part_id)
        self.source.finish(frame, keep_file=not recorded)

    def _publish_unfinished(self, waiting: dict[int, tuple[InspectedPart | dict | None, Frame]], next_ticket: int) -> None:
        """The drain timed out (a hung engine): every captured part still gets one answer, in
        capture order. Parts that finished are published as usual; parts still being inspected
        or still queued are rejected as not inspected. Tickets below next_ticket are answered."""
        self.capture_done.wait(FLUSH_GRACE_S)  # its last frame lands in the queue, not after the flush
        # Close first, then read the results: a worker puts its result before it is done with a
        # ticket, so every part is in `left` or in the results (or both: the result wins).
        left = self.frames.close_and_take()
        while True:
            try:
                ticket, outcome, frame = self.results.get_nowait()
            except queue.Empty:
                break
            waiting[ticket] = outcome, frame
        for ticket, frame in left.items():
            if ticket not in waiting:
                waiting[ticket] = self._answer_if_part(frame, "not_inspected", NOT_INSPECTED_AT_STOP), frame
        answers = sorted(ticket for ticket in waiting if ticket >= next_ticket)  # none answered twice
        unfinished = sum(1 for t in answers if isinstance(waiting[t][0], dict) and waiting[t][0]["verdict"] == "not_inspected")
        if unfinished:
            log.error("%s: stopped with %d part(s) not inspected; they are rejected", self.camera.station, unfinished)
        for ticket in answers:
            self._publish_outcome(*waiting[ticket])

    def _publish_uninspected(self, record: dict) -> bool:
        """Publish and audit a part that was not inspected; True if its answer is on disk."""
        if record["verdict"] == "not_inspected":
            self.stats.count("not_inspected")
        saved = self._send(record, reject=True)
        return self.audit.append(record) and saved

    def _send(self, payload: dict, reject: bool) -> bool:
        """False if a reject could not be saved to the outbox (a full disk)."""
        saved = True
        if reject:
            saved = self.publisher.publish_reject(payload)  # through the outbox: never lost
        if self.publish_config.results:
            self.publisher.publish_result(payload)
        return saved

    def _publish(self, part: InspectedPart) -> bool:
        """Publish and audit an inspected part; True if its answer is on disk."""
        v = part.verdict
        payload = part_payload(
            self.camera.station, part.part_id, part.frame, "reject" if v.reject else "pass",
            round(v.score, 5) if math.isfinite(v.score) else None, round(v.threshold, 5), part.bundle_id,
            [r.to_json() for r in v.regions], v.cause,
        )
        saved = self._send(payload, v.reject)
        policy = self.publish_config.heatmaps
        if policy == "all" or (policy == "rejects" and v.reject):
            self.publisher.publish_heatmap(self._heatmap_jpeg(part))
        latency_ms = (time.time() - part.frame.t_capture) * 1000.0
        audited = self.audit.append({**payload, "latency_ms": round(latency_ms, 2)})
        self.stats.record(latency_ms, v.score, v.reject)
        return audited and saved

    def _heatmap_jpeg(self, part: InspectedPart) -> bytes:
        return render_heatmap(part, self.camera.roi, self.publish_config.heatmap_quality)


def part_payload(
    station: str, part_id: str, frame: Frame | None, verdict: str, score: float | None, threshold: float | None,
    bundle_id: str, regions: list[dict], cause: str | None = None,
) -> dict:
    """The reject/result message of one part (DESIGN.md's MQTT contract); `frame` is None for a
    trigger that got no frame."""
    payload = {
        "part_id": part_id,
        "frame_id": frame.frame_id if frame else None,
        "station": station,
        "capture_time": datetime.fromtimestamp(frame.t_capture, timezone.utc).isoformat(timespec="milliseconds") if frame else None,
        "verdict": verdict,
        "score": score,
        "threshold": threshold,
        "bundle_id": bundle_id,
        "regions": regions,
        "cause": cause,  # a reject's, edge/decision.py's CAUSE_ constants; None for a pass
    }
    if frame is not None and frame.source_name:
        payload["file"] = frame.source_name
    return payload


HEATMAP_LONG_SIDE = 512  # pixels: enough to see a defect, small enough for a JPEG per reject


def render_heatmap(part: InspectedPart, roi: tuple[int, int, int, int] | None, quality: int) -> bytes:
    """JPEG of what the camera saw (the ROI, in its own aspect and colour, at most 512 px a side)
    with the anomaly map over it, the defect boxes, the verdict and a colour bar scaled to the
    threshold (so the same colour means the same thing on every part)."""
    threshold = part.verdict.threshold
    image = part.frame.image
    x0, y0, width, height = roi if roi else (0, 0, image.shape[1], image.shape[0])
    view = image[y0 : y0 + height, x0 : x0 + width]
    scale = min(1.0, HEATMAP_LONG_SIDE / max(width, height))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    view_rgb = to_model_input(view, size, "rgb")  # the inspection read this view already: it converts
    anomaly_map = cv2.resize(part.anomaly_map, (view_rgb.shape[1], view_rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    picture = overlay(view_rgb, anomaly_map, 0.0, 1.5 * threshold)
    sx, sy = picture.shape[1] / width, picture.shape[0] / height
    for r in part.verdict.regions:
        p0 = (int((r.x - x0) * sx), int((r.y - y0) * sy))
        p1 = (int((r.x - x0 + r.width) * sx), int((r.y - y0 + r.height) * sy))
        cv2.rectangle(picture, p0, p1, (255, 255, 255), 1)
    verdict = "REJECT" if part.verdict.reject else "pass"
    if part.verdict.cause == CAUSE_WHOLE_PART:
        verdict += " (whole part)"  # the map may show nothing: say where the decision came from
    picture = label(picture, [f"{part.part_id} {verdict}", f"score {part.verdict.score:.2f} / {threshold:.2f}"])
    picture = np.hstack([picture, colour_bar(picture.shape[0], 0.0, 1.5 * threshold)])
    ok, jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return jpeg.tobytes() if ok else b""
