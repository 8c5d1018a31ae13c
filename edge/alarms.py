"""Station faults an operator must act on, raised and cleared (DESIGN.md's retained `alarm` topic).

The station keeps the set of active alarms; every change publishes the whole set, retained, so a
console that connects later sees what is wrong now, and an empty set says all is well again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

log = logging.getLogger("edge.alarms")

# What can be raised; the key is what a PLC or console matches on.
ROI_OUTSIDE_FRAME = "roi_outside_frame"
PART_SHAPE = "part_shape"  # parts far wider or taller than the good parts the bundle learned
CAMERA_LOST = "camera_lost"
SCORE_DRIFT = "score_drift"
DISK_FULL = "disk_full"
OUTBOX_BACKLOG = "outbox_backlog"
UNKNOWN_RECIPE = "unknown_recipe"
REJECT_RATE = "reject_rate"
KNOWN_ALARMS = (ROI_OUTSIDE_FRAME, PART_SHAPE, CAMERA_LOST, SCORE_DRIFT, DISK_FULL, OUTBOX_BACKLOG, UNKNOWN_RECIPE, REJECT_RATE)


class Alarms:
    def __init__(self, station: str, publish: Callable[[dict], None]):
        self.station = station
        self.publish = publish
        # Reentrant: a change and the publish of the set it makes happen under it together, so
        # two workers raising and clearing at once cannot leave the older set retained last.
        self.lock = threading.RLock()
        self.active: dict[str, dict] = {}

    def raise_alarm(self, key: str, message: str, restate: bool = False) -> None:
        """Raise (once; a repeat while active changes nothing) and publish the set. `restate`: a
        repeat with another message replaces it (it names what is wrong now), since unchanged."""
        with self.lock:
            active = self.active.get(key)
            if active is not None and (not restate or active["message"] == message):
                return
            since = active["since"] if active is not None else datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            self.active[key] = {"alarm": key, "message": message, "since": since}
            log.error("%s: alarm %s: %s", self.station, key, message)
            self.publish(self.message())

    def clear(self, key: str) -> None:
        with self.lock:
            if self.active.pop(key, None) is None:
                return
            log.info("%s: alarm %s cleared", self.station, key)
            self.publish(self.message())

    def set(self, key: str, active: bool, message: str) -> None:
        """Raise or clear, as a condition checked again and again says."""
        if active:
            self.raise_alarm(key, message)
        else:
            self.clear(key)

    def message(self) -> dict:
        with self.lock:
            active = sorted(self.active.values(), key=lambda a: a["since"])
        return {"station": self.station, "active": active, "time": datetime.fromtimestamp(time.time(), timezone.utc).isoformat(timespec="milliseconds")}
