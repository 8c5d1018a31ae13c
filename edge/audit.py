"""Append-only audit log of every verdict (JSON lines), rotated by size, so a part's verdict can
be looked up after the fact. A record torn by a power cut is at most the last line, and the
reader skips it."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("edge.audit")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class AuditLog:
    """Written with unbuffered O_APPEND writes, one whole line per write, so a failed write (a
    full disk) leaves at most one torn line and nothing stale in a buffer to retry later."""

    def __init__(self, path: Path, max_bytes: int, backups: int, fsync_every: int = 32):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.backups, self.fsync_every = max_bytes, backups, fsync_every
        self.lock = threading.RLock()  # free_space is called from append and from the outbox
        self.unsynced = 0
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size
        self.torn = False  # the last write failed part way: start the next record on a new line
        self.errors = 0  # records that could not be written at all
        self.dropped_files = 0  # oldest rotated files deleted to make room on a full disk
        self.full_at = float("-inf")  # time.monotonic() of the last full-disk write

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def append(self, record: dict) -> bool:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self.lock:
            try:
                if self.size + len(line) > self.max_bytes:
                    self._rotate()
            except OSError:
                pass  # rotation is renames; if even that fails, keep appending to the current file
            for _ in range(self.backups + 2):
                try:
                    self._write(line)
                    return True
                except OSError as error:
                    if error.errno not in DISK_FULL:
                        break
                    self.full_at = time.monotonic()
                    if not self.free_space():
                        break
            # Inspection and publishing go on; the counters and the stats message say it.
            self.errors += 1
            if self.errors in (1, 10) or self.errors % 1000 == 0:
                log.error("%s: could not write the audit record of part %s (%d so far): disk full or not writable", self.path, record.get("part_id"), self.errors)
            return False

    def _write(self, line: bytes) -> None:
        if self.torn:
            line = b"\n" + line
        written = 0
        try:
            while written < len(line):
                written += os.write(self.fd, line[written:])
        finally:
            self.size += written
            self.torn = 0 < written < len(line) or (self.torn and written == 0)
        self.unsynced += 1
        if self.unsynced >= self.fsync_every:
            os.fsync(self.fd)
            self.unsynced = 0

    def sync(self) -> bool:
        """Make every record appended so far durable now; False if the disk refused."""
        with self.lock:
            if not self.unsynced or self.fd < 0:
                return True
            try:
                os.fsync(self.fd)
            except OSError:
                return False
            self.unsynced = 0
            return True

    def last_frame_id(self) -> int | None:
        """The frame number of the newest record that has one: in the current file, or in the
        last rotated one if the current file was just started."""
        for path in (self.path, self.path.with_name(f"{self.path.name}.1")):
            frame_id = last_frame_id(path)
            if frame_id is not None:
                return frame_id
        return None

    def free_space(self) -> bool:
        """On a full disk, delete the oldest audit file (the oldest records go first); the reject
        outbox calls this too, because an undelivered reject matters more than an old verdict.
        Returns whether anything was freed."""
        with self.lock:
            rotated = sorted(self._rotated(), key=lambda p: int(p.suffix[1:]))
            if rotated:
                victim = rotated[-1]
                victim.unlink(missing_ok=True)
            elif self.size > 0:
                victim = self.path
                os.close(self.fd)
                self.path.unlink(missing_ok=True)
                self.fd, self.size, self.torn = self._open(), 0, False
            else:
                return False
            self.dropped_files += 1
            self.full_at = time.monotonic()
            log.warning("disk full: deleted the oldest audit records (%s) to keep inspecting", victim.name)
            return True

    def recently_full(self, within_s: float = 30.0) -> bool:
        return time.monotonic() - self.full_at < within_s

    def _rotated(self) -> list[Path]:
        return [p for p in self.path.parent.glob(f"{self.path.name}.*") if p.suffix[1:].isdigit()]

    def _rotate(self) -> None:
        os.close(self.fd)
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            # audit.jsonl.N-1 -> .N, ..., audit.jsonl -> .1; the oldest falls off the end.
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.fd, self.size, self.torn = self._open(), 0, False

    def close(self) -> None:
        with self.lock:
            if self.fd >= 0:
                try:
                    os.fsync(self.fd)
                finally:
                    os.close(self.fd)
                    self.fd = -1


def last_frame_id(path: Path, tail_bytes: int = 65536) -> int | None:
    """The frame number of the newest record in one audit file that has one (read from its tail
    only: a file may hold 50 MB)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - tail_bytes))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            frame_id = json.loads(line).get("frame_id")
        except (ValueError, AttributeError):
            continue  # a torn or partial first line
        if isinstance(frame_id, int):
            return frame_id
    return None


def read_audit(path: Path) -> list[dict]:
    """Every complete record, oldest first, across rotated files."""
    path = Path(path)
    files = sorted(path.parent.glob(f"{path.name}.*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    records = []
    for file in [*files, path]:
        if not file.exists():
            continue
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records
