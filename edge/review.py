"""Operator feedback: recent parts' images kept so that a label finds its part, and labelled
parts filed where refit and calibration take them.

    state_dir/review/<station>/recent/          the ring: every inspected part's ROI crop (PNG)
    state_dir/review/<station>/good/            labelled good (false rejects among them)
    state_dir/review/<station>/defect/<type>/   labelled defective (misses among them)
    state_dir/review/<station>/labels.jsonl     one line per label: part, verdict, score, bundle

The ring is bounded in parts and megabytes; the oldest passes go first, and rejects stay until
labelled or older than keep_rejects_hours (or until rejects alone overflow the bounds: the disk
comes first). Images are written by the ring's own thread, so the publish thread never waits for
a disk; when that thread falls behind, passes are not kept (counted), rejects are.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, unquote

import cv2
import numpy as np

from edge.answer import Answer
from edge.commands import FeedbackCommand
from edge.config import CameraConfig, ReviewConfig
from edge.counters import Counter
from edge.inspection import roi_view

log = logging.getLogger("edge.review")

QUEUED_PASSES = 32  # images waiting for the writer beyond which a pass is not kept
QUEUED_REJECTS = 256


@dataclass
class _Kept:
    path: Path
    size: int
    reject: bool
    time: float
    payload: dict  # the part's message, for the labels file (empty for parts from before a restart)


@dataclass(frozen=True)
class _Waiting:
    part_id: str
    view: np.ndarray
    reject: bool
    payload: dict


class LabelCounts:
    def __init__(self) -> None:
        self.false_rejects = Counter()  # rejected, labelled good
        self.misses = Counter()  # passed, labelled defective
        self.confirmed_rejects = Counter()
        self.confirmed_good = Counter()

    def snapshot(self) -> dict:
        return {name: getattr(self, name).value for name in ("false_rejects", "misses", "confirmed_rejects", "confirmed_good")}


def _file_name(sequence: int, reject: bool, part_id: str) -> str:
    quoted = quote(part_id, safe="")
    # A part id that quotes too long for a file name is kept under its number alone: findable
    # until a restart, when only the name tells the part.
    return f"{sequence:010d}-{'r' if reject else 'p'}-{quoted if len(quoted) <= 200 else ''}.png"


def _part_of(name: str) -> tuple[int, bool, str] | None:
    sequence, sep, rest = name.partition("-")
    if not sep or not sequence.isdigit() or rest[:2] not in ("r-", "p-") or not name.endswith(".png"):
        return None
    return int(sequence), rest[0] == "r", unquote(rest[2:-4])


class ReviewRing:
    def __init__(self, station: str, root: Path, camera: CameraConfig, limits: ReviewConfig):
        self.station = station
        self.root = root
        self.recent = root / "recent"
        self.camera = camera
        self.limits = limits
        self.labels = LabelCounts()
        self.not_kept = Counter()
        self.condition = threading.Condition()
        self.waiting: collections.deque[_Waiting] = collections.deque()
        self.pending_labels: dict[str, FeedbackCommand] = {}  # labels for parts still being written
        self.kept: collections.OrderedDict[str, _Kept] = collections.OrderedDict()  # oldest first
        self.bytes = 0
        self.sequence = 0
        self.stopping = False
        self.recent.mkdir(parents=True, exist_ok=True)
        self._index_existing()
        self.thread = threading.Thread(target=self._write_loop, name=f"review-{station}", daemon=True)
        self.thread.start()

    def _index_existing(self) -> None:
        """The ring as the last run left it, so a label sent across a restart finds its part."""
        found = []
        for path in self.recent.iterdir():
            parsed = _part_of(path.name)
            if parsed is None:
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((parsed, path, stat))
        for (sequence, reject, part_id), path, stat in sorted(found, key=lambda item: item[0][0]):
            self._add(part_id or path.stem, _Kept(path, stat.st_size, reject, stat.st_mtime, {}))
            self.sequence = max(self.sequence, sequence)

    # -- the publish thread -------------------------------------------------------------------
    def keep(self, answer: Answer) -> None:
        if not self.limits.enabled or answer.verdict is None or answer.frame is None:
            return  # only inspected parts can be labelled against their verdict
        view = roi_view(answer.frame, self.camera)
        if view is None:
            return
        with self.condition:
            if len(self.waiting) >= (QUEUED_REJECTS if answer.is_reject else QUEUED_PASSES):
                self.not_kept.add()
                return
            self.waiting.append(_Waiting(answer.part_id, view, answer.is_reject, answer.payload()))
            self.condition.notify()

    # -- the ring's thread --------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            with self.condition:
                while not self.waiting and not self.stopping:
                    self.condition.wait()
                if not self.waiting:
                    return
                item = self.waiting.popleft()
                self.sequence += 1
                sequence = self.sequence
            if not self._room_for(item.view.nbytes):
                self.not_kept.add()
                continue
            path = self.recent / _file_name(sequence, item.reject, item.part_id)
            if not cv2.imwrite(str(path), item.view, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
                self.not_kept.add()
                log.warning("%s: cannot keep part %s's image in %s (disk full?)", self.station, item.part_id, self.recent)
                continue
            with self.condition:
                self._add(item.part_id, _Kept(path, path.stat().st_size, item.reject, time.time(), item.payload))
                label = self.pending_labels.pop(item.part_id, None)
                self._evict(time.time())
            if label is not None:
                self.label(label)

    def _room_for(self, size: int) -> bool:
        """Whether an image of about `size` bytes leaves min_free_mb free on the state directory's
        disk, after dropping the ring's oldest images if need be: the outbox and the audit log
        share that disk, and an undelivered reject matters more than a review image."""
        reserve = self.limits.min_free_mb * 1_000_000 + size
        while True:
            try:
                if shutil.disk_usage(self.recent).free >= reserve:
                    return True
            except OSError:
                return False
            if not self.free_space():
                return False

    def free_space(self) -> bool:
        """Delete the ring's oldest image (a pass before any reject); whether there was one. The
        outbox calls this on a full disk before it takes audit records."""
        with self.condition:
            victim = next((p for p, k in self.kept.items() if not k.reject), None) or next(iter(self.kept), None)
            if victim is None:
                return False
            self._delete(self.kept.pop(victim))
            return True

    def _add(self, part_id: str, kept: _Kept) -> None:
        old = self.kept.pop(part_id, None)
        if old is not None:  # a repeated part id: the newest image is the one a label means
            self._delete(old)
        self.kept[part_id] = kept
        self.bytes += kept.size

    def _over(self) -> bool:
        return len(self.kept) > self.limits.keep_parts or self.bytes > self.limits.keep_mb * 1_000_000

    def _evict(self, now: float) -> None:
        expired = now - self.limits.keep_rejects_hours * 3600.0
        for part_id, kept in list(self.kept.items()):
            if kept.reject and kept.time < expired:
                self._delete(self.kept.pop(part_id))
        for part_id, kept in list(self.kept.items()):  # oldest passes first
            if not self._over():
                return
            if not kept.reject:
                self._delete(self.kept.pop(part_id))
        if self._over():
            log.warning("%s: the review ring is full of rejects nobody labelled; deleting the oldest", self.station)
        while self._over():
            self._delete(self.kept.popitem(last=False)[1])

    def _delete(self, kept: _Kept) -> None:
        self.bytes -= kept.size
        try:
            kept.path.unlink()
        except OSError:
            pass

    # -- MQTT's thread ------------------------------------------------------------------------
    def label(self, command: FeedbackCommand) -> str | None:
        """File the part's image as labelled; None when done, else why not (for the log)."""
        with self.condition:
            kept = self.kept.pop(command.part_id, None)
            if kept is None:
                if any(w.part_id == command.part_id for w in self.waiting):
                    self.pending_labels[command.part_id] = command
                    return None
                return f"no recent image of part {command.part_id} (not inspected here, labelled already, or expired from the ring)"
            self.bytes -= kept.size
        folder = self.root / "good" if command.label == "good" else self.root / "defect" / (command.defect_type or "unspecified")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / kept.path.name
            os.replace(kept.path, target)
            self._append_label(command, kept, target)
        except OSError as error:
            return f"cannot file part {command.part_id}'s image in {folder} ({error.strerror})"
        self._count(command, kept.reject)
        log.info("%s: part %s labelled %s%s by an operator: %s", self.station, command.part_id, command.label, f" ({command.defect_type})" if command.defect_type else "", target)
        return None

    def _count(self, command: FeedbackCommand, rejected: bool) -> None:
        good = command.label == "good"
        counter = {(True, True): self.labels.false_rejects, (False, False): self.labels.misses, (True, False): self.labels.confirmed_rejects}.get((rejected, good), self.labels.confirmed_good)
        counter.add()

    def _append_label(self, command: FeedbackCommand, kept: _Kept, target: Path) -> None:
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "part_id": command.part_id,
            "label": command.label,
            "defect_type": command.defect_type,
            "rejected": kept.reject,
            "file": str(target.relative_to(self.root)),
            **{key: kept.payload.get(key) for key in ("verdict", "score", "threshold", "bundle_id", "recipe", "capture_time")},
        }
        with open(self.root / "labels.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def close(self, timeout_s: float = 2.0) -> None:
        with self.condition:
            self.stopping = True
            self.condition.notify_all()
        self.thread.join(timeout_s)
