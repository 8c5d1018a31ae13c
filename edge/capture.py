"""Camera sources: each yields Frames until stopped; reconnects are the caller's loop's job.

A source raises SourceUnavailable when it cannot deliver (device gone, stream down, folder
unmounted); the capture loop reports that and retries with backoff.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.config import FileSourceConfig, FolderSourceConfig, GstreamerSourceConfig, SourceConfig, StreamSourceConfig, V4l2SourceConfig, VideoSourceConfig
from edge.counters import ThrottledLog

log = logging.getLogger("edge.capture")
# Sources that deliver a view of the line now, rather than parts that wait to be read.
LIVE_SOURCES = ("v4l2", "stream", "gstreamer")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Frame:
    image: np.ndarray | None  # as OpenCV delivers it: BGR, gray or BGRA; uint8 or uint16
    frame_id: int
    t_capture: float  # time.time() when the frame was read
    part_id: str | None = None
    source_name: str | None = None  # file name for folder sources
    unreadable: str | None = None  # why a delivered part has no image (a corrupt file): answered as an error


class SourceUnavailable(RuntimeError):
    """The source cannot deliver now; the message says what and where."""


class EndOfStream(Exception):
    """A finite source (a video file without loop) has no more frames."""


class NoFrameYet(Exception):
    """A source that waits for parts (a watched folder) has none yet; the caller gets control
    back every so often to show it is alive and to expire triggers, not only when a part comes."""


# How long a waiting source keeps the capture loop before handing it back.
WAIT_SLICE_S = 0.5

# How long a network stream may take to open or to deliver the next frame before it counts as
# lost. OpenCV's default is 30 s, far past the daemon's 5 s heartbeat: a stream whose cable was
# pulled (the TCP connection stays up, nothing arrives) would stop the watchdog ping and have
# systemd restart a daemon that is merely waiting for its camera.
STREAM_TIMEOUT_MS = 3000


class VideoCaptureSource:
    """V4L2 devices, video files, RTSP/HTTP streams and GStreamer pipelines through OpenCV."""

    moves_files = False
    waits_for_parts = False

    def __init__(self, config: VideoSourceConfig):
        self.config = config
        self.capture: cv2.VideoCapture | None = None
        self.next_due = 0.0

    @property
    def description(self) -> str:
        c = self.config
        if isinstance(c, V4l2SourceConfig):
            return f"V4L2 device {c.device}"
        if isinstance(c, FileSourceConfig):
            return f"video file {c.path}"
        if isinstance(c, StreamSourceConfig):
            return f"stream {c.url}"
        return "GStreamer pipeline"

    def open(self) -> None:
        capture = self._capture()
        if not capture.isOpened():
            capture.release()
            raise SourceUnavailable(f"cannot open {self.description}")
        self.capture = capture

    def _capture(self) -> cv2.VideoCapture:
        c = self.config
        if isinstance(c, V4l2SourceConfig):
            capture = cv2.VideoCapture(int(c.device) if c.device.isdigit() else c.device, cv2.CAP_V4L2)
            for setting, value in ((cv2.CAP_PROP_FRAME_WIDTH, c.width), (cv2.CAP_PROP_FRAME_HEIGHT, c.height), (cv2.CAP_PROP_FPS, c.fps)):
                if value:
                    capture.set(setting, value)
            return capture
        if isinstance(c, StreamSourceConfig):
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
            return cv2.VideoCapture(c.url, cv2.CAP_FFMPEG, timeouts)
        if isinstance(c, GstreamerSourceConfig):
            if not _has_gstreamer():
                raise SourceUnavailable("this OpenCV build has no GStreamer support; install an OpenCV built with GStreamer (e.g. the distribution's python3-opencv) to use gstreamer sources")
            return cv2.VideoCapture(c.pipeline, cv2.CAP_GSTREAMER)
        if not Path(c.path).is_file():
            raise SourceUnavailable(f"video file {c.path} not found")
        return cv2.VideoCapture(c.path, cv2.CAP_FFMPEG)

    def read(self, frame_id: int) -> Frame:
        if self.capture is None:
            self.open()
        capture = self.capture
        assert capture is not None, "open() sets it or raises"
        c = self.config
        if isinstance(c, FileSourceConfig) and c.fps:
            # Pace a file like the camera it stands in for.
            now = time.monotonic()
            if now < self.next_due:
                time.sleep(self.next_due - now)
            self.next_due = max(now, self.next_due) + 1.0 / c.fps
        ok, image = capture.read()
        if (not ok or image is None) and isinstance(c, FileSourceConfig):
            if not Path(c.path).is_file():
                self.close()
                raise SourceUnavailable(f"video file {c.path} disappeared")
            if c.loop:
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, image = capture.read()
            if not ok or image is None:
                raise EndOfStream()
        if not ok or image is None:
            self.close()
            raise SourceUnavailable(f"{self.description} stopped delivering frames")
        return Frame(image=image, frame_id=frame_id, t_capture=time.time())

    def finish(self, frame: Frame, keep_file: bool = False) -> None:
        """A video frame has nothing to hand back once its part is answered."""

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None


def _has_gstreamer() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


class FolderSource:
    """A line camera drops one image file per part into a folder; the file name (without the
    suffix) is the part id. Files are taken oldest first, once each; a file is only read once
    its size has stopped changing, so a half-written image is never inspected."""

    waits_for_parts = True  # read() waits for the next file, and gives control back meanwhile

    def __init__(self, config: FolderSourceConfig):
        self.config = config
        self.folder = Path(config.path)
        self.done_dir = Path(config.done_dir) if config.done_dir else None
        self.seen: set[str] = set()
        self.sizes: dict[str, int] = {}
        self.pending: set[str] = set()  # read and not yet answered (finish); kept in `seen` meanwhile
        self.pending_lock = threading.Lock()
        # A misconfigured done_dir must not flood the journal.
        self.move_failures = ThrottledLog(log, logging.WARNING)

    @property
    def moves_files(self) -> bool:
        return self.done_dir is not None

    @property
    def description(self) -> str:
        return f"folder {self.folder}"

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceUnavailable(f"folder {self.folder} not found (unmounted?)")
        if self.done_dir:
            self.done_dir.mkdir(parents=True, exist_ok=True)

    def _candidates(self) -> list[os.DirEntry]:
        try:
            files = [e for e in os.scandir(self.folder) if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)]
        except OSError:
            raise SourceUnavailable(f"folder {self.folder} not readable (unmounted?)") from None
        # Forget files that are gone (moved or cleaned up by the line), so a months-long run
        # does not remember every part it ever saw.
        present = {e.name for e in files}
        with self.pending_lock:
            # A file read and not yet answered stays seen even if a remount briefly hides it.
            self.seen.intersection_update(present | self.pending)
        for name in self.sizes.keys() - present:
            del self.sizes[name]
        entries = [e for e in files if e.name not in self.seen]
        return sorted(entries, key=lambda e: (e.stat().st_mtime_ns, e.name))

    def read(self, frame_id: int, stop=None) -> Frame:
        """The next settled file; NoFrameYet after WAIT_SLICE_S without one."""
        deadline = time.monotonic() + WAIT_SLICE_S
        while stop is None or not stop.is_set():
            for entry in self._candidates():
                size = entry.stat().st_size
                if self.sizes.get(entry.name) != size:
                    # First sighting or still growing: look again next poll.
                    self.sizes[entry.name] = size
                    continue
                self.seen.add(entry.name)
                self.sizes.pop(entry.name, None)
                with self.pending_lock:
                    self.pending.add(entry.name)
                return self._load(Path(entry.path), frame_id)
            if time.monotonic() >= deadline:
                raise NoFrameYet()
            time.sleep(self.config.poll_interval_s)
        raise EndOfStream()

    def _load(self, path: Path, frame_id: int) -> Frame:
        frame = Frame(image=None, frame_id=frame_id, t_capture=time.time(), part_id=path.stem, source_name=path.name)
        try:
            data = np.fromfile(str(path), dtype=np.uint8)
        except OSError as error:
            frame.unreadable = f"{path}: cannot read ({error.strerror})"
            return frame
        frame.image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if frame.image is None:
            # Still a part the line delivered: it goes on, to be answered (rejected) in its turn.
            frame.unreadable = f"{path}: not a readable image (empty, corrupt or unsupported)"
        return frame

    def finish(self, frame: Frame, keep_file: bool = False) -> None:
        """The part is answered: its file may leave the folder if the answer is on disk (outbox,
        audit). Until then, or with `keep_file`, it stays, so a daemon killed mid-part (or one whose
        answer a full disk refused) inspects it again on its next start. It stays seen meanwhile."""
        if frame.source_name:
            if not keep_file:
                self._move_to_done(frame.source_name)
            with self.pending_lock:
                self.pending.discard(frame.source_name)

    def _move_to_done(self, name: str) -> None:
        if not self.done_dir:
            return
        try:
            os.replace(self.folder / name, self.done_dir / name)
        except OSError as error:
            self.move_failures(
                "folder %s: could not move %s to %s (%s); it stays and is inspected again after a restart",
                self.folder,
                name,
                self.done_dir,
                error.strerror or error,
            )

    def close(self) -> None:
        pass


def open_source(config: SourceConfig) -> FolderSource | VideoCaptureSource:
    return FolderSource(config) if isinstance(config, FolderSourceConfig) else VideoCaptureSource(config)
