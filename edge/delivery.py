"""Where an answer leaves the station: the reject outbox and MQTT, the audit log, the stats, and
the source's file. Called by the station's publish thread alone, one answer at a time, in
capture order."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edge.answer import Answer, Outcome
from edge.audit import AuditLog
from edge.config import PublishConfig
from edge.heatmap import PREVIEW_LONG_SIDE, render_heatmap
from edge.publisher import StationPublisher
from edge.stats import StationStats

log = logging.getLogger("edge.delivery")


class AnswerDelivery:
    def __init__(self, station: str, publisher: StationPublisher, audit: AuditLog, stats: StationStats, publish: PublishConfig, source, keepers: tuple[Callable[[Answer, dict], None], ...] = ()):
        self.station = station
        self.publisher = publisher
        self.audit = audit
        self.stats = stats
        self.publish = publish
        self.source = source
        # The review ring and teach-in: they take the part's image and its message, never block.
        self.keepers = keepers
        self.next_preview = 0.0  # time.monotonic() when the live view may be published again

    def deliver(self, answer: Answer) -> None:
        payload = answer.payload() if answer.published else {}  # built once, for every use below
        recorded = self._record(answer, payload) if answer.published else True
        # Only now, with the answer in the outbox and the audit log (synced: a pass has no outbox
        # file), is a file source's part done: a power cut before this re-inspects it on restart.
        # A full disk that refused the answer keeps the file where it is, for the same reason.
        if self.source.moves_files:
            recorded = self.audit.sync() and recorded
            if not recorded:
                log.warning("%s: the answer for part %s is not on disk (state directory full); its file stays in the folder", self.station, answer.part_id)
        for keep in self.keepers:
            try:
                keep(answer, payload)
            except Exception as error:  # a review image or teach-in part is not worth a part's answer
                log.error("%s: keeping part %s's image failed: %s", self.station, answer.part_id, error)
        if answer.frame is not None:
            self.source.finish(answer.frame, keep_file=not recorded)

    def _record(self, answer: Answer, payload: dict) -> bool:
        """Publish and audit one answer; True if it is on disk (the outbox for a reject, the audit log)."""
        saved = self.publisher.publish_reject(payload) if answer.is_reject else True  # through the outbox: never lost
        if self.publish.results:
            self.publisher.publish_result(payload)
        record = payload
        verdict = answer.verdict
        if verdict is not None:
            policy = self.publish.heatmaps
            if policy == "all" or (policy == "rejects" and verdict.reject):
                self.publisher.publish_heatmap(render_heatmap(answer, self.publish.heatmap_quality))
            self._preview(answer)
            latency_ms = answer.latency_ms(time.time()) or 0.0
            record = {**payload, "latency_ms": round(latency_ms, 2)}
            self.stats.record(latency_ms, verdict.score, verdict.reject, answer.bundle_id)
        else:
            if answer.outcome is Outcome.NOT_INSPECTED:
                self.stats.not_inspected.add()
            if answer.is_reject:  # not SKIPPED: a live view nobody waits for is no part
                self.stats.record_uninspected()
        return self.audit.append(record) and saved

    def _preview(self, answer: Answer) -> None:
        """The live view, throttled: rendering costs about as much as a heatmap, so at most
        preview_hz pictures a second whatever the part rate."""
        hz = self.publish.preview_hz
        now = time.monotonic()
        if hz <= 0 or now < self.next_preview:
            return
        self.next_preview = now + 1.0 / hz
        self.publisher.publish_preview(render_heatmap(answer, self.publish.heatmap_quality, PREVIEW_LONG_SIDE))
