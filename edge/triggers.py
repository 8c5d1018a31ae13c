"""PLC triggers: parsing the `trigger` payload, and the triggers waiting for a frame."""

from __future__ import annotations

import collections
import json
import threading
import time

MAX_TRIGGER_BYTES = 256
WAITING_TRIGGERS = 1000  # beyond this the oldest is forgotten: a PLC this far ahead is misconfigured


def parse_trigger(payload: bytes) -> str | None:
    """A trigger is a JSON object with part_id, a JSON string, or the plain part id. Anything
    else is refused (None), never raised: a malformed message must not stop a line."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not text or len(text) > MAX_TRIGGER_BYTES:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        if text[0] in '{["':
            return None  # broken JSON, not a part id that happens to start with a brace
        value = text
    if isinstance(value, dict):
        value = value.get("part_id")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\0\n\r"):
        return None
    return value.strip()


class PendingTriggers:
    """Part ids the PLC asked about, oldest first, each waiting for the next frame (MQTT's thread
    adds, the capture thread takes and expires)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.lock = threading.Lock()
        self.waiting: collections.deque[tuple[str, float]] = collections.deque(maxlen=WAITING_TRIGGERS)

    def add(self, part_id: str) -> None:
        with self.lock:
            self.waiting.append((part_id, time.monotonic()))

    def next_part(self) -> str | None:
        """The part id the frame just captured belongs to, if any trigger waits."""
        with self.lock:
            return self.waiting.popleft()[0] if self.waiting else None

    def expired(self, everything: bool = False) -> list[str]:
        """Take the triggers that waited longer than the timeout (all of them at the end)."""
        now = time.monotonic()
        out = []
        with self.lock:
            while self.waiting and (everything or now - self.waiting[0][1] > self.timeout_s):
                out.append(self.waiting.popleft()[0])
        return out
