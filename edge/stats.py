"""Rolling station statistics: throughput, latency percentiles, drops, reject rate, score drift."""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

from edge.counters import Counter

PASSED, REJECTED, UNINSPECTED = "passed", "rejected", "uninspected"


class StationStats:
    def __init__(self, calibrations: dict[str, dict[str, float]], window: int = 1000, recent_parts: int = 50):
        self.lock = threading.Lock()
        # The reject-rate alarm's window: each recent part's PASSED, REJECTED or UNINSPECTED.
        self.recent: collections.deque[str] = collections.deque(maxlen=recent_parts)
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=window)
        self.pass_scores: collections.deque[float] = collections.deque(maxlen=window)
        self.finished: collections.deque[float] = collections.deque(maxlen=window)
        # Bundle id -> its good parts' score quantiles (replaced on reload). Scores of different
        # bundles do not compare: the drift window starts again when the recipe's bundle changes.
        self.calibrations = calibrations
        self.calibration: dict[str, float] = {}
        self.drift_bundle: str | None = None
        self.parts = 0  # inspected: written under the lock with the windows
        self.rejects = 0
        # Answered as a reject without an inspection (unreadable, no frame, no engine, no
        # recipe): the PLC kicks these parts too, so the reject rate and its alarm count them.
        self.uninspected = 0
        # Counted from capture, inference, the publisher and MQTT's thread.
        self.dropped = Counter()
        self.bad_frames = Counter()
        self.trigger_timeouts = Counter()
        self.bad_triggers = Counter()
        self.inference_errors = Counter()
        self.not_inspected = Counter()
        self.repeated_part_ids = Counter()
        self.bad_commands = {kind: Counter() for kind in ("recipe", "feedback", "teach")}  # bad triggers above
        self.started = time.monotonic()

    def record(self, latency_ms: float, score: float, reject: bool, bundle_id: str) -> None:
        with self.lock:
            if bundle_id != self.drift_bundle:
                self.drift_bundle = bundle_id
                self.pass_scores.clear()
            self.calibration = self.calibrations.get(bundle_id, {})
            self.parts += 1
            self.latencies_ms.append(latency_ms)
            self.finished.append(time.monotonic())
            self.recent.append(REJECTED if reject else PASSED)
            if reject:
                self.rejects += 1
            else:
                self.pass_scores.append(score)

    def record_uninspected(self) -> None:
        with self.lock:
            self.uninspected += 1
            self.recent.append(UNINSPECTED)

    def _drift(self) -> dict | None:
        """Where passing parts sit now against the calibration's good parts, in units of the
        calibration's own q50..q95 spread. Lighting or lens changes move this first."""
        if len(self.pass_scores) < 20 or "q50" not in self.calibration:
            return None
        recent = np.array(self.pass_scores)
        spread = max(self.calibration.get("q95", 0) - self.calibration["q50"], 1e-6)
        return {
            "recent_median": float(np.median(recent)),
            "recent_q95": float(np.quantile(recent, 0.95)),
            "calibration_median": self.calibration["q50"],
            "calibration_q95": self.calibration.get("q95"),
            "median_shift_in_spreads": float((np.median(recent) - self.calibration["q50"]) / spread),
        }

    def snapshot(self) -> dict:
        with self.lock:
            latencies = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
            span = self.finished[-1] - self.finished[0] if len(self.finished) > 1 else 0.0
            fps = (len(self.finished) - 1) / span if span > 0 else 0.0
            # The reject rate is over every part answered, and counts those the line kicked
            # without an inspection: a station that cannot read a single part must not read 0 %.
            answered = self.parts + self.uninspected
            return {
                "parts": self.parts,
                "rejects": self.rejects,
                "uninspected": self.uninspected,
                "reject_rate": (self.rejects + self.uninspected) / answered if answered else 0.0,
                "recent": {"parts": len(self.recent), "rejects": len(self.recent) - self.recent.count(PASSED), "uninspected": self.recent.count(UNINSPECTED)},
                "fps": round(fps, 2),
                "latency_ms": {f"p{p}": round(float(np.percentile(latencies, p)), 2) for p in (50, 95, 99)},
                "dropped_frames": self.dropped.value,
                "bad_frames": self.bad_frames.value,
                "trigger_timeouts": self.trigger_timeouts.value,
                "bad_triggers": self.bad_triggers.value,
                "inference_errors": self.inference_errors.value,
                "not_inspected": self.not_inspected.value,
                "repeated_part_ids": self.repeated_part_ids.value,
                "bad_commands": {kind: counter.value for kind, counter in self.bad_commands.items()},
                "uptime_s": round(time.monotonic() - self.started, 1),
                "drift": self._drift(),
            }
