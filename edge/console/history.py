"""The console's history: parts, reject heatmaps and the labels operators sent, in SQLite, bounded
in days and megabytes.

One writer thread owns the only writing connection (SQLite allows one writer; a thread of its
own keeps paho's network thread free of disk waits). Writes are queued and committed in batches.
Every failure here (no database, a full disk, a corrupt file) is counted, logged with the file's
path, and leaves the console serving the live model: history is a convenience, the stations'
own audit logs are the record.

Reads (the gallery, heatmap images) open their own short read-only connection per request; in
WAL mode they never block the writer.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge.console.counters import ConsoleCounters
from edge.console.payloads import PartRecord, iso
from edge.counters import ThrottledLog

log = logging.getLogger("edge.console.history")

SCHEMA_VERSION = 2  # 2: parts.recipe and the labels table (a version 1 file is brought up to 2)
# frame_id may be null (a trigger that got no frame); UNIQUE treats nulls as distinct, so the
# dedupe key uses IFNULL. The same key on heatmaps is how the gallery finds a reject's image.
SCHEMA = """
CREATE TABLE IF NOT EXISTS parts (
    id INTEGER PRIMARY KEY,
    station TEXT NOT NULL,
    part_id TEXT NOT NULL,
    frame_id INTEGER,
    time REAL NOT NULL,
    received REAL NOT NULL,
    verdict TEXT NOT NULL,
    reject INTEGER NOT NULL,
    score REAL,
    threshold REAL,
    bundle_id TEXT,
    cause TEXT,
    regions TEXT NOT NULL,
    error TEXT,
    late INTEGER NOT NULL,
    recipe TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS parts_key ON parts (station, part_id, IFNULL(frame_id, -1));
CREATE INDEX IF NOT EXISTS parts_time ON parts (time);
CREATE INDEX IF NOT EXISTS parts_rejects ON parts (reject, time);
CREATE TABLE IF NOT EXISTS heatmaps (
    id INTEGER PRIMARY KEY,
    station TEXT NOT NULL,
    part_id TEXT NOT NULL,
    frame_id INTEGER,
    time REAL NOT NULL,
    verdict TEXT,
    score REAL,
    threshold REAL,
    jpeg BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS heatmaps_key ON heatmaps (station, part_id, IFNULL(frame_id, -1));
CREATE INDEX IF NOT EXISTS heatmaps_time ON heatmaps (time);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY,
    station TEXT NOT NULL,
    part_id TEXT NOT NULL,
    label TEXT NOT NULL,
    defect_type TEXT,
    user TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS labels_key ON labels (station, part_id);
CREATE INDEX IF NOT EXISTS labels_time ON labels (time);
"""
# An operator's label is a part's last one: the station files the part's image again under it.

# What may wait for the writer: past either cap new rows are dropped and counted, so a stalled
# disk costs at most this much memory.
MAX_PENDING_ITEMS = 50_000
MAX_PENDING_BYTES = 64 * 1024 * 1024
BATCH_ITEMS = 2000  # rows per transaction: one fsync per batch, not per part
RETENTION_INTERVAL_S = 30.0
MAX_TRIM_ROUNDS = 200  # per enforcement: the next one carries on, so the writer is never stuck
WAL_LIMIT_BYTES = 16 * 1024 * 1024  # the WAL file is cut back to this after a checkpoint
MAX_BACKOFF_S = 30.0
GALLERY_LIMIT = 500


class HistoryUnavailable(RuntimeError):
    """A read that cannot be answered now (no database yet, or an error): the page says so."""


@dataclass(frozen=True)
class HeatmapRecord:
    station: str
    part_id: str
    frame_id: int | None
    received: float
    verdict: str | None
    score: float | None
    threshold: float | None
    jpeg: bytes


@dataclass(frozen=True)
class LabelRecord:
    """An operator's label the console sent to a station (and the station confirmed receiving)."""

    station: str
    part_id: str
    label: str  # good | defect
    defect_type: str | None
    user: str
    time: float

    def to_json(self) -> dict:
        return {"label": self.label, "defect_type": self.defect_type, "by": self.user, "time": iso(self.time)}


@dataclass(frozen=True)
class RejectQuery:
    part_id: str | None = None  # a substring of the part id
    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None  # epoch seconds, exclusive
    station: str | None = None
    limit: int = 60


@dataclass(frozen=True)
class Health:
    ok: bool
    error: str | None  # the last error while not ok, naming the file


_STOP = object()


class History:
    def __init__(self, path: Path, retention_days: float, retention_mb: float, counters: ConsoleCounters, retention_interval_s: float = RETENTION_INTERVAL_S):
        self.path = Path(path)
        self.retention_s = retention_days * 86400.0
        self.retention_bytes = int(retention_mb * 1024 * 1024)
        self.retention_interval_s = retention_interval_s
        self.counters = counters
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._pending_lock = threading.Lock()
        self._pending_items = 0
        self._pending_bytes = 0
        self._error: str | None = None  # replaced whole, read by the pages
        self._errors_log = ThrottledLog(log, logging.ERROR, first=3, every=100)
        self._dropped_log = ThrottledLog(log, logging.WARNING, first=1, every=1000)
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)

    # -- the ingest side (paho's thread): never blocks ---------------------------------------
    def add_part(self, part: PartRecord) -> None:
        self._put(part, 256)

    def add_heatmap(self, record: HeatmapRecord) -> None:
        self._put(record, len(record.jpeg))

    def add_label(self, record: LabelRecord) -> None:
        self._put(record, 256)

    def _put(self, item: object, size: int) -> None:
        with self._pending_lock:
            if self._pending_items >= MAX_PENDING_ITEMS or self._pending_bytes + size > MAX_PENDING_BYTES:
                full = True
            else:
                full = False
                self._pending_items += 1
                self._pending_bytes += size
        if full:
            self.counters.history_dropped.add()
            self._dropped_log("history: the writer is behind (%s); a %s was not saved", self._error or "slow disk", type(item).__name__)
            return
        self._queue.put(item)

    def _taken(self, item: object) -> None:
        size = len(item.jpeg) if isinstance(item, HeatmapRecord) else 256
        with self._pending_lock:
            self._pending_items -= 1
            self._pending_bytes -= size

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, enforce retention once more, close."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    @property
    def pending(self) -> int:
        """Rows waiting for the writer."""
        return self._pending_items

    @property
    def health(self) -> Health:
        error = self._error
        return Health(error is None, error)

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        failures = 0
        next_retention = 0.0
        retry_at = 0.0
        stopping = False
        while not stopping:
            batch, stopping = self._next_batch()
            now = time.monotonic()
            if connection is None and now >= retry_at:
                connection = self._open()
                if connection is None:
                    failures += 1
                    retry_at = now + min(MAX_BACKOFF_S, 2.0**failures)
            if connection is None:
                self._drop(batch)
                continue
            try:
                if batch:
                    self._write(connection, batch)
                if stopping or now >= next_retention:
                    next_retention = now + self.retention_interval_s
                    self.enforce_retention(connection)
                failures, self._error = 0, None
            except sqlite3.Error as error:
                # Full disk, I/O error, corrupt page: the batch is lost (the stations still have
                # their audit logs). Reopen after a backoff: a corrupt or removed file may be back.
                failures += 1
                self._failed(f"cannot write history to {self.path}: {error}", len(batch))
                connection.close()
                connection = None
                retry_at = time.monotonic() + min(MAX_BACKOFF_S, 2.0**failures)
        if connection is not None:
            connection.close()

    def _next_batch(self) -> tuple[list[object], bool]:
        """Up to BATCH_ITEMS items (waiting at most half a second for the first), and whether
        stop was asked."""
        batch: list[object] = []
        try:
            item = self._queue.get(timeout=0.5)
        except queue.Empty:
            return batch, False
        while True:
            if item is _STOP:
                return batch, True
            self._taken(item)
            batch.append(item)
            if len(batch) >= BATCH_ITEMS:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False

    def _drop(self, batch: list[object]) -> None:
        if batch:
            self.counters.history_dropped.add(len(batch))
            self._dropped_log("history: no database (%s); %d rows not saved", self._error, len(batch))

    def _failed(self, message: str, lost: int) -> None:
        self.counters.db_errors.add()
        if lost:
            self.counters.history_dropped.add(lost)
        self._error = message
        self._errors_log("%s; the live view goes on, history is degraded", message)

    def _open(self) -> sqlite3.Connection | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        except (OSError, sqlite3.Error) as error:
            self._failed(f"cannot open the history database {self.path}: {error}", 0)
            return None
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version}, this console writes version {SCHEMA_VERSION}; move the file aside")
            connection.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power cut may lose the last batch, never corrupt the file.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            connection.executescript(SCHEMA)
            if "recipe" not in {row[1] for row in connection.execute("PRAGMA table_info(parts)")}:
                connection.execute("ALTER TABLE parts ADD COLUMN recipe TEXT")  # a version 1 file
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as error:
            connection.close()
            self._failed(f"cannot use the history database {self.path}: {error}", 0)
            return None
        log.info("history: writing to %s (keeping %g days, %g MB)", self.path, self.retention_s / 86400, self.retention_bytes / 1048576)
        return connection

    def _write(self, connection: sqlite3.Connection, batch: list[object]) -> None:
        parts = [item for item in batch if isinstance(item, PartRecord)]
        heatmaps = [item for item in batch if isinstance(item, HeatmapRecord)]
        labels = [item for item in batch if isinstance(item, LabelRecord)]
        connection.execute("BEGIN")
        try:
            connection.executemany(
                "INSERT OR IGNORE INTO parts (station, part_id, frame_id, time, received, verdict, reject, score, threshold, bundle_id, cause, regions, error, late, recipe)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (p.station, p.part_id, p.frame_id, p.time, p.received, p.verdict, int(p.is_reject), p.score, p.threshold, p.bundle_id, p.cause, p.regions_json(), p.error, int(p.late), p.recipe)
                    for p in parts
                ],
            )
            connection.executemany(
                "INSERT OR REPLACE INTO labels (station, part_id, label, defect_type, user, time) VALUES (?, ?, ?, ?, ?, ?)",
                [(r.station, r.part_id, r.label, r.defect_type, r.user, r.time) for r in labels],
            )
            connection.executemany(
                "INSERT OR IGNORE INTO heatmaps (station, part_id, frame_id, time, verdict, score, threshold, jpeg) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(h.station, h.part_id, h.frame_id, h.received, h.verdict, h.score, h.threshold, h.jpeg) for h in heatmaps],
            )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    # -- retention (writer thread, or a test holding its own connection) -------------------------
    def enforce_retention(self, connection: sqlite3.Connection) -> None:
        """Delete what is older than the retention days, then the oldest rows of both tables
        together until the data fits the retention megabytes. Freed pages are reused by new rows,
        so the file stops growing at about the limit (it is not shrunk: VACUUM would rewrite it)."""
        cutoff = time.time() - self.retention_s
        self._delete_up_to(connection, cutoff, inclusive=False)
        for _ in range(MAX_TRIM_ROUNDS):
            used = used_bytes(connection)
            if used <= self.retention_bytes:
                return
            oldest = self._oldest_chunk(connection, (used - self.retention_bytes) / used)
            if oldest is None:
                return
            self._delete_up_to(connection, oldest, inclusive=True)

    def _delete_up_to(self, connection: sqlite3.Connection, cutoff: float, inclusive: bool) -> None:
        op = "<=" if inclusive else "<"
        connection.execute("BEGIN")
        try:
            heatmaps = connection.execute(f"DELETE FROM heatmaps WHERE time {op} ?", (cutoff,)).rowcount
            parts = connection.execute(f"DELETE FROM parts WHERE time {op} ?", (cutoff,)).rowcount
            connection.execute(f"DELETE FROM labels WHERE time {op} ?", (cutoff,))
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        if heatmaps > 0:
            self.counters.retention_deleted.add("heatmaps", heatmaps)
        if parts > 0:
            self.counters.retention_deleted.add("parts", parts)

    @staticmethod
    def _oldest_chunk(connection: sqlite3.Connection, overshoot: float) -> float | None:
        """The time up to which deleting removes about `overshoot` of each table (at least one
        row): the earlier of the two tables' cut times, so rows go strictly oldest first."""
        fraction = min(0.5, overshoot + 0.01)
        cuts = []
        for table in ("heatmaps", "parts"):
            count = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            if count:
                offset = max(0, int(count * fraction) - 1)
                cuts.append(connection.execute(f"SELECT time FROM {table} ORDER BY time LIMIT 1 OFFSET ?", (offset,)).fetchone()[0])
        return min(cuts) if cuts else None

    # -- reads (web threads) -------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise HistoryUnavailable(self._error or f"no history database at {self.path} yet")
        try:
            connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
            connection.execute("PRAGMA query_only=1")
        except sqlite3.Error as error:
            raise HistoryUnavailable(f"cannot read {self.path}: {error}") from None
        return connection

    def _read(self, sql: str, args: tuple) -> list[tuple]:
        connection = self._reader()
        try:
            return connection.execute(sql, args).fetchall()
        except sqlite3.Error as error:
            self.counters.db_errors.add()
            raise HistoryUnavailable(f"cannot read {self.path}: {error}") from None
        finally:
            connection.close()

    def rejects(self, query: RejectQuery) -> list[dict]:
        where: list[str] = ["p.reject = 1"]
        args: list[object] = []
        if query.part_id:
            escaped = query.part_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("p.part_id LIKE ? ESCAPE '\\'")
            args.append(f"%{escaped}%")
        if query.since is not None:
            where.append("p.time >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("p.time < ?")
            args.append(query.until)
        if query.station:
            where.append("p.station = ?")
            args.append(query.station)
        rows = self._read(
            f"SELECT {_PART_COLUMNS}, h.id"
            " FROM parts p LEFT JOIN heatmaps h ON h.station = p.station AND h.part_id = p.part_id AND IFNULL(h.frame_id, -1) = IFNULL(p.frame_id, -1)"
            f" {_LABEL_JOIN} WHERE {' AND '.join(where)} ORDER BY p.time DESC, p.id DESC LIMIT ?",
            (*args, max(1, min(query.limit, GALLERY_LIMIT))),
        )
        return [_reject_json(row) for row in rows]

    def parts(self, station: str, limit: int) -> list[dict]:
        rows = self._read(
            f"SELECT {_PART_COLUMNS}, NULL FROM parts p {_LABEL_JOIN} WHERE p.station = ? ORDER BY p.time DESC, p.id DESC LIMIT ?",
            (station, max(1, min(limit, 5000))),
        )
        return [_reject_json(row) for row in rows]

    def has_part(self, station: str, part_id: str) -> bool:
        return bool(self._read("SELECT 1 FROM parts WHERE station = ? AND part_id = ? LIMIT 1", (station, part_id)))

    def heatmap(self, heatmap_id: int) -> bytes | None:
        rows = self._read("SELECT jpeg FROM heatmaps WHERE id = ?", (heatmap_id,))
        return bytes(rows[0][0]) if rows else None

    def size_bytes(self) -> int:
        """The database and its WAL on disk."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except OSError:
                pass
        return total


def used_bytes(connection: sqlite3.Connection) -> int:
    """Bytes of pages that hold data (the file less its free pages)."""
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    free = connection.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page_size)


_PART_COLUMNS = "p.id, p.station, p.part_id, p.frame_id, p.time, p.verdict, p.score, p.threshold, p.bundle_id, p.cause, p.regions, p.error, p.late, p.recipe, l.label, l.defect_type, l.user, l.time"
_LABEL_JOIN = "LEFT JOIN labels l ON l.station = p.station AND l.part_id = p.part_id"


def _reject_json(row: tuple) -> dict:
    (row_id, station, part_id, frame_id, moment, verdict, score, threshold, bundle_id, cause, regions, error, late, recipe, label, defect_type, user, labelled, heatmap_id) = row
    try:
        region_list = json.loads(regions)
    except ValueError:
        region_list = []
    return {
        "id": row_id,
        "station": station,
        "part_id": part_id,
        "frame_id": frame_id,
        "time": iso(moment),
        "verdict": verdict,
        "score": score,
        "threshold": threshold,
        "bundle_id": bundle_id,
        "cause": cause,
        "regions": region_list,
        "error": error,
        "late": bool(late),
        "recipe": recipe,
        "label": None if label is None else {"label": label, "defect_type": defect_type, "by": user, "time": iso(labelled)},
        "heatmap": f"/api/heatmap/{heatmap_id}.jpg" if heatmap_id is not None else None,
    }
