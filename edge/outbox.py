"""Rejects that must reach the PLC survive a broker outage and a power cut: each is a file,
written (temp, fsync, rename) before it is published and deleted only when the broker has
acknowledged it (PUBACK)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
        # The sequences on disk, listed once here and kept up to date by put/save/done: a flush
        # and the stats ask often, and a long outage leaves thousands of files.
        self.sequences: set[int] = {int(p.stem) for p in self.directory.glob("*.json") if p.stem.isdigit()}
        self.next_sequence = max(self.sequences, default=0) + 1

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
        write_atomically(self._path(message.sequence), json.dumps(record).encode())
        with self.lock:
            self.sequences.add(message.sequence)

    def done(self, sequence: int) -> None:
        with self.lock:
            self.sequences.discard(sequence)
        self._path(sequence).unlink(missing_ok=True)

    def _path(self, sequence: int) -> Path:
        return self.directory / f"{sequence:012d}.json"

    def pending(self, after: int = 0) -> list[PendingMessage]:
        """Undelivered messages with a sequence above `after`, oldest first; only those files are
        read. An unreadable file is skipped, not fatal."""
        with self.lock:
            wanted = sorted(sequence for sequence in self.sequences if sequence > after)
        out = []
        for sequence in wanted:
            try:
                data = json.loads(self._path(sequence).read_text())
                out.append(PendingMessage(int(data["sequence"]), str(data["topic"]), dict(data["payload"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    def __len__(self) -> int:
        with self.lock:
            return len(self.sequences)
