"""One camera station: the threads that move a part from the camera to the PLC.

    capture thread     camera -> frame (+ the PLC's part id) -> pipeline
    inference workers  pipeline -> inspect_frame -> Answer -> pipeline (edge.station_engine.plan_inference)
    publish thread     pipeline, in capture order -> delivery: outbox / MQTT / audit log / stats

The pipeline orders and bounds, every part gets one Answer, delivery is the only way out.
"""

from __future__ import annotations

import logging
import threading

from edge.alarms import PART_SHAPE, ROI_OUTSIDE_FRAME, Alarms
from edge.answer import Answer, Outcome
from edge.audit import AuditLog
from edge.camera_reader import CameraReader
from edge.capture import LIVE_SOURCES, EndOfStream, Frame, open_source
from edge.config import CameraConfig, PublishConfig
from edge.counters import ThrottledLog
from edge.delivery import AnswerDelivery
from edge.frame_numbers import FrameNumbers
from edge.heartbeats import Heartbeats
from edge.inspection import cannot_inspect, inspect_frame, roi_outside_known_frames
from edge.operator_commands import StationCommands
from edge.pipeline import OrderedPipeline
from edge.publisher import StationPublisher
from edge.recipes import StationRecipes
from edge.review import ReviewRing
from edge.stats import StationStats
from edge.stop_budget import STOP_BUDGET
from edge.teach import TeachIn
from edge.triggers import PendingTriggers, RecentPartIds

log = logging.getLogger("edge.station")


class Station:
    def __init__(
        self,
        camera: CameraConfig,
        recipes: StationRecipes,
        publisher: StationPublisher,
        audit: AuditLog,
        stats: StationStats,
        publish: PublishConfig,
        queue_size: int,
        frame_numbers: FrameNumbers,
        teach: TeachIn,
        review: ReviewRing,
    ):
        self.camera = camera
        self.name = camera.station
        self.recipes = recipes  # each part's engine is looked up once, by the recipe it was asked under
        self.teach = teach
        self.review = review
        self.publisher = publisher
        self.audit = audit
        self.stats = stats
        self.source = open_source(camera.source)
        self.live = camera.source.type in LIVE_SOURCES
        self.triggers = PendingTriggers(camera.trigger_timeout_s)
        self.pipeline = OrderedPipeline(queue_size, self._not_inspected)
        self.delivery = AnswerDelivery(self.name, publisher, audit, stats, publish, self.source, (review.keep, teach.offer))
        self.alarms = Alarms(self.name, publisher.publish_alarms)
        self.commands = StationCommands(self.name, recipes, self.triggers, self.alarms, teach, review, stats)
        self.recent_ids = RecentPartIds()
        self.stop_capture = threading.Event()
        self.reader = CameraReader(self.name, self.source, frame_numbers, self.stop_capture, self.alarms)
        self.publish_done = threading.Event()
        workers = len(next(iter(recipes.engines.values())).inspectors)
        self.heartbeats = Heartbeats(self.name, ["capture", *(f"inference-{i}" for i in range(workers)), "publish"])
        self.bad_frames = ThrottledLog(log, logging.WARNING, first=20, every=100, count=stats.bad_frames)
        self.inference_errors = ThrottledLog(log, logging.ERROR, first=5, every=100, count=stats.inference_errors)
        self.repeated_ids = ThrottledLog(log, logging.WARNING, first=1000, every=100, count=stats.repeated_part_ids)
        # Counted where it is answered (not_inspected); the log says why, throttled for a flood.
        self.triggers_pushed_out = ThrottledLog(log, logging.ERROR, first=5, every=100)
        self.threads = [
            threading.Thread(target=self._capture_loop, name=f"capture-{self.name}", daemon=True),
            *(threading.Thread(target=self._inference_loop, args=(i,), name=f"inference-{self.name}-{i}", daemon=True) for i in range(workers)),
            threading.Thread(target=self._publish_loop, name=f"publish-{self.name}", daemon=True),
        ]

    # -- control ------------------------------------------------------------------------------
    def start(self) -> None:
        """Check what can be checked before the first frame, then run."""
        outside = roi_outside_known_frames(self.camera)
        if outside:
            self.alarms.raise_alarm(ROI_OUTSIDE_FRAME, f"{outside}; every part is rejected until the ROI or the camera is fixed")
        for thread in self.threads:
            thread.start()

    def request_stop(self) -> None:
        self.stop_capture.set()

    def join(self, timeout_s: float) -> bool:
        """Wait until every captured part is inspected and published (drain); False if that
        took longer than timeout_s (then call abandon())."""
        self.stop_capture.set()
        return self.publish_done.wait(timeout_s)

    def abandon(self) -> None:
        """Stop waiting for inference: every part left is answered as not inspected, in its turn;
        wait for the publisher with publish_done."""
        left = self.pipeline.close()
        if left:
            log.error("%s: stopped with %d part(s) not inspected; they are rejected", self.name, left)

    @property
    def finished(self) -> bool:
        return self.publish_done.is_set()

    @property
    def camera_state(self) -> str:
        return self.reader.state

    def stale_stages(self, max_age_s: float) -> list[str]:
        return self.heartbeats.stale(max_age_s)

    # -- the three loops ----------------------------------------------------------------------
    def _capture_loop(self) -> None:
        ended = False
        try:
            while not self.stop_capture.is_set():
                self.heartbeats.beat("capture")
                self._expire_triggers()
                try:
                    frame = self.reader.next_frame()
                except EndOfStream:
                    break
                if frame is not None:
                    self._enqueue(frame)
            ended = True
        finally:
            self._expire_triggers(everything=True)
            self.source.close()
            self.pipeline.end_input()
            self.heartbeats.exited("capture", ended)

    def _inference_loop(self, worker: int) -> None:
        stage = f"inference-{worker}"
        ended = False
        try:
            while True:
                self.heartbeats.beat(stage)
                taken = self.pipeline.take(timeout=0.2)
                if taken is None:
                    if self.pipeline.exhausted:
                        break
                    continue
                ticket, frame = taken
                answer = None
                try:
                    answer = self._inspect(frame, worker)
                finally:
                    # Also when the thread itself dies (SystemExit): every ticket must be
                    # finished, or the publisher waits for it forever.
                    self.pipeline.finish(ticket, answer or self._failed(frame, "inspection did not finish"))
            ended = True
        finally:
            self.heartbeats.exited(stage, ended)

    def _publish_loop(self) -> None:
        ended = False
        try:
            while True:
                self.heartbeats.beat("publish")
                for answer in self.pipeline.ready(timeout=0.2):
                    self.delivery.deliver(answer)
                if self.pipeline.drained:
                    break
                if self.pipeline.closed_for() > STOP_BUDGET.flush_grace_s:
                    log.error("%s: capture did not end after the stop; parts it reads from now on are not answered", self.name)
                    break
            ended = True
        finally:
            self.heartbeats.exited("publish", ended)
            self.publish_done.set()

    # -- steps --------------------------------------------------------------------------------
    def _enqueue(self, frame: Frame) -> None:
        if self.camera.mode == "free-run":
            frame.part_id, frame.recipe = frame.part_id or str(frame.frame_id), self.recipes.current()
        else:
            trigger = self.triggers.next_part()
            if trigger is None:
                self.source.finish(frame)  # nobody asked for this frame
                return
            frame.part_id, frame.recipe, frame.refused = trigger.part_id, trigger.recipe, trigger.problem
        part_id = frame.part_id
        if self.recent_ids.seen_again(part_id):
            self.repeated_ids("%s: part id %s was inspected before (a repeated trigger or file name); inspected again", self.name, part_id)
        dropped = self.pipeline.put(frame, blocking=not self.live)
        if dropped:
            self.stats.dropped.add(dropped)
            log.warning("%s: inference behind, dropped %d oldest frame(s)", self.name, dropped)

    def _expire_triggers(self, everything: bool = False) -> None:
        if self.camera.mode != "triggered":
            return
        timeout = self.camera.trigger_timeout_s
        for trigger in self.triggers.overflowed():
            self.triggers_pushed_out("%s: more than %d triggers waited for a frame; part %s is answered without one", self.name, self.triggers.capacity, trigger.part_id)
            why = f"more than {self.triggers.capacity} triggers waited for a frame; the oldest is answered without one"
            self.pipeline.answer(Answer.not_inspected(self.name, trigger.part_id, Outcome.NOT_INSPECTED, why, self.recipes.bundle_id(trigger.recipe), recipe=trigger.recipe))
        for trigger in self.triggers.expired(everything):
            log.error("%s: trigger for part %s got no frame within %.1f s", self.name, trigger.part_id, timeout)
            self.stats.trigger_timeouts.add()
            why = f"no frame within {timeout:g} s of the trigger"
            self.pipeline.answer(Answer.not_inspected(self.name, trigger.part_id, Outcome.NO_FRAME, why, self.recipes.bundle_id(trigger.recipe), recipe=trigger.recipe))

    def _inspect(self, frame: Frame, worker: int) -> Answer:
        """An engine failure is this part's answer: one part must not stop the line."""
        if frame.refused is not None:
            return cannot_inspect(frame, frame.refused, self.camera, "", Outcome.NOT_INSPECTED)
        engine = self.recipes.engine(frame.recipe)
        if engine is None:  # never another bundle than the one asked for
            why = f"recipe {frame.recipe!r} is not one of this station's ({', '.join(self.recipes.names)})"
            return cannot_inspect(frame, why, self.camera, "", Outcome.NOT_INSPECTED)
        try:
            answer = inspect_frame(frame, engine, self.camera, worker)
        except Exception as error:
            why = str(error) or type(error).__name__
            self.inference_errors("%s: inspecting part %s failed: %s", self.name, frame.part_id, why, exc_info=True)
            return self._failed(frame, why)
        if answer.fault is not None:
            self.alarms.raise_alarm(answer.fault, f"{answer.error}; every part is rejected until this is fixed")
        elif answer.verdict is not None:
            self.alarms.clear(ROI_OUTSIDE_FRAME)
            self.alarms.clear(PART_SHAPE)
        if answer.verdict is None:
            self.bad_frames("%s: skipped %s: %s", self.name, frame.source_name or f"frame {frame.frame_id}", answer.error)
        return answer

    def _failed(self, frame: Frame, why: str) -> Answer:
        return Answer.not_inspected(self.name, frame.part_id or "", Outcome.ERROR, f"inspection failed: {why}", self.recipes.bundle_id(frame.recipe), frame)

    def _not_inspected(self, frame: Frame, why: str) -> Answer:
        return cannot_inspect(frame, why, self.camera, self.recipes.bundle_id(frame.recipe), Outcome.NOT_INSPECTED)
