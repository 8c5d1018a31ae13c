"""Append-only audit log of every verdict (JSON lines), rotated by size, so a part's verdict can
be looked up after the fact. A record torn by a power cut is at most the last line, and the
reader skips it."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path


class AuditLog:
    def __init__(self, path: Path, max_bytes: int, backups: int, fsync_every: int = 32):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.backups, self.fsync_every = max_bytes, backups, fsync_every
        self.lock = threading.Lock()
        self.unsynced = 0
        self.handle = open(self.path, "a", encoding="utf-8")
        self.errors = 0

    def append(self, record: dict) -> bool:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.lock:
            try:
                if self.handle.tell() + len(line) > self.max_bytes:
                    self._rotate()
                self.handle.write(line)
                self.handle.flush()
                self.unsynced += 1
                if self.unsynced >= self.fsync_every:
                    os.fsync(self.handle.fileno())
                    self.unsynced = 0
                return True
            except OSError:
                # A full disk must not stop inspection; the counter and status say it.
                self.errors += 1
                return False

    def _rotate(self) -> None:
        self.handle.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            # audit.jsonl.N-1 -> .N, ..., audit.jsonl -> .1; the oldest falls off the end.
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.handle = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        with self.lock:
            if not self.handle.closed:
                self.handle.flush()
                os.fsync(self.handle.fileno())
                self.handle.close()


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
