"""The one typed answer every part gets, and the only place its message is built.

Each frame that enters a station leaves it as exactly one Answer: inspected (pass or reject),
or not inspected, with the reason. Only the Answer builds the reject/result payload (DESIGN.md's
MQTT contract) and the audit record, so every path out of the station says the same things.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum

import numpy as np

from edge.capture import Frame
from edge.decision import Verdict


class Outcome(str, Enum):
    """The payload's `verdict`."""

    PASS = "pass"
    REJECT = "reject"
    ERROR = "error"  # delivered but cannot be inspected: unreadable, outside the ROI, engine failure
    NO_FRAME = "no_frame"  # a trigger that got no frame in time
    NOT_INSPECTED = "not_inspected"  # dropped because inference fell behind, or left at a stop
    SKIPPED = "skipped"  # a free-running live view that could not be inspected: nobody waits for it


# Why a part was not inspected; the text goes into its message.
DROPPED = "inference fell behind the trigger rate; the frame was dropped"
LEFT_AT_STOP = "the daemon stopped before inspecting it (drain timed out)"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Inspected:
    """What an inspection produced beside the verdict, for the heatmap."""

    anomaly_map: np.ndarray  # float32, the bundle's input size
    view: np.ndarray  # the ROI crop of the frame as delivered (not a copy)
    box: tuple[int, int, int, int]  # the crop's x, y, width, height in the frame


@dataclass(frozen=True)
class Answer:
    station: str
    part_id: str
    outcome: Outcome
    bundle_id: str
    frame: Frame | None  # None: a trigger that got no frame
    verdict: Verdict | None = None  # inspected parts only
    inspected: Inspected | None = field(default=None, repr=False)
    error: str | None = None  # why a part was not inspected
    fault: str | None = None  # a station fault behind it that raises an alarm (edge/alarms.py)
    recipe: str | None = None  # the product it was asked under (edge/recipes.py)
    answered_at: float = field(default_factory=time.time)

    @classmethod
    def of_inspection(cls, station: str, frame: Frame, verdict: Verdict, bundle_id: str, inspected: Inspected) -> Answer:
        outcome = Outcome.REJECT if verdict.reject else Outcome.PASS
        return cls(station, frame.part_id or str(frame.frame_id), outcome, bundle_id, frame, verdict, inspected, recipe=frame.recipe)

    @classmethod
    def not_inspected(cls, station: str, part_id: str, outcome: Outcome, error: str, bundle_id: str, frame: Frame | None = None, recipe: str | None = None) -> Answer:
        return cls(station, part_id, outcome, bundle_id, frame, error=error, recipe=recipe or (frame.recipe if frame is not None else None))

    @property
    def published(self) -> bool:
        """Whether anyone waits for this answer (a skipped live view has no part behind it)."""
        return self.outcome is not Outcome.SKIPPED

    @property
    def is_reject(self) -> bool:
        """A part nobody could look at must not pass: every outcome but PASS goes out as a reject."""
        return self.published and self.outcome is not Outcome.PASS

    def payload(self) -> dict:
        """The reject/result message."""
        v, frame = self.verdict, self.frame
        payload: dict = {
            "part_id": self.part_id,
            "frame_id": frame.frame_id if frame else None,
            "station": self.station,
            "capture_time": _iso(frame.t_capture) if frame else None,
            "verdict": self.outcome.value,
            "score": round(v.score, 5) if v is not None and math.isfinite(v.score) else None,
            "threshold": round(v.threshold, 5) if v is not None else None,
            "bundle_id": self.bundle_id,
            "recipe": self.recipe,
            "regions": [r.to_json() for r in v.regions] if v is not None else [],
            "cause": v.cause if v is not None else None,  # a reject's, edge/decision.py's CAUSE_ constants
        }
        if frame is not None and frame.source_name:
            payload["file"] = frame.source_name
        if self.error is not None:
            payload["error"] = self.error
            payload["time"] = _iso(self.answered_at)
        return payload

    def latency_ms(self, now: float) -> float | None:
        return (now - self.frame.t_capture) * 1000.0 if self.frame is not None else None
