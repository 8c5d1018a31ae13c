"""Operator feedback: recent parts' images kept so that a label finds its part, and labelled
parts filed where refit and calibration take them.

    state_dir/review/<station>/recent/          rejects' ROI crops (PNG), until labelled or expired
    state_dir/review/<station>/good/            labelled good (false rejects among them)
    state_dir/review/<station>/defect/<type>/   labelled defective (misses among them)
    state_dir/review/<station>/labels.jsonl     one line per label: part, verdict, score, bundle

A station with several recipes files labelled parts per product, under
review/<station>/<recipe>/good and .../defect/<type>: refit takes one product's good parts, and
another product's would teach it the wrong part. An operator may correct a label: the part's
image moves to the new folder and the counts follow (for the last LABELS_CORRECTABLE labels,
until a restart).

Two tiers, both bounded in parts and megabytes. Rejects go to disk, so a label sent after a
restart still finds them; they stay until labelled or keep_rejects_hours old. Passes stay in
memory and are written only when labelled (a miss): a lossless picture of every part would cost
a core and wear the disk (a 1024x1024 crop is 70 ms of PNG and 1.3 MB, at 60 parts/s), while
the few passes anyone labels are found just as well in memory, only not across a restart.
Images are written by the ring's own low-priority thread, so neither the publish thread nor
MQTT's waits for a disk; when it falls behind, a reject's image is not kept (counted).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
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

QUEUED_WRITES = 64  # rejects' images and labelled passes waiting for the writer
LABELS_CORRECTABLE = 4096  # labelled parts whose label an operator can still change
PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]


@dataclass
class _Kept:
    """A part whose image a label can still find: on disk (path) or in memory (view)."""

    reject: bool
    time: float
    payload: dict  # the part's message, for the labels file (empty for rejects from before a restart)
    path: Path | None = None
    view: np.ndarray | None = field(default=None, repr=False)
    size: int = 0


@dataclass(frozen=True)
class _Write:
    """A PNG for the writer: a reject into the ring, or a labelled part into its review folder."""

    part_id: str
    view: np.ndarray
    kept: _Kept
    label: FeedbackCommand | None = None


class LabelCounts:
    def __init__(self) -> None:
        self.false_rejects = Counter()  # rejected, labelled good
        self.misses = Counter()  # passed, labelled defective
        self.confirmed_rejects = Counter()
        self.confirmed_good = Counter()

    def snapshot(self) -> dict:
        return {name: getattr(self, name).value for name in ("false_rejects", "misses", "confirmed_rejects", "confirmed_good")}

    def counter(self, label: str, rejected: bool) -> Counter:
        good = label == "good"
        if rejected:
            return self.false_rejects if good else self.confirmed_rejects
        return self.confirmed_good if good else self.misses


@dataclass
class _Filed:
    """A labelled part's image where its label put it, so a corrected label can move it."""

    label: FeedbackCommand
    kept: _Kept
    path: Path | None = None  # None until the writer has filed a labelled pass


def _file_name(sequence: int, reject: bool, part_id: str) -> str:
    quoted = quote(part_id, safe="")
    # A part id that quotes too long for a file name is kept under its number alone: findable
    # until a restart, when only the name tells the part.
    return f"{sequence:010d}-{'r' if reject else 'p'}-{quoted if len(quoted) <= 200 else ''}.png"


def _part_of(name: str) -> tuple[int, str] | None:
    sequence, sep, rest = name.partition("-")
    if not sep or not sequence.isdigit() or rest[:2] not in ("r-", "p-") or not name.endswith(".png"):
        return None
    return int(sequence), unquote(rest[2:-4])


def _move_into(path: Path, folder: Path) -> Path:
    """A labelled part's image renamed into its label's folder; where it is now."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    os.replace(path, target)
    return target


class _Tier:
    """Kept parts, oldest first, bounded in count and bytes."""

    def __init__(self, max_parts: int, max_bytes: float):
        self.parts: collections.OrderedDict[str, _Kept] = collections.OrderedDict()
        self.bytes = 0
        self.max_parts, self.max_bytes = max_parts, max_bytes

    def add(self, part_id: str, kept: _Kept) -> list[_Kept]:
        """Add (the newest image of a repeated id is the one a label means); returns what was pushed out."""
        out = [old] if (old := self.parts.pop(part_id, None)) is not None else []
        self.bytes -= sum(o.size for o in out)
        self.parts[part_id] = kept
        self.bytes += kept.size
        while len(self.parts) > self.max_parts or self.bytes > self.max_bytes:
            out.append(self.pop_oldest())
        return out

    def pop(self, part_id: str) -> _Kept:
        kept = self.parts.pop(part_id)
        self.bytes -= kept.size
        return kept

    def oldest(self) -> _Kept | None:
        return next(iter(self.parts.values()), None)

    def pop_oldest(self) -> _Kept:
        return self.pop(next(iter(self.parts)))


class ReviewRing:
    def __init__(self, station: str, root: Path, camera: CameraConfig, limits: ReviewConfig, per_recipe: bool = False):
        self.station = station
        self.root = root
        self.per_recipe = per_recipe  # several products: each one's labelled parts apart
        self.filed: collections.OrderedDict[str, _Filed] = collections.OrderedDict()  # the labels an operator can still correct
        self.recent = root / "recent"
        self.camera = camera
        self.limits = limits
        self.labels = LabelCounts()
        self.not_kept = Counter()
        self.condition = threading.Condition()
        self.writes: collections.deque[_Write] = collections.deque()
        self.pending_labels: dict[str, FeedbackCommand] = {}  # labels for rejects still being written
        self.on_disk = _Tier(limits.keep_parts, limits.keep_mb * 1e6)
        self.in_memory = _Tier(limits.keep_parts, limits.memory_mb * 1e6)
        self.sequence = 0
        self.stopping = False
        if limits.enabled:
            self.recent.mkdir(parents=True, exist_ok=True)
            self._index_existing()
        self.thread = threading.Thread(target=self._write_loop, name=f"review-{station}", daemon=True)
        self.thread.start()

    def _index_existing(self) -> None:
        """The rejects the last run left, so a label sent across a restart finds its part."""
        found = []
        for path in self.recent.iterdir():
            parsed = _part_of(path.name)
            if parsed is None:
                continue
            try:
                found.append((parsed, path, path.stat()))
            except OSError:
                continue
        for (sequence, part_id), path, stat in sorted(found, key=lambda item: item[0][0]):
            self._delete(self.on_disk.add(part_id or path.stem, _Kept(True, stat.st_mtime, {}, path=path, size=stat.st_size)))
            self.sequence = max(self.sequence, sequence)

    # -- the publish thread -------------------------------------------------------------------
    def keep(self, answer: Answer, payload: dict) -> None:
        if not self.limits.enabled or answer.verdict is None or answer.frame is None:
            return  # only inspected parts can be labelled against their verdict
        view = roi_view(answer.frame, self.camera)
        if view is None:
            return
        # A copy: the crop is a view that would keep the whole frame alive.
        copy = np.array(view)
        kept = _Kept(answer.is_reject, time.time(), payload, view=copy, size=copy.nbytes)
        with self.condition:
            if not kept.reject:
                self.in_memory.add(answer.part_id, kept)
                return
            if len(self.writes) >= QUEUED_WRITES:
                self.not_kept.add()
                return
            self.writes.append(_Write(answer.part_id, copy, kept))
            self.condition.notify()

    # -- the ring's thread --------------------------------------------------------------------
    def _write_loop(self) -> None:
        try:  # below the inspection threads: the ring takes only what they leave
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        while True:
            with self.condition:
                while not self.writes and not self.stopping:
                    self.condition.wait()
                if not self.writes:
                    return
                job = self.writes.popleft()
            if job.label is not None:
                self._file_labelled(job)
            else:
                self._write_reject(job)

    def _write_reject(self, job: _Write) -> None:
        if not self._room_for(job.view.nbytes):
            self.not_kept.add()
            return
        with self.condition:
            self.sequence += 1
            path = self.recent / _file_name(self.sequence, True, job.part_id)
        if not cv2.imwrite(str(path), job.view, PNG):
            self.not_kept.add()
            log.warning("%s: cannot keep part %s's image in %s (disk full?)", self.station, job.part_id, self.recent)
            return
        job.kept.path, job.kept.view, job.kept.size = path, None, path.stat().st_size
        with self.condition:
            self._delete(self.on_disk.add(job.part_id, job.kept))
            self._expire(time.time())
            label = self.pending_labels.pop(job.part_id, None)
        if label is not None:
            self.label(label)

    def _file_labelled(self, job: _Write) -> None:
        assert job.label is not None
        folder = self._folder(job.label, job.kept)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / _file_name(int(time.time() * 1000), job.kept.reject, job.part_id)
            if not cv2.imwrite(str(target), job.view, PNG):
                raise OSError(f"cannot write {target}")
            self._append_label(job.label, job.kept, target)
        except OSError as error:
            log.error("%s: part %s's label is counted, but its image could not be filed in %s (%s)", self.station, job.part_id, folder, error)
            with self.condition:  # nothing filed, so nothing a correction could move
                if (filed := self.filed.get(job.part_id)) is not None and filed.kept is job.kept:
                    del self.filed[job.part_id]
            return
        with self.condition:
            filed = self.filed.get(job.part_id)
            if filed is not None and filed.kept is job.kept:
                filed.path = target

    def _room_for(self, size: int) -> bool:
        """Whether an image of about `size` bytes leaves min_free_mb free on the state directory's
        disk, after dropping the ring's oldest rejects if need be: the outbox and the audit log
        share that disk, and an undelivered reject matters more than a review image."""
        reserve = self.limits.min_free_mb * 1e6 + size
        while True:
            try:
                if shutil.disk_usage(self.recent).free >= reserve:
                    return True
            except OSError:
                return False
            if not self.free_space():
                return False

    def free_space(self) -> bool:
        """Delete the ring's oldest image on disk; whether there was one. The outbox calls this on
        a full disk before it takes audit records."""
        with self.condition:
            if not self.on_disk.parts:
                return False
            self._delete([self.on_disk.pop_oldest()])
            return True

    def _expire(self, now: float) -> None:
        expired = now - self.limits.keep_rejects_hours * 3600.0
        while (oldest := self.on_disk.oldest()) is not None and oldest.time < expired:
            self._delete([self.on_disk.pop_oldest()])

    @staticmethod
    def _delete(gone: list[_Kept]) -> None:
        for kept in gone:
            if kept.path is not None:
                try:
                    kept.path.unlink()
                except OSError:
                    pass

    # -- MQTT's thread ------------------------------------------------------------------------
    def label(self, command: FeedbackCommand) -> str | None:
        """File the part's image as labelled, or move it where a corrected label says; None when
        taken, else why not (for the log)."""
        part_id = command.part_id
        with self.condition:
            # A repeated part id: the label means the newest part of that id, pass or reject.
            candidates: list[tuple[float, object]] = [(kept.time, tier) for tier in (self.in_memory, self.on_disk) if (kept := tier.parts.get(part_id)) is not None]
            candidates += [(w.kept.time, self.writes) for w in self.writes if w.part_id == part_id and w.label is None]  # a reject not on disk yet
            tier = max(candidates, key=lambda c: c[0])[1] if candidates else None
            if tier is self.in_memory:
                if len(self.writes) >= QUEUED_WRITES:
                    return "the review writer is behind; send the label again in a moment"
                kept = self.in_memory.pop(part_id)
                assert kept.view is not None  # passes are kept in memory, with their image
                self._remember_label(part_id, _Filed(command, kept))
                self.writes.append(_Write(part_id, kept.view, kept, command))
                self.condition.notify()
            elif tier is self.on_disk:
                kept = self.on_disk.pop(part_id)
            elif tier is self.writes:
                self.pending_labels[part_id] = command
                return None
            elif part_id in self.filed:
                return self._correct(self.filed[part_id], command)
            else:
                return f"no recent image of part {part_id} (not inspected here, or expired from the ring)"
        self.labels.counter(command.label, kept.reject).add()
        if kept.path is not None:  # on disk: a rename, done here
            folder = self._folder(command, kept)
            try:
                target = _move_into(kept.path, folder)
                self._append_label(command, kept, target)
            except OSError as error:
                return f"cannot file part {part_id}'s image in {folder} ({error.strerror})"
            with self.condition:
                self._remember_label(part_id, _Filed(command, kept, target))
        log.info("%s: part %s labelled %s%s by an operator", self.station, part_id, command.label, f" ({command.defect_type})" if command.defect_type else "")
        return None

    def _remember_label(self, part_id: str, filed: _Filed) -> None:
        """Under the lock."""
        self.filed.pop(part_id, None)
        self.filed[part_id] = filed
        while len(self.filed) > LABELS_CORRECTABLE:
            self.filed.popitem(last=False)

    def _correct(self, filed: _Filed, command: FeedbackCommand) -> str | None:
        """A second label for a part already filed (under the lock): the operator corrects it.
        Its image moves to the new label's folder, the counts follow, labels.jsonl says so."""
        before = filed.label
        if (before.label, before.defect_type) == (command.label, command.defect_type):
            return None  # sent twice: already filed so
        if filed.path is None:
            return "its first label's image is still being written; send the correction again in a moment"
        folder = self._folder(command, filed.kept)
        try:
            target = _move_into(filed.path, folder)
        except OSError as error:
            return f"cannot move part {command.part_id}'s image to {folder} ({error.strerror})"
        self.labels.counter(before.label, filed.kept.reject).add(-1)
        self.labels.counter(command.label, filed.kept.reject).add()
        filed.label, filed.path = command, target
        self._append_label(command, filed.kept, target, corrects=before)
        was = before.label + (f" ({before.defect_type})" if before.defect_type else "")
        log.info("%s: part %s relabelled %s%s (was %s) by an operator", self.station, command.part_id, command.label, f" ({command.defect_type})" if command.defect_type else "", was)
        return None

    def _folder(self, command: FeedbackCommand, kept: _Kept) -> Path:
        base = self.root
        if self.per_recipe:
            recipe = kept.payload.get("recipe")
            # A configured recipe name is a safe folder name. A reject found again after a restart
            # has no record of its recipe: apart, never among one product's parts (recipe names
            # cannot start with '_').
            base = self.root / (recipe if isinstance(recipe, str) and recipe else "_recipe-unknown")
        return base / "good" if command.label == "good" else base / "defect" / (command.defect_type or "unspecified")

    def _append_label(self, command: FeedbackCommand, kept: _Kept, target: Path, corrects: FeedbackCommand | None = None) -> None:
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "part_id": command.part_id,
            "label": command.label,
            "defect_type": command.defect_type,
            "rejected": kept.reject,
            "file": str(target.relative_to(self.root)),
            **{key: kept.payload.get(key) for key in ("verdict", "score", "threshold", "bundle_id", "recipe", "capture_time")},
        }
        if corrects is not None:
            record["corrects"] = {"label": corrects.label, "defect_type": corrects.defect_type}
        with self.condition:  # the writer thread and MQTT's both append
            with open(self.root / "labels.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def close(self, timeout_s: float = 1.0) -> None:
        with self.condition:
            self.stopping = True
            self.condition.notify_all()
        self.thread.join(timeout_s)
