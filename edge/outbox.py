"""Rejects that must reach the PLC survive a broker outage and a power cut: each is a file,
written (temp, fsync, rename) before it is published and deleted only when the broker has
acknowledged it (PUBACK)."""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PendingMessage:
    sequence: int
    topic: str
    payload: dict


class Outbox:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink(missing_ok=True)  # torn by a power cut before its rename: never acknowledged
        existing = [int(p.stem) for p in self.directory.glob("*.json") if p.stem.isdigit()]
        self.next_sequence = max(existing, default=0) + 1

    def put(self, topic: str, payload: dict) -> PendingMessage:
        with self.lock:
            sequence = self.next_sequence
            self.next_sequence += 1
        message = PendingMessage(sequence, topic, payload)
        final = self.directory / f"{sequence:012d}.json"
        tmp = final.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump({"sequence": sequence, "topic": topic, "payload": payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        return message

    def done(self, sequence: int) -> None:
        (self.directory / f"{sequence:012d}.json").unlink(missing_ok=True)

    def pending(self) -> list[PendingMessage]:
        """Undelivered messages, oldest first; an unreadable file is skipped, not fatal."""
        out = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                out.append(PendingMessage(int(data["sequence"]), str(data["topic"]), dict(data["payload"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))
