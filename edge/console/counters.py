"""The console's own health counters, read by /metrics and the pages' health line."""

from __future__ import annotations

import threading
from collections.abc import Hashable

from edge.counters import Counter

# Label values come from topics and payload checks; more distinct ones than this would be a
# publisher inventing topic kinds, and each becomes a Prometheus series.
MAX_LABELS = 64


class Tally:
    """Counts by label (topic kind, refusal reason). Written by paho's thread and the history
    writer, read by scrapes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Hashable, int] = {}

    def add(self, label: Hashable, n: int = 1) -> None:
        with self._lock:
            if label not in self._counts and len(self._counts) >= MAX_LABELS:
                label = "other"
            self._counts[label] = self._counts.get(label, 0) + n

    def items(self) -> list[tuple[Hashable, int]]:
        with self._lock:
            return sorted(self._counts.items(), key=lambda item: str(item[0]))

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


class ConsoleCounters:
    def __init__(self) -> None:
        self.messages = Tally()  # by topic kind (result, reject, heatmap, ...)
        self.malformed = Tally()  # by (kind, reason): refused payloads
        self.duplicates = Counter()  # a reject seen on both `result` and `reject`
        self.stations_refused = Counter()  # messages for stations over the cap
        self.db_errors = Counter()
        self.history_dropped = Counter()  # parts or heatmaps not written (queue full, no database)
        self.retention_deleted = Tally()  # rows by table
        self.broker_connects = Counter()
        self.broker_connect_failures = Counter()
        self.logins = Counter()  # operator logins that succeeded
        self.login_failures = Tally()  # by reason: bad_credentials, throttled, users_file
        self.commands = Tally()  # by (command, result): what operators sent to the stations
