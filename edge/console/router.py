"""From one MQTT message to the live model and the history: topic to station and kind, payload to
its typed form, refusals counted and logged (throttled).

Station names come from the topic, never from a payload: the broker's ACL ties a station's
credentials to its own prefix, so the topic is the part of a message another station cannot
forge (README, "Securing MQTT").
"""

from __future__ import annotations

import logging
import time

from edge.config_fields import valid_station_name
from edge.console.counters import ConsoleCounters
from edge.console.history import HeatmapRecord, History
from edge.console.live import LiveModel
from edge.console.payloads import PartRecord, PayloadError, parse_alarms, parse_image, parse_part, parse_stats, parse_status
from edge.counters import ThrottledLog

log = logging.getLogger("edge.console.ingest")

# What the stations publish. Everything else under the prefix (trigger, recipe, feedback, teach:
# commands to the stations from the PLC or an operator) is counted as "other" and left alone.
KINDS = ("status", "result", "reject", "heatmap", "preview", "stats", "alarm")


class Router:
    def __init__(self, topic_prefix: str, model: LiveModel, history: History | None, counters: ConsoleCounters):
        self.prefix = topic_prefix.rstrip("/") + "/"
        self.model = model
        self.history = history
        self.counters = counters
        self._refused = {kind: ThrottledLog(log, logging.WARNING, first=3, every=1000) for kind in (*KINDS, "topic")}
        self._over_cap = ThrottledLog(log, logging.WARNING, first=1, every=1000)

    def split(self, topic: str) -> tuple[str, str] | None:
        """(station, kind) of `<prefix>/<station>/<kind>`; None for any other shape."""
        if not topic.startswith(self.prefix):
            return None
        station, _, kind = topic[len(self.prefix) :].partition("/")
        return station, kind

    def handle(self, topic: str, payload: bytes) -> None:
        split = self.split(topic)
        kind = split[1] if split is not None and split[1] in KINDS else "other"
        self.counters.messages.add(kind)
        if split is None or kind == "other":
            return
        station = split[0]
        if not valid_station_name(station):
            self._refuse("topic", "station_name", f"station name {station[:40]!r} in topic {topic[:120]!r} is not one the console shows")
            return
        if not self.model.has_room_for(station):
            self.counters.stations_refused.add()
            self._over_cap("station %r ignored: the console already follows %d stations", station, self.model.max_stations)
            return
        try:
            self._route(station, kind, payload)
        except PayloadError as error:
            self._refuse(kind, error.reason, f"{station!r}: {kind} payload refused: {error}")

    def _refuse(self, kind: str, reason: str, message: str) -> None:
        self.counters.malformed.add((kind, reason))
        self._refused[kind]("%s", message)

    def _route(self, station: str, kind: str, payload: bytes) -> None:
        now = time.time()
        if kind == "status":
            # An empty retained message is the broker's way of deleting one: nothing is known now.
            self.model.set_status(station, parse_status(payload) if payload else "unknown")
        elif kind in ("result", "reject"):
            part = PartRecord.of(station, parse_part(payload), received=now)
            if self.model.add_part(part):
                if self.history is not None:
                    self.history.add_part(part)
            else:
                self.counters.duplicates.add()
        elif kind == "stats":
            self.model.set_stats(station, parse_stats(payload) if payload else None)
        elif kind == "alarm":
            self.model.set_alarms(station, tuple(parse_alarms(payload).active) if payload else ())
        elif kind == "preview" and payload:
            self.model.set_preview(station, parse_image(payload, now))
        elif kind == "heatmap" and payload:
            image = parse_image(payload, now)
            self.model.set_heatmap(station, image)
            tag = image.tag
            # Only a reject's heatmap is history (a station may send them for passes too).
            if tag is not None and tag.verdict != "pass" and self.history is not None:
                self.history.add_heatmap(HeatmapRecord(station, tag.part_id, tag.frame_id, now, tag.verdict, tag.score, tag.threshold, image.jpeg))
