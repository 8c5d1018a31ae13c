"""The live model: what every station on the broker says now, in memory.

The pages and /metrics read only this, never the database, so a broken or full disk leaves the
line view working. Everything is bounded: stations, recent parts per station, the dedupe window.
One lock guards it all; paho's thread writes, the web threads take copies out.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from edge.console.payloads import ActiveAlarm, Image, PartRecord, StatsMessage, iso

RECENT_PARTS = 50  # the station page's strip
SERIES_PARTS = 1000  # the score chart and the pass-score histogram
DEDUPE_WINDOW = 4096  # part keys remembered per station; far more than a reject's two topics need
MAX_STATIONS = 256  # a publisher inventing station names must not grow memory without end
LABELS_KEPT = 4096  # operators' labels remembered per station for the live strip (history keeps them all)


@dataclass
class StationState:
    name: str
    status: str = "unknown"  # online | offline | unknown (nothing retained yet, or cleared)
    status_changed: float | None = None
    stats: StatsMessage | None = None
    stats_received: float | None = None
    alarms: tuple[ActiveAlarm, ...] = ()
    preview: Image | None = None
    preview_seq: int = 0
    heatmap: Image | None = None  # the latest heatmap, attributed or not
    parts_seen: int = 0
    last_message: float | None = None

    def __post_init__(self) -> None:
        self.parts: deque[tuple[int, PartRecord]] = deque(maxlen=SERIES_PARTS)  # (seq, part), oldest first
        self.seen: OrderedDict[tuple, None] = OrderedDict()
        self.rejects_by_cause: dict[str, int] = {}
        self.labels: OrderedDict[str, dict] = OrderedDict()  # part id -> the label an operator sent from this console

    def summary(self, now: float) -> dict:
        stats = self.stats
        latency = stats.latency_ms if stats is not None else None
        last = self.parts[-1][1] if self.parts else None
        return {
            "name": self.name,
            "status": self.status,
            "bundle_id": (stats.bundle_id if stats is not None and stats.bundle_id else None) or (last.bundle_id if last else None),
            "recipe": (stats.recipe if stats is not None and stats.recipe else None) or (last.recipe if last else None),
            "fps": stats.fps if stats else None,
            "reject_rate": stats.reject_rate if stats else None,
            "latency_p50_ms": latency.p50 if latency else None,
            "latency_p99_ms": latency.p99 if latency else None,
            "dropped_frames": stats.dropped_frames if stats else None,
            "not_inspected": stats.not_inspected if stats else None,
            "outbox_pending": stats.outbox_pending if stats else None,
            "camera": stats.camera if stats else None,
            "drift": stats.drift.median_shift_in_spreads if stats and stats.drift else None,
            "stats_age_s": round(now - self.stats_received, 1) if self.stats_received else None,
            "alarms": [alarm.model_dump(mode="json") for alarm in self.alarms],
            "parts_seen": self.parts_seen,
            "last_seen": iso(self.last_message),
        }


class LiveModel:
    def __init__(self, max_stations: int = MAX_STATIONS) -> None:
        self.lock = threading.Lock()
        self.stations: dict[str, StationState] = {}
        self.max_stations = max_stations
        # Bumped on every change; the event streams send when it moved, at most twice a second.
        self.version = 0
        self._seq = 0  # orders parts and previews across stations, for the streams' "after"

    def _station(self, name: str) -> StationState | None:
        """The station's state, created on its first message; None past the cap. Under the lock."""
        state = self.stations.get(name)
        if state is None:
            if len(self.stations) >= self.max_stations:
                return None
            state = self.stations[name] = StationState(name)
        state.last_message = time.time()
        self.version += 1
        return state

    def has_room_for(self, name: str) -> bool:
        with self.lock:
            return name in self.stations or len(self.stations) < self.max_stations

    def set_status(self, name: str, status: str) -> None:
        with self.lock:
            state = self._station(name)
            if state is not None and state.status != status:
                state.status, state.status_changed = status, time.time()

    def set_stats(self, name: str, stats: StatsMessage | None) -> None:
        with self.lock:
            state = self._station(name)
            if state is not None:
                state.stats, state.stats_received = stats, (time.time() if stats is not None else None)

    def set_alarms(self, name: str, alarms: tuple[ActiveAlarm, ...]) -> None:
        with self.lock:
            state = self._station(name)
            if state is not None:
                state.alarms = alarms

    def add_part(self, part: PartRecord) -> bool:
        """Adds a part not seen before; False for a duplicate (or a station over the cap)."""
        with self.lock:
            state = self._station(part.station)
            if state is None:
                return False
            key = part.key
            if key in state.seen:
                return False
            state.seen[key] = None
            if len(state.seen) > DEDUPE_WINDOW:
                state.seen.popitem(last=False)
            self._seq += 1
            state.parts.append((self._seq, part))
            state.parts_seen += 1
            if part.is_reject:
                cause = part.cause or part.verdict  # parts never inspected carry no cause: their verdict says why
                state.rejects_by_cause[cause] = state.rejects_by_cause.get(cause, 0) + 1
            return True

    def set_label(self, name: str, part_id: str, label: dict) -> None:
        """An operator's label for one of the station's parts (sent and confirmed by the broker)."""
        with self.lock:
            state = self.stations.get(name)
            if state is None:
                return
            state.labels.pop(part_id, None)
            state.labels[part_id] = label
            if len(state.labels) > LABELS_KEPT:
                state.labels.popitem(last=False)
            self.version += 1

    def set_preview(self, name: str, image: Image) -> None:
        with self.lock:
            state = self._station(name)
            if state is not None:
                self._seq += 1
                state.preview, state.preview_seq = image, self._seq

    def set_heatmap(self, name: str, image: Image) -> None:
        with self.lock:
            state = self._station(name)
            if state is not None:
                state.heatmap = image

    # -- reads (copies, taken under the lock) --------------------------------------------------
    def names(self) -> list[str]:
        with self.lock:
            return sorted(self.stations)

    def summaries(self) -> list[dict]:
        now = time.time()
        with self.lock:
            return [self.stations[name].summary(now) for name in sorted(self.stations)]

    def detail(self, name: str, after: int = 0) -> dict | None:
        """A station's summary, its latest stats, the preview's identity and the parts after
        sequence `after` (all the kept ones for 0)."""
        now = time.time()
        with self.lock:
            state = self.stations.get(name)
            if state is None:
                return None
            parts = [(seq, part) for seq, part in state.parts if seq > after]
            preview = state.preview
            last_threshold = next((part.threshold for _, part in reversed(state.parts) if part.threshold is not None), None)
            return {
                **state.summary(now),
                "stats": state.stats.model_dump(mode="json") if state.stats else None,
                "threshold": last_threshold,
                "preview": None
                if preview is None
                else {
                    "seq": state.preview_seq,
                    "received": iso(preview.received),
                    **({"part_id": preview.tag.part_id, "verdict": preview.tag.verdict, "score": preview.tag.score} if preview.tag else {}),
                },
                "parts": [{"seq": seq, **part.to_json()} for seq, part in parts],
                "last_seq": state.parts[-1][0] if state.parts else 0,
                # Labels of the kept parts, every time: a label sent from another page shows here too.
                "labels": {part.part_id: state.labels[part.part_id] for _, part in state.parts if part.part_id in state.labels} if state.labels else {},
            }

    def station_stats(self, name: str) -> tuple[bool, StatsMessage | None]:
        """Whether the station has published since the console started, and its latest stats."""
        with self.lock:
            state = self.stations.get(name)
            return (state is not None, state.stats if state is not None else None)

    def has_part(self, name: str, part_id: str) -> bool:
        with self.lock:
            state = self.stations.get(name)
            return state is not None and any(part.part_id == part_id for _, part in state.parts)

    def preview(self, name: str) -> Image | None:
        with self.lock:
            state = self.stations.get(name)
            return state.preview if state else None

    def latest_heatmap(self, name: str) -> Image | None:
        with self.lock:
            state = self.stations.get(name)
            return state.heatmap if state else None

    def metrics_view(self) -> list[tuple[str, str, StatsMessage | None, int, dict[str, int], int]]:
        """(name, status, stats, parts seen, rejects by cause, active alarms) per station."""
        with self.lock:
            return [(s.name, s.status, s.stats, s.parts_seen, dict(s.rejects_by_cause), len(s.alarms)) for s in (self.stations[name] for name in sorted(self.stations))]

    def alarm_keys(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(s.name, alarm.alarm) for s in self.stations.values() for alarm in s.alarms]
