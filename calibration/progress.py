"""Progress lines with an ETA, on stderr so stdout stays for results."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, stream=None, min_interval_s: float = 1.0):
        self.label, self.total = label, max(1, total)
        self.stream = stream or sys.stderr
        self.min_interval_s = min_interval_s
        self.start = time.monotonic()
        self.last_print = 0.0

    def update(self, done: int, detail: str = "") -> None:
        now = time.monotonic()
        if done < self.total and now - self.last_print < self.min_interval_s:
            return
        self.last_print = now
        elapsed = now - self.start
        eta = elapsed / done * (self.total - done) if done else float("nan")
        line = f"{self.label}: {done}/{self.total} ({100.0 * done / self.total:.0f}%) elapsed {elapsed:.0f}s ETA {eta:.0f}s"
        if detail:
            line += f" {detail}"
        print(line, file=self.stream, flush=True)
