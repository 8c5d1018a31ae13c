"""Teach-in: collecting good parts from the running camera into a folder edge-calibrate takes as is.

Each part is saved as the model will see it (the ROI crop, full resolution, lossless PNG). A
free-running camera shows the same part in many frames while it sits still, so a frame is kept
only when it differs from the last one kept; triggered frames and files are each a part. The
folder's teach.json says which station, ROI, recipe and camera it came from, when, and how many.
Started and stopped by the `teach` topic (MQTT's thread); parts are offered by the publish thread."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from edge.answer import Answer
from edge.config import CameraConfig
from edge.inspection import roi_view

log = logging.getLogger("edge.teach")

MANIFEST = "teach.json"
DEFAULT_COUNT = 1000  # a teach-in nobody stops ends here: calibration needs tens to hundreds
# Mean absolute difference (grey levels, 0-255) between 64x64 thumbnails above which a frame
# shows a new part. Sensor noise averages out in a thumbnail (well under 1 level); a part that
# moved, turned or was replaced changes many pixels by tens of levels.
CHANGE_LEVEL = 3.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def thumbnail(view: np.ndarray) -> np.ndarray:
    """A small grey picture of the part for telling new parts from the same one sitting still."""
    grey = view if view.ndim == 2 else cv2.cvtColor(view[..., :3], cv2.COLOR_BGR2GRAY)
    if grey.dtype != np.uint8:
        grey = (grey.astype(np.float32) * (255.0 / max(float(np.iinfo(grey.dtype).max), 1.0))).astype(np.uint8)
    return cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def safe_name(part_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", part_id)[:48]


@dataclass
class _Session:
    folder: Path
    count: int  # stop after this many
    saved: int
    manifest: dict
    last: np.ndarray | None = None  # the last kept part's thumbnail


class TeachIn:
    def __init__(self, station: str, root: Path, camera: CameraConfig, every_frame_is_a_part: bool, min_free_bytes: int = 0):
        self.station = station
        self.min_free_bytes = min_free_bytes  # left free for the outbox and the audit log on the same disk
        self.root = root  # state_dir/teach/<station>
        self.camera = camera
        self.every_frame_is_a_part = every_frame_is_a_part
        self.lock = threading.Lock()
        self.session: _Session | None = None
        self.last_status: dict | None = None  # what the last session did, for the stats after it ended

    def start(self, name: str | None, count: int | None, recipe: str, bundle_id: str) -> Path:
        """Start collecting (a running teach-in is stopped first); an existing folder of the same
        name is added to. Raises OSError when the folder cannot be made."""
        folder = self.root / (name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"))
        folder.mkdir(parents=True, exist_ok=True)
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            if not isinstance(manifest, dict):
                manifest = {}
        except (OSError, ValueError):
            manifest = {}
        saved = len(list(folder.glob("*.png")))
        roi = list(self.camera.roi) if self.camera.roi is not None else None
        manifest.update(station=self.station, roi=roi, source=self.camera.source.type, mode=self.camera.mode, recipe=recipe, bundle_id=bundle_id, count=saved)
        manifest.setdefault("started", _now())
        manifest.pop("stopped", None)
        with self.lock:
            self._end("a new teach-in started")
            self.session = _Session(folder, saved + (count or DEFAULT_COUNT), saved, manifest)
            self._write_manifest(self.session)
        log.info("%s: teach-in into %s, until %d parts are there", self.station, folder, saved + (count or DEFAULT_COUNT))
        return folder

    def stop(self, why: str = "stopped") -> bool:
        with self.lock:
            return self._end(why)

    def _end(self, why: str) -> bool:
        session, self.session = self.session, None
        if session is None:
            return False
        session.manifest["stopped"] = _now()
        self._write_manifest(session)
        self.last_status = self._status(session, active=False)
        log.info("%s: teach-in %s: %d parts in %s", self.station, why, session.saved, session.folder)
        return True

    def status(self) -> dict | None:
        with self.lock:
            return self._status(self.session, active=True) if self.session is not None else self.last_status

    @staticmethod
    def _status(session: _Session, active: bool) -> dict:
        return {"active": active, "folder": str(session.folder), "saved": session.saved, "count": session.count}

    def offer(self, answer: Answer, payload: dict | None = None) -> None:
        """The publish thread's part: keep it if a teach-in runs and it shows a new part."""
        if self.session is None or answer.frame is None:  # unlocked look: the common case costs nothing
            return
        view = roi_view(answer.frame, self.camera)
        if view is None:
            return
        small = None if self.every_frame_is_a_part else thumbnail(view)
        with self.lock:
            session = self.session
            if session is None:
                return
            if small is not None and session.last is not None and float(np.mean(np.abs(small - session.last))) < CHANGE_LEVEL:
                return  # the same part, still in view
            if _free_bytes(session.folder) < self.min_free_bytes + view.nbytes:
                log.error("%s: the state directory's disk is nearly full; teach-in stopped to leave room for the reject outbox", self.station)
                self._end("stopped: disk nearly full")
                return
            path = session.folder / f"{session.saved + 1:06d}_{safe_name(answer.part_id)}.png"
            if not cv2.imwrite(str(path), view, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
                log.error("%s: cannot write %s (disk full or not writable); teach-in stopped", self.station, path)
                self._end("stopped by a write error")
                return
            session.saved += 1
            session.last = small
            session.manifest["count"] = session.saved
            session.manifest["updated"] = _now()
            if session.saved >= session.count:
                self._end("reached its count")
            else:
                self._write_manifest(session)

    def _write_manifest(self, session: _Session) -> None:
        path = session.folder / MANIFEST
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(session.manifest, indent=1) + "\n", encoding="utf-8")
            os.replace(temporary, path)
        except OSError as error:
            log.warning("%s: cannot write %s (%s)", self.station, path, error.strerror)
