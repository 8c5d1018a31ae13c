"""Rejects that must reach the PLC survive a broker outage and a power cut: each is a file,
written (temp, fsync, rename) before it is published and deleted only when the broker has
acknowledged it (PUBACK)."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge.audit import DISK_FULL
from engines.atomic_file import TEMP_SUFFIX, write_atomically


@dataclass(frozen=True)
class PendingMessage:
    sequence: int
    topic: str
    payload: dict


class NotSaved(Exception):
    """The disk is full even after making room: the message has its sequence but lives only in
    memory until the broker acknowledges it."""

    def __init__(self, message: PendingMessage, reason: str):
        super().__init__(reason)
        self.message = message


class Outbox:
    def __init__(self, directory: Path, make_room: Callable[[], bool] | None = None):
        """make_room: called when the disk is full; frees something less precious (the oldest
        audit records) and says whether it did."""
        self.directory = Path(directory)
        self.make_room = make_room
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        for leftover in self.directory.glob(f"*{TEMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)  # torn by a power cut before its rename: never acknowledged
        existing = [int(p.stem) for p in self.directory.glob("*.json") if p.stem.isdigit()]
        self.next_sequence = max(existing, default=0) + 1

    def put(self, topic: str, payload: dict) -> PendingMessage:
        with self.lock:
            sequence = self.next_sequence
            self.next_sequence += 1
        message = PendingMessage(sequence, topic, payload)
        while True:
            try:
                self.save(message)
                return message
            except OSError as error:
                if not (error.errno in DISK_FULL and self.make_room is not None and self.make_room()):
                    raise NotSaved(message, f"{self.directory}: {error.strerror or error}") from None

    def save(self, message: PendingMessage) -> None:
        """Write one message durably; also how a message put() could not save is saved later
        (same sequence, so delivery order holds)."""
        record = {"sequence": message.sequence, "topic": message.topic, "payload": message.payload}
        write_atomically(self.directory / f"{message.sequence:012d}.json", json.dumps(record).encode())

    def done(self, sequence: int) -> None:
        (self.directory / f"{sequence:012d}.json").unlink(missing_ok=True)

    def pending(self, after: int = 0) -> list[PendingMessage]:
        """Undelivered messages with a sequence above `after`, oldest first; only those files are
        read (a flush re-lists often, and a long outage leaves many). An unreadable file is
        skipped, not fatal."""
        out = []
        for path in sorted(self.directory.glob("*.json")):
            if not path.stem.isdigit() or int(path.stem) <= after:
                continue
            try:
                data = json.loads(path.read_text())
                out.append(PendingMessage(int(data["sequence"]), str(data["topic"]), dict(data["payload"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))
