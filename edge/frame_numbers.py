"""Frame numbers that never repeat across restarts of a station.

A free-running camera's part id is its frame number. Counting from 0 at every start made a
restarted daemon reuse the ids of parts whose rejects were still in the outbox, so a PLC that
dedupes by part id would drop a real reject. Numbers are reserved in blocks: the end of the current
block is on disk before any number in it is used, and a start resumes at the last reserved end.
A restart therefore skips ahead (gaps are harmless) and one write serves a block's worth of frames.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from engines.atomic_file import write_atomically

log = logging.getLogger(__name__)

BLOCK = 100_000  # frames per write; at 100 fps, one write every 17 minutes


class FrameNumbers:
    def __init__(self, path: Path, block: int = BLOCK, first_if_new=lambda: 0):
        """`first_if_new()`: where a station without a reservation file starts (called only then);
        the daemon passes one past the highest frame number its audit log and outbox still hold,
        so the first start after an upgrade does not reuse the last run's ids either."""
        self.path = Path(path)
        self.block = block
        self.lock = threading.Lock()
        self.next = self._read_reserved(first_if_new)
        self.reserved_until = self.next

    def _read_reserved(self, first_if_new) -> int:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return first_if_new()
        except OSError as error:
            log.warning("%s: cannot read the reserved frame numbers (%s); counting from 0, so part ids may repeat those of an earlier run", self.path, error.strerror or error)
            return 0
        if not text.isdigit():
            log.warning("%s: %r is not a frame number; counting from 0, so part ids may repeat those of an earlier run", self.path, text[:40])
            return 0
        return int(text)

    def current(self) -> int:
        """The number the next frame gets (reserved on disk before it is handed out)."""
        with self.lock:
            if self.next >= self.reserved_until:
                self.reserved_until = self.next + self.block
                self._save(self.reserved_until)
            return self.next

    def advance(self) -> None:
        """The frame numbered current() came; the next one gets the following number."""
        with self.lock:
            self.next += 1

    def _save(self, value: int) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, f"{value}\n".encode())
        except OSError as error:
            # Inspection goes on; only the ids after the next restart are at risk.
            log.warning("%s: cannot reserve frame numbers (%s); after a restart part ids may repeat", self.path, error.strerror or error)
